// CUDA kernels of roi_pool and its backward.
//
// Forward: one thread per output bin and channel, in the output's layout
// (channels-last: consecutive threads take consecutive channels of one bin,
// so they scan the same window and every load is coalesced). The bin's
// window and the max rule come from roi_pool_math.h: the window is scanned in
// raster order, the first element initialises the maximum and its position
// h * W + w (the int32 argmax), later ones replace it when replaces_max says
// so; an empty window gives 0 and argmax -1. A RoI whose batch index is not in
// [0, N) gives zeros and argmax -1 and is reported through a status word that
// the host reads back (one stream synchronisation, skipped during graph
// capture).
//
// Backward, two kernels:
// * atomic: one thread per output gradient element adds it at its argmax;
//   16-bit gradients accumulate in a float32 buffer converted at the end.
// * deterministic (no floating-point atomics): a gather. RoIs are grouped by
//   image with a stable device sort; each RoI gets the pixel rectangle its
//   windows cover (its footprint). Each block takes one tile of one image's
//   plane, collects in ascending RoI order the RoIs of that image whose
//   footprint meets the tile (at most kBatch at a time) with, per tile row and
//   column, the range of bins whose window covers it; then each input pixel
//   adds, in the order RoI ascending, then bin (ph, pw) in raster order, the
//   gradients of the bins whose argmax names it. The order depends neither on
//   the layout nor on timing, so the result is bitwise reproducible and equal
//   in both layouts. Argmax values are expected from the forward: one outside
//   its bin's window is ignored here (the atomic kernel adds it wherever it
//   points inside the plane).

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
#include "ops/roi_pool_math.h"

namespace fastops {
namespace {

using cuda::DeviceStatus, cuda::Index4, cuda::kThreadsPerBlock, cuda::load_acc, cuda::widen_span;
// The geometry of the deterministic gather (roi_common.cuh).
using cuda::kBatch, cuda::kGatherLaneChannels, cuda::kPixelChannels, cuda::kTileChannelsFirst,
    cuda::kTileChannelsLast, cuda::kWarpSize, cuda::kWarpsPerBlock;

constexpr uint32_t kBadBatchIndex = 1;

struct RoiPoolShape {
  int64_t num_rois;
  int64_t batch_size;
  int64_t channels;
  int64_t height;
  int64_t width;
  int64_t pooled_h;
  int64_t pooled_w;
};

// Output element e in the kernel's layout -> (RoI, channel, bin row, bin column).
template <bool kChannelsLast, bool kSmall>
__device__ __forceinline__ void split_bin(const Index4& index, int64_t e, int64_t& k, int64_t& c, int64_t& ph,
                                          int64_t& pw) {
  if (kChannelsLast) {
    index.template split<kSmall>(e, k, ph, pw, c);
  } else {
    index.template split<kSmall>(e, k, c, ph, pw);
  }
}

Index4 bin_index(const RoiPoolShape& s, bool channels_last) {
  return channels_last ? Index4(s.pooled_h, s.pooled_w, s.channels) : Index4(s.channels, s.pooled_h, s.pooled_w);
}

template <typename acc_t, typename scalar_t>
__device__ __forceinline__ int64_t batch_of(const scalar_t* __restrict__ rois, int64_t k, int64_t batch_size) {
  return roi_batch_index(static_cast<acc_t>(rois[k * 5]), batch_size);
}

// ---------------------------------------------------------------------------
// Forward

template <typename scalar_t, bool kChannelsLast, bool kSmall, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreadsPerBlock)
    forward_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ rois,
                   scalar_t* __restrict__ output, int32_t* __restrict__ argmax, const RoiPoolShape s,
                   const Index4 index, const acc_t spatial_scale, const int64_t total, DeviceStatus status) {
  const int64_t height = s.height, width = s.width, channels = s.channels;
  const int64_t stride = kChannelsLast ? channels : 1;
  uint32_t bits = 0;
  int64_t bad_value = 0;
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    int64_t k, c, ph, pw;
    split_bin<kChannelsLast, kSmall>(index, e, k, c, ph, pw);
    const int64_t b = batch_of<acc_t>(rois, k, s.batch_size);
    acc_t best = 0;
    int64_t best_at = -1;
    if (b < 0) {
      if (c == 0 && ph == 0 && pw == 0) {  // one report per bad RoI
        bits |= kBadBatchIndex;
        bad_value = k;
      }
    } else {
      const RoiPoolGrid<acc_t> grid = roi_pool_grid<acc_t>(rois + k * 5 + 1, spatial_scale, s.pooled_h, s.pooled_w);
      const RoiPoolWindow window = roi_pool_window(grid, ph, pw, height, width);
      if (!window.empty()) {
        const scalar_t* plane =
            kChannelsLast ? input + b * height * width * channels + c : input + (b * channels + c) * height * width;
        for (int64_t h = window.h_begin; h < window.h_end; ++h) {
          for (int64_t w = window.w_begin; w < window.w_end; ++w) {
            const int64_t pixel = h * width + w;
            const acc_t v = load_acc(plane + pixel * stride);
            if (best_at < 0 || replaces_max(v, best)) {
              best = v;
              best_at = pixel;
            }
          }
        }
      }
    }
    output[e] = static_cast<scalar_t>(best);
    argmax[e] = static_cast<int32_t>(best_at);
  }
  cuda::report_status(status, bits, bad_value);
}

