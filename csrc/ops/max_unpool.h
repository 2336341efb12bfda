#pragma once
// max_unpool: a validated call, shared by the CPU and CUDA kernels.

#include <ATen/core/Tensor.h>

#include <vector>

#include "ops/pooling_window_math.h"

namespace fastops {

struct MaxUnpoolProblem {
  at::Tensor input;    // [N, C, *windows], dense in memory_format
  at::Tensor indices;  // same shape and layout; int64 plane positions or int8 window offsets
  PoolWindows geometry;
  int64_t batch = 0;
  int64_t channels = 0;
  at::MemoryFormat memory_format = at::MemoryFormat::Contiguous;
  bool channels_last = false;
  std::vector<int64_t> output_shape;  // [N, C, *output_size]

  bool offsets() const { return indices.scalar_type() == at::kChar; }
};

// Checks the arguments of max_unpool (raising errors that name them) and puts
// input and indices into one dense layout.
MaxUnpoolProblem prepare_max_unpool(const at::Tensor& input, const at::Tensor& indices,
                                    at::IntArrayRef output_size, at::IntArrayRef kernel_size,
                                    at::IntArrayRef stride, at::IntArrayRef padding);

// The output tensor, in the input's layout: huge pages advised when on the CPU,
// NaN-filled under FASTOPS_POISON_OUTPUTS.
at::Tensor new_max_unpool_output(const MaxUnpoolProblem& problem);

// Raises the error for an index that names no position of the output plane.
[[noreturn]] void throw_invalid_unpool_index(const MaxUnpoolProblem& problem, int64_t bad_value);

struct MaxUnpoolBackwardProblem {
  at::Tensor grad_output;  // [N, C, *plane], dense in memory_format
  at::Tensor indices;      // [N, C, *windows], dense in memory_format
  PoolWindows geometry;
  int64_t batch = 0;
  int64_t channels = 0;
  at::MemoryFormat memory_format = at::MemoryFormat::Contiguous;
  bool channels_last = false;
};

MaxUnpoolBackwardProblem prepare_max_unpool_backward(const at::Tensor& grad_output, const at::Tensor& indices,
                                                     at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                                     at::IntArrayRef padding);

}  // namespace fastops
