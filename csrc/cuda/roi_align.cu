// CUDA kernels of roi_align, multi_scale_roi_align and their backward.
//
// roi_align is multi_scale_roi_align with one level and no levels tensor, so
// one family of kernels serves both: the feature maps of the levels (pointer,
// height, width, spatial scale; at most kMaxRoiLevels) travel by value in a
// LevelTable, and each RoI looks up its level (0 without a levels tensor).
// The sampling grid, the bilinear taps and their weights come from
// roi_align_math.h, exactly as on the CPU.
//
// Forward, one output bin per thread (channels-first) or per warp lane group
// (channels-last). A bin's value is the sum of its samples in (iy, ix) raster
// order divided by the sample count, the order the CPU uses. In channels-last
// a warp owns 32 * kLaneChannels consecutive channels of one (RoI, bin): the
// grid and taps are computed once per warp for all of them, and every tap is
// a coalesced load. Bad RoIs (batch index outside [0, N), level outside
// [0, levels)) give zeros and are reported through a status word; roi_align
// reads it back (one stream synchronisation, skipped during graph capture) and
// raises, multi_scale_roi_align never synchronises.
//
// Backward, two kernels:
// * atomic: one thread (or warp lane group in channels-last) per output bin
//   adds the share of each tap with atomicAdd; 16-bit gradients accumulate in
//   a float32 buffer that is converted at the end.
// * deterministic (no floating-point atomics): a gather. RoIs are grouped by
//   (level, image) with a stable device sort of their group numbers; each RoI
//   gets the pixel rectangle its taps can touch (its footprint). Each block
//   takes one tile of one level plane of one image and collects, in ascending
//   RoI order, the RoIs of that (level, image) whose footprint meets the tile
//   (at most kBatch at a time), with, for every tile row and column, the range
//   of sample rows / columns whose taps land there. Then each input pixel sums
//   its contributions in a fixed order: RoI ascending, then bin (ph, pw), then
//   sample (iy, ix), then tap ll, lh, hl, hh, recomputing the taps with
//   bilinear_taps. That order does not depend on the layout, the launch
//   configuration or timing, so the result is bitwise reproducible, and
//   channels-first and channels-last give the same bits.

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "common/fast_divmod.h"
#include "common/rounded_arithmetic.h"
#include "cuda/launch.cuh"
#include "cuda/roi_common.cuh"
#include "ops/roi_align_math.h"
#include "ops/roi_ops.h"

namespace fastops {
namespace {

using cuda::DeviceStatus, cuda::Index4, cuda::kThreadsPerBlock, cuda::load_acc, cuda::widen_span;
// The geometry of the deterministic gather (roi_common.cuh).
using cuda::kBatch, cuda::kGatherLaneChannels, cuda::kPixelChannels, cuda::kTileChannelsFirst,
    cuda::kTileChannelsLast, cuda::kWarpSize, cuda::kWarpsPerBlock;

// Status bits of the forward kernels; the offending RoI travels as 2k + (bad level).
constexpr uint32_t kBadBatchIndex = 1;
constexpr uint32_t kBadLevel = 2;

// Channels-last forward / atomic backward: channels per lane, so one warp
// covers 128 consecutive channels of a bin and computes its taps once for all.
constexpr int kLaneChannels = 4;

template <typename data_t, typename acc_t>
struct LevelTable {
  data_t* data[kMaxRoiLevels];
  int64_t heights[kMaxRoiLevels];
  int64_t widths[kMaxRoiLevels];
  acc_t spatial_scales[kMaxRoiLevels];
  int num_levels;
};

struct RoiAlignShape {
  int64_t num_rois;
  int64_t batch_size;
  int64_t channels;
  int64_t pooled_h;
  int64_t pooled_w;
  int64_t sampling_ratio;
  bool aligned;
};

// The image and level RoI k samples, or why it has none (a status bit).
template <typename acc_t, typename scalar_t>
__device__ __forceinline__ uint32_t locate_roi(const scalar_t* __restrict__ rois,
                                               const int64_t* __restrict__ levels, int64_t k, int64_t batch_size,
                                               int num_levels, int64_t& batch, int& level) {
  batch = roi_batch_index(static_cast<acc_t>(rois[k * 5]), batch_size);
  level = 0;
  if (batch < 0) {
    return kBadBatchIndex;
  }
  const int64_t l = levels != nullptr ? levels[k] : 0;
  if (l < 0 || l >= num_levels) {
    return kBadLevel;
  }
  level = static_cast<int>(l);
  return 0;
}

__device__ __forceinline__ int64_t encode_bad_roi(int64_t k, uint32_t problem) {
  return 2 * k + (problem == kBadLevel ? 1 : 0);
}

// ---------------------------------------------------------------------------
// Forward

template <typename scalar_t, bool kSmall, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreadsPerBlock)
    forward_channels_first_kernel(const __grid_constant__ LevelTable<const scalar_t, acc_t> maps,
                                  const scalar_t* __restrict__ rois, const int64_t* __restrict__ levels,
                                  scalar_t* __restrict__ output, const RoiAlignShape s, const Index4 bins,
                                  const int64_t total, DeviceStatus status) {
  uint32_t bits = 0;
  int64_t bad_value = 0;
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    int64_t k, c, ph, pw;
    bins.template split<kSmall>(e, k, c, ph, pw);
    int64_t b;
    int l;
    const uint32_t problem = locate_roi<acc_t>(rois, levels, k, s.batch_size, maps.num_levels, b, l);
    acc_t value = 0;
    if (problem == 0) {
      const RoiAlignGrid<acc_t> grid = roi_align_grid<acc_t>(rois + k * 5 + 1, maps.spatial_scales[l], s.pooled_h,
                                                             s.pooled_w, s.sampling_ratio, s.aligned);
      const int64_t height = maps.heights[l], width = maps.widths[l];
      const scalar_t* plane = maps.data[l] + (b * s.channels + c) * height * width;
      acc_t sum = 0;
      for (int64_t iy = 0; iy < grid.samples_y; ++iy) {
        const acc_t y = grid.sample_y(ph, iy);
        for (int64_t ix = 0; ix < grid.samples_x; ++ix) {
          const BilinearTaps<acc_t> t = bilinear_taps(y, grid.sample_x(pw, ix), height, width);
          if (t.inside) {
            sum = add_rn(sum, interpolate(t, load_acc(plane + t.y_low * width + t.x_low),
                                          load_acc(plane + t.y_low * width + t.x_high),
                                          load_acc(plane + t.y_high * width + t.x_low),
                                          load_acc(plane + t.y_high * width + t.x_high)));
          }
        }
      }
      value = div_rn(sum, grid.count);
    } else if (c == 0 && ph == 0 && pw == 0) {
      // One report per bad RoI, from its first output element.
      bits |= problem;
      bad_value = encode_bad_roi(k, problem);
    }
    output[e] = static_cast<scalar_t>(value);
  }
  cuda::report_status(status, bits, bad_value);
}

