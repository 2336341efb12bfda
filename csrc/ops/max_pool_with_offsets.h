#pragma once
// max_pool_with_offsets: a validated call, shared by the CPU and CUDA kernels.

#include <ATen/core/Tensor.h>

#include <vector>

#include "ops/pooling_window_math.h"

namespace fastops {

struct MaxPoolProblem {
  at::Tensor input;  // [N, C, *plane], dense in memory_format
  PoolWindows geometry;
  int64_t batch = 0;
  int64_t channels = 0;
  at::MemoryFormat memory_format = at::MemoryFormat::Contiguous;
  bool channels_last = false;
  std::vector<int64_t> output_shape;  // [N, C, *windows]
};

MaxPoolProblem prepare_max_pool_with_offsets(const at::Tensor& input, at::IntArrayRef kernel_size,
                                             at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode);

struct MaxPoolBackwardProblem {
  at::Tensor grad_output;  // [N, C, *windows], dense in memory_format
  at::Tensor offsets;      // same shape and layout, int8
  PoolWindows geometry;
  int64_t batch = 0;
  int64_t channels = 0;
  at::MemoryFormat memory_format = at::MemoryFormat::Contiguous;
  bool channels_last = false;
  std::vector<int64_t> grad_input_shape;  // [N, C, *input_size]
};

MaxPoolBackwardProblem prepare_max_pool_with_offsets_backward(const at::Tensor& grad_output,
                                                              const at::Tensor& offsets, at::IntArrayRef input_size,
                                                              at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                                              at::IntArrayRef padding);

}  // namespace fastops
