#pragma once
// The sampling grid of one RoI and the bilinear taps of one sample point of
// roi_align, shared by the CPU and CUDA kernels (the Triton kernel mirrors it
// line by line), so that every backend samples the same points with the same
// weights. acc_t is float for float16/bfloat16/float32 input, double for
// float64. The formulas are torchvision's:
//
//   offset = aligned ? 0.5 : 0;  start = roi * spatial_scale - offset
//   size = end - start, at least 1 when !aligned;  bin = size / pooled
//   samples per bin and dimension: sampling_ratio if > 0, else ceil(bin)
//   sample (ph, iy): y = (start_y + ph * bin_h) + (iy + 0.5) * bin_h / samples_y
//   bin value = (sum over its samples of bilinear(y, x)) / max(samples_y * samples_x, 1)
//   bilinear(y, x): 0 outside [-1, H] x [-1, W]; else y, x clamped to [0, H - 1]
//   and [0, W - 1], and the four neighbours weighted (1 - ly)(1 - lx), ...
//
// fastops' rules where torchvision's are undefined (docs/decisions.md):
//   * a RoI with a non-finite coordinate samples nothing: output 0, gradient 0;
//   * an empty feature map (H or W = 0) samples nothing;
//   * adaptive sampling takes at most kMaxAdaptiveSamples per bin and
//     dimension (a RoI 512 times the output size; torchvision's CPU raises there);
//   * the batch index is truncated toward zero (torchvision's cast) and must
//     lie in [0, N); kernels give an invalid one's RoI zeros and report it.
//
// Every operation rounds (rounded_arithmetic.h), so CPU and GPU agree to the bit
// on the points and weights; only the order of the final sums differs.

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

#include "common/rounded_arithmetic.h"

namespace fastops {

constexpr int64_t kMaxAdaptiveSamples = 512;

template <typename acc_t>
C10_HOST_DEVICE inline bool is_finite_value(acc_t v) {
  // Written without std::isfinite so that it means the same on host and device.
  return v == v && v - v == acc_t(0);
}

// The image a RoI samples: rois[k, 0] truncated toward zero, or -1 when it is
// NaN or outside [0, batch_size).
template <typename acc_t>
C10_HOST_DEVICE inline int64_t roi_batch_index(acc_t value, int64_t batch_size) {
  if (!(value > acc_t(-1) && value < acc_t(batch_size))) {
    return -1;
  }
  return static_cast<int64_t>(value);
}

template <typename acc_t>
struct RoiAlignGrid {
  acc_t start_y, start_x;  // top-left corner, in feature-map pixels
  acc_t bin_h, bin_w;
  int64_t samples_y, samples_x;  // per bin; 0 when the RoI samples nothing
  acc_t count;                   // the divisor, max(samples_y * samples_x, 1)

  C10_HOST_DEVICE acc_t sample_y(int64_t ph, int64_t iy) const {
    return sample(start_y, bin_h, samples_y, ph, iy);
  }
  C10_HOST_DEVICE acc_t sample_x(int64_t pw, int64_t ix) const {
    return sample(start_x, bin_w, samples_x, pw, ix);
  }

