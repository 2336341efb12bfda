// Schema of max_unpool and its backward, and the argument checks both
// backends share.
//
// max_unpool(input, indices, output_size, kernel_size, stride, padding)
//   input    [N, C, *windows]: floating point, NCHW/NCDHW or channels-last
//   indices  same shape: int64 positions in the output plane (as
//            torch.nn.functional.max_pool*d returns them) or int8 offsets
//            inside each window (as fastops max_pool_with_offsets returns them)
//   returns  [N, C, *output_size] in the input's layout
// Unlike aten::max_unpool2d it takes the window geometry, which lets the
// kernels gather (one write per output element, no zero fill, no scatter)
// instead of scatter.

#include "ops/max_unpool.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include "common/huge_pages.h"
#include "common/poison.h"
#include "ops/pooling_host.h"

namespace fastops {

namespace {

void check_index_tensor(const char* op, const at::Tensor& indices, const PoolWindows& g) {
  const auto type = indices.scalar_type();
  TORCH_CHECK(type == at::kLong || type == at::kChar, op,
              ": indices must be int64 (positions in the output plane) or int8 (offsets inside each "
              "window), got ",
              type);
  if (type == at::kChar) {
    TORCH_CHECK(g.window_volume() <= kMaxOffsetWindowVolume, op,
                ": int8 window offsets need windows of at most ", kMaxOffsetWindowVolume,
                " elements, but kernel_size gives ", g.window_volume());
  }
}

}  // namespace

MaxUnpoolProblem prepare_max_unpool(const at::Tensor& input, const at::Tensor& indices,
                                    at::IntArrayRef output_size, at::IntArrayRef kernel_size,
                                    at::IntArrayRef stride, at::IntArrayRef padding) {
  constexpr const char* op = "max_unpool";
  const int64_t dims = check_pool_params(op, kernel_size, stride, padding);
  TORCH_CHECK(input.dim() == dims + 2, op, ": input must be [N, C, ", dims,
              " spatial dims] for a kernel_size of ", dims, " entries, got shape ", input.sizes());
  TORCH_CHECK(indices.sizes() == input.sizes(), op, ": indices must have the shape of input ", input.sizes(),
              ", got ", indices.sizes());
  TORCH_CHECK(indices.device() == input.device(), op, ": indices must be on the device of input (",
              input.device(), "), got ", indices.device());
  TORCH_CHECK(static_cast<int64_t>(output_size.size()) == dims, op, ": output_size must have ", dims,
              " entries, got ", output_size);
  for (const auto size : output_size) {
    TORCH_CHECK(size >= 0, op, ": output_size must be non-negative, got ", output_size);
  }
  check_floating_dtype(op, "input", input);

  MaxUnpoolProblem p;
  p.geometry = make_pool_windows(input.sizes().slice(2), output_size, kernel_size, stride, padding);
  check_index_tensor(op, indices, p.geometry);
  p.memory_format = pooling_memory_format(input);
  p.channels_last = is_channels_last(p.memory_format);
  p.input = input.contiguous(p.memory_format);
  p.indices = indices.contiguous(p.memory_format);
  p.batch = input.size(0);
  p.channels = input.size(1);
  p.output_shape = {p.batch, p.channels};
  p.output_shape.insert(p.output_shape.end(), output_size.begin(), output_size.end());
  return p;
}

at::Tensor new_max_unpool_output(const MaxUnpoolProblem& problem) {
  auto output = at::empty(problem.output_shape, problem.input.options().memory_format(problem.memory_format));
  advise_huge_pages(output);
  poison_if_enabled(output);
  return output;
}

void throw_invalid_unpool_index(const MaxUnpoolProblem& problem, int64_t bad_value) {
  const auto plane = at::IntArrayRef(problem.output_shape).slice(2);
  if (problem.offsets()) {
    const auto dims = static_cast<int64_t>(plane.size());
    const auto& g = problem.geometry;
    const std::vector<int64_t> window(g.kernel + (kSpatialDims - dims), g.kernel + kSpatialDims);
    TORCH_CHECK(false, "max_unpool: indices holds int8 window offset ", bad_value,
                ", which names no position of its ", sizes_string(window),
                " window inside the output plane of size ", sizes_string(plane), " (offsets must lie in [0, ",
                g.window_volume(), ") and point inside the output)");
  }
  TORCH_CHECK(false, "max_unpool: Found an invalid max index in indices: ", bad_value,
              " (output volumes are of size ", sizes_string(plane), ", so indices must lie in [0, ",
              problem.geometry.plane_numel(), "))");
}

MaxUnpoolBackwardProblem prepare_max_unpool_backward(const at::Tensor& grad_output, const at::Tensor& indices,
                                                     at::IntArrayRef kernel_size, at::IntArrayRef stride,
                                                     at::IntArrayRef padding) {
  constexpr const char* op = "_max_unpool_backward";
  const int64_t dims = check_pool_params(op, kernel_size, stride, padding);
  TORCH_CHECK(indices.dim() == dims + 2 && grad_output.dim() == dims + 2, op,
              ": grad_output and indices must have ", dims + 2, " dims, got ", grad_output.sizes(), " and ",
              indices.sizes());
  TORCH_CHECK(grad_output.size(0) == indices.size(0) && grad_output.size(1) == indices.size(1), op,
              ": grad_output ", grad_output.sizes(), " and indices ", indices.sizes(),
              " must agree in batch and channels");
  TORCH_CHECK(indices.device() == grad_output.device(), op, ": indices must be on the device of grad_output");
  check_floating_dtype(op, "grad_output", grad_output);

  MaxUnpoolBackwardProblem p;
  p.geometry = make_pool_windows(indices.sizes().slice(2), grad_output.sizes().slice(2), kernel_size, stride,
                                 padding);
  check_index_tensor(op, indices, p.geometry);
  p.memory_format = pooling_memory_format(indices);
  p.channels_last = is_channels_last(p.memory_format);
  p.grad_output = grad_output.contiguous(p.memory_format);
  p.indices = indices.contiguous(p.memory_format);
  p.batch = indices.size(0);
  p.channels = indices.size(1);
  return p;
}

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def(
      "max_unpool(Tensor input, Tensor indices, SymInt[] output_size, int[] kernel_size, int[] stride, "
      "int[] padding) -> Tensor");
  m.def(
      "_max_unpool_backward(Tensor grad_output, Tensor indices, int[] kernel_size, int[] stride, "
      "int[] padding) -> Tensor");
}

}  // namespace fastops
