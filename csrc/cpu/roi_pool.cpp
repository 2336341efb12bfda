// CPU kernels of roi_pool, forward and backward.
//
// Forward: RoIs in parallel; each bin's window (roi_pool_math.h) is scanned in
// raster order. In channels-last the scan keeps a running maximum per channel,
// a vectorised compare-and-blend over the contiguous channels per window
// element; in NCHW each channel scans its own plane.
//
// Backward: each output gradient goes to the position its argmax names.
// Deterministic by construction: tasks own (image, block of channels) and add
// their RoIs' gradients in ascending RoI index, then bin order; float16 and
// bfloat16 accumulate in a float32 scratch block per task.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <type_traits>
#include <vector>

#include "common/cpu_multiversion.h"
#include "common/dispatch.h"
#include "ops/roi_ops.h"
#include "ops/roi_pool_math.h"

namespace fastops {
namespace {

template <typename scalar_t, bool kChannelsLast>
FASTOPS_CPU_MULTIVERSION void forward_rois(const RoiProblem& p, const scalar_t* input, const scalar_t* rois,
                                           scalar_t* output, int32_t* argmax, int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = p.channels, bins = p.pooled_h * p.pooled_w;
  const int64_t height = p.heights[0], width = p.widths[0], plane = height * width;
  std::vector<acc_t> best(kChannelsLast ? channels : 0);
  std::vector<RoiPoolWindow> windows;
  for (int64_t k = begin; k < end; ++k) {
    const scalar_t* roi = rois + k * 5;
    const int64_t image = roi_batch_index(static_cast<acc_t>(roi[0]), p.batch_size);
    const RoiPoolGrid<acc_t> grid = roi_pool_grid<acc_t>(roi + 1, static_cast<acc_t>(p.spatial_scales[0]), p.pooled_h,
                                                         p.pooled_w);
    const scalar_t* values = input + std::max<int64_t>(image, 0) * channels * plane;
    if constexpr (kChannelsLast) {
      // One running maximum per channel, a compare-and-blend over the
      // contiguous channels per window element.
      for (int64_t bin = 0; bin < bins; ++bin) {
        const RoiPoolWindow window = roi_pool_window(grid, bin / p.pooled_w, bin % p.pooled_w, height, width);
        scalar_t* out = output + (k * bins + bin) * channels;
        int32_t* arg = argmax + (k * bins + bin) * channels;
        if (image < 0 || window.empty()) {
          std::fill(out, out + channels, scalar_t(0));
          std::fill(arg, arg + channels, int32_t{-1});
          continue;
        }
        bool first = true;
        for (int64_t h = window.h_begin; h < window.h_end; ++h) {
          for (int64_t w = window.w_begin; w < window.w_end; ++w) {
            const int32_t position = static_cast<int32_t>(h * width + w);
            const scalar_t* v = values + (h * width + w) * channels;
            if (first) {
              for (int64_t c = 0; c < channels; ++c) {
                best[c] = static_cast<acc_t>(v[c]);
                arg[c] = position;
              }
              first = false;
              continue;
            }
            for (int64_t c = 0; c < channels; ++c) {
              const acc_t candidate = static_cast<acc_t>(v[c]);
              const bool replace = replaces_max(candidate, best[c]);
              best[c] = replace ? candidate : best[c];
              arg[c] = replace ? position : arg[c];
            }
          }
        }
        for (int64_t c = 0; c < channels; ++c) {
          out[c] = static_cast<scalar_t>(best[c]);
        }
      }
    } else {
      // Channel planes outer, bins inner: a plane's RoI region stays in cache
      // while all its bins are scanned.
      windows.clear();
      for (int64_t bin = 0; bin < bins; ++bin) {
        windows.push_back(roi_pool_window(grid, bin / p.pooled_w, bin % p.pooled_w, height, width));
      }
      for (int64_t c = 0; c < channels; ++c) {
        const scalar_t* plane_values = values + c * plane;
        for (int64_t bin = 0; bin < bins; ++bin) {
          const RoiPoolWindow& window = windows[bin];
          const int64_t at = (k * channels + c) * bins + bin;
          if (image < 0 || window.empty()) {
            output[at] = scalar_t(0);
            argmax[at] = -1;
            continue;
          }
          acc_t max_value = static_cast<acc_t>(plane_values[window.h_begin * width + window.w_begin]);
          int32_t max_position = static_cast<int32_t>(window.h_begin * width + window.w_begin);
          // The scan of replaces_max split in two: a plain `>` branch (the
          // maximum of random values rarely changes, so it predicts well)
          // and a branch-free NaN flag; a window holding a NaN is rescanned
          // for its first NaN, which is its maximum.
          bool any_nan = false;
          for (int64_t h = window.h_begin; h < window.h_end; ++h) {
            for (int64_t w = window.w_begin; w < window.w_end; ++w) {
              const acc_t candidate = static_cast<acc_t>(plane_values[h * width + w]);
              any_nan |= candidate != candidate;
              if (candidate > max_value) {
                max_value = candidate;
                max_position = static_cast<int32_t>(h * width + w);
              }
            }
          }
          for (int64_t h = window.h_begin; any_nan && h < window.h_end; ++h) {
            for (int64_t w = window.w_begin; any_nan && w < window.w_end; ++w) {
              const acc_t candidate = static_cast<acc_t>(plane_values[h * width + w]);
              if (replaces_max(candidate, max_value)) {
                max_value = candidate;
                max_position = static_cast<int32_t>(h * width + w);
                any_nan = false;
              }
            }
          }
          output[at] = static_cast<scalar_t>(max_value);
          argmax[at] = max_position;
        }
      }
    }
  }
}

constexpr int64_t kBackwardChannelBlock = 16;

template <typename scalar_t, bool kChannelsLast>
void backward_block(const RoiProblem& p, const scalar_t* grad, const int32_t* argmax, const scalar_t* rois,
                    int64_t image, int64_t c_begin, int64_t c_end, scalar_t* grad_image,
                    std::vector<at::opmath_type<scalar_t>>& scratch) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kScratch = !std::is_same_v<acc_t, scalar_t>;
  const int64_t channels = p.channels, bins = p.pooled_h * p.pooled_w;
  const int64_t plane = p.heights[0] * p.widths[0], block = c_end - c_begin;
  if constexpr (kScratch) {
    scratch.assign(block * plane, acc_t(0));
  }
  // Index of (position, channel) in the scratch block or the gradient image.
  auto slot = [&](int64_t position, int64_t channel) -> int64_t {
    if constexpr (kScratch) {
      return kChannelsLast ? position * block + (channel - c_begin) : (channel - c_begin) * plane + position;
    } else {
      return kChannelsLast ? position * channels + channel : channel * plane + position;
    }
  };
  acc_t* accumulator = kScratch ? scratch.data() : reinterpret_cast<acc_t*>(grad_image);
  for (int64_t k = 0; k < p.num_rois; ++k) {
    if (roi_batch_index(static_cast<acc_t>(rois[k * 5]), p.batch_size) != image) {
      continue;
    }
    for (int64_t bin = 0; bin < bins; ++bin) {
      for (int64_t c = c_begin; c < c_end; ++c) {
        const int64_t at = kChannelsLast ? (k * bins + bin) * channels + c : (k * channels + c) * bins + bin;
        const int32_t position = argmax[at];
        if (position >= 0 && position < plane) {
          const int64_t to = slot(position, c);
          accumulator[to] = add_rn(accumulator[to], static_cast<acc_t>(grad[at]));
        }
      }
    }
  }
  if constexpr (kScratch) {
    for (int64_t position = 0; position < plane; ++position) {
      for (int64_t c = c_begin; c < c_end; ++c) {
        const int64_t to = kChannelsLast ? position * channels + c : c * plane + position;
        grad_image[to] = static_cast<scalar_t>(scratch[slot(position, c)]);
      }
    }
  }
}

std::tuple<at::Tensor, at::Tensor> roi_pool_cpu(const at::Tensor& input, const at::Tensor& rois,
                                                double spatial_scale, int64_t pooled_height, int64_t pooled_width) {
  const char* op = "roi_pool";
  std::vector<at::Tensor> dense;
  const RoiProblem p =
      make_roi_problem(op, {input}, rois, std::nullopt, {spatial_scale}, pooled_height, pooled_width, dense);
  TORCH_CHECK(p.heights[0] * p.widths[0] <= std::numeric_limits<int32_t>::max(), op,
              ": input planes of more than 2^31 - 1 elements do not fit the int32 argmax, got ", input.sizes());
  check_roi_indices_cpu(op, rois, std::nullopt, p.batch_size, 1);
  at::Tensor output = empty_roi_output(p, dense[0].options());
  at::Tensor argmax = empty_roi_output(p, dense[0].options().dtype(at::kInt));
  if (output.numel() == 0) {
    return {output, argmax};
  }
  const at::Tensor rois_dense = rois.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "roi_pool_forward_cpu", [&] {
    const scalar_t* input_data = dense[0].const_data_ptr<scalar_t>();
    const scalar_t* roi_data = rois_dense.const_data_ptr<scalar_t>();
    scalar_t* out = output.mutable_data_ptr<scalar_t>();
    int32_t* arg = argmax.mutable_data_ptr<int32_t>();
    dispatch_layout(p.channels_last, [&](auto channels_last) {
      at::parallel_for(0, p.num_rois, 1, [&](int64_t begin, int64_t end) {
        forward_rois<scalar_t, decltype(channels_last)::value>(p, input_data, roi_data, out, arg, begin, end);
      });
    });
  });
  return {output, argmax};
}

