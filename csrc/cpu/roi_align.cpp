// CPU kernels of roi_align and multi_scale_roi_align (roi_align is the
// one-level case), forward and backward.
//
// Forward: RoIs in parallel. For each bin the sample points' taps (four
// positions and weights each, roi_align_math.h) are computed once and applied
// to every channel: in channels-last the channels are contiguous, so each tap
// is one vectorised multiply-add over C; in NCHW each channel sums its bin's
// taps from its own plane. Each output is
//   (sum over samples iy, ix of interpolate(taps, values)) / count,
// summed in that order, as the CUDA kernel does.
//
// Backward: deterministic by construction. The work is split by (level,
// image, block of 16 channels) in NCHW and by (level, image, band of rows) in
// channels-last; a task owns those gradient elements and visits its image's
// RoIs in ascending index, then bins ph, pw, samples iy, ix, and the taps ll,
// lh, hl, hh, adding grad * w / count in that fixed order: the result does not
// depend on the number of threads or the layout, and no atomics are needed.
// float16/bfloat16 accumulate in a float32 scratch block per task, the only
// memory beyond the gradient itself.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/cpu_multiversion.h"
#include "common/dispatch.h"
#include "ops/roi_align_math.h"
#include "ops/roi_ops.h"

namespace fastops {
namespace {

template <typename acc_t>
struct Tap4 {
  int64_t ll, lh, hl, hh;  // pixel positions y * W + x in the plane
  acc_t w_ll, w_lh, w_hl, w_hh;
};

// The taps of bin (ph, pw) that lie inside the map, in sample order.
template <typename acc_t>
void bin_taps(const RoiAlignGrid<acc_t>& grid, int64_t ph, int64_t pw, int64_t height, int64_t width,
              std::vector<Tap4<acc_t>>& taps) {
  taps.clear();
  for (int64_t iy = 0; iy < grid.samples_y; ++iy) {
    const acc_t y = grid.sample_y(ph, iy);
    for (int64_t ix = 0; ix < grid.samples_x; ++ix) {
      const BilinearTaps<acc_t> t = bilinear_taps(y, grid.sample_x(pw, ix), height, width);
      if (t.inside) {
        taps.push_back({t.y_low * width + t.x_low, t.y_low * width + t.x_high, t.y_high * width + t.x_low,
                        t.y_high * width + t.x_high, t.w_ll, t.w_lh, t.w_hl, t.w_hh});
      }
    }
  }
}

template <typename acc_t>
BilinearTaps<acc_t> as_weights(const Tap4<acc_t>& tap) {
  return {0, 0, 0, 0, tap.w_ll, tap.w_lh, tap.w_hl, tap.w_hh, true};
}

// Where a RoI samples: its image and level, or an image of -1 for none.
struct RoiSource {
  int64_t image;
  int level;
};

template <typename scalar_t>
RoiSource roi_source(const scalar_t* roi, const int64_t* levels, int64_t k, const RoiProblem& p) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t image = roi_batch_index(static_cast<acc_t>(roi[0]), p.batch_size);
  const int64_t level = levels ? levels[k] : 0;
  if (image < 0 || level < 0 || level >= p.num_levels) {
    return {-1, 0};
  }
  return {image, static_cast<int>(level)};
}

// Taps kept at once by the NCHW forward (a few hundred KB).
constexpr size_t kMaxKeptTaps = 8192;
// Largest RoI footprint (pixels x channels) the NCHW forward transposes.
constexpr int64_t kMaxRegionElements = int64_t{1} << 20;

// sums[c] += interpolate(tap, values of channel c) for every channel, the
// four neighbours at positions (in units of `channels`) ll, lh, hl, hh of a
// channels-last `base`: one vectorised pass over contiguous channels.
template <typename value_t, typename acc_t>
inline void accumulate_channels(const value_t* base, const Tap4<acc_t>& tap, int64_t channels, acc_t* sums) {
  const BilinearTaps<acc_t> w = as_weights(tap);
  const value_t* v_ll = base + tap.ll * channels;
  const value_t* v_lh = base + tap.lh * channels;
  const value_t* v_hl = base + tap.hl * channels;
  const value_t* v_hh = base + tap.hh * channels;
  for (int64_t c = 0; c < channels; ++c) {
    sums[c] = add_rn(sums[c], interpolate(w, static_cast<acc_t>(v_ll[c]), static_cast<acc_t>(v_lh[c]),
                                          static_cast<acc_t>(v_hl[c]), static_cast<acc_t>(v_hh[c])));
  }
}

// The taps of every bin of a RoI, bins delimited by `bin_starts`; false (and
// nothing kept) when there are more than kMaxKeptTaps.
template <typename acc_t>
bool all_bin_taps(const RoiAlignGrid<acc_t>& grid, int64_t pooled_h, int64_t pooled_w, int64_t height, int64_t width,
                  std::vector<Tap4<acc_t>>& taps, std::vector<int64_t>& bin_starts,
                  std::vector<Tap4<acc_t>>& bin_buffer) {
  if (grid.samples_y * grid.samples_x * pooled_h * pooled_w > static_cast<int64_t>(kMaxKeptTaps)) {
    return false;
  }
  taps.clear();
  bin_starts.clear();
  for (int64_t bin = 0; bin < pooled_h * pooled_w; ++bin) {
    bin_starts.push_back(static_cast<int64_t>(taps.size()));
    bin_taps(grid, bin / pooled_w, bin % pooled_w, height, width, bin_buffer);
    taps.insert(taps.end(), bin_buffer.begin(), bin_buffer.end());
  }
  bin_starts.push_back(static_cast<int64_t>(taps.size()));
  return true;
}

template <typename scalar_t, bool kChannelsLast>
FASTOPS_CPU_MULTIVERSION void forward_rois(const RoiProblem& p, const std::vector<const scalar_t*>& features,
                                           const scalar_t* rois, const int64_t* levels, scalar_t* output,
                                           int64_t begin, int64_t end) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t channels = p.channels, bins = p.pooled_h * p.pooled_w;
  std::vector<Tap4<acc_t>> taps, bin_buffer;
  std::vector<int64_t> bin_starts;
  std::vector<acc_t> sums(kChannelsLast ? channels : 0), region;
  for (int64_t k = begin; k < end; ++k) {
    const scalar_t* roi = rois + k * 5;
    scalar_t* out = output + k * channels * bins;
    const RoiSource source = roi_source(roi, levels, k, p);
    if (source.image < 0) {
      std::fill(out, out + channels * bins, scalar_t(0));
      continue;
    }
    const int64_t height = p.heights[source.level], width = p.widths[source.level];
    const int64_t plane = height * width;
    const scalar_t* image = features[source.level] + source.image * channels * plane;
    const RoiAlignGrid<acc_t> grid = roi_align_grid<acc_t>(roi + 1, static_cast<acc_t>(p.spatial_scales[source.level]),
                                                           p.pooled_h, p.pooled_w, p.sampling_ratio, p.aligned);
    if constexpr (kChannelsLast) {
      for (int64_t ph = 0; ph < p.pooled_h; ++ph) {
        for (int64_t pw = 0; pw < p.pooled_w; ++pw) {
          bin_taps(grid, ph, pw, height, width, taps);
          std::fill(sums.begin(), sums.end(), acc_t(0));
          for (const Tap4<acc_t>& tap : taps) {
            accumulate_channels(image, tap, channels, sums.data());
          }
          scalar_t* out_bin = out + (ph * p.pooled_w + pw) * channels;
          for (int64_t c = 0; c < channels; ++c) {
            out_bin[c] = static_cast<scalar_t>(div_rn(sums[c], grid.count));
          }
        }
      }
    } else {
      if (all_bin_taps(grid, p.pooled_h, p.pooled_w, height, width, taps, bin_starts, bin_buffer) && !taps.empty()) {
        int64_t y0 = height, y1 = -1, x0 = width, x1 = -1;
        for (const Tap4<acc_t>& tap : taps) {
          y0 = std::min(y0, tap.ll / width);
          x0 = std::min(x0, tap.ll % width);
          y1 = std::max(y1, tap.hh / width);
          x1 = std::max(x1, tap.hh % width);
        }
        const int64_t region_h = y1 - y0 + 1, region_w = x1 - x0 + 1;
        const int64_t region_pixels = region_h * region_w;
        // A small footprint (fewer pixels than tap loads) is transposed once
        // to channels-last scratch and summed with the vectorised loop, in
        // the same order per channel as the gather below.
        if (region_pixels <= 4 * static_cast<int64_t>(taps.size()) &&
            region_pixels * channels <= kMaxRegionElements) {
          region.resize(region_pixels * channels);
          sums.resize(channels);
          for (int64_t c = 0; c < channels; ++c) {
            const scalar_t* source = image + c * plane + y0 * width + x0;
            acc_t* target = region.data() + c;
            for (int64_t y = 0; y < region_h; ++y) {
              for (int64_t x = 0; x < region_w; ++x) {
                target[(y * region_w + x) * channels] = static_cast<acc_t>(source[y * width + x]);
              }
            }
          }
          const auto rebase = [&](int64_t position) {
            return (position / width - y0) * region_w + (position % width - x0);
          };
          for (int64_t bin = 0; bin < bins; ++bin) {
            std::fill(sums.begin(), sums.end(), acc_t(0));
            for (int64_t t = bin_starts[bin]; t < bin_starts[bin + 1]; ++t) {
              Tap4<acc_t> tap = taps[t];
              tap.ll = rebase(tap.ll);
              tap.lh = rebase(tap.lh);
              tap.hl = rebase(tap.hl);
              tap.hh = rebase(tap.hh);
              accumulate_channels(region.data(), tap, channels, sums.data());
            }
            for (int64_t c = 0; c < channels; ++c) {
              out[c * bins + bin] = static_cast<scalar_t>(div_rn(sums[c], grid.count));
            }
          }
          continue;
        }
      }
      // Channel planes outer, bins inner, so that each plane's RoI region is
      // read while in cache; the taps of a run of bins are kept (bounded, for
      // huge adaptive grids) and reused by every channel.
      for (int64_t bin_begin = 0; bin_begin < bins;) {
        taps.clear();
        bin_starts.clear();
        int64_t bin_end = bin_begin;
        for (; bin_end < bins && (bin_end == bin_begin || taps.size() < kMaxKeptTaps); ++bin_end) {
          bin_starts.push_back(static_cast<int64_t>(taps.size()));
          bin_taps(grid, bin_end / p.pooled_w, bin_end % p.pooled_w, height, width, bin_buffer);
          taps.insert(taps.end(), bin_buffer.begin(), bin_buffer.end());
        }
        bin_starts.push_back(static_cast<int64_t>(taps.size()));
        for (int64_t c = 0; c < channels; ++c) {
          const scalar_t* values = image + c * plane;
          for (int64_t bin = bin_begin; bin < bin_end; ++bin) {
            acc_t sum = 0;
            for (int64_t t = bin_starts[bin - bin_begin]; t < bin_starts[bin - bin_begin + 1]; ++t) {
              const Tap4<acc_t>& tap = taps[t];
              sum = add_rn(sum, interpolate(as_weights(tap), static_cast<acc_t>(values[tap.ll]),
                                            static_cast<acc_t>(values[tap.lh]), static_cast<acc_t>(values[tap.hl]),
                                            static_cast<acc_t>(values[tap.hh])));
            }
            out[c * bins + bin] = static_cast<scalar_t>(div_rn(sum, grid.count));
          }
        }
        bin_begin = bin_end;
      }
    }
  }
}

