#pragma once
// CPU kernels that other CPU kernels reuse.

#include <ATen/core/Tensor.h>

namespace fastops {

// fastops::max_unpool on CPU tensors (csrc/cpu/max_unpool.cpp).
at::Tensor max_unpool_cpu(const at::Tensor& input, const at::Tensor& indices, at::IntArrayRef output_size,
                          at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding);

}  // namespace fastops