 private:
  C10_HOST_DEVICE static acc_t sample(acc_t start, acc_t bin, int64_t samples, int64_t p, int64_t i) {
    const acc_t within = div_rn(mul_rn(static_cast<acc_t>(static_cast<float>(i) + 0.5f), bin), acc_t(samples));
    return add_rn(add_rn(start, mul_rn(acc_t(p), bin)), within);
  }
};

template <typename acc_t>
C10_HOST_DEVICE inline int64_t samples_per_bin(acc_t bin, int64_t sampling_ratio) {
  if (sampling_ratio > 0) {
    return sampling_ratio;
  }
  const acc_t adaptive = ceil(bin);
  if (!(adaptive > acc_t(0))) {
    return 0;
  }
  return adaptive < acc_t(kMaxAdaptiveSamples) ? static_cast<int64_t>(adaptive) : kMaxAdaptiveSamples;
}

// `roi` points at (x1, y1, x2, y2), the columns 1..4 of a rois row.
template <typename acc_t, typename roi_t>
C10_HOST_DEVICE inline RoiAlignGrid<acc_t> roi_align_grid(const roi_t* roi, acc_t spatial_scale, int64_t pooled_h,
                                                          int64_t pooled_w, int64_t sampling_ratio, bool aligned) {
  const acc_t offset = aligned ? acc_t(0.5) : acc_t(0);
  const acc_t x1 = static_cast<acc_t>(roi[0]), y1 = static_cast<acc_t>(roi[1]);
  const acc_t x2 = static_cast<acc_t>(roi[2]), y2 = static_cast<acc_t>(roi[3]);
  RoiAlignGrid<acc_t> grid;
  grid.start_x = sub_rn(mul_rn(x1, spatial_scale), offset);
  grid.start_y = sub_rn(mul_rn(y1, spatial_scale), offset);
  acc_t width = sub_rn(sub_rn(mul_rn(x2, spatial_scale), offset), grid.start_x);
  acc_t height = sub_rn(sub_rn(mul_rn(y2, spatial_scale), offset), grid.start_y);
  if (!aligned) {
    width = width < acc_t(1) ? acc_t(1) : width;
    height = height < acc_t(1) ? acc_t(1) : height;
  }
  grid.bin_h = div_rn(height, acc_t(pooled_h));
  grid.bin_w = div_rn(width, acc_t(pooled_w));
  const bool finite = is_finite_value(x1) && is_finite_value(y1) && is_finite_value(x2) && is_finite_value(y2) &&
                      is_finite_value(grid.bin_h) && is_finite_value(grid.bin_w);
  grid.samples_y = finite ? samples_per_bin(grid.bin_h, sampling_ratio) : 0;
  grid.samples_x = finite ? samples_per_bin(grid.bin_w, sampling_ratio) : 0;
  const int64_t samples = grid.samples_y * grid.samples_x;
  grid.count = acc_t(samples > 1 ? samples : 1);
  return grid;
}

// The four neighbours of a sample point and their weights; `inside` is false
// when the point contributes nothing (outside the map by more than a pixel, NaN).
template <typename acc_t>
struct BilinearTaps {
  int64_t y_low, y_high, x_low, x_high;
  acc_t w_ll, w_lh, w_hl, w_hh;  // weights of (y_low, x_low), (y_low, x_high), (y_high, x_low), (y_high, x_high)
  bool inside;
};

template <typename acc_t>
C10_HOST_DEVICE inline BilinearTaps<acc_t> bilinear_taps(acc_t y, acc_t x, int64_t height, int64_t width) {
  BilinearTaps<acc_t> t{0, 0, 0, 0, acc_t(0), acc_t(0), acc_t(0), acc_t(0), false};
  if (height <= 0 || width <= 0 ||
      !(y >= acc_t(-1) && y <= acc_t(height) && x >= acc_t(-1) && x <= acc_t(width))) {
    return t;
  }
  y = y <= acc_t(0) ? acc_t(0) : y;
  x = x <= acc_t(0) ? acc_t(0) : x;
  t.y_low = static_cast<int64_t>(y);
  t.x_low = static_cast<int64_t>(x);
  if (t.y_low >= height - 1) {
    t.y_low = t.y_high = height - 1;
    y = acc_t(t.y_low);
  } else {
    t.y_high = t.y_low + 1;
  }
  if (t.x_low >= width - 1) {
    t.x_low = t.x_high = width - 1;
    x = acc_t(t.x_low);
  } else {
    t.x_high = t.x_low + 1;
  }
  const acc_t ly = sub_rn(y, acc_t(t.y_low)), lx = sub_rn(x, acc_t(t.x_low));
  const acc_t hy = sub_rn(acc_t(1), ly), hx = sub_rn(acc_t(1), lx);
  t.w_ll = mul_rn(hy, hx);
  t.w_lh = mul_rn(hy, lx);
  t.w_hl = mul_rn(ly, hx);
  t.w_hh = mul_rn(ly, lx);
  t.inside = true;
  return t;
}

// w_ll * v_ll + w_lh * v_lh + w_hl * v_hl + w_hh * v_hh, summed left to right.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t interpolate(const BilinearTaps<acc_t>& t, acc_t v_ll, acc_t v_lh, acc_t v_hl,
                                         acc_t v_hh) {
  return add_rn(add_rn(add_rn(mul_rn(t.w_ll, v_ll), mul_rn(t.w_lh, v_lh)), mul_rn(t.w_hl, v_hl)),
                mul_rn(t.w_hh, v_hh));
}

// The share of a bin's output gradient that one tap receives: grad * w / count.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t tap_gradient(acc_t grad, acc_t weight, acc_t count) {
  return div_rn(mul_rn(grad, weight), count);
}

}  // namespace fastops
