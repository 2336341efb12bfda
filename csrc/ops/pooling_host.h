#pragma once
// Host-side argument checking and geometry set-up shared by the pooling ops
// (max_unpool, max_pool_with_offsets) and their CPU and CUDA kernels.

#include <ATen/core/Tensor.h>

#include <string>

#include "ops/pooling_window_math.h"

namespace fastops {

// Checks kernel_size > 0, stride > 0, padding >= 0, all of length 1, 2 or 3;
// returns the number of spatial dimensions.
int64_t check_pool_params(const char* op, at::IntArrayRef kernel_size, at::IntArrayRef stride,
                          at::IntArrayRef padding);

// Checks that `t` is float16, bfloat16, float32 or float64.
void check_floating_dtype(const char* op, const char* name, const at::Tensor& t);

// The geometry of windows over a plane, padded to 3-D with leading size-1 dims.
PoolWindows make_pool_windows(at::IntArrayRef window_sizes, at::IntArrayRef plane_sizes,
                              at::IntArrayRef kernel_size, at::IntArrayRef stride, at::IntArrayRef padding);

// The dense layout a kernel uses for `t`: channels-last for a 4-D/5-D tensor
// that is dense channels-last and not also plain contiguous, otherwise
// channels-first (other strides are copied). Outputs use the same layout.
at::MemoryFormat pooling_memory_format(const at::Tensor& t);

bool is_channels_last(at::MemoryFormat format);

// "8x8" for sizes {8, 8}.
std::string sizes_string(at::IntArrayRef sizes);

}  // namespace fastops
