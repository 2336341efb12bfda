#pragma once
// Per-element math of max-pooling that records each maximum as an int8 offset
// inside its window, shared by the CPU and CUDA kernels.
//
// The scan matches PyTorch's max_pool2d exactly: positions are visited in
// raster order, a value replaces the maximum when it is greater or NaN (so the
// first of equal maxima wins and the last NaN wins), and a window of -inf
// reports its first position.

#include <c10/macros/Macros.h>

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "common/blend.h"
#include "ops/pooling_window_math.h"

namespace fastops {

// Scans window w of one (n, c) plane (`plane_values`, stride `value_stride`).
// Writes the maximum to `best_value` and returns its offset in the window.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline int8_t window_max_offset(const PoolWindows& g, const int64_t w[kSpatialDims],
                                                const scalar_t* plane_values, int64_t value_stride,
                                                scalar_t& best_value) {
  int64_t lo[kSpatialDims];
  int64_t hi[kSpatialDims];
  int64_t start[kSpatialDims];
  for (int d = 0; d < kSpatialDims; ++d) {
    start[d] = g.window_start(d, w[d]);
    lo[d] = start[d] > 0 ? start[d] : 0;
    hi[d] = start[d] + g.kernel[d] < g.plane[d] ? start[d] + g.kernel[d] : g.plane[d];
  }
  acc_t best = -std::numeric_limits<acc_t>::infinity();
  best_value = static_cast<scalar_t>(best);
  int64_t best_offset = ((lo[0] - start[0]) * g.kernel[1] + (lo[1] - start[1])) * g.kernel[2] + (lo[2] - start[2]);
  for (int64_t p0 = lo[0]; p0 < hi[0]; ++p0) {
    for (int64_t p1 = lo[1]; p1 < hi[1]; ++p1) {
      const int64_t row = (p0 * g.plane[1] + p1) * g.plane[2];
      const int64_t row_offset = ((p0 - start[0]) * g.kernel[1] + (p1 - start[1])) * g.kernel[2] - start[2];
      for (int64_t p2 = lo[2]; p2 < hi[2]; ++p2) {
        const scalar_t value = plane_values[(row + p2) * value_stride];
        const acc_t v = static_cast<acc_t>(value);
        if (v > best || v != v) {
          best = v;
          best_value = value;
          best_offset = row_offset + p2;
        }
      }
    }
  }
  return static_cast<int8_t>(best_offset);
}

// window_max_offset for a window wholly inside the plane, whose positions in
// raster order sit at window_origin[shifts[o] * value_stride]: no clipping
// arithmetic, and selects the compiler can make branch-free (where the maximum
// sits is random, so branches would mispredict).
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline int8_t interior_window_max_offset(const scalar_t* window_origin, const int64_t* shifts,
                                                         int64_t volume, int64_t value_stride, scalar_t& best_value) {
  acc_t best = -std::numeric_limits<acc_t>::infinity();
  scalar_t best_scalar = static_cast<scalar_t>(best);
  int64_t best_offset = 0;
  for (int64_t o = 0; o < volume; ++o) {
    const scalar_t value = window_origin[shifts[o] * value_stride];
    const acc_t v = static_cast<acc_t>(value);
    const bool take = (v > best) | (v != v);  // `|`, not `||`: no branch
    best = blend(take, v, best);
    best_scalar = blend(take, value, best_scalar);
    best_offset = blend(take, o, best_offset);
  }
  best_value = best_scalar;
  return static_cast<int8_t>(best_offset);
}

// Gradient of one input position: the sum of the output gradients of the
// windows whose maximum sits there, added in a fixed (descending raster) order
// so the result is the same on every run.
template <typename scalar_t, typename acc_t>
C10_HOST_DEVICE inline acc_t max_pool_input_grad(const PoolWindows& g, const int64_t pos[kSpatialDims],
                                                 int64_t pos_linear, const scalar_t* plane_grad_output,
                                                 const int8_t* plane_offsets, int64_t stride) {
  acc_t sum = acc_t(0);
  for_each_covering_window(g, pos, [&](int64_t window, const int64_t w[kSpatialDims]) {
    if (offset_target(g, w, plane_offsets[window * stride]) == pos_linear) {
      sum += static_cast<acc_t>(plane_grad_output[window * stride]);
    }
  });
  return sum;
}

}  // namespace fastops
