#pragma once
// Per-element math of max-unpooling, shared by the CPU and CUDA kernels.
//
// The forward is a gather: output position o takes the value of the window
// that covers o and whose stored index names o (the last such window in raster
// order, which is the last writer of PyTorch's CPU scatter), or 0. That is
// exact whenever every stored index lies inside its own window, which is what
// max-pooling produces. One thread per window (its "checker" position, see
// pooling_window_math.h) classifies the window's index, so a stray index (in
// the plane but outside its window) sends the call to the scatter path and an
// index outside the plane raises.
//
// Indices come in two encodings: int64 flat positions in the plane (PyTorch's)
// and int8 offsets inside the window (max_pool_with_offsets).

#include <c10/macros/Macros.h>

#include <cstdint>

#include "ops/pooling_window_math.h"

namespace fastops {

// Status bits the unpool kernels OR together.
enum UnpoolStatus : uint32_t {
  kUnpoolIndexInWindow = 0,
  kUnpoolIndexStray = 1,       // inside the plane, outside its window: take the scatter path
  kUnpoolIndexOutOfRange = 2,  // outside the plane, or an offset outside the window: an error
};

// Plane-linear position the stored index of window w names, or -1 when it names
// no position of the plane.
C10_HOST_DEVICE inline int64_t unpool_target(const PoolWindows& g, const int64_t /*w*/[kSpatialDims],
                                             int64_t stored) {
  return (stored >= 0 && stored < g.plane_numel()) ? stored : -1;
}

C10_HOST_DEVICE inline int64_t unpool_target(const PoolWindows& g, const int64_t w[kSpatialDims],
                                             int8_t stored) {
  return offset_target(g, w, stored);
}

// Status of the index stored for window w.
C10_HOST_DEVICE inline uint32_t classify_unpool_index(const PoolWindows& g, const int64_t w[kSpatialDims],
                                                      int64_t stored) {
  if (stored < 0 || stored >= g.plane_numel()) {
    return kUnpoolIndexOutOfRange;
  }
  int64_t pos[kSpatialDims];
  g.plane_coordinates(stored, pos);
  for (int d = 0; d < kSpatialDims; ++d) {
    const int64_t start = g.window_start(d, w[d]);
    if (pos[d] < start || pos[d] >= start + g.kernel[d]) {
      return kUnpoolIndexStray;
    }
  }
  return kUnpoolIndexInWindow;
}

C10_HOST_DEVICE inline uint32_t classify_unpool_index(const PoolWindows& g, const int64_t w[kSpatialDims],
                                                      int8_t stored) {
  // An offset is inside its window by construction; it is only wrong when it
  // is no valid offset or names a position outside the plane.
  return unpool_target(g, w, stored) < 0 ? kUnpoolIndexOutOfRange : kUnpoolIndexInWindow;
}

// The gather of one output position: returns the window whose value lands at
// plane position `pos` (linear `pos_linear`), or -1 for a zero. Windows checked
// by this position report their status into `status` / `bad_value`.
// `plane_indices` is the (n, c) plane of the indices, `index_stride` its stride.
template <typename index_t>
C10_HOST_DEVICE inline int64_t unpool_gather_source(const PoolWindows& g, const int64_t pos[kSpatialDims],
                                                    int64_t pos_linear, const index_t* plane_indices,
                                                    int64_t index_stride, uint32_t& status,
                                                    int64_t& bad_value) {
  int64_t source = -1;
  for_each_covering_window(g, pos, [&](int64_t window, const int64_t w[kSpatialDims]) {
    const index_t stored = plane_indices[window * index_stride];
    // Windows arrive in descending raster order: the first match is the last writer.
    if (source < 0 && unpool_target(g, w, stored) == pos_linear) {
      source = window;
    }
    if (is_window_checker(g, w, pos)) {
      const uint32_t window_status = classify_unpool_index(g, w, stored);
      if (window_status != kUnpoolIndexInWindow) {
        status |= window_status;
        bad_value = static_cast<int64_t>(stored);
      }
    }
  });
  return source;
}

// Decomposes a window's linear index into its coordinates.
C10_HOST_DEVICE inline void window_coordinates(const PoolWindows& g, int64_t window, int64_t w[kSpatialDims]) {
  w[2] = window % g.windows[2];
  w[1] = (window / g.windows[2]) % g.windows[1];
  w[0] = window / (g.windows[2] * g.windows[1]);
}

}  // namespace fastops
