// CPU kernels of max_pool_with_offsets and its backward.
//
// Forward: one task per row of windows of a plane, each window scanned by the
// shared window_max_offset. Backward: with disjoint windows each input
// position receives at most one window's gradient, so it is max_unpool of the
// gradient at the offsets; with overlapping windows each input position
// gathers the gradients of the windows whose maximum sits there, in a fixed
// order and without atomics.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/SmallVector.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>
#include <utility>

#include "common/cpu_multiversion.h"
#include "common/dispatch.h"
#include "common/huge_pages.h"
#include "common/poison.h"
#include "cpu/kernels.h"
#include "ops/max_pool_with_offsets.h"
#include "ops/max_pool_with_offsets_math.h"

namespace fastops {
namespace {

// Elements per parallel task.
constexpr int64_t kGrainSize = 16384;

// Windows n = 0..count-1 of a row, wholly inside the plane, window n's origin
// at origin + n * window_step, channels interleaved with stride `channels`.
template <typename scalar_t, typename acc_t>
FASTOPS_CPU_MULTIVERSION void pool_interior_windows(const scalar_t* __restrict__ origin, const int64_t* __restrict__ shifts,
                                                    int64_t volume, int64_t window_step, int64_t channels, int64_t count,
                                                    scalar_t* __restrict__ values, int8_t* __restrict__ offsets) {
  for (int64_t n = 0; n < count; ++n) {
    for (int64_t c = 0; c < channels; ++c) {
      offsets[n * channels + c] = interior_window_max_offset<scalar_t, acc_t>(origin + n * window_step + c, shifts,
                                                                              volume, channels, values[n * channels + c]);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> max_pool_with_offsets_cpu(const at::Tensor& input, at::IntArrayRef kernel_size,
                                                             at::IntArrayRef stride, at::IntArrayRef padding,
                                                             bool ceil_mode) {
  const MaxPoolProblem p = prepare_max_pool_with_offsets(input, kernel_size, stride, padding, ceil_mode);
  const PoolWindows& g = p.geometry;
  const auto options = p.input.options().memory_format(p.memory_format);
  at::Tensor values = at::empty(p.output_shape, options);
  at::Tensor offsets = at::empty(p.output_shape, options.dtype(at::kChar));
  advise_huge_pages(values);
  advise_huge_pages(offsets);
  poison_if_enabled(values);
  poison_if_enabled(offsets);
  if (values.numel() == 0) {
    return {values, offsets};
  }
  const int64_t plane = g.plane_numel();
  const int64_t windows = g.window_count();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, p.input.scalar_type(), "max_pool_with_offsets", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const int64_t channels = p.channels_last ? p.channels : 1;
    const int64_t outer_count = p.channels_last ? p.batch : p.batch * p.channels;
    const scalar_t* in = p.input.const_data_ptr<scalar_t>();
    scalar_t* out_values = values.data_ptr<scalar_t>();
    int8_t* out_offsets = offsets.data_ptr<int8_t>();
    const int64_t window_rows = g.windows[0] * g.windows[1];
    const int64_t grain = std::max<int64_t>(1, kGrainSize / std::max<int64_t>(1, g.windows[2] * channels * g.window_volume()));
    // Windows wholly inside the plane along the last dimension: [interior_begin, interior_end).
    const int64_t interior_begin = std::min(g.windows[2], (g.padding[2] + g.stride[2] - 1) / g.stride[2]);
    const int64_t interior_end = std::max(
        interior_begin, std::min(g.windows[2], (g.plane[2] + g.padding[2] - g.kernel[2]) / g.stride[2] + 1));
    at::parallel_for(0, outer_count * window_rows, grain, [&](int64_t begin, int64_t end) {
      c10::SmallVector<int64_t, 128> shifts;  // window positions in raster order, from the window origin
      for (int64_t r0 = 0; r0 < g.kernel[0]; ++r0) {
        for (int64_t r1 = 0; r1 < g.kernel[1]; ++r1) {
          for (int64_t r2 = 0; r2 < g.kernel[2]; ++r2) {
            shifts.push_back((r0 * g.plane[1] + r1) * g.plane[2] + r2);
          }
        }
      }
      const int64_t volume = g.window_volume();
      for (int64_t task = begin; task < end; ++task) {
        const int64_t outer = task / window_rows;
        const int64_t row = task % window_rows;
        int64_t w[kSpatialDims] = {row / g.windows[1], row % g.windows[1], 0};
        const scalar_t* plane_values = in + outer * plane * channels;
        const int64_t first = (outer * windows + row * g.windows[2]) * channels;
        const int64_t start0 = g.window_start(0, w[0]);
        const int64_t start1 = g.window_start(1, w[1]);
        const bool rows_inside = start0 >= 0 && start0 + g.kernel[0] <= g.plane[0] && start1 >= 0 &&
                                 start1 + g.kernel[1] <= g.plane[1];
        const int64_t row_origin = (start0 * g.plane[1] + start1) * g.plane[2];
        const int64_t lo = rows_inside ? interior_begin : 0;
        const int64_t hi = rows_inside ? interior_end : 0;
        // Windows cut by the plane's edges: the general scan.
        for (const auto [edge_begin, edge_end] : {std::pair<int64_t, int64_t>{0, lo}, {hi, g.windows[2]}}) {
          for (w[2] = edge_begin; w[2] < edge_end; ++w[2]) {
            for (int64_t c = 0; c < channels; ++c) {
              const int64_t e = first + w[2] * channels + c;
              out_offsets[e] = window_max_offset<scalar_t, acc_t>(g, w, plane_values + c, channels, out_values[e]);
            }
          }
        }
        pool_interior_windows<scalar_t, acc_t>(plane_values + (row_origin + lo * g.stride[2] - g.padding[2]) * channels,
                                               shifts.data(), volume, g.stride[2] * channels, channels, hi - lo,
                                               out_values + first + lo * channels, out_offsets + first + lo * channels);
      }
    });
  });
  return {values, offsets};
}

at::Tensor max_pool_with_offsets_backward_cpu(const at::Tensor& grad_output, const at::Tensor& offsets,
                                              at::IntArrayRef input_size, at::IntArrayRef kernel_size,
                                              at::IntArrayRef stride, at::IntArrayRef padding) {
  const MaxPoolBackwardProblem p =
      prepare_max_pool_with_offsets_backward(grad_output, offsets, input_size, kernel_size, stride, padding);
  const PoolWindows& g = p.geometry;
  if (windows_disjoint(g)) {
    return max_unpool_cpu(p.grad_output, p.offsets, input_size, kernel_size, stride, padding);
  }
  at::Tensor grad_input = at::empty(p.grad_input_shape, p.grad_output.options().memory_format(p.memory_format));
  advise_huge_pages(grad_input);
  poison_if_enabled(grad_input);
  if (grad_input.numel() == 0) {
    return grad_input;
  }
  const int64_t windows = g.window_count();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, p.grad_output.scalar_type(), "_max_pool_with_offsets_backward", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        dispatch_layout(p.channels_last, [&](auto channels_last_tag) {
          constexpr bool kChannelsLast = decltype(channels_last_tag)::value;
          const ElementDecomposer<kChannelsLast> in_coords(g.plane, p.channels);
          const scalar_t* grad_out = p.grad_output.const_data_ptr<scalar_t>();
          const int8_t* offs = p.offsets.const_data_ptr<int8_t>();
          scalar_t* grad_in = grad_input.data_ptr<scalar_t>();
          const int64_t stride_in_plane = in_coords.plane_stride();
          at::parallel_for(0, grad_input.numel(), kGrainSize, [&](int64_t begin, int64_t end) {
            int64_t pos[kSpatialDims];
            int64_t outer = 0;
            int64_t channel = 0;
            for (int64_t e = begin; e < end; ++e) {
              in_coords.decompose64(e, pos, outer, channel);
              const int64_t base = in_coords.plane_base(outer, channel, windows);
              grad_in[e] = static_cast<scalar_t>(max_pool_input_grad<scalar_t, acc_t>(
                  g, pos, g.plane_linear(pos), grad_out + base, offs + base, stride_in_plane));
            }
          });
        });
      });
  return grad_input;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("max_pool_with_offsets", &max_pool_with_offsets_cpu);
  m.impl("_max_pool_with_offsets_backward", &max_pool_with_offsets_backward_cpu);
}

}  // namespace fastops
