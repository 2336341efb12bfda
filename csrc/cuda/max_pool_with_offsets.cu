// CUDA kernels of max_pool_with_offsets and its backward.
//
// Forward: one thread per output window, the raster-order scan of
// max_pool_with_offsets_math.h. Backward: one thread per input position,
// summing the gradients of the covering windows whose offset names it, in a
// fixed order: deterministic and free of atomics, unlike PyTorch's
// max_pool2d backward on CUDA.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <limits>
#include <tuple>

#include "common/dispatch.h"
#include "common/poison.h"
#include "cuda/launch.cuh"
#include "ops/max_pool_with_offsets.h"
#include "ops/max_pool_with_offsets_math.h"

namespace fastops {
namespace {

using cuda::kThreadsPerBlock;

template <typename scalar_t, bool kChannelsLast, bool kSmall>
__global__ void __launch_bounds__(kThreadsPerBlock)
    forward_kernel(const scalar_t* __restrict__ input, scalar_t* __restrict__ values, int8_t* __restrict__ offsets,
                   const PoolWindows g, const ElementDecomposer<kChannelsLast> window_coords, const int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t plane = g.plane_numel();
  const int64_t stride = window_coords.plane_stride();
  int64_t w[kSpatialDims];
  int64_t outer = 0;
  int64_t channel = 0;
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    window_coords.template decompose_any<kSmall>(e, w, outer, channel);
    scalar_t best;
    offsets[e] = window_max_offset<scalar_t, acc_t>(g, w, input + window_coords.plane_base(outer, channel, plane),
                                                    stride, best);
    values[e] = best;
  }
}

template <typename scalar_t, bool kChannelsLast, bool kSmall>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_kernel(const scalar_t* __restrict__ grad_output, const int8_t* __restrict__ offsets,
                    scalar_t* __restrict__ grad_input, const PoolWindows g,
                    const ElementDecomposer<kChannelsLast> plane_coords, const int64_t total) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t windows = g.window_count();
  const int64_t stride = plane_coords.plane_stride();
  int64_t pos[kSpatialDims];
  int64_t outer = 0;
  int64_t channel = 0;
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    plane_coords.template decompose_any<kSmall>(e, pos, outer, channel);
    const int64_t base = plane_coords.plane_base(outer, channel, windows);
    grad_input[e] = static_cast<scalar_t>(
        max_pool_input_grad<scalar_t, acc_t>(g, pos, g.plane_linear(pos), grad_output + base, offsets + base, stride));
  }
}

std::tuple<at::Tensor, at::Tensor> max_pool_with_offsets_cuda(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                              at::IntArrayRef stride, at::IntArrayRef padding,
                                                              bool ceil_mode) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  const MaxPoolProblem p = prepare_max_pool_with_offsets(input, kernel_size, stride, padding, ceil_mode);
  const auto options = p.input.options().memory_format(p.memory_format);
  at::Tensor values = at::empty(p.output_shape, options);
  at::Tensor offsets = at::empty(p.output_shape, options.dtype(at::kChar));
  poison_if_enabled(values);
  poison_if_enabled(offsets);
  const int64_t total = values.numel();
  if (total == 0) {
    return {values, offsets};
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  const unsigned int blocks = cuda::grid_blocks(total);
  const bool small = total <= std::numeric_limits<int32_t>::max();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.input.scalar_type(), "max_pool_with_offsets", [&] {
    dispatch_layout(p.channels_last, [&](auto channels_last_tag) {
      constexpr bool kChannelsLast = decltype(channels_last_tag)::value;
      const ElementDecomposer<kChannelsLast> window_coords(p.geometry.windows, p.channels);
      const auto* in = p.input.const_data_ptr<scalar_t>();
      auto* out_values = values.data_ptr<scalar_t>();
      auto* out_offsets = offsets.data_ptr<int8_t>();
      if (small) {
        forward_kernel<scalar_t, kChannelsLast, true><<<blocks, kThreadsPerBlock, 0, stream>>>(
            in, out_values, out_offsets, p.geometry, window_coords, total);
      } else {
        forward_kernel<scalar_t, kChannelsLast, false><<<blocks, kThreadsPerBlock, 0, stream>>>(
            in, out_values, out_offsets, p.geometry, window_coords, total);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return {values, offsets};
}

at::Tensor max_pool_with_offsets_backward_cuda(const at::Tensor& grad_output, const at::Tensor& offsets,
                                               at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                               at::IntArrayRef stride, at::IntArrayRef padding) {
  const c10::cuda::CUDAGuard device_guard(grad_output.device());
  const MaxPoolBackwardProblem p =
      prepare_max_pool_with_offsets_backward(grad_output, offsets, input_size, kernel_size, stride, padding);
  at::Tensor grad_input = at::empty(p.grad_input_shape, p.grad_output.options().memory_format(p.memory_format));
  poison_if_enabled(grad_input);
  const int64_t total = grad_input.numel();
  if (total == 0) {
    return grad_input;
  }
  const auto stream = at::cuda::getCurrentCUDAStream();
  const unsigned int blocks = cuda::grid_blocks(total);
  const bool small = total <= std::numeric_limits<int32_t>::max();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, p.grad_output.scalar_type(), "_max_pool_with_offsets_backward", [&] {
        dispatch_layout(p.channels_last, [&](auto channels_last_tag) {
          constexpr bool kChannelsLast = decltype(channels_last_tag)::value;
          const ElementDecomposer<kChannelsLast> plane_coords(p.geometry.plane, p.channels);
          const auto* grad_out = p.grad_output.const_data_ptr<scalar_t>();
          const auto* offs = p.offsets.const_data_ptr<int8_t>();
          auto* grad_in = grad_input.data_ptr<scalar_t>();
          if (small) {
            backward_kernel<scalar_t, kChannelsLast, true><<<blocks, kThreadsPerBlock, 0, stream>>>(
                grad_out, offs, grad_in, p.geometry, plane_coords, total);
          } else {
            backward_kernel<scalar_t, kChannelsLast, false><<<blocks, kThreadsPerBlock, 0, stream>>>(
                grad_out, offs, grad_in, p.geometry, plane_coords, total);
          }
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("max_pool_with_offsets", &max_pool_with_offsets_cuda);
  m.impl("_max_pool_with_offsets_backward", &max_pool_with_offsets_backward_cuda);
}

}  // namespace fastops
