#pragma once
// CPU outputs of several megabytes are fresh mmap'ed memory: writing them first
// costs a page fault per 4 KiB page, which dominated the CPU unpooling kernels
// on large layers (a 177 MB output: ~75 ms of faults for ~20 ms of work).
// Advising transparent huge pages before the first write cuts the faults
// 512-fold (bench/NOTES.md). A no-op off Linux, for small or non-CPU tensors,
// and where the system disables transparent huge pages.

#include <ATen/core/Tensor.h>

namespace fastops {

void advise_huge_pages(const at::Tensor& t);

}  // namespace fastops