// Channels per NCHW backward task: few enough that the tasks outnumber the threads.
constexpr int64_t kBackwardChannelBlock = 16;
// Row bands per (level, image) in the channels-last backward.
constexpr int64_t kBackwardBands = 16;

// NCHW backward: a task owns channels [c_begin, c_end) of one (level, image)
// plane stack and adds every tap of its RoIs in the fixed order.
template <typename scalar_t>
FASTOPS_CPU_MULTIVERSION void backward_channel_block(const RoiProblem& p, const scalar_t* grad, const scalar_t* rois,
                                                     const int64_t* levels, int level, int64_t image, int64_t c_begin,
                                                     int64_t c_end, scalar_t* grad_image,
                                                     std::vector<at::opmath_type<scalar_t>>& scratch) {
  using acc_t = at::opmath_type<scalar_t>;
  // 16-bit types accumulate in float32 scratch [block channels, plane].
  constexpr bool kScratch = !std::is_same_v<acc_t, scalar_t>;
  const int64_t channels = p.channels, bins = p.pooled_h * p.pooled_w;
  const int64_t height = p.heights[level], width = p.widths[level], plane = height * width;
  const int64_t block = c_end - c_begin;
  acc_t* accumulator = nullptr;
  if constexpr (kScratch) {
    scratch.assign(block * plane, acc_t(0));
    accumulator = scratch.data();
  } else {
    accumulator = reinterpret_cast<acc_t*>(grad_image) + c_begin * plane;
  }
  std::vector<Tap4<acc_t>> taps;
  for (int64_t k = 0; k < p.num_rois; ++k) {
    const scalar_t* roi = rois + k * 5;
    const RoiSource source = roi_source(roi, levels, k, p);
    if (source.image != image || source.level != level) {
      continue;
    }
    const RoiAlignGrid<acc_t> grid = roi_align_grid<acc_t>(roi + 1, static_cast<acc_t>(p.spatial_scales[level]),
                                                           p.pooled_h, p.pooled_w, p.sampling_ratio, p.aligned);
    const scalar_t* grad_roi = grad + k * channels * bins;
    for (int64_t bin = 0; bin < bins; ++bin) {
      bin_taps(grid, bin / p.pooled_w, bin % p.pooled_w, height, width, taps);
      for (const Tap4<acc_t>& tap : taps) {
        for (int64_t c = 0; c < block; ++c) {
          const acc_t g = static_cast<acc_t>(grad_roi[(c_begin + c) * bins + bin]);
          acc_t* a = accumulator + c * plane;
          a[tap.ll] = add_rn(a[tap.ll], tap_gradient(g, tap.w_ll, grid.count));
          a[tap.lh] = add_rn(a[tap.lh], tap_gradient(g, tap.w_lh, grid.count));
          a[tap.hl] = add_rn(a[tap.hl], tap_gradient(g, tap.w_hl, grid.count));
          a[tap.hh] = add_rn(a[tap.hh], tap_gradient(g, tap.w_hh, grid.count));
        }
      }
    }
  }
  if constexpr (kScratch) {
    for (int64_t c = 0; c < block; ++c) {
      for (int64_t position = 0; position < plane; ++position) {
        grad_image[(c_begin + c) * plane + position] = static_cast<scalar_t>(scratch[c * plane + position]);
      }
    }
  }
}