// One warp per (RoI, bin, group of 32 * kLaneChannels channels); lane owns
// channels group_start + lane + 32 * j.
template <typename scalar_t, bool kSmall, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreadsPerBlock)
    forward_channels_last_kernel(const __grid_constant__ LevelTable<const scalar_t, acc_t> maps,
                                 const scalar_t* __restrict__ rois, const int64_t* __restrict__ levels,
                                 scalar_t* __restrict__ output, const RoiAlignShape s, const Index4 items,
                                 const int64_t total_items, DeviceStatus status) {
  const int lane = static_cast<int>(threadIdx.x % kWarpSize);
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / kWarpSize);
  const int64_t channels = s.channels;
  uint32_t bits = 0;
  int64_t bad_value = 0;
  for (int64_t item = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / kWarpSize; item < total_items;
       item += warps) {
    int64_t k, ph, pw, group;
    items.template split<kSmall>(item, k, ph, pw, group);
    const int64_t c0 = group * (kWarpSize * kLaneChannels) + lane;
    int64_t b;
    int l;
    const uint32_t problem = locate_roi<acc_t>(rois, levels, k, s.batch_size, maps.num_levels, b, l);
    acc_t value[kLaneChannels];
#pragma unroll
    for (int j = 0; j < kLaneChannels; ++j) {
      value[j] = 0;
    }
    if (problem == 0) {
      const RoiAlignGrid<acc_t> grid = roi_align_grid<acc_t>(rois + k * 5 + 1, maps.spatial_scales[l], s.pooled_h,
                                                             s.pooled_w, s.sampling_ratio, s.aligned);
      const int64_t height = maps.heights[l], width = maps.widths[l];
      const scalar_t* image = maps.data[l] + b * height * width * channels + c0;
      acc_t sum[kLaneChannels];
#pragma unroll
      for (int j = 0; j < kLaneChannels; ++j) {
        sum[j] = 0;
      }
      for (int64_t iy = 0; iy < grid.samples_y; ++iy) {
        const acc_t y = grid.sample_y(ph, iy);
        for (int64_t ix = 0; ix < grid.samples_x; ++ix) {
          const BilinearTaps<acc_t> t = bilinear_taps(y, grid.sample_x(pw, ix), height, width);
          if (!t.inside) {
            continue;
          }
          const scalar_t* ll = image + (t.y_low * width + t.x_low) * channels;
          const scalar_t* lh = image + (t.y_low * width + t.x_high) * channels;
          const scalar_t* hl = image + (t.y_high * width + t.x_low) * channels;
          const scalar_t* hh = image + (t.y_high * width + t.x_high) * channels;
#pragma unroll
          for (int j = 0; j < kLaneChannels; ++j) {
            if (c0 + j * kWarpSize < channels) {
              const int o = j * kWarpSize;
              sum[j] = add_rn(sum[j], interpolate(t, load_acc(ll + o), load_acc(lh + o), load_acc(hl + o),
                                                  load_acc(hh + o)));
            }
          }
        }
      }
#pragma unroll
      for (int j = 0; j < kLaneChannels; ++j) {
        value[j] = div_rn(sum[j], grid.count);
      }
    } else if (group == 0 && lane == 0 && ph == 0 && pw == 0) {
      bits |= problem;
      bad_value = encode_bad_roi(k, problem);
    }
    scalar_t* out = output + ((k * s.pooled_h + ph) * s.pooled_w + pw) * channels + c0;
#pragma unroll
    for (int j = 0; j < kLaneChannels; ++j) {
      if (c0 + j * kWarpSize < channels) {
        out[j * kWarpSize] = static_cast<scalar_t>(value[j]);
      }
    }
  }
  cuda::report_status(status, bits, bad_value);
}

// ---------------------------------------------------------------------------
// Backward with atomics

template <typename scalar_t, bool kSmall, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_atomic_channels_first_kernel(const __grid_constant__ LevelTable<acc_t, acc_t> grads,
                                          const scalar_t* __restrict__ grad, const scalar_t* __restrict__ rois,
                                          const int64_t* __restrict__ levels, const RoiAlignShape s,
                                          const Index4 bins, const int64_t total) {
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    int64_t k, c, ph, pw;
    bins.template split<kSmall>(e, k, c, ph, pw);
    int64_t b;
    int l;
    if (locate_roi<acc_t>(rois, levels, k, s.batch_size, grads.num_levels, b, l) != 0) {
      continue;
    }
    const RoiAlignGrid<acc_t> grid = roi_align_grid<acc_t>(rois + k * 5 + 1, grads.spatial_scales[l], s.pooled_h,
                                                           s.pooled_w, s.sampling_ratio, s.aligned);
    const int64_t height = grads.heights[l], width = grads.widths[l];
    acc_t* plane = grads.data[l] + (b * s.channels + c) * height * width;
    const acc_t g = load_acc(grad + e);
    for (int64_t iy = 0; iy < grid.samples_y; ++iy) {
      const acc_t y = grid.sample_y(ph, iy);
      for (int64_t ix = 0; ix < grid.samples_x; ++ix) {
        const BilinearTaps<acc_t> t = bilinear_taps(y, grid.sample_x(pw, ix), height, width);
        if (t.inside) {
          atomicAdd(plane + t.y_low * width + t.x_low, tap_gradient(g, t.w_ll, grid.count));
          atomicAdd(plane + t.y_low * width + t.x_high, tap_gradient(g, t.w_lh, grid.count));
          atomicAdd(plane + t.y_high * width + t.x_low, tap_gradient(g, t.w_hl, grid.count));
          atomicAdd(plane + t.y_high * width + t.x_high, tap_gradient(g, t.w_hh, grid.count));
        }
      }
    }
  }
}

