#pragma once
// The bins of one RoI in roi_pool and the max rule, shared by the CPU and
// CUDA kernels (the Triton kernel mirrors it). The formulas are torchvision's:
//
//   start = round(roi * spatial_scale) (half away from zero), end likewise
//   size = max(end - start + 1, 1);  bin = size / pooled   (in acc_t)
//   bin (ph, pw) covers rows [floor(ph * bin_h), ceil((ph + 1) * bin_h)) + start_h,
//   clipped to [0, H), and the columns likewise
//   an empty bin gives 0 with argmax -1; argmax is h * W + w (int32)
//
// fastops' rules where torchvision's differ or are undefined (docs/decisions.md):
//   * the maximum is the first largest value in raster order, and a NaN wins
//     (as torch.max_pool2d): torchvision skips NaN and starts from -FLT_MAX,
//     so a bin of NaN or -inf values gives -FLT_MAX and argmax -1 there;
//   * a RoI with a non-finite coordinate has only empty bins.

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#include "common/rounded_arithmetic.h"
#include "ops/roi_align_math.h"

namespace fastops {

template <typename acc_t>
struct RoiPoolGrid {
  int64_t start_h, start_w;
  acc_t bin_h, bin_w;
  bool valid;  // false: every bin is empty
};

struct RoiPoolWindow {
  int64_t h_begin, h_end, w_begin, w_end;

  C10_HOST_DEVICE bool empty() const { return h_end <= h_begin || w_end <= w_begin; }
};

// round(v * scale) as an integer, clamped far outside any feature map so that
// the conversion is defined for every finite value.
template <typename acc_t>
C10_HOST_DEVICE inline int64_t roi_pool_corner(acc_t v, acc_t spatial_scale) {
  acc_t r = round(mul_rn(v, spatial_scale));
  const acc_t limit = acc_t(1 << 30);
  r = r < -limit ? -limit : (r > limit ? limit : r);
  return static_cast<int64_t>(r);
}

// `roi` points at (x1, y1, x2, y2), the columns 1..4 of a rois row.
template <typename acc_t, typename roi_t>
C10_HOST_DEVICE inline RoiPoolGrid<acc_t> roi_pool_grid(const roi_t* roi, acc_t spatial_scale, int64_t pooled_h,
                                                        int64_t pooled_w) {
  const acc_t x1 = static_cast<acc_t>(roi[0]), y1 = static_cast<acc_t>(roi[1]);
  const acc_t x2 = static_cast<acc_t>(roi[2]), y2 = static_cast<acc_t>(roi[3]);
  RoiPoolGrid<acc_t> grid{0, 0, acc_t(0), acc_t(0), false};
  if (!(is_finite_value(x1) && is_finite_value(y1) && is_finite_value(x2) && is_finite_value(y2))) {
    return grid;
  }
  grid.start_w = roi_pool_corner(x1, spatial_scale);
  grid.start_h = roi_pool_corner(y1, spatial_scale);
  const int64_t end_w = roi_pool_corner(x2, spatial_scale);
  const int64_t end_h = roi_pool_corner(y2, spatial_scale);
  const int64_t width = end_w - grid.start_w + 1 > 1 ? end_w - grid.start_w + 1 : 1;
  const int64_t height = end_h - grid.start_h + 1 > 1 ? end_h - grid.start_h + 1 : 1;
  grid.bin_h = div_rn(acc_t(height), acc_t(pooled_h));
  grid.bin_w = div_rn(acc_t(width), acc_t(pooled_w));
  grid.valid = true;
  return grid;
}

C10_HOST_DEVICE inline int64_t clip_to(int64_t v, int64_t size) { return v < 0 ? 0 : (v > size ? size : v); }

template <typename acc_t>
C10_HOST_DEVICE inline RoiPoolWindow roi_pool_window(const RoiPoolGrid<acc_t>& grid, int64_t ph, int64_t pw,
                                                     int64_t height, int64_t width) {
  if (!grid.valid) {
    return {0, 0, 0, 0};
  }
  const int64_t h0 = static_cast<int64_t>(floor(mul_rn(acc_t(ph), grid.bin_h)));
  const int64_t h1 = static_cast<int64_t>(ceil(mul_rn(acc_t(ph + 1), grid.bin_h)));
  const int64_t w0 = static_cast<int64_t>(floor(mul_rn(acc_t(pw), grid.bin_w)));
  const int64_t w1 = static_cast<int64_t>(ceil(mul_rn(acc_t(pw + 1), grid.bin_w)));
  return {clip_to(h0 + grid.start_h, height), clip_to(h1 + grid.start_h, height), clip_to(w0 + grid.start_w, width),
          clip_to(w1 + grid.start_w, width)};
}

// Whether `candidate`, met after `current` in raster order, becomes the maximum.
template <typename acc_t>
C10_HOST_DEVICE inline bool replaces_max(acc_t candidate, acc_t current) {
  return candidate > current || (candidate != candidate && current == current);
}

}  // namespace fastops
