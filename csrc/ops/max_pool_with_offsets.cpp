// Schema of max_pool_with_offsets and its backward, and the argument checks
// both backends share.
//
// max_pool_with_offsets(input, kernel_size, stride, padding, ceil_mode)
//   input    [N, C, *plane]: floating point, NCHW/NCDHW or channels-last
//   returns  (values, offsets), both [N, C, *windows] in the input's layout:
//            the values of torch.nn.functional.max_pool*d, and for each the
//            int8 offset of its position inside the window,
//            (r_d * k_h + r_h) * k_w + r_w, instead of an int64 plane position.
// Eight times fewer index bytes to write here and to read in max_unpool.

#include "ops/max_pool_with_offsets.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "ops/pooling_host.h"

namespace fastops {

namespace {

int64_t pooled_size(int64_t size, int64_t kernel, int64_t stride, int64_t padding, bool ceil_mode) {
  // ATen's pooling_output_shape with dilation 1.
  const int64_t numerator = size + 2 * padding - (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  int64_t out = (numerator >= 0 ? numerator / stride : -((-numerator + stride - 1) / stride)) + 1;
  if (ceil_mode && (out - 1) * stride >= size + padding) {
    --out;
  }
  return out;
}

}  // namespace

MaxPoolProblem prepare_max_pool_with_offsets(const at::Tensor& input, at::IntArrayRef kernel_size,
                                             at::IntArrayRef stride, at::IntArrayRef padding, bool ceil_mode) {
  constexpr const char* op = "max_pool_with_offsets";
  const int64_t dims = check_pool_params(op, kernel_size, stride, padding);
  TORCH_CHECK(input.dim() == dims + 2, op, ": input must be [N, C, ", dims, " spatial dims] for a kernel_size of ",
              dims, " entries, got shape ", input.sizes());
  check_floating_dtype(op, "input", input);
  int64_t volume = 1;
  std::vector<int64_t> windows;
  for (int64_t d = 0; d < dims; ++d) {
    TORCH_CHECK(padding[d] <= kernel_size[d] / 2, op, ": pad should be at most half of effective kernel size, but got pad=",
                padding[d], ", kernel_size=", kernel_size[d]);
    volume *= kernel_size[d];
    windows.push_back(pooled_size(input.size(2 + d), kernel_size[d], stride[d], padding[d], ceil_mode));
    TORCH_CHECK(windows.back() >= 1, op, ": given input size ", input.sizes().slice(2),
                ", the calculated output size ", windows, " is too small");
  }
  TORCH_CHECK(volume <= kMaxOffsetWindowVolume, op, ": int8 window offsets need windows of at most ",
              kMaxOffsetWindowVolume, " elements, but kernel_size gives ", volume);

  MaxPoolProblem p;
  p.geometry = make_pool_windows(windows, input.sizes().slice(2), kernel_size, stride, padding);
  p.memory_format = pooling_memory_format(input);
  p.channels_last = is_channels_last(p.memory_format);
  p.input = input.contiguous(p.memory_format);
  p.batch = input.size(0);
  p.channels = input.size(1);
  p.output_shape = {p.batch, p.channels};
  p.output_shape.insert(p.output_shape.end(), windows.begin(), windows.end());
  return p;
}

MaxPoolBackwardProblem prepare_max_pool_with_offsets_backward(const at::Tensor& grad_output,
                                                              const at::Tensor& offsets, at::IntArrayRef input_size,
                                                              at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                                              at::IntArrayRef padding) {
  constexpr const char* op = "_max_pool_with_offsets_backward";
  const int64_t dims = check_pool_params(op, kernel_size, stride, padding);
  TORCH_CHECK(offsets.scalar_type() == at::kChar, op, ": offsets must be int8, got ", offsets.scalar_type());
  TORCH_CHECK(grad_output.sizes() == offsets.sizes(), op, ": grad_output ", grad_output.sizes(),
              " and offsets ", offsets.sizes(), " must have one shape");
  TORCH_CHECK(offsets.dim() == dims + 2 && static_cast<int64_t>(input_size.size()) == dims, op,
              ": offsets must have ", dims + 2, " dims and input_size ", dims, " entries");
  TORCH_CHECK(offsets.device() == grad_output.device(), op, ": offsets must be on the device of grad_output");
  check_floating_dtype(op, "grad_output", grad_output);

  MaxPoolBackwardProblem p;
  p.geometry = make_pool_windows(offsets.sizes().slice(2), input_size, kernel_size, stride, padding);
  TORCH_CHECK(p.geometry.window_volume() <= kMaxOffsetWindowVolume, op, ": windows larger than ",
              kMaxOffsetWindowVolume, " elements have no int8 offsets");
  p.memory_format = pooling_memory_format(offsets);
  p.channels_last = is_channels_last(p.memory_format);
  p.grad_output = grad_output.contiguous(p.memory_format);
  p.offsets = offsets.contiguous(p.memory_format);
  p.batch = offsets.size(0);
  p.channels = offsets.size(1);
  p.grad_input_shape = {p.batch, p.channels};
  p.grad_input_shape.insert(p.grad_input_shape.end(), input_size.begin(), input_size.end());
  return p;
}

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def("max_pool_with_offsets(Tensor input, int[] kernel_size, int[] stride, int[] padding, bool ceil_mode) -> "
        "(Tensor, Tensor)");
  m.def(
      "_max_pool_with_offsets_backward(Tensor grad_output, Tensor offsets, SymInt[] input_size, int[] kernel_size, "
      "int[] stride, int[] padding) -> Tensor");
}

}  // namespace fastops
