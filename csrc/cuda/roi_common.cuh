#pragma once
// Device helpers shared by the RoI kernels (roi_align.cu, roi_pool.cu):
// splitting a flat element index into four coordinates, read-only loads
// widened to the accumulation type, and the geometry, RoI lists, span
// bookkeeping and write-back of the deterministic gathers.

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <climits>
#include <cstdint>
#include <type_traits>

#include "common/fast_divmod.h"
#include "cuda/launch.cuh"

namespace fastops::cuda {

constexpr int kWarpSize = 32;
constexpr int kWarpsPerBlock = kThreadsPerBlock / kWarpSize;

// Deterministic backward: RoIs held in shared memory per round.
constexpr int kBatch = 64;
// Channels-first: 16 x 16 pixel tiles, one pixel and kPixelChannels channels per thread.
constexpr int kTileChannelsFirst = 16;
constexpr int kPixelChannels = 8;
// Channels-last: 8 x 8 pixel tiles, a warp per tile row, lanes across
// 32 * kGatherLaneChannels consecutive channels.
constexpr int kTileChannelsLast = 8;
constexpr int kGatherLaneChannels = 2;
static_assert(kTileChannelsFirst * kTileChannelsFirst == kThreadsPerBlock, "one pixel per thread");
static_assert(kTileChannelsLast == kWarpsPerBlock, "one tile row per warp");
static_assert(kBatch == 2 * kWarpSize, "the RoI list is compacted with the ballots of two warps");

// Splits e = ((a * n1 + b) * n2 + c) * n3 + d. With kSmall (every index below
// 2^31) by multiply-shift; 64-bit divisions otherwise.
struct Index4 {
  FastDivmod div1, div2, div3;
  int64_t n1, n2, n3;

  Index4(int64_t size1, int64_t size2, int64_t size3) : n1(size1), n2(size2), n3(size3) {
    const auto small = [](int64_t n) { return static_cast<uint32_t>(std::min<int64_t>(n, INT32_MAX)); };
    div1 = FastDivmod(small(size1));
    div2 = FastDivmod(small(size2));
    div3 = FastDivmod(small(size3));
  }

  template <bool kSmall>
  __device__ __forceinline__ void split(int64_t e, int64_t& a, int64_t& b, int64_t& c, int64_t& d) const {
    if (kSmall) {
      uint32_t rest = static_cast<uint32_t>(e);
      uint32_t r;
      div3.divmod(rest, rest, r);
      d = r;
      div2.divmod(rest, rest, r);
      c = r;
      div1.divmod(rest, rest, r);
      b = r;
      a = rest;
    } else {
      d = e % n3;
      e /= n3;
      c = e % n2;
      e /= n2;
      b = e % n1;
      a = e / n1;
    }
  }
};

// A read-only load through the non-coherent cache, widened to acc_t.
template <typename scalar_t>
__device__ __forceinline__ at::opmath_type<scalar_t> load_acc(const scalar_t* p) {
  using acc_t = at::opmath_type<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, c10::Half>) {
    return static_cast<acc_t>(c10::Half(__ldg(reinterpret_cast<const unsigned short*>(p)), c10::Half::from_bits()));
  } else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) {
    return static_cast<acc_t>(
        c10::BFloat16(__ldg(reinterpret_cast<const unsigned short*>(p)), c10::BFloat16::from_bits()));
  } else {
    return __ldg(p);
  }
}

// Widens the [x, y] range of `span` to include `value` (shared memory, many writers).
__device__ __forceinline__ void widen_span(int2* span, int value) {
  atomicMin(&span->x, value);
  atomicMax(&span->y, value);
}

// Footprint kernels: reduces the bounds a warp's lanes found for RoI k (rows
// [0] first, [1] last, columns [2] first, [3] last) across the warp, and lane
// 0 stores them with the RoI's group. Every lane of the warp takes part.
__device__ __forceinline__ void store_footprint(int64_t (&bounds)[4], int lane, int64_t k, int64_t group,
                                                int64_t* __restrict__ group_of, int64_t* __restrict__ footprint) {
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) {
    bounds[0] = min(bounds[0], __shfl_xor_sync(0xffffffffu, bounds[0], offset));
    bounds[1] = max(bounds[1], __shfl_xor_sync(0xffffffffu, bounds[1], offset));
    bounds[2] = min(bounds[2], __shfl_xor_sync(0xffffffffu, bounds[2], offset));
    bounds[3] = max(bounds[3], __shfl_xor_sync(0xffffffffu, bounds[3], offset));
  }
  if (lane == 0) {
    group_of[k] = group;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      footprint[k * 4 + i] = bounds[i];
    }
  }
}

