#pragma once
// Geometry of max-pooling windows, shared by max_unpool and
// max_pool_with_offsets and by their CPU and CUDA kernels, so the CPU tests
// exercise the arithmetic the GPU runs.
//
// Vocabulary. A pooling layer maps a *plane* (the unpooled spatial grid, the
// output of max_unpool) to a grid of *windows* (the pooled grid, the input of
// max_unpool). Window i along a dimension covers plane positions
// [i*stride - padding, i*stride - padding + kernel). Every problem is handled
// as 3-D (depth, height, width): 1-D and 2-D pooling set the leading
// dimensions to size 1 with kernel 1, stride 1 and padding 0.
//
// Tensors are [N, C, spatial...] in one of two dense layouts: channels-first
// (NCHW) or channels-last (NHWC). Either way one (n, c) plane is a strided 1-D
// array: stride 1 when channels-first, stride C when channels-last.

#include <c10/macros/Macros.h>

#include <cstdint>
#include <limits>

#include "common/fast_divmod.h"

namespace fastops {

constexpr int kSpatialDims = 3;

// An int8 window offset encodes the position inside a window as
// (r_depth * kernel_h + r_height) * kernel_w + r_width, so windows hold at most
// 128 elements.
constexpr int64_t kMaxOffsetWindowVolume = 128;

struct PoolWindows {
  int64_t windows[kSpatialDims];  // pooled grid (max_unpool input, max_pool output)
  int64_t plane[kSpatialDims];    // unpooled grid (max_unpool output, max_pool input)
  int64_t kernel[kSpatialDims];
  int64_t stride[kSpatialDims];
  int64_t padding[kSpatialDims];  // >= 0
  // Divisions by the stride and kernel sizes as multiply-shifts; call
  // init_divisors() after filling the sizes.
  FastDivmod stride_div[kSpatialDims];
  FastDivmod kernel_div[kSpatialDims];
  FastDivmod plane_div[kSpatialDims];
  bool plane_fits_int32 = false;  // plane_div is valid only then

  void init_divisors() {
    plane_fits_int32 = plane_numel() > 0 && plane_numel() <= std::numeric_limits<int32_t>::max();
    for (int d = 0; d < kSpatialDims; ++d) {
      stride_div[d] = FastDivmod(static_cast<uint32_t>(stride[d]));
      kernel_div[d] = FastDivmod(static_cast<uint32_t>(kernel[d]));
      plane_div[d] = FastDivmod(static_cast<uint32_t>(plane_fits_int32 ? plane[d] : 1));
    }
  }

  // Coordinates of plane-linear position `linear` (0 <= linear < plane_numel()).
  C10_HOST_DEVICE void plane_coordinates(int64_t linear, int64_t pos[kSpatialDims]) const {
    if (plane_fits_int32) {
      uint32_t rest = static_cast<uint32_t>(linear), p;
      plane_div[2].divmod(rest, rest, p);
      pos[2] = p;
      plane_div[1].divmod(rest, rest, p);
      pos[1] = p;
      pos[0] = rest;
    } else {
      pos[2] = linear % plane[2];
      pos[1] = (linear / plane[2]) % plane[1];
      pos[0] = linear / (plane[2] * plane[1]);
    }
  }

  // v / stride[d] for v >= 0.
  C10_HOST_DEVICE int64_t div_stride(int d, int64_t v) const {
    return v <= std::numeric_limits<int32_t>::max() ? int64_t{stride_div[d].div(static_cast<uint32_t>(v))} : v / stride[d];
  }

  C10_HOST_DEVICE int64_t window_count() const { return windows[0] * windows[1] * windows[2]; }
  C10_HOST_DEVICE int64_t plane_numel() const { return plane[0] * plane[1] * plane[2]; }
  C10_HOST_DEVICE int64_t window_volume() const { return kernel[0] * kernel[1] * kernel[2]; }

  C10_HOST_DEVICE int64_t window_start(int d, int64_t i) const { return i * stride[d] - padding[d]; }