// sums a[c] += grad[c] * w / count over the contiguous channels of one pixel.
template <typename scalar_t, typename acc_t>
inline void add_tap_gradient(acc_t* __restrict__ a, const scalar_t* __restrict__ grad, acc_t weight, acc_t count,
                             int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) {
    a[c] = add_rn(a[c], tap_gradient(static_cast<acc_t>(grad[c]), weight, count));
  }
}

// Channels-last backward: a task owns rows [row_begin, row_end) of one
// (level, image) for every channel, so each tap is a vectorised pass over the
// contiguous channels of a pixel, and a task's writes stay within its band
// (splitting by channels instead touched 64 bytes of every pixel, and ran 3x
// slower; bench/NOTES.md). Each corner of a tap is added for all channels before the next
// corner, so every (pixel, channel) still receives its terms in the order RoI,
// bin, sample, tap ll, lh, hl, hh.
template <typename scalar_t>
FASTOPS_CPU_MULTIVERSION void backward_row_band(const RoiProblem& p, const scalar_t* grad, const scalar_t* rois,
                                                const int64_t* levels, int level, int64_t image, int64_t row_begin,
                                                int64_t row_end, scalar_t* grad_image,
                                                std::vector<at::opmath_type<scalar_t>>& scratch) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool kScratch = !std::is_same_v<acc_t, scalar_t>;
  const int64_t channels = p.channels, bins = p.pooled_h * p.pooled_w;
  const int64_t height = p.heights[level], width = p.widths[level];
  // Accumulator element of position `pos` (global in the plane), channel 0:
  // scratch holds only the band.
  const int64_t first_position = kScratch ? row_begin * width : 0;
  acc_t* accumulator = nullptr;
  if constexpr (kScratch) {
    scratch.assign((row_end - row_begin) * width * channels, acc_t(0));
    accumulator = scratch.data();
  } else {
    accumulator = reinterpret_cast<acc_t*>(grad_image);
  }
  const auto in_band = [&](int64_t position) {
    const int64_t row = position / width;
    return row >= row_begin && row < row_end;
  };
  std::vector<Tap4<acc_t>> taps;
  for (int64_t k = 0; k < p.num_rois; ++k) {
    const scalar_t* roi = rois + k * 5;
    const RoiSource source = roi_source(roi, levels, k, p);
    if (source.image != image || source.level != level) {
      continue;
    }
    const RoiAlignGrid<acc_t> grid = roi_align_grid<acc_t>(roi + 1, static_cast<acc_t>(p.spatial_scales[level]),
                                                           p.pooled_h, p.pooled_w, p.sampling_ratio, p.aligned);
    if (grid.samples_y <= 0 || grid.samples_x <= 0) {
      continue;
    }
    // The rows the RoI's samples can touch, with a pixel of margin.
    const acc_t y_first = grid.sample_y(0, 0), y_last = grid.sample_y(p.pooled_h - 1, grid.samples_y - 1);
    const acc_t y_low = y_first < y_last ? y_first : y_last, y_high = y_first < y_last ? y_last : y_first;
    if (y_high + acc_t(1) < acc_t(row_begin) || y_low - acc_t(1) >= acc_t(row_end)) {
      continue;
    }
    const scalar_t* grad_roi = grad + k * channels * bins;
    for (int64_t bin = 0; bin < bins; ++bin) {
      bin_taps(grid, bin / p.pooled_w, bin % p.pooled_w, height, width, taps);
      const scalar_t* g = grad_roi + bin * channels;
      for (const Tap4<acc_t>& tap : taps) {
        if (in_band(tap.ll)) {
          add_tap_gradient(accumulator + (tap.ll - first_position) * channels, g, tap.w_ll, grid.count, channels);
        }
        if (in_band(tap.lh)) {
          add_tap_gradient(accumulator + (tap.lh - first_position) * channels, g, tap.w_lh, grid.count, channels);
        }
        if (in_band(tap.hl)) {
          add_tap_gradient(accumulator + (tap.hl - first_position) * channels, g, tap.w_hl, grid.count, channels);
        }
        if (in_band(tap.hh)) {
          add_tap_gradient(accumulator + (tap.hh - first_position) * channels, g, tap.w_hh, grid.count, channels);
        }
      }
    }
  }
  if constexpr (kScratch) {
    const int64_t count = (row_end - row_begin) * width * channels;
    scalar_t* target = grad_image + row_begin * width * channels;
    for (int64_t i = 0; i < count; ++i) {
      target[i] = static_cast<scalar_t>(scratch[i]);
    }
  }
}