template <typename scalar_t, bool kSmall, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_atomic_channels_last_kernel(const __grid_constant__ LevelTable<acc_t, acc_t> grads,
                                         const scalar_t* __restrict__ grad, const scalar_t* __restrict__ rois,
                                         const int64_t* __restrict__ levels, const RoiAlignShape s,
                                         const Index4 items, const int64_t total_items) {
  const int lane = static_cast<int>(threadIdx.x % kWarpSize);
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / kWarpSize);
  const int64_t channels = s.channels;
  for (int64_t item = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / kWarpSize; item < total_items;
       item += warps) {
    int64_t k, ph, pw, group;
    items.template split<kSmall>(item, k, ph, pw, group);
    const int64_t c0 = group * (kWarpSize * kLaneChannels) + lane;
    int64_t b;
    int l;
    if (locate_roi<acc_t>(rois, levels, k, s.batch_size, grads.num_levels, b, l) != 0) {
      continue;
    }
    const RoiAlignGrid<acc_t> grid = roi_align_grid<acc_t>(rois + k * 5 + 1, grads.spatial_scales[l], s.pooled_h,
                                                           s.pooled_w, s.sampling_ratio, s.aligned);
    const int64_t height = grads.heights[l], width = grads.widths[l];
    acc_t* image = grads.data[l] + b * height * width * channels + c0;
    const scalar_t* grad_bin = grad + ((k * s.pooled_h + ph) * s.pooled_w + pw) * channels + c0;
    acc_t g[kLaneChannels];
#pragma unroll
    for (int j = 0; j < kLaneChannels; ++j) {
      g[j] = c0 + j * kWarpSize < channels ? load_acc(grad_bin + j * kWarpSize) : acc_t(0);
    }
    for (int64_t iy = 0; iy < grid.samples_y; ++iy) {
      const acc_t y = grid.sample_y(ph, iy);
      for (int64_t ix = 0; ix < grid.samples_x; ++ix) {
        const BilinearTaps<acc_t> t = bilinear_taps(y, grid.sample_x(pw, ix), height, width);
        if (!t.inside) {
          continue;
        }
        acc_t* ll = image + (t.y_low * width + t.x_low) * channels;
        acc_t* lh = image + (t.y_low * width + t.x_high) * channels;
        acc_t* hl = image + (t.y_high * width + t.x_low) * channels;
        acc_t* hh = image + (t.y_high * width + t.x_high) * channels;
#pragma unroll
        for (int j = 0; j < kLaneChannels; ++j) {
          if (c0 + j * kWarpSize < channels) {
            const int o = j * kWarpSize;
            atomicAdd(ll + o, tap_gradient(g[j], t.w_ll, grid.count));
            atomicAdd(lh + o, tap_gradient(g[j], t.w_lh, grid.count));
            atomicAdd(hl + o, tap_gradient(g[j], t.w_hl, grid.count));
            atomicAdd(hh + o, tap_gradient(g[j], t.w_hh, grid.count));
          }
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------
// Deterministic backward

// Per RoI: its group (level * N + image; num_groups for a bad RoI, which then
// belongs to no group) and its footprint, the rows and columns [first, last]
// its taps can touch, from the exact taps of its samples (empty: first > last).
// A warp per RoI, lanes across the sample rows and columns.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreadsPerBlock)
    footprint_kernel(const __grid_constant__ LevelTable<acc_t, acc_t> grads, const scalar_t* __restrict__ rois,
                     const int64_t* __restrict__ levels, const RoiAlignShape s, const int64_t num_groups,
                     int64_t* __restrict__ group_of, int64_t* __restrict__ footprint) {
  const int lane = static_cast<int>(threadIdx.x % kWarpSize);
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / kWarpSize);
  for (int64_t k = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / kWarpSize; k < s.num_rois; k += warps) {
    int64_t b;
    int l;
    const bool valid = locate_roi<acc_t>(rois, levels, k, s.batch_size, grads.num_levels, b, l) == 0;
    // first/last row, first/last column; start empty.
    int64_t bounds[4] = {INT64_MAX, -1, INT64_MAX, -1};
    if (valid) {
      const RoiAlignGrid<acc_t> grid = roi_align_grid<acc_t>(rois + k * 5 + 1, grads.spatial_scales[l], s.pooled_h,
                                                             s.pooled_w, s.sampling_ratio, s.aligned);
      const int64_t height = grads.heights[l], width = grads.widths[l];
      // The taps of a sample are the rows of its y times the columns of its
      // x, so the row taps come from bilinear_taps on a one-column map.
      for (int64_t r = lane; r < s.pooled_h * grid.samples_y; r += kWarpSize) {
        const int64_t ph = r / grid.samples_y;
        const BilinearTaps<acc_t> t =
            bilinear_taps(grid.sample_y(ph, r - ph * grid.samples_y), acc_t(0), height, int64_t{1});
        if (t.inside) {
          bounds[0] = min(bounds[0], t.y_low);
          bounds[1] = max(bounds[1], t.y_high);
        }
      }
      for (int64_t r = lane; r < s.pooled_w * grid.samples_x; r += kWarpSize) {
        const int64_t pw = r / grid.samples_x;
        const BilinearTaps<acc_t> t =
            bilinear_taps(acc_t(0), grid.sample_x(pw, r - pw * grid.samples_x), int64_t{1}, width);
        if (t.inside) {
          bounds[2] = min(bounds[2], t.x_low);
          bounds[3] = max(bounds[3], t.x_high);
        }
      }
    }
    cuda::store_footprint(bounds, lane, k, valid ? l * s.batch_size + b : num_groups, group_of, footprint);
  }
}

// The tasks of the gather: the tiles of every (level, image) plane.
struct TileTable {
  int64_t tiles_x[kMaxRoiLevels];
  int64_t tiles_per_image[kMaxRoiLevels];
  int64_t first_task[kMaxRoiLevels + 1];
  int num_levels;
};

template <typename acc_t, int kTile>
struct GatherShared {
  int64_t roi[kBatch];
  RoiAlignGrid<acc_t> grid[kBatch];
  // Per RoI and tile row (column): the range [x, y] of sample rows s = ph * samples_y + iy
  // (columns pw * samples_x + ix) with a tap on that row (column); empty when x > y.
  int2 row_span[kBatch][kTile];
  int2 col_span[kBatch][kTile];
  int2 col_union[kBatch];  // the union over the tile's columns
  unsigned hit_mask[2];
};

// Records sample row (or column) `sample`, whose taps are rows `low` and
// `high`, in the spans of the tile rows they fall on.
template <int kTile>
__device__ __forceinline__ void mark_taps(int64_t low, int64_t high, int64_t tile_first, int sample, int2* spans,
                                          int2* whole) {
  const int64_t a = low - tile_first, b = high - tile_first;
  const bool hit_a = a >= 0 && a < kTile, hit_b = b != a && b >= 0 && b < kTile;
  if (hit_a) {
    widen_span(&spans[a], sample);
  }
  if (hit_b) {
    widen_span(&spans[b], sample);
  }
  if (whole != nullptr && (hit_a || hit_b)) {
    widen_span(whole, sample);
  }
}

template <typename acc_t, int kN>
__device__ __forceinline__ void add_shares(acc_t (&sum)[kN], const acc_t (&g)[kN], acc_t weight, acc_t count) {
#pragma unroll
  for (int v = 0; v < kN; ++v) {
    sum[v] = add_rn(sum[v], tap_gradient(g[v], weight, count));
  }
}

// Adds the shares of a tap at `column` of the warp's tile row (relative to the
// tile; outside [0, kTile) adds nothing) to that column's accumulators. They
// are a register array, so the column is selected by unrolled comparisons
// instead of an index.
template <typename acc_t, int kTile, int kN>
__device__ __forceinline__ void add_shares_at(acc_t (&sum)[kTile][kN], int64_t column, const acc_t (&g)[kN],
                                              acc_t weight, acc_t count) {
#pragma unroll
  for (int q = 0; q < kTile; ++q) {
    if (q == column) {
      add_shares(sum[q], g, weight, count);
    }
  }
}

template <typename scalar_t, bool kChannelsLast, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_gather_kernel(const __grid_constant__ LevelTable<scalar_t, acc_t> grads,
                           const __grid_constant__ TileTable tiles, const scalar_t* __restrict__ grad,
                           const scalar_t* __restrict__ rois, const int64_t* __restrict__ order,
                           const int64_t* __restrict__ group_start, const int64_t* __restrict__ footprint,
                           const RoiAlignShape s) {
  constexpr int kTile = kChannelsLast ? kTileChannelsLast : kTileChannelsFirst;
  constexpr int kChunk = kChannelsLast ? kWarpSize * kGatherLaneChannels : kPixelChannels;
  __shared__ GatherShared<acc_t, kTile> sh;

  const int warp = static_cast<int>(threadIdx.x / kWarpSize);
  const int lane = static_cast<int>(threadIdx.x % kWarpSize);
  const int64_t channels = s.channels;
  const int64_t pooled_h = s.pooled_h, pooled_w = s.pooled_w;
  const int64_t chunks = (channels + kChunk - 1) / kChunk;

  for (int64_t task = blockIdx.x; task < tiles.first_task[tiles.num_levels]; task += gridDim.x) {
    int l = 0;
    while (l + 1 < tiles.num_levels && task >= tiles.first_task[l + 1]) {
      ++l;
    }
    const int64_t in_level = task - tiles.first_task[l];
    const int64_t b = in_level / tiles.tiles_per_image[l];
    const int64_t tile = in_level - b * tiles.tiles_per_image[l];
    const int64_t height = grads.heights[l], width = grads.widths[l];
    const int64_t tile_y = (tile / tiles.tiles_x[l]) * kTile;
    const int64_t tile_x = (tile % tiles.tiles_x[l]) * kTile;
    const int64_t tile_y_last = min(tile_y + kTile, height) - 1;
    const int64_t tile_x_last = min(tile_x + kTile, width) - 1;
    const int64_t group = l * s.batch_size + b;
    const int64_t begin = group_start[group], end = group_start[group + 1];
    if (begin == end) {
      continue;  // block-uniform: no RoI samples this plane, its gradient stays zero
    }
    const acc_t scale = grads.spatial_scales[l];
    scalar_t* grad_input = grads.data[l];

    bool list_is_complete = false;  // the list holds every RoI of the group that meets the tile
    int list_size = 0;
    for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
      // Channels-first: kPixelChannels channels of one pixel per thread.
      // Channels-last: 32 * kGatherLaneChannels channels of one tile row per warp.
      constexpr int kPixels = kChannelsLast ? kTile : 1;
      constexpr int kChannels = kChannelsLast ? kGatherLaneChannels : kPixelChannels;
      acc_t sum[kPixels][kChannels];
      cuda::zero_sums(sum);
      bool touched = false;
      int64_t next = begin;
      do {
        if (list_is_complete) {
          next = end;
        } else {
          // Collect the next RoIs that meet the tile, in ascending order.
          cuda::collect_rois(sh, order, footprint, begin, end, next, tile_y, tile_y_last, tile_x, tile_x_last,
                             list_size, list_is_complete);
          // Grids and spans: a warp per RoI, lanes across its sample rows and columns.
          for (int j = warp; j < list_size; j += kWarpsPerBlock) {
            const int64_t k = sh.roi[j];
            const RoiAlignGrid<acc_t> grid =
                roi_align_grid<acc_t>(rois + k * 5 + 1, scale, pooled_h, pooled_w, s.sampling_ratio, s.aligned);
            if (lane == 0) {
              sh.grid[j] = grid;
            }
            cuda::clear_spans<kTile>(sh, j, lane);
            // The host checked pooled * samples < 2^31.
            const int samples_y = static_cast<int>(grid.samples_y), samples_x = static_cast<int>(grid.samples_x);
            const int rows = static_cast<int>(pooled_h) * samples_y, cols = static_cast<int>(pooled_w) * samples_x;
            for (int64_t r = lane; r < rows; r += kWarpSize) {
              const int64_t ph = r / samples_y;
              const BilinearTaps<acc_t> t =
                  bilinear_taps(grid.sample_y(ph, r - ph * samples_y), acc_t(0), height, int64_t{1});
              if (t.inside) {
                mark_taps<kTile>(t.y_low, t.y_high, tile_y, static_cast<int>(r), sh.row_span[j], nullptr);
              }
            }
            for (int64_t r = lane; r < cols; r += kWarpSize) {
              const int64_t pw = r / samples_x;
              const BilinearTaps<acc_t> t =
                  bilinear_taps(acc_t(0), grid.sample_x(pw, r - pw * samples_x), int64_t{1}, width);
              if (t.inside) {
                mark_taps<kTile>(t.x_low, t.x_high, tile_x, static_cast<int>(r), sh.col_span[j], &sh.col_union[j]);
              }
            }
          }
          __syncthreads();
        }
        touched = touched || list_size > 0;

        if constexpr (!kChannelsLast) {
          const int row = static_cast<int>(threadIdx.x) / kTile, col = static_cast<int>(threadIdx.x) % kTile;
          const int64_t py = tile_y + row, px = tile_x + col;
          const int64_t c_first = chunk * kChunk;
          if (py < height && px < width) {
            for (int j = 0; j < list_size; ++j) {
              const int2 rows = sh.row_span[j][row], cols = sh.col_span[j][col];
              if (rows.x > rows.y || cols.x > cols.y) {
                continue;
              }
              const RoiAlignGrid<acc_t> grid = sh.grid[j];
              const int64_t k = sh.roi[j];
              const int samples_y = static_cast<int>(grid.samples_y), samples_x = static_cast<int>(grid.samples_x);
              for (int ph = rows.x / samples_y; ph <= rows.y / samples_y; ++ph) {
                const int iy_first = max(rows.x - ph * samples_y, 0);
                const int iy_last = min(rows.y - ph * samples_y, samples_y - 1);
                for (int pw = cols.x / samples_x; pw <= cols.y / samples_x; ++pw) {
                  const int ix_first = max(cols.x - pw * samples_x, 0);
                  const int ix_last = min(cols.y - pw * samples_x, samples_x - 1);
                  const scalar_t* grad_bin = grad + ((k * channels + c_first) * pooled_h + ph) * pooled_w + pw;
                  acc_t g[kChannels];
#pragma unroll
                  for (int v = 0; v < kChannels; ++v) {
                    g[v] = c_first + v < channels ? load_acc(grad_bin + v * pooled_h * pooled_w) : acc_t(0);
                  }
                  for (int iy = iy_first; iy <= iy_last; ++iy) {
                    const acc_t y = grid.sample_y(ph, iy);
                    for (int ix = ix_first; ix <= ix_last; ++ix) {
                      const BilinearTaps<acc_t> t = bilinear_taps(y, grid.sample_x(pw, ix), height, width);
                      if (!t.inside) {
                        continue;
                      }
                      const bool low_row = t.y_low == py, high_row = t.y_high == py;
                      const bool low_col = t.x_low == px, high_col = t.x_high == px;
                      if (low_row && low_col) {
                        add_shares(sum[0], g, t.w_ll, grid.count);
                      }
                      if (low_row && high_col) {
                        add_shares(sum[0], g, t.w_lh, grid.count);
                      }
                      if (high_row && low_col) {
                        add_shares(sum[0], g, t.w_hl, grid.count);
                      }
                      if (high_row && high_col) {
                        add_shares(sum[0], g, t.w_hh, grid.count);
                      }
                    }
                  }
                }
              }
            }
          }
        } else {
          const int row = warp;
          const int64_t py = tile_y + row;
          const int64_t c0 = chunk * kChunk + lane;
          if (py < height) {
            for (int j = 0; j < list_size; ++j) {
              const int2 rows = sh.row_span[j][row], cols = sh.col_union[j];
              if (rows.x > rows.y || cols.x > cols.y) {
                continue;
              }
              const RoiAlignGrid<acc_t> grid = sh.grid[j];
              const int64_t k = sh.roi[j];
              const int samples_y = static_cast<int>(grid.samples_y), samples_x = static_cast<int>(grid.samples_x);
              for (int ph = rows.x / samples_y; ph <= rows.y / samples_y; ++ph) {
                const int iy_first = max(rows.x - ph * samples_y, 0);
                const int iy_last = min(rows.y - ph * samples_y, samples_y - 1);
                for (int pw = cols.x / samples_x; pw <= cols.y / samples_x; ++pw) {
                  const int ix_first = max(cols.x - pw * samples_x, 0);
                  const int ix_last = min(cols.y - pw * samples_x, samples_x - 1);
                  const scalar_t* grad_bin = grad + ((k * pooled_h + ph) * pooled_w + pw) * channels + c0;
                  acc_t g[kChannels];
#pragma unroll
                  for (int v = 0; v < kChannels; ++v) {
                    g[v] = c0 + v * kWarpSize < channels ? load_acc(grad_bin + v * kWarpSize) : acc_t(0);
                  }
                  for (int iy = iy_first; iy <= iy_last; ++iy) {
                    const acc_t y = grid.sample_y(ph, iy);
                    for (int ix = ix_first; ix <= ix_last; ++ix) {
                      const BilinearTaps<acc_t> t = bilinear_taps(y, grid.sample_x(pw, ix), height, width);
                      if (!t.inside) {
                        continue;
                      }
                      // Columns outside the tile give an index no unrolled comparison matches.
                      const bool low_row = t.y_low == py, high_row = t.y_high == py;
                      const int64_t low_col = t.x_low - tile_x, high_col = t.x_high - tile_x;
                      if (low_row) {
                        add_shares_at(sum, low_col, g, t.w_ll, grid.count);
                        add_shares_at(sum, high_col, g, t.w_lh, grid.count);
                      }
                      if (high_row) {
                        add_shares_at(sum, low_col, g, t.w_hl, grid.count);
                        add_shares_at(sum, high_col, g, t.w_hh, grid.count);
                      }
                    }
                  }
                }
              }
            }
          }
        }
      } while (next < end);

      if (!touched) {
        continue;  // block-uniform: no RoI met the tile, its gradient stays zero
      }
      cuda::store_sums<kChannelsLast, kTile, kChunk>(sum, grad_input, b, chunk, channels, height, width, tile_y,
                                                     tile_x);
    }
    __syncthreads();  // the next task overwrites the list
  }
}

// ---------------------------------------------------------------------------
// Host

constexpr const char* kForwardOp = "roi_align";
constexpr const char* kMultiScaleOp = "multi_scale_roi_align";

template <typename data_t, typename acc_t>
LevelTable<data_t, acc_t> make_level_table(const RoiProblem& p) {
  LevelTable<data_t, acc_t> table{};
  table.num_levels = p.num_levels;
  for (int l = 0; l < p.num_levels; ++l) {
    table.data[l] = nullptr;
    table.heights[l] = p.heights[l];
    table.widths[l] = p.widths[l];
    table.spatial_scales[l] = static_cast<acc_t>(p.spatial_scales[l]);
  }
  return table;
}

RoiAlignShape make_shape(const RoiProblem& p) {
  return {p.num_rois, p.batch_size, p.channels, p.pooled_h, p.pooled_w, p.sampling_ratio, p.aligned};
}

bool fits_int32(int64_t n) { return n <= std::numeric_limits<int32_t>::max(); }

at::Tensor roi_align_forward(const char* op, at::TensorList features, const at::Tensor& rois_in,
                             const std::optional<at::Tensor>& levels_in, at::ArrayRef<double> spatial_scales,
                             int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  TORCH_CHECK(!features.empty(), op, ": no feature maps");
  const c10::cuda::CUDAGuard device_guard(features[0].device());
  std::vector<at::Tensor> maps;
  RoiProblem p =
      make_roi_problem(op, features, rois_in, levels_in, spatial_scales, pooled_height, pooled_width, maps);
  p.sampling_ratio = sampling_ratio;
  p.aligned = aligned;
  at::Tensor output = empty_roi_output(p, maps[0].options());
  if (output.numel() == 0) {
    return output;
  }
  if (p.batch_size == 0) {
    // No RoI can name an image. Graph capture cannot raise, so it gets zeros.
    if (cuda::stream_is_capturing()) {
      return output.zero_();
    }
    throw_bad_roi(op, 0, false, p.batch_size, p.num_levels);
  }
  const at::Tensor rois = rois_in.contiguous();
  const at::Tensor levels = levels_in ? levels_in->contiguous() : at::Tensor();
  const int64_t* level_ptr = levels_in ? levels.const_data_ptr<int64_t>() : nullptr;
  at::Tensor status = at::zeros({2}, rois.options().dtype(at::kLong));
  const DeviceStatus device_status{reinterpret_cast<unsigned long long*>(status.data_ptr<int64_t>())};
  const auto stream = at::cuda::getCurrentCUDAStream();
  const RoiAlignShape shape = make_shape(p);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "roi_align", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto table = make_level_table<const scalar_t, acc_t>(p);
    for (int l = 0; l < p.num_levels; ++l) {
      table.data[l] = maps[l].const_data_ptr<scalar_t>();
    }
    const scalar_t* roi_ptr = rois.const_data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    if (p.channels_last) {
      const int64_t groups = (p.channels + kWarpSize * kLaneChannels - 1) / (kWarpSize * kLaneChannels);
      const int64_t items = p.num_rois * p.pooled_h * p.pooled_w * groups;
      const Index4 index(p.pooled_h, p.pooled_w, groups);
      const unsigned int blocks = cuda::grid_blocks(items * kWarpSize);
      if (fits_int32(items)) {
        forward_channels_last_kernel<scalar_t, true><<<blocks, kThreadsPerBlock, 0, stream>>>(
            table, roi_ptr, level_ptr, out, shape, index, items, device_status);
      } else {
        forward_channels_last_kernel<scalar_t, false><<<blocks, kThreadsPerBlock, 0, stream>>>(
            table, roi_ptr, level_ptr, out, shape, index, items, device_status);
      }
    } else {
      const int64_t total = output.numel();
      const Index4 index(p.channels, p.pooled_h, p.pooled_w);
      const unsigned int blocks = cuda::grid_blocks(total);
      if (fits_int32(total)) {
        forward_channels_first_kernel<scalar_t, true><<<blocks, kThreadsPerBlock, 0, stream>>>(
            table, roi_ptr, level_ptr, out, shape, index, total, device_status);
      } else {
        forward_channels_first_kernel<scalar_t, false><<<blocks, kThreadsPerBlock, 0, stream>>>(
            table, roi_ptr, level_ptr, out, shape, index, total, device_status);
      }
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  // roi_align reads the status back (one synchronisation) to raise on a bad
  // batch index; multi_scale_roi_align, whose rois and levels
  // MultiScaleRoIAlign builds valid, never synchronises: a bad RoI gives zeros.
  if (!levels_in && !cuda::stream_is_capturing()) {
    const cuda::HostStatus host = cuda::read_status(status);
    if (host.bits != 0) {
      throw_bad_roi(op, host.bad_value / 2, (host.bad_value & 1) != 0, p.batch_size, p.num_levels);
    }
  }
  return output;
}

// Atomic backward into `accumulators` (acc_t tensors of the problem's layout).
template <typename scalar_t>
void launch_backward_atomic(const RoiProblem& p, const at::Tensor& grad, const at::Tensor& rois,
                            const int64_t* level_ptr, std::vector<at::Tensor>& accumulators) {
  using acc_t = at::opmath_type<scalar_t>;
  const auto stream = at::cuda::getCurrentCUDAStream();
  auto table = make_level_table<acc_t, acc_t>(p);
  for (int l = 0; l < p.num_levels; ++l) {
    table.data[l] = accumulators[l].data_ptr<acc_t>();
  }
  const RoiAlignShape shape = make_shape(p);
  const scalar_t* grad_ptr = grad.const_data_ptr<scalar_t>();
  const scalar_t* roi_ptr = rois.const_data_ptr<scalar_t>();
  if (p.channels_last) {
    const int64_t groups = (p.channels + kWarpSize * kLaneChannels - 1) / (kWarpSize * kLaneChannels);
    const int64_t items = p.num_rois * p.pooled_h * p.pooled_w * groups;
    const Index4 index(p.pooled_h, p.pooled_w, groups);
    const unsigned int blocks = cuda::grid_blocks(items * kWarpSize);
    if (fits_int32(items)) {
      backward_atomic_channels_last_kernel<scalar_t, true>
          <<<blocks, kThreadsPerBlock, 0, stream>>>(table, grad_ptr, roi_ptr, level_ptr, shape, index, items);
    } else {
      backward_atomic_channels_last_kernel<scalar_t, false>
          <<<blocks, kThreadsPerBlock, 0, stream>>>(table, grad_ptr, roi_ptr, level_ptr, shape, index, items);
    }
  } else {
    const int64_t total = grad.numel();
    const Index4 index(p.channels, p.pooled_h, p.pooled_w);
    const unsigned int blocks = cuda::grid_blocks(total);
    if (fits_int32(total)) {
      backward_atomic_channels_first_kernel<scalar_t, true>
          <<<blocks, kThreadsPerBlock, 0, stream>>>(table, grad_ptr, roi_ptr, level_ptr, shape, index, total);
    } else {
      backward_atomic_channels_first_kernel<scalar_t, false>
          <<<blocks, kThreadsPerBlock, 0, stream>>>(table, grad_ptr, roi_ptr, level_ptr, shape, index, total);
    }
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Deterministic backward: writes the touched tiles of `grad_inputs` (zeros elsewhere).
template <typename scalar_t>
void launch_backward_gather(const char* op, const RoiProblem& p, const at::Tensor& grad, const at::Tensor& rois,
                            const int64_t* level_ptr, std::vector<at::Tensor>& grad_inputs) {
  using acc_t = at::opmath_type<scalar_t>;
  // Sample rows and columns are numbered in int.
  const int64_t max_samples = p.sampling_ratio > 0 ? p.sampling_ratio : kMaxAdaptiveSamples;
  TORCH_CHECK(max_samples <= std::numeric_limits<int32_t>::max() / std::max(p.pooled_h, p.pooled_w), op,
              ": the deterministic backward needs output_size * sampling_ratio below 2^31, got output_size (",
              p.pooled_h, ", ", p.pooled_w, ") and sampling_ratio ", p.sampling_ratio,
              "; use the nondeterministic backward");
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto long_options = rois.options().dtype(at::kLong);
  const RoiAlignShape shape = make_shape(p);
  const scalar_t* roi_ptr = rois.const_data_ptr<scalar_t>();

  // Group the RoIs by (level, image), ascending RoI order within a group.
  const int64_t num_groups = p.num_levels * p.batch_size;
  at::Tensor group_of = at::empty({p.num_rois}, long_options);
  at::Tensor footprint = at::empty({p.num_rois, 4}, long_options);
  {
    const auto sizes = make_level_table<acc_t, acc_t>(p);
    footprint_kernel<scalar_t><<<cuda::grid_blocks(p.num_rois * kWarpSize), kThreadsPerBlock, 0, stream>>>(
        sizes, roi_ptr, level_ptr, shape, num_groups, group_of.data_ptr<int64_t>(), footprint.data_ptr<int64_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  }
  const auto [sorted_groups, order] = at::sort(group_of, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor group_start = at::searchsorted(sorted_groups, at::arange(num_groups + 1, long_options));

  auto table = make_level_table<scalar_t, acc_t>(p);
  TileTable tiles{};
  tiles.num_levels = p.num_levels;
  const int64_t tile = p.channels_last ? kTileChannelsLast : kTileChannelsFirst;
  for (int l = 0; l < p.num_levels; ++l) {
    table.data[l] = grad_inputs[l].data_ptr<scalar_t>();
    tiles.tiles_x[l] = (p.widths[l] + tile - 1) / tile;
    tiles.tiles_per_image[l] = tiles.tiles_x[l] * ((p.heights[l] + tile - 1) / tile);
    tiles.first_task[l + 1] = tiles.first_task[l] + p.batch_size * tiles.tiles_per_image[l];
  }
  const int64_t tasks = tiles.first_task[p.num_levels];
  if (tasks == 0) {
    return;
  }
  // Enough blocks to fill the GPU: split the channels across blocks only when
  // the tiles are too few, since each block collects its tile's RoIs anew.
  const int64_t chunk = p.channels_last ? kWarpSize * kGatherLaneChannels : kPixelChannels;
  const int64_t chunks = (p.channels + chunk - 1) / chunk;
  const int64_t wanted_blocks = int64_t{at::cuda::getCurrentDeviceProperties()->multiProcessorCount} * 8;
  const int64_t blocks_y =
      std::clamp<int64_t>((wanted_blocks + tasks - 1) / tasks, 1, std::min<int64_t>(chunks, 65535));
  const dim3 blocks(static_cast<unsigned int>(std::min<int64_t>(tasks, INT32_MAX)),
                    static_cast<unsigned int>(blocks_y));
  const scalar_t* grad_ptr = grad.const_data_ptr<scalar_t>();
  const int64_t* order_ptr = order.const_data_ptr<int64_t>();
  const int64_t* start_ptr = group_start.const_data_ptr<int64_t>();
  const int64_t* footprint_ptr = footprint.const_data_ptr<int64_t>();
  if (p.channels_last) {
    backward_gather_kernel<scalar_t, true><<<blocks, kThreadsPerBlock, 0, stream>>>(
        table, tiles, grad_ptr, roi_ptr, order_ptr, start_ptr, footprint_ptr, shape);
  } else {
    backward_gather_kernel<scalar_t, false><<<blocks, kThreadsPerBlock, 0, stream>>>(
        table, tiles, grad_ptr, roi_ptr, order_ptr, start_ptr, footprint_ptr, shape);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::vector<at::Tensor> roi_align_backward_levels(const char* op, const at::Tensor& grad_in, const at::Tensor& rois_in,
                                                  const std::optional<at::Tensor>& levels_in,
                                                  at::ArrayRef<double> spatial_scales, int64_t pooled_height,
                                                  int64_t pooled_width, int64_t batch_size, int64_t channels,
                                                  at::IntArrayRef heights, at::IntArrayRef widths,
                                                  int64_t sampling_ratio, bool aligned, bool deterministic) {
  const c10::cuda::CUDAGuard device_guard(grad_in.device());
  at::Tensor grad = grad_in;
  RoiProblem p = make_roi_backward_problem(op, grad, rois_in, levels_in, spatial_scales, pooled_height, pooled_width,
                                           batch_size, channels, heights, widths);
  p.sampling_ratio = sampling_ratio;
  p.aligned = aligned;
  const bool accumulate_in_float = !deterministic && (grad.scalar_type() == at::kHalf ||
                                                      grad.scalar_type() == at::kBFloat16);
  std::vector<at::Tensor> grad_inputs =
      zeros_roi_input_grads(p, accumulate_in_float ? grad.options().dtype(at::kFloat) : grad.options());
  const auto finish = [&](std::vector<at::Tensor>& result) {
    if (accumulate_in_float) {
      for (at::Tensor& g : result) {
        g = g.to(grad.scalar_type());  // keeps the layout
      }
    }
    return result;
  };
  if (grad.numel() == 0 || p.batch_size == 0) {
    return finish(grad_inputs);
  }
  const at::Tensor rois = rois_in.contiguous();
  const at::Tensor levels = levels_in ? levels_in->contiguous() : at::Tensor();
  const int64_t* level_ptr = levels_in ? levels.const_data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "_roi_align_backward", [&] {
    if (deterministic) {
      launch_backward_gather<scalar_t>(op, p, grad, rois, level_ptr, grad_inputs);
    } else {
      launch_backward_atomic<scalar_t>(p, grad, rois, level_ptr, grad_inputs);
    }
  });
  return finish(grad_inputs);
}

at::Tensor roi_align_cuda(const at::Tensor& input, const at::Tensor& rois, double spatial_scale,
                          int64_t pooled_height, int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  return roi_align_forward(kForwardOp, input, rois, std::nullopt, spatial_scale, pooled_height, pooled_width,
                           sampling_ratio, aligned);
}

at::Tensor multi_scale_roi_align_cuda(at::TensorList features, const at::Tensor& rois, const at::Tensor& levels,
                                      at::ArrayRef<double> spatial_scales, int64_t pooled_height,
                                      int64_t pooled_width, int64_t sampling_ratio, bool aligned) {
  return roi_align_forward(kMultiScaleOp, features, rois, levels, spatial_scales, pooled_height, pooled_width,
                           sampling_ratio, aligned);
}

at::Tensor roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois, double spatial_scale,
                                   int64_t pooled_height, int64_t pooled_width, int64_t batch_size, int64_t channels,
                                   int64_t height, int64_t width, int64_t sampling_ratio, bool aligned,
                                   bool deterministic) {
  return roi_align_backward_levels("_roi_align_backward", grad, rois, std::nullopt, spatial_scale, pooled_height,
                                   pooled_width, batch_size, channels, height, width, sampling_ratio, aligned,
                                   deterministic)[0];
}

std::vector<at::Tensor> multi_scale_roi_align_backward_cuda(const at::Tensor& grad, const at::Tensor& rois,
                                                            const at::Tensor& levels,
                                                            at::ArrayRef<double> spatial_scales,
                                                            int64_t pooled_height, int64_t pooled_width,
                                                            int64_t batch_size, int64_t channels,
                                                            at::IntArrayRef heights, at::IntArrayRef widths,
                                                            int64_t sampling_ratio, bool aligned,
                                                            bool deterministic) {
  return roi_align_backward_levels("_multi_scale_roi_align_backward", grad, rois, levels, spatial_scales,
                                   pooled_height, pooled_width, batch_size, channels, heights, widths,
                                   sampling_ratio, aligned, deterministic);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("roi_align", &roi_align_cuda);
  m.impl("_roi_align_backward", &roi_align_backward_cuda);
  m.impl("multi_scale_roi_align", &multi_scale_roi_align_cuda);
  m.impl("_multi_scale_roi_align_backward", &multi_scale_roi_align_backward_cuda);
}

}  // namespace fastops