// Collects into sh.roi, in ascending order, the next RoIs order[next ...]
// (up to order[end)) whose footprint meets the tile [tile_y, tile_y_last] x
// [tile_x, tile_x_last], at most kBatch, compacted with the ballots of the
// first two warps; advances `next`. Sets list_size, and list_is_complete when
// one round starting at `begin` held them all. Every thread of the block
// calls it: it synchronises the block.
template <typename Shared>
__device__ __forceinline__ void collect_rois(Shared& sh, const int64_t* __restrict__ order,
                                             const int64_t* __restrict__ footprint, int64_t begin, int64_t end,
                                             int64_t& next, int64_t tile_y, int64_t tile_y_last, int64_t tile_x,
                                             int64_t tile_x_last, int& list_size, bool& list_is_complete) {
  const int warp = static_cast<int>(threadIdx.x / kWarpSize);
  const int lane = static_cast<int>(threadIdx.x % kWarpSize);
  __syncthreads();  // the previous round's readers of the list are done
  const bool from_start = next == begin;
  int filled = 0;
  while (filled < kBatch && next < end) {
    const int want = static_cast<int>(min(int64_t{kBatch - filled}, end - next));
    bool hit = false;
    int64_t k = 0;
    if (static_cast<int>(threadIdx.x) < want) {
      k = order[next + threadIdx.x];
      const int64_t* f = footprint + k * 4;
      hit = f[0] <= tile_y_last && f[1] >= tile_y && f[2] <= tile_x_last && f[3] >= tile_x;
    }
    if (threadIdx.x < kBatch) {
      const unsigned mask = __ballot_sync(0xffffffffu, hit);
      if (lane == 0) {
        sh.hit_mask[warp] = mask;
      }
    }
    __syncthreads();
    const unsigned first_mask = sh.hit_mask[0], second_mask = sh.hit_mask[1];
    if (hit) {
      const unsigned mine = warp == 0 ? first_mask : second_mask;
      const int position = filled + (warp == 0 ? 0 : __popc(first_mask)) + __popc(mine & ((1u << lane) - 1u));
      sh.roi[position] = k;
    }
    filled += __popc(first_mask) + __popc(second_mask);
    next += want;
    __syncthreads();  // hit_mask is rewritten by the next round; roi[] is read below
  }
  list_size = filled;
  if (from_start && next == end) {
    list_is_complete = true;  // one round held them all: later chunks reuse the list
  }
}

// Empties the spans of list entry j (sh.row_span[j], sh.col_span[j],
// sh.col_union[j]). Every lane of the warp calls it; it synchronises the warp.
template <int kTile, typename Shared>
__device__ __forceinline__ void clear_spans(Shared& sh, int j, int lane) {
  if (lane == 0) {
    sh.col_union[j] = make_int2(INT_MAX, -1);
  }
  for (int q = lane; q < kTile; q += kWarpSize) {
    sh.row_span[j][q] = make_int2(INT_MAX, -1);
    sh.col_span[j][q] = make_int2(INT_MAX, -1);
  }
  __syncwarp();
}

template <typename acc_t, int kPixels, int kChannels>
__device__ __forceinline__ void zero_sums(acc_t (&sum)[kPixels][kChannels]) {
#pragma unroll
  for (int q = 0; q < kPixels; ++q) {
#pragma unroll
    for (int v = 0; v < kChannels; ++v) {
      sum[q][v] = 0;
    }
  }
}

// Writes a gather's sums for channel chunk `chunk` of the tile at (tile_y,
// tile_x) of image b: channels-first one pixel per thread, channels-last the
// kPixels pixels of the warp's tile row.
template <bool kChannelsLast, int kTile, int kChunk, typename scalar_t, typename acc_t, int kPixels, int kChannels>
__device__ __forceinline__ void store_sums(const acc_t (&sum)[kPixels][kChannels], scalar_t* grad_input, int64_t b,
                                           int64_t chunk, int64_t channels, int64_t height, int64_t width,
                                           int64_t tile_y, int64_t tile_x) {
  const int warp = static_cast<int>(threadIdx.x / kWarpSize);
  const int lane = static_cast<int>(threadIdx.x % kWarpSize);
  if constexpr (!kChannelsLast) {
    const int row = static_cast<int>(threadIdx.x) / kTile, col = static_cast<int>(threadIdx.x) % kTile;
    const int64_t py = tile_y + row, px = tile_x + col;
    const int64_t c_first = chunk * kChunk;
    if (py < height && px < width) {
#pragma unroll
      for (int v = 0; v < kChannels; ++v) {
        if (c_first + v < channels) {
          grad_input[((b * channels + c_first + v) * height + py) * width + px] = static_cast<scalar_t>(sum[0][v]);
        }
      }
    }
  } else {
    const int64_t py = tile_y + warp;
    const int64_t c0 = chunk * kChunk + lane;
    if (py < height) {
#pragma unroll
      for (int q = 0; q < kPixels; ++q) {
        if (tile_x + q < width) {
          scalar_t* pixel = grad_input + ((b * height + py) * width + tile_x + q) * channels + c0;
#pragma unroll
          for (int v = 0; v < kChannels; ++v) {
            if (c0 + v * kWarpSize < channels) {
              pixel[v * kWarpSize] = static_cast<scalar_t>(sum[q][v]);
            }
          }
        }
      }
    }
  }
}

}  // namespace fastops::cuda