// ---------------------------------------------------------------------------
// Backward with atomics

template <typename scalar_t, bool kChannelsLast, bool kSmall, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_atomic_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ rois,
                           const int32_t* __restrict__ argmax, acc_t* __restrict__ grad_input, const RoiPoolShape s,
                           const Index4 index, const int64_t total) {
  const int64_t plane = s.height * s.width, channels = s.channels;
  for (int64_t e = int64_t{blockIdx.x} * blockDim.x + threadIdx.x; e < total;
       e += int64_t{gridDim.x} * blockDim.x) {
    const int64_t pixel = __ldg(argmax + e);
    if (pixel < 0 || pixel >= plane) {
      continue;  // an empty bin (or a value no forward produced)
    }
    int64_t k, c, ph, pw;
    split_bin<kChannelsLast, kSmall>(index, e, k, c, ph, pw);
    const int64_t b = batch_of<acc_t>(rois, k, s.batch_size);
    if (b < 0) {
      continue;
    }
    const int64_t offset = kChannelsLast ? (b * plane + pixel) * channels + c : (b * channels + c) * plane + pixel;
    atomicAdd(grad_input + offset, load_acc(grad + e));
  }
}

// ---------------------------------------------------------------------------
// Deterministic backward

// Per RoI: its image (batch_size for a bad RoI, which then belongs to no
// group) and its footprint, the rows and columns [first, last] its non-empty
// windows cover (empty: first > last). A warp per RoI, lanes across the bins.
template <typename scalar_t, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreadsPerBlock)
    footprint_kernel(const scalar_t* __restrict__ rois, const RoiPoolShape s, const acc_t spatial_scale,
                     int64_t* __restrict__ group_of, int64_t* __restrict__ footprint) {
  const int lane = static_cast<int>(threadIdx.x % kWarpSize);
  const int64_t warps = int64_t{gridDim.x} * (blockDim.x / kWarpSize);
  for (int64_t k = (int64_t{blockIdx.x} * blockDim.x + threadIdx.x) / kWarpSize; k < s.num_rois; k += warps) {
    const int64_t b = batch_of<acc_t>(rois, k, s.batch_size);
    int64_t bounds[4] = {INT64_MAX, -1, INT64_MAX, -1};
    if (b >= 0) {
      const RoiPoolGrid<acc_t> grid = roi_pool_grid<acc_t>(rois + k * 5 + 1, spatial_scale, s.pooled_h, s.pooled_w);
      // A window's rows depend on ph only and its columns on pw only.
      for (int64_t ph = lane; ph < s.pooled_h; ph += kWarpSize) {
        const RoiPoolWindow w = roi_pool_window(grid, ph, 0, s.height, s.width);
        if (w.h_end > w.h_begin) {
          bounds[0] = min(bounds[0], w.h_begin);
          bounds[1] = max(bounds[1], w.h_end - 1);
        }
      }
      for (int64_t pw = lane; pw < s.pooled_w; pw += kWarpSize) {
        const RoiPoolWindow w = roi_pool_window(grid, 0, pw, s.height, s.width);
        if (w.w_end > w.w_begin) {
          bounds[2] = min(bounds[2], w.w_begin);
          bounds[3] = max(bounds[3], w.w_end - 1);
        }
      }
    }
    cuda::store_footprint(bounds, lane, k, b >= 0 ? b : s.batch_size, group_of, footprint);
  }
}