at::Tensor multi_scale_forward(const char* op, at::TensorList features, const at::Tensor& rois,
                               const std::optional<at::Tensor>& levels, at::ArrayRef<double> spatial_scales,
                               int64_t pooled_h, int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  std::vector<at::Tensor> dense;
  RoiProblem p = make_roi_problem(op, features, rois, levels, spatial_scales, pooled_h, pooled_w, dense);
  p.sampling_ratio = sampling_ratio;
  p.aligned = aligned;
  check_roi_indices_cpu(op, rois, levels, p.batch_size, p.num_levels);
  at::Tensor output = empty_roi_output(p, dense[0].options());
  if (output.numel() == 0) {
    return output;
  }
  const at::Tensor rois_dense = rois.contiguous();
  const at::Tensor levels_dense = levels ? levels->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "roi_align_forward_cpu", [&] {
    std::vector<const scalar_t*> data;
    for (const at::Tensor& f : dense) {
      data.push_back(f.const_data_ptr<scalar_t>());
    }
    const scalar_t* roi_data = rois_dense.const_data_ptr<scalar_t>();
    const int64_t* level_data = levels ? levels_dense.const_data_ptr<int64_t>() : nullptr;
    scalar_t* out = output.mutable_data_ptr<scalar_t>();
    dispatch_layout(p.channels_last, [&](auto channels_last) {
      at::parallel_for(0, p.num_rois, 1, [&](int64_t begin, int64_t end) {
        forward_rois<scalar_t, decltype(channels_last)::value>(p, data, roi_data, level_data, out, begin, end);
      });
    });
  });
  return output;
}

