// Schema of conv_transpose and its backward, and the argument checks both
// backends share.
//
// conv_transpose(input, weight, bias, stride, padding, output_padding, groups, dilation, relu)
//   input   [N, C_in, H, W] floating point, NCHW or channels-last
//   weight  [C_in, C_out / groups, kH, kW] (torch.nn.functional.conv_transpose2d's layout)
//   bias    [C_out] or None
//   relu    apply max(0, .) after the bias, in the same pass
//   returns [N, C_out, H_out, W_out] in the input's layout, with
//           H_out = (H - 1) * stride - 2 * padding + dilation * (kH - 1) + output_padding + 1
// _conv_transpose_backward(grad_output, input, weight, output, stride, padding, groups, dilation, output_mask)
//   output       the forward result when the forward fused a ReLU (the gradient
//                passes where output > 0), else None
//   output_mask  which of (grad_input, grad_weight, grad_bias) to compute; the
//                others are returned as empty [0] tensors
//   returns      grad_input (input's shape and layout), grad_weight (contiguous), grad_bias [C_out]

#include "ops/conv_transpose.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>

#include "common/poison.h"
#include "ops/conv_transpose_math.h"
#include "ops/pooling_host.h"

namespace fastops {
namespace {

void check_pair(const char* op, const char* name, at::IntArrayRef values, int64_t minimum) {
  TORCH_CHECK(values.size() == 2, op, ": ", name, " must have 2 entries, got ", values);
  for (const int64_t v : values) {
    TORCH_CHECK(v >= minimum && v <= std::numeric_limits<int32_t>::max(), op, ": ", name,
                minimum > 0 ? " must be positive" : " must be non-negative", ", got ", values);
  }
}

ConvTransposeProblem base_problem(const char* op, at::Tensor& input, at::Tensor& weight, at::IntArrayRef stride,
                                  at::IntArrayRef padding, int64_t groups, at::IntArrayRef dilation) {
  TORCH_CHECK(input.dim() == 4, op, ": input must be [N, C_in, H, W], got shape ", input.sizes());
  TORCH_CHECK(weight.dim() == 4, op, ": weight must be [C_in, C_out / groups, kH, kW], got shape ",
              weight.sizes());
  check_floating_dtype(op, "input", input);
  TORCH_CHECK(weight.scalar_type() == input.scalar_type(), op, ": weight (", weight.scalar_type(),
              ") must have the dtype of input (", input.scalar_type(), ")");
  TORCH_CHECK(weight.device() == input.device(), op, ": weight must be on the device of input (", input.device(),
              "), got ", weight.device());
  TORCH_CHECK(groups > 0, op, ": groups must be positive, got ", groups);
  TORCH_CHECK(input.size(1) == weight.size(0), op, ": input has ", input.size(1),
              " channels but weight expects ", weight.size(0), " (its first dimension)");
  TORCH_CHECK(input.size(1) % groups == 0, op, ": in_channels (", input.size(1), ") must be divisible by groups (",
              groups, ")");
  TORCH_CHECK(weight.size(2) > 0 && weight.size(3) > 0, op, ": weight must have a positive kernel size, got ",
              weight.sizes());
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);