  C10_HOST_DEVICE int64_t plane_linear(const int64_t pos[kSpatialDims]) const {
    return (pos[0] * plane[1] + pos[1]) * plane[2] + pos[2];
  }
  C10_HOST_DEVICE int64_t window_linear(const int64_t w[kSpatialDims]) const {
    return (w[0] * windows[1] + w[1]) * windows[2] + w[2];
  }
};

// Windows along dimension d whose span contains plane position `pos`
// (0 <= pos): the inclusive range [first, last], empty when first > last.
//   i*s - p <= pos           <=>  i <= floor((pos + p) / s)
//   pos < i*s - p + k        <=>  i >= floor((pos + p - k) / s) + 1
C10_HOST_DEVICE inline void covering_windows(const PoolWindows& g, int d, int64_t pos,
                                             int64_t& first, int64_t& last) {
  const int64_t shifted = pos + g.padding[d];  // >= 0
  last = g.div_stride(d, shifted);
  if (last > g.windows[d] - 1) {
    last = g.windows[d] - 1;
  }
  first = shifted >= g.kernel[d] ? g.div_stride(d, shifted - g.kernel[d]) + 1 : 0;
}

// True when windows never overlap (kernel <= stride in every dimension): each
// plane position then lies in at most one window.
C10_HOST_DEVICE inline bool windows_disjoint(const PoolWindows& g) {
  return g.kernel[0] <= g.stride[0] && g.kernel[1] <= g.stride[1] && g.kernel[2] <= g.stride[2];
}

// True when every window shares at least one position with the plane. Window
// starts increase with i, so checking the first and the last window suffices.
C10_HOST_DEVICE inline bool every_window_meets_plane(const PoolWindows& g) {
  for (int d = 0; d < kSpatialDims; ++d) {
    if (g.windows[d] == 0) {
      continue;
    }
    const bool first_meets = g.window_start(d, 0) + g.kernel[d] > 0;
    const bool last_meets = g.window_start(d, g.windows[d] - 1) < g.plane[d];
    if (!first_meets || !last_meets) {
      return false;
    }
  }
  return true;
}

// With disjoint windows, the plane positions along d that window i owns: from
// its start (0 for the first window) to the next window's start (the plane's
// end for the last), so the windows' bands tile the plane; positions of a band
// outside the window's span (gaps, trailing rows) hold zeros after unpooling.
C10_HOST_DEVICE inline void disjoint_band(const PoolWindows& g, int d, int64_t i, int64_t& lo, int64_t& hi) {
  const int64_t start = g.window_start(d, i);
  lo = i == 0 ? 0 : (start > 0 ? start : 0);
  if (i + 1 == g.windows[d]) {
    hi = g.plane[d];
  } else {
    const int64_t next = g.window_start(d, i + 1);
    hi = next < 0 ? 0 : (next < g.plane[d] ? next : g.plane[d]);
  }
}

// The plane position a window designates to validate its stored index: its
// first position inside the plane. Exactly one gather thread visits it.
C10_HOST_DEVICE inline bool is_window_checker(const PoolWindows& g, const int64_t w[kSpatialDims],
                                              const int64_t pos[kSpatialDims]) {
  for (int d = 0; d < kSpatialDims; ++d) {
    const int64_t start = g.window_start(d, w[d]);
    if (pos[d] != (start > 0 ? start : 0)) {
      return false;
    }
  }
  return true;
}

// Plane position of offset `offset` (0 <= offset < window volume) inside window w.
C10_HOST_DEVICE inline void offset_to_position(const PoolWindows& g, const int64_t w[kSpatialDims],
                                               int64_t offset, int64_t pos[kSpatialDims]) {
  // 0 <= offset < 128, so the 32-bit divisions are exact.
  uint32_t rest, r0, r1, r2;
  g.kernel_div[2].divmod(static_cast<uint32_t>(offset), rest, r2);
  g.kernel_div[1].divmod(rest, r0, r1);
  pos[0] = g.window_start(0, w[0]) + r0;
  pos[1] = g.window_start(1, w[1]) + r1;
  pos[2] = g.window_start(2, w[2]) + r2;
}

C10_HOST_DEVICE inline bool position_in_plane(const PoolWindows& g, const int64_t pos[kSpatialDims]) {
  return pos[0] >= 0 && pos[0] < g.plane[0] && pos[1] >= 0 && pos[1] < g.plane[1] &&
         pos[2] >= 0 && pos[2] < g.plane[2];
}

// Plane-linear position named by int8 offset `offset` inside window w, or -1
// when it is no valid offset or names a position outside the plane.
C10_HOST_DEVICE inline int64_t offset_target(const PoolWindows& g, const int64_t w[kSpatialDims],
                                             int64_t offset) {
  if (offset < 0 || offset >= g.window_volume()) {
    return -1;
  }
  int64_t pos[kSpatialDims];
  offset_to_position(g, w, offset, pos);
  return position_in_plane(g, pos) ? g.plane_linear(pos) : -1;
}

// Calls visit(window_linear, w) for every window whose span contains plane
// position `pos`, in *descending* raster order of the windows.
template <typename Visit>
C10_HOST_DEVICE inline void for_each_covering_window(const PoolWindows& g,
                                                     const int64_t pos[kSpatialDims], Visit&& visit) {
  int64_t first[kSpatialDims];
  int64_t last[kSpatialDims];
  for (int d = 0; d < kSpatialDims; ++d) {
    covering_windows(g, d, pos[d], first[d], last[d]);
    if (first[d] > last[d]) {
      return;
    }
  }
  int64_t w[kSpatialDims];
  for (w[0] = last[0]; w[0] >= first[0]; --w[0]) {
    for (w[1] = last[1]; w[1] >= first[1]; --w[1]) {
      for (w[2] = last[2]; w[2] >= first[2]; --w[2]) {
        visit(g.window_linear(w), w);
      }
    }
  }
}

// Coordinates of element `e` of a dense [N, C, S0, S1, S2] tensor stored
// channels-first, or [N, S0, S1, S2, C] stored channels-last.
//   pos:     the spatial coordinates;
//   outer:   n * C + c when channels-first, n when channels-last;
//   channel: c when channels-last, 0 when channels-first.
// The (n, c) plane of any tensor of the same layout with spatial volume V then
// starts at plane_base(outer, channel, V) and has stride plane_stride().
// decompose() needs e < 2^31; decompose64() serves larger tensors.
template <bool kChannelsLast>
struct ElementDecomposer {
  FastDivmod size_div[kSpatialDims];
  FastDivmod channel_div;
  int64_t sizes[kSpatialDims] = {1, 1, 1};
  int64_t channels = 1;