std::vector<at::Tensor> multi_scale_backward(const char* op, const at::Tensor& grad_in, const at::Tensor& rois,
                                             const std::optional<at::Tensor>& levels,
                                             at::ArrayRef<double> spatial_scales, int64_t pooled_h, int64_t pooled_w,
                                             int64_t batch_size, int64_t channels, at::IntArrayRef heights,
                                             at::IntArrayRef widths, int64_t sampling_ratio, bool aligned) {
  at::Tensor grad = grad_in;
  RoiProblem p = make_roi_backward_problem(op, grad, rois, levels, spatial_scales, pooled_h, pooled_w, batch_size,
                                           channels, heights, widths);
  p.sampling_ratio = sampling_ratio;
  p.aligned = aligned;
  check_roi_indices_cpu(op, rois, levels, p.batch_size, p.num_levels);
  std::vector<at::Tensor> grads = zeros_roi_input_grads(p, grad.options());
  if (p.num_rois == 0 || p.channels == 0 || p.batch_size == 0) {
    return grads;
  }
  const at::Tensor rois_dense = rois.contiguous();
  const at::Tensor levels_dense = levels ? levels->contiguous() : at::Tensor();
  // NCHW: tasks of (level, image, 16 channels); channels-last: (level, image, band of rows).
  const int64_t splits = p.channels_last ? kBackwardBands : (p.channels + kBackwardChannelBlock - 1) / kBackwardChannelBlock;
  const int64_t tasks = p.num_levels * p.batch_size * splits;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "roi_align_backward_cpu", [&] {
    const scalar_t* grad_data = grad.const_data_ptr<scalar_t>();
    const scalar_t* roi_data = rois_dense.const_data_ptr<scalar_t>();
    const int64_t* level_data = levels ? levels_dense.const_data_ptr<int64_t>() : nullptr;
    at::parallel_for(0, tasks, 1, [&](int64_t begin, int64_t end) {
      std::vector<at::opmath_type<scalar_t>> scratch;
      for (int64_t task = begin; task < end; ++task) {
        const int level = static_cast<int>(task / (p.batch_size * splits));
        const int64_t image = (task / splits) % p.batch_size;
        const int64_t split = task % splits;
        const int64_t height = p.heights[level], width = p.widths[level];
        scalar_t* grad_image = grads[level].mutable_data_ptr<scalar_t>() + image * p.channels * height * width;
        if (p.channels_last) {
          const int64_t band = (height + kBackwardBands - 1) / kBackwardBands;
          const int64_t row_begin = std::min(split * band, height), row_end = std::min(row_begin + band, height);
          if (row_begin < row_end) {
            backward_row_band<scalar_t>(p, grad_data, roi_data, level_data, level, image, row_begin, row_end,
                                        grad_image, scratch);
          }
        } else {
          const int64_t c_begin = split * kBackwardChannelBlock;
          const int64_t c_end = std::min(c_begin + kBackwardChannelBlock, p.channels);
          backward_channel_block<scalar_t>(p, grad_data, roi_data, level_data, level, image, c_begin, c_end,
                                           grad_image, scratch);
        }
      }
    });
  });
  return grads;
}

