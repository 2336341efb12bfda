#pragma once
// Test hook: with FASTOPS_POISON_OUTPUTS=1 in the environment (tests/conftest.py
// sets it), every output a kernel allocates is filled with NaN (or all-ones bits
// for integer tensors) before the kernel runs, so an element a kernel forgets to
// write fails the comparison instead of passing by luck on fresh zero pages.

#include <ATen/core/Tensor.h>

namespace fastops {

bool poison_outputs_enabled();

// Fills `t` with NaN / all-ones bits when poisoning is enabled; a no-op otherwise.
void poison_if_enabled(at::Tensor& t);

}  // namespace fastops