  ConvTransposeProblem p;
  p.batch = input.size(0);
  p.in_channels = input.size(1);
  p.out_channels = weight.size(1) * groups;
  p.groups = groups;
  p.in_h = input.size(2);
  p.in_w = input.size(3);
  p.kernel_h = weight.size(2);
  p.kernel_w = weight.size(3);
  p.stride_h = stride[0];
  p.stride_w = stride[1];
  p.pad_h = padding[0];
  p.pad_w = padding[1];
  p.dilation_h = dilation[0];
  p.dilation_w = dilation[1];
  p.channels_last = is_channels_last(pooling_memory_format(input));
  input = input.contiguous(p.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  weight = weight.contiguous();
  return p;
}

void set_output_size(const char* op, ConvTransposeProblem& p, at::IntArrayRef output_padding) {
  check_pair(op, "output_padding", output_padding, 0);
  TORCH_CHECK(output_padding[0] < std::max(p.stride_h, p.dilation_h) &&
                  output_padding[1] < std::max(p.stride_w, p.dilation_w),
              op, ": output_padding must be smaller than either stride or dilation, got output_padding ",
              output_padding);
  p.out_h = conv_transpose_output_length(p.in_h, p.kernel_h, p.stride_h, p.pad_h, p.dilation_h, output_padding[0]);
  p.out_w = conv_transpose_output_length(p.in_w, p.kernel_w, p.stride_w, p.pad_w, p.dilation_w, output_padding[1]);
  TORCH_CHECK(p.out_h > 0 && p.out_w > 0, op, ": the output size (", p.out_h, "x", p.out_w,
              ") is not positive for input ", p.in_h, "x", p.in_w);
}

at::MemoryFormat problem_format(const ConvTransposeProblem& p) {
  return p.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

}  // namespace

ConvTransposeProblem make_conv_transpose_problem(const char* op, at::Tensor& input, at::Tensor& weight,
                                                 const std::optional<at::Tensor>& bias, at::IntArrayRef stride,
                                                 at::IntArrayRef padding, at::IntArrayRef output_padding,
                                                 int64_t groups, at::IntArrayRef dilation) {
  ConvTransposeProblem p = base_problem(op, input, weight, stride, padding, groups, dilation);
  set_output_size(op, p, output_padding);
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == p.out_channels, op, ": bias must be [", p.out_channels,
                "] (out_channels), got shape ", bias->sizes());
    TORCH_CHECK(bias->scalar_type() == input.scalar_type(), op, ": bias (", bias->scalar_type(),
                ") must have the dtype of input (", input.scalar_type(), ")");
    TORCH_CHECK(bias->device() == input.device(), op, ": bias must be on the device of input");
  }
  return p;
}

ConvTransposeProblem make_conv_transpose_backward_problem(const char* op, at::Tensor& grad_output,
                                                          at::Tensor& input, at::Tensor& weight,
                                                          std::optional<at::Tensor>& output, at::IntArrayRef stride,
                                                          at::IntArrayRef padding, int64_t groups,
                                                          at::IntArrayRef dilation) {
  ConvTransposeProblem p = base_problem(op, input, weight, stride, padding, groups, dilation);
  TORCH_CHECK(grad_output.dim() == 4 && grad_output.size(0) == p.batch && grad_output.size(1) == p.out_channels, op,
              ": grad_output must be [", p.batch, ", ", p.out_channels, ", H_out, W_out], got shape ",
              grad_output.sizes());
  TORCH_CHECK(grad_output.scalar_type() == input.scalar_type() && grad_output.device() == input.device(), op,
              ": grad_output must have the dtype and device of input");
  const int64_t extra_h = grad_output.size(2) - conv_transpose_output_length(p.in_h, p.kernel_h, p.stride_h,
                                                                             p.pad_h, p.dilation_h, 0);
  const int64_t extra_w = grad_output.size(3) - conv_transpose_output_length(p.in_w, p.kernel_w, p.stride_w,
                                                                             p.pad_w, p.dilation_w, 0);
  set_output_size(op, p, {extra_h, extra_w});
  grad_output = grad_output.contiguous(problem_format(p));
  if (output) {
    TORCH_CHECK(output->sizes() == grad_output.sizes(), op, ": output must have the shape of grad_output ",
                grad_output.sizes(), ", got ", output->sizes());
    TORCH_CHECK(output->scalar_type() == input.scalar_type() && output->device() == input.device(), op,
                ": output must have the dtype and device of input");
    output = output->contiguous(problem_format(p));
  }
  return p;
}

at::Tensor empty_conv_transpose_output(const ConvTransposeProblem& p, const at::TensorOptions& options) {
  at::Tensor output =
      at::empty({p.batch, p.out_channels, p.out_h, p.out_w}, options.memory_format(problem_format(p)));
  poison_if_enabled(output);
  return output;
}

at::Tensor empty_conv_transpose_input_grad(const ConvTransposeProblem& p, const at::TensorOptions& options) {
  at::Tensor grad = at::empty({p.batch, p.in_channels, p.in_h, p.in_w}, options.memory_format(problem_format(p)));
  poison_if_enabled(grad);
  return grad;
}

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def(
      "conv_transpose(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
      "int[2] output_padding, int groups, int[2] dilation, bool relu) -> Tensor");
  m.def(
      "_conv_transpose_backward(Tensor grad_output, Tensor input, Tensor weight, Tensor? output, int[2] stride, "
      "int[2] padding, int groups, int[2] dilation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)");
}

}  // namespace fastops