at::Tensor roi_align_cpu(const at::Tensor& input, const at::Tensor& rois, double spatial_scale, int64_t pooled_height,
                         int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  return multi_scale_forward("roi_align", {input}, rois, std::nullopt, {spatial_scale}, pooled_height, pooled_width,
                             sampling_ratio, aligned);
}

at::Tensor roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                  int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                                  int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                                  bool /*deterministic: always*/) {
  return multi_scale_backward("_roi_align_backward", grad, rois, std::nullopt, {spatial_scale}, pooled_height,
                              pooled_width, batch_size, channels, {height}, {width}, sampling_ratio, aligned)[0];
}

at::Tensor multi_scale_roi_align_cpu(at::TensorList features, const at::Tensor& rois, const at::Tensor& levels,
                                     at::ArrayRef<double> spatial_scales, int64_t pooled_height, int64_t pooled_width,
                                     int64_t sampling_ratio, bool aligned) {
  return multi_scale_forward("multi_scale_roi_align", features, rois, levels, spatial_scales, pooled_height,
                             pooled_width, sampling_ratio, aligned);
}

std::vector<at::Tensor> multi_scale_roi_align_backward_cpu(const at::Tensor& grad, const at::Tensor& rois,
                                                           const at::Tensor& levels,
                                                           at::ArrayRef<double> spatial_scales, int64_t pooled_height,
                                                           int64_t pooled_width, int64_t batch_size, int64_t channels,
                                                           at::IntArrayRef heights, at::IntArrayRef widths,
                                                           int64_t sampling_ratio, bool aligned,
                                                           bool /*deterministic: always*/) {
  return multi_scale_backward("_multi_scale_roi_align_backward", grad, rois, levels, spatial_scales, pooled_height,
                              pooled_width, batch_size, channels, heights, widths, sampling_ratio, aligned);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CPU, m) {
  m.impl("roi_align", &roi_align_cpu);
  m.impl("_roi_align_backward", &roi_align_backward_cpu);
  m.impl("multi_scale_roi_align", &multi_scale_roi_align_cpu);
  m.impl("_multi_scale_roi_align_backward", &multi_scale_roi_align_backward_cpu);
}

}  // namespace fastops