at::Tensor roi_pool_backward_cpu(const at::Tensor& grad_in, const at::Tensor& rois, const at::Tensor& argmax_in,
                                 double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                 int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                                 bool /*deterministic: always*/) {
  const char* op = "_roi_pool_backward";
  at::Tensor grad = grad_in;
  const RoiProblem p = make_roi_backward_problem(op, grad, rois, std::nullopt, {spatial_scale}, pooled_height,
                                                 pooled_width, batch_size, channels, {height}, {width});
  TORCH_CHECK(argmax_in.scalar_type() == at::kInt && argmax_in.sizes() == grad.sizes(), op,
              ": argmax must be int32 of the shape of grad ", grad.sizes(), ", got ", argmax_in.scalar_type(), " ",
              argmax_in.sizes());
  TORCH_CHECK(argmax_in.device() == grad.device(), op, ": argmax must be on the device of grad");
  check_roi_indices_cpu(op, rois, std::nullopt, p.batch_size, 1);
  const at::Tensor argmax =
      argmax_in.contiguous(p.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  std::vector<at::Tensor> grads = zeros_roi_input_grads(p, grad.options());
  if (p.num_rois == 0 || p.channels == 0 || p.batch_size == 0) {
    return grads[0];
  }
  const at::Tensor rois_dense = rois.contiguous();
  const int64_t channel_blocks = (p.channels + kBackwardChannelBlock - 1) / kBackwardChannelBlock;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_pool_backward_cpu", [&] {
    const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
    const int32_t* argmax_data = argmax.const_data_ptr<int32_t>();
    const scalar_t* roi_data = rois_dense.const_data_ptr<scalar_t>();
    scalar_t* grad_input = grads[0].mutable_data_ptr<scalar_t>();
    dispatch_layout(p.channels_last, [&](auto channels_last) {
      at::parallel_for(0, p.batch_size * channel_blocks, 1, [&](int64_t begin, int64_t end) {
        std::vector<at::opmath_type<scalar_t>> scratch;
        for (int64_t task = begin; task < end; ++task) {
          const int64_t image = task / channel_blocks;
          const int64_t c_begin = (task % channel_blocks) * kBackwardChannelBlock;
          const int64_t c_end = std::min(c_begin + kBackwardChannelBlock, p.channels);
          backward_block<scalar_t, decltype(channels_last)::value>(
              p, grad_data, argmax_data, roi_data, image, c_begin, c_end,
              grad_input + image * p.channels * p.heights[0] * p.widths[0], scratch);
        }
      });
    });
  });
  return grads[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("roi_pool", &roi_pool_cpu);
  m.impl("_roi_pool_backward", &roi_pool_backward_cpu);
}

}  // namespace fastops