template <int kTile>
struct GatherShared {
  int64_t roi[kBatch];
  // Per RoI and tile row (column): the bin rows ph (columns pw) [x, y] whose
  // window covers that row (column); empty when x > y.
  int2 row_span[kBatch][kTile];
  int2 col_span[kBatch][kTile];
  int2 col_union[kBatch];  // the union over the tile's columns
  unsigned hit_mask[2];
};

// Records bin row (or column) `bin`, whose window covers [begin, end), in the
// spans of the tile rows it covers.
template <int kTile>
__device__ __forceinline__ void mark_window(int64_t begin, int64_t end, int64_t tile_first, int bin, int2* spans,
                                            int2* whole) {
  const int64_t first = max(begin, tile_first), last = min(end, tile_first + kTile);
  for (int64_t p = first; p < last; ++p) {
    widen_span(&spans[p - tile_first], bin);
  }
  if (whole != nullptr && first < last) {
    widen_span(whole, bin);
  }
}

template <typename scalar_t, bool kChannelsLast, typename acc_t = at::opmath_type<scalar_t>>
__global__ void __launch_bounds__(kThreadsPerBlock)
    backward_gather_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ rois,
                           const int32_t* __restrict__ argmax, scalar_t* __restrict__ grad_input,
                           const int64_t* __restrict__ order, const int64_t* __restrict__ group_start,
                           const int64_t* __restrict__ footprint, const RoiPoolShape s, const acc_t spatial_scale,
                           const int64_t tiles_x, const int64_t tiles_per_image) {
  constexpr int kTile = kChannelsLast ? kTileChannelsLast : kTileChannelsFirst;
  constexpr int kChunk = kChannelsLast ? kWarpSize * kGatherLaneChannels : kPixelChannels;
  __shared__ GatherShared<kTile> sh;

  const int warp = static_cast<int>(threadIdx.x / kWarpSize);
  const int lane = static_cast<int>(threadIdx.x % kWarpSize);
  const int64_t channels = s.channels, height = s.height, width = s.width;
  const int64_t pooled_h = s.pooled_h, pooled_w = s.pooled_w;
  const int64_t chunks = (channels + kChunk - 1) / kChunk;
  const int64_t tasks = s.batch_size * tiles_per_image;

  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t b = task / tiles_per_image;
    const int64_t tile = task - b * tiles_per_image;
    const int64_t tile_y = (tile / tiles_x) * kTile;
    const int64_t tile_x = (tile % tiles_x) * kTile;
    const int64_t tile_y_last = min(tile_y + kTile, height) - 1;
    const int64_t tile_x_last = min(tile_x + kTile, width) - 1;
    const int64_t begin = group_start[b], end = group_start[b + 1];
    if (begin == end) {
      continue;  // block-uniform: no RoI pools this image, its gradient stays zero
    }

    bool list_is_complete = false;  // the list holds every RoI of the image that meets the tile
    int list_size = 0;
    for (int64_t chunk = blockIdx.y; chunk < chunks; chunk += gridDim.y) {
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
          // Spans: a warp per RoI, lanes across its bin rows and columns.
          for (int j = warp; j < list_size; j += kWarpsPerBlock) {
            const int64_t k = sh.roi[j];
            const RoiPoolGrid<acc_t> grid = roi_pool_grid<acc_t>(rois + k * 5 + 1, spatial_scale, pooled_h, pooled_w);
            cuda::clear_spans<kTile>(sh, j, lane);
            // The host checked pooled sizes below 2^31.
            for (int64_t ph = lane; ph < pooled_h; ph += kWarpSize) {
              const RoiPoolWindow w = roi_pool_window(grid, ph, 0, height, width);
              mark_window<kTile>(w.h_begin, w.h_end, tile_y, static_cast<int>(ph), sh.row_span[j], nullptr);
            }
            for (int64_t pw = lane; pw < pooled_w; pw += kWarpSize) {
              const RoiPoolWindow w = roi_pool_window(grid, 0, pw, height, width);
              mark_window<kTile>(w.w_begin, w.w_end, tile_x, static_cast<int>(pw), sh.col_span[j], &sh.col_union[j]);
            }
          }
          __syncthreads();
        }
        touched = touched || list_size > 0;

        if constexpr (!kChannelsLast) {
          const int row = static_cast<int>(threadIdx.x) / kTile, col = static_cast<int>(threadIdx.x) % kTile;
          const int64_t py = tile_y + row, px = tile_x + col;
          const int64_t c_first = chunk * kChunk;
          const int32_t pixel = static_cast<int32_t>(py * width + px);
          const int64_t bins = pooled_h * pooled_w;
          if (py < height && px < width) {
            for (int j = 0; j < list_size; ++j) {
              const int2 rows = sh.row_span[j][row], cols = sh.col_span[j][col];
              if (rows.x > rows.y || cols.x > cols.y) {
                continue;
              }
              const int64_t k = sh.roi[j];
              for (int ph = rows.x; ph <= rows.y; ++ph) {
                for (int pw = cols.x; pw <= cols.y; ++pw) {
                  const int64_t element = ((k * channels + c_first) * pooled_h + ph) * pooled_w + pw;
#pragma unroll
                  for (int v = 0; v < kChannels; ++v) {
                    if (c_first + v < channels && __ldg(argmax + element + v * bins) == pixel) {
                      sum[0][v] = add_rn(sum[0][v], load_acc(grad + element + v * bins));
                    }
                  }
                }
              }
            }
          }
        } else {
          const int64_t py = tile_y + warp;
          const int64_t c0 = chunk * kChunk + lane;
          const int64_t row_start = py * width + tile_x;  // argmax of the tile row's first pixel
          if (py < height) {
            for (int j = 0; j < list_size; ++j) {
              const int2 rows = sh.row_span[j][warp], cols = sh.col_union[j];
              if (rows.x > rows.y || cols.x > cols.y) {
                continue;
              }
              const int64_t k = sh.roi[j];
              for (int ph = rows.x; ph <= rows.y; ++ph) {
                for (int pw = cols.x; pw <= cols.y; ++pw) {
                  const int64_t element = ((k * pooled_h + ph) * pooled_w + pw) * channels + c0;
#pragma unroll
                  for (int v = 0; v < kChannels; ++v) {
                    if (c0 + v * kWarpSize >= channels) {
                      continue;
                    }
                    const int64_t column = __ldg(argmax + element + v * kWarpSize) - row_start;
                    if (column < 0 || column >= kTile || tile_x + column >= width) {
                      continue;  // not a pixel of this tile row
                    }
                    const acc_t g = load_acc(grad + element + v * kWarpSize);
                    // The column selects a register by an unrolled comparison, not an index.
#pragma unroll
                    for (int q = 0; q < kPixels; ++q) {
                      if (q == column) {
                        sum[q][v] = add_rn(sum[q][v], g);
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

constexpr const char* kForwardOp = "roi_pool";
constexpr const char* kBackwardOp = "_roi_pool_backward";

bool fits_int32(int64_t n) { return n <= std::numeric_limits<int32_t>::max(); }

void check_plane_fits_argmax(const char* op, const char* name, int64_t height, int64_t width) {
  TORCH_CHECK(fits_int32(height) && fits_int32(width) && fits_int32(height * width), op, ": ", name,
              "'s height * width (", height, " * ", width, ") must be below 2^31, since argmax is int32");
}

RoiPoolShape make_shape(const RoiProblem& p) {
  return {p.num_rois, p.batch_size, p.channels, p.heights[0], p.widths[0], p.pooled_h, p.pooled_w};
}

std::tuple<at::Tensor, at::Tensor> roi_pool_cuda(const at::Tensor& input, const at::Tensor& rois_in,
                                                 double spatial_scale, int64_t pooled_height, int64_t pooled_width) {
  const c10::cuda::CUDAGuard device_guard(input.device());
  std::vector<at::Tensor> maps;
  const RoiProblem p =
      make_roi_problem(kForwardOp, input, rois_in, std::nullopt, spatial_scale, pooled_height, pooled_width, maps);
  check_plane_fits_argmax(kForwardOp, "input", p.heights[0], p.widths[0]);
  at::Tensor output = empty_roi_output(p, maps[0].options());
  at::Tensor argmax = empty_roi_output(p, maps[0].options().dtype(at::kInt));
  if (output.numel() == 0) {
    return {output, argmax};
  }
  if (p.batch_size == 0) {
    // No RoI can name an image. Graph capture cannot raise, so it gets empty bins.
    if (cuda::stream_is_capturing()) {
      output.zero_();
      argmax.fill_(-1);
      return {output, argmax};
    }
    throw_bad_roi(kForwardOp, 0, false, p.batch_size, p.num_levels);
  }
  const at::Tensor rois = rois_in.contiguous();
  at::Tensor status = at::zeros({2}, rois.options().dtype(at::kLong));
  const DeviceStatus device_status{reinterpret_cast<unsigned long long*>(status.data_ptr<int64_t>())};
  const auto stream = at::cuda::getCurrentCUDAStream();
  const RoiPoolShape shape = make_shape(p);
  const Index4 index = bin_index(shape, p.channels_last);
  const int64_t total = output.numel();
  const unsigned int blocks = cuda::grid_blocks(total);
  const bool small = fits_int32(total);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "roi_pool", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto scale = static_cast<acc_t>(spatial_scale);
    const scalar_t* in = maps[0].const_data_ptr<scalar_t>();
    const scalar_t* roi_ptr = rois.const_data_ptr<scalar_t>();
    scalar_t* out = output.data_ptr<scalar_t>();
    int32_t* arg = argmax.data_ptr<int32_t>();
    const auto launch = [&](auto channels_last_tag, auto small_tag) {
      forward_kernel<scalar_t, decltype(channels_last_tag)::value, decltype(small_tag)::value>
          <<<blocks, kThreadsPerBlock, 0, stream>>>(in, roi_ptr, out, arg, shape, index, scale, total,
                                                    device_status);
    };
    if (p.channels_last) {
      small ? launch(std::true_type{}, std::true_type{}) : launch(std::true_type{}, std::false_type{});
    } else {
      small ? launch(std::false_type{}, std::true_type{}) : launch(std::false_type{}, std::false_type{});
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  if (!cuda::stream_is_capturing()) {
    const cuda::HostStatus host = cuda::read_status(status);
    if (host.bits != 0) {
      throw_bad_roi(kForwardOp, host.bad_value, false, p.batch_size, p.num_levels);
    }
  }
  return {output, argmax};
}

template <typename scalar_t>
void launch_backward_atomic(const RoiProblem& p, const at::Tensor& grad, const at::Tensor& rois,
                            const at::Tensor& argmax, at::Tensor& accumulator) {
  using acc_t = at::opmath_type<scalar_t>;
  const RoiPoolShape shape = make_shape(p);
  const Index4 index = bin_index(shape, p.channels_last);
  const int64_t total = grad.numel();
  const unsigned int blocks = cuda::grid_blocks(total);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const scalar_t* grad_ptr = grad.const_data_ptr<scalar_t>();
  const scalar_t* roi_ptr = rois.const_data_ptr<scalar_t>();
  const int32_t* arg = argmax.const_data_ptr<int32_t>();
  acc_t* acc = accumulator.data_ptr<acc_t>();
  const auto launch = [&](auto channels_last_tag, auto small_tag) {
    backward_atomic_kernel<scalar_t, decltype(channels_last_tag)::value, decltype(small_tag)::value>
        <<<blocks, kThreadsPerBlock, 0, stream>>>(grad_ptr, roi_ptr, arg, acc, shape, index, total);
  };
  const bool small = fits_int32(total);
  if (p.channels_last) {
    small ? launch(std::true_type{}, std::true_type{}) : launch(std::true_type{}, std::false_type{});
  } else {
    small ? launch(std::false_type{}, std::true_type{}) : launch(std::false_type{}, std::false_type{});
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename scalar_t>
void launch_backward_gather(const RoiProblem& p, const at::Tensor& grad, const at::Tensor& rois,
                            const at::Tensor& argmax, at::Tensor& grad_input) {
  using acc_t = at::opmath_type<scalar_t>;
  TORCH_CHECK(fits_int32(std::max(p.pooled_h, p.pooled_w)), kBackwardOp,
              ": the deterministic backward needs output_size below 2^31, got (", p.pooled_h, ", ", p.pooled_w, ")");
  const RoiPoolShape shape = make_shape(p);
  const auto scale = static_cast<acc_t>(p.spatial_scales[0]);
  const auto stream = at::cuda::getCurrentCUDAStream();
  const auto long_options = rois.options().dtype(at::kLong);
  const scalar_t* roi_ptr = rois.const_data_ptr<scalar_t>();

  // Group the RoIs by image, ascending RoI order within an image.
  at::Tensor group_of = at::empty({p.num_rois}, long_options);
  at::Tensor footprint = at::empty({p.num_rois, 4}, long_options);
  footprint_kernel<scalar_t><<<cuda::grid_blocks(p.num_rois * kWarpSize), kThreadsPerBlock, 0, stream>>>(
      roi_ptr, shape, scale, group_of.data_ptr<int64_t>(), footprint.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  const auto [sorted_groups, order] = at::sort(group_of, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  const at::Tensor group_start = at::searchsorted(sorted_groups, at::arange(p.batch_size + 1, long_options));

  const int64_t tile = p.channels_last ? kTileChannelsLast : kTileChannelsFirst;
  const int64_t tiles_x = (shape.width + tile - 1) / tile;
  const int64_t tiles_per_image = tiles_x * ((shape.height + tile - 1) / tile);
  const int64_t tasks = p.batch_size * tiles_per_image;
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
  const int32_t* arg = argmax.const_data_ptr<int32_t>();
  scalar_t* out = grad_input.data_ptr<scalar_t>();
  const int64_t* order_ptr = order.const_data_ptr<int64_t>();
  const int64_t* start_ptr = group_start.const_data_ptr<int64_t>();
  const int64_t* footprint_ptr = footprint.const_data_ptr<int64_t>();
  if (p.channels_last) {
    backward_gather_kernel<scalar_t, true><<<blocks, kThreadsPerBlock, 0, stream>>>(
        grad_ptr, roi_ptr, arg, out, order_ptr, start_ptr, footprint_ptr, shape, scale, tiles_x, tiles_per_image);
  } else {
    backward_gather_kernel<scalar_t, false><<<blocks, kThreadsPerBlock, 0, stream>>>(
        grad_ptr, roi_ptr, arg, out, order_ptr, start_ptr, footprint_ptr, shape, scale, tiles_x, tiles_per_image);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

at::Tensor roi_pool_backward_cuda(const at::Tensor& grad_in, const at::Tensor& rois_in, const at::Tensor& argmax_in,
                                  double spatial_scale, int64_t pooled_height, int64_t pooled_width,
                                  int64_t batch_size, int64_t channels, int64_t height, int64_t width,
                                  bool deterministic) {
  const c10::cuda::CUDAGuard device_guard(grad_in.device());
  at::Tensor grad = grad_in;
  const RoiProblem p = make_roi_backward_problem(kBackwardOp, grad, rois_in, std::nullopt, spatial_scale,
                                                 pooled_height, pooled_width, batch_size, channels, height, width);
  TORCH_CHECK(argmax_in.scalar_type() == at::kInt, kBackwardOp, ": argmax must be int32, got ",
              argmax_in.scalar_type());
  TORCH_CHECK(argmax_in.sizes() == grad.sizes(), kBackwardOp, ": argmax must have the shape of grad ", grad.sizes(),
              ", got ", argmax_in.sizes());
  TORCH_CHECK(argmax_in.device() == grad.device(), kBackwardOp, ": argmax must be on the device of grad (",
              grad.device(), "), got ", argmax_in.device());
  check_plane_fits_argmax(kBackwardOp, "the input", height, width);
  const bool accumulate_in_float =
      !deterministic && (grad.scalar_type() == at::kHalf || grad.scalar_type() == at::kBFloat16);
  at::Tensor grad_input =
      zeros_roi_input_grads(p, accumulate_in_float ? grad.options().dtype(at::kFloat) : grad.options())[0];
  if (grad.numel() > 0 && p.batch_size > 0 && height > 0 && width > 0) {
    const at::Tensor rois = rois_in.contiguous();
    const at::Tensor argmax =
        argmax_in.contiguous(p.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "_roi_pool_backward", [&] {
      if (deterministic) {
        launch_backward_gather<scalar_t>(p, grad, rois, argmax, grad_input);
      } else {
        launch_backward_atomic<scalar_t>(p, grad, rois, argmax, grad_input);
      }
    });
  }
  return accumulate_in_float ? grad_input.to(grad.scalar_type()) : grad_input;  // .to keeps the layout
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, CUDA, m) {
  m.impl("roi_pool", &roi_pool_cuda);
  m.impl("_roi_pool_backward", &roi_pool_backward_cuda);
}

}  // namespace fastops