  ElementDecomposer() = default;
  ElementDecomposer(const int64_t spatial[kSpatialDims], int64_t num_channels) : channels(num_channels) {
    for (int d = 0; d < kSpatialDims; ++d) {
      sizes[d] = spatial[d];
      size_div[d] = FastDivmod(static_cast<uint32_t>(spatial[d]));
    }
    channel_div = FastDivmod(static_cast<uint32_t>(num_channels));
  }

  C10_HOST_DEVICE int64_t plane_stride() const { return kChannelsLast ? channels : 1; }

  C10_HOST_DEVICE int64_t plane_base(int64_t outer, int64_t channel, int64_t volume) const {
    return kChannelsLast ? outer * volume * channels + channel : outer * volume;
  }

  C10_HOST_DEVICE inline void decompose(uint32_t e, int64_t pos[kSpatialDims], int64_t& outer,
                                        int64_t& channel) const {
    uint32_t rest = e;
    uint32_t c = 0;
    if (kChannelsLast) {
      channel_div.divmod(rest, rest, c);
    }
    uint32_t p;
    for (int d = kSpatialDims - 1; d >= 0; --d) {
      size_div[d].divmod(rest, rest, p);
      pos[d] = p;
    }
    outer = rest;
    channel = c;
  }

  // decompose() when kSmall (the tensor has fewer than 2^31 elements), else decompose64().
  template <bool kSmall>
  C10_HOST_DEVICE inline void decompose_any(int64_t e, int64_t pos[kSpatialDims], int64_t& outer,
                                            int64_t& channel) const {
    if (kSmall) {
      decompose(static_cast<uint32_t>(e), pos, outer, channel);
    } else {
      decompose64(e, pos, outer, channel);
    }
  }

  C10_HOST_DEVICE inline void decompose64(int64_t e, int64_t pos[kSpatialDims], int64_t& outer,
                                          int64_t& channel) const {
    int64_t rest = e;
    channel = 0;
    if (kChannelsLast) {
      channel = rest % channels;
      rest /= channels;
    }
    for (int d = kSpatialDims - 1; d >= 0; --d) {
      pos[d] = rest % sizes[d];
      rest /= sizes[d];
    }
    outer = rest;
  }
};

}  // namespace fastops
