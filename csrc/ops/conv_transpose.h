#pragma once
// Host-side argument checking and problem set-up of fastops::conv_transpose,
// shared by its CPU and CUDA kernels.
//
// The kernels see 2-D problems only: conv_transpose1d arrives as a height-1
// conv_transpose2d (fastops/ops/conv_transpose.py). Layouts: the input is
// computed in pooling_memory_format (channels-last when it is dense
// channels-last and not also contiguous), the output and the input gradient
// take that layout; the weight [C_in, C_out / groups, kH, kW] is made
// contiguous (it is small) and its gradient is contiguous.

#include <ATen/core/Tensor.h>

#include <optional>

namespace fastops {

struct ConvTransposeProblem {
  int64_t batch = 0;
  int64_t in_channels = 0;
  int64_t out_channels = 0;
  int64_t groups = 1;
  int64_t in_h = 0, in_w = 0;
  int64_t out_h = 0, out_w = 0;
  int64_t kernel_h = 0, kernel_w = 0;
  int64_t stride_h = 1, stride_w = 1;
  int64_t pad_h = 0, pad_w = 0;
  int64_t dilation_h = 1, dilation_w = 1;
  bool channels_last = false;

  int64_t in_per_group() const { return in_channels / groups; }
  int64_t out_per_group() const { return out_channels / groups; }
  int64_t taps() const { return kernel_h * kernel_w; }
};

// Checks input [N, C_in, H, W], weight [C_in, C_out / groups, kH, kW], bias
// [C_out] or none (one floating dtype, one device), the geometry (stride and
// dilation positive, padding and output_padding non-negative, output_padding
// smaller than stride or dilation, a positive output size) and returns the
// problem. `input` and `weight` are replaced by dense tensors in the kernel's
// layout (copied only when not already in it).
ConvTransposeProblem make_conv_transpose_problem(const char* op, at::Tensor& input, at::Tensor& weight,
                                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                                 at::IntArrayRef padding, at::IntArrayRef output_padding,
                                                 int64_t groups, at::IntArrayRef dilation);

// The same problem for the backward pass: the output size comes from
// grad_output, which is made dense in the problem's layout, as is `output`
// (the forward result, given when the forward fused a ReLU).
ConvTransposeProblem make_conv_transpose_backward_problem(const char* op, at::Tensor& grad_output,
                                                          at::Tensor& input, at::Tensor& weight,
                                                          std::optional<at::Tensor>& output, at::IntArrayRef stride,
                                                          at::IntArrayRef padding, int64_t groups,
                                                          at::IntArrayRef dilation);

// An uninitialised (poisoned under test) tensor of the output's shape and layout.
at::Tensor empty_conv_transpose_output(const ConvTransposeProblem& p, const at::TensorOptions& options);

// An uninitialised tensor of the input's shape and layout, for its gradient.
at::Tensor empty_conv_transpose_input_grad(const ConvTransposeProblem& p, const at::TensorOptions& options);

}  // namespace fastops
