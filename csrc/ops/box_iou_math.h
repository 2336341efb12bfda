#pragma once
// Intersection over union of two (x1, y1, x2, y2) boxes, shared by every
// kernel that compares boxes (box_iou, nms, batched_nms, soft_nms) on CPU
// and CUDA, so all backends decide suppression with the same arithmetic.
//
// acc_t is float for float16/bfloat16/float32 boxes and double for float64.
// The formula is torchvision's, evaluated in acc_t:
//   w = max(min(x2a, x2b) - max(x1a, x1b), 0), h likewise, inter = w * h,
//   iou = inter / (area_a + area_b - inter), area = (x2 - x1) * (y2 - y1).
// Consequences, documented in docs/decisions.md:
//   * two zero-area boxes: 0 / 0 = NaN; NaN compares false, so it never suppresses;
//   * a NaN coordinate makes that box's area NaN, so every IoU with it is NaN;
//   * boxes with x2 < x1 have negative area; the IoU is whatever the formula gives.

#include <c10/macros/Macros.h>

#include "common/rounded_arithmetic.h"

namespace fastops {

template <typename acc_t>
struct Box {
  acc_t x1, y1, x2, y2;

  C10_HOST_DEVICE acc_t area() const { return mul_rn(sub_rn(x2, x1), sub_rn(y2, y1)); }
};

template <typename acc_t, typename scalar_t>
C10_HOST_DEVICE inline Box<acc_t> load_box(const scalar_t* box) {
  return {static_cast<acc_t>(box[0]), static_cast<acc_t>(box[1]), static_cast<acc_t>(box[2]),
          static_cast<acc_t>(box[3])};
}

// max/min that keep the first operand when the comparison is false; the
// intersection of a NaN box is NaN-free here, its area is not.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t larger(acc_t a, acc_t b) {
  return a < b ? b : a;
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t smaller(acc_t a, acc_t b) {
  return b < a ? b : a;
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t box_intersection(const Box<acc_t>& a, const Box<acc_t>& b) {
  const acc_t w = sub_rn(smaller(a.x2, b.x2), larger(a.x1, b.x1));
  const acc_t h = sub_rn(smaller(a.y2, b.y2), larger(a.y1, b.y1));
  return mul_rn(larger(w, acc_t(0)), larger(h, acc_t(0)));
}

// IoU given both areas (callers that compare one box with many precompute them).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t box_iou(const Box<acc_t>& a, acc_t area_a, const Box<acc_t>& b, acc_t area_b) {
  const acc_t inter = box_intersection(a, b);
  return div_rn(inter, sub_rn(add_rn(area_a, area_b), inter));
}

template <typename acc_t>
C10_HOST_DEVICE inline acc_t box_iou(const Box<acc_t>& a, const Box<acc_t>& b) {
  return box_iou(a, a.area(), b, b.area());
}

// Whether a kept box suppresses another: IoU strictly above the threshold
// (the threshold is compared in acc_t, as torchvision's CUDA kernel does).
template <typename acc_t>
C10_HOST_DEVICE inline bool suppresses(acc_t iou, acc_t threshold) {
  return iou > threshold;
}

}  // namespace fastops
