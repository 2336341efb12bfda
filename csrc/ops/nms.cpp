// Schemas of the box-suppression ops and box_iou, and the steps of nms,
// batched_nms and nms_padded that do not depend on the device.
//
// nms(boxes [N, 4], scores [N], iou_threshold) -> int64 [K]
// batched_nms(boxes, scores, idxs [N] integer, iou_threshold) -> int64 [K]
// nms_padded(boxes, scores, idxs?, iou_threshold, max_output) -> (int64 [max_output], int64 [])
// soft_nms(boxes, scores, iou_threshold, sigma, score_threshold, method) -> (int64 [K], scores [K])
// box_iou(boxes1 [N, 4], boxes2 [M, 4]) -> [N, M]
//
// Boxes are (x1, y1, x2, y2). A box is suppressed by a kept box of its class
// with a higher place in the order when their IoU (box_iou_math.h) is strictly
// greater than iou_threshold. The order is decreasing score; equal scores keep
// the lower index first; NaN scores sort first (torch.sort's order).

#include "ops/nms.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

namespace fastops {

void check_boxes(const char* op, const char* name, const at::Tensor& boxes) {
  TORCH_CHECK(boxes.dim() == 2 && boxes.size(1) == 4, op, ": ", name, " must be [N, 4] (x1, y1, x2, y2), got shape ",
              boxes.sizes());
  const auto type = boxes.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16, op, ": ",
              name, " must be float16, bfloat16, float32 or float64, got ", type);
}

void check_nms_arguments(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                         const std::optional<at::Tensor>& idxs, double iou_threshold) {
  check_boxes(op, "boxes", boxes);
  TORCH_CHECK(scores.dim() == 1 && scores.size(0) == boxes.size(0), op, ": scores must be [N] for boxes [N, 4], got ",
              scores.sizes(), " and ", boxes.sizes());
  TORCH_CHECK(scores.scalar_type() == boxes.scalar_type(), op, ": scores (", scores.scalar_type(),
              ") must have the dtype of boxes (", boxes.scalar_type(), ")");
  TORCH_CHECK(scores.device() == boxes.device(), op, ": scores must be on the device of boxes");
  TORCH_CHECK(std::isfinite(iou_threshold) && iou_threshold >= 0 && iou_threshold <= 1, op,
              ": iou_threshold must be a number in [0, 1], got ", iou_threshold);
  if (idxs) {
    TORCH_CHECK(idxs->dim() == 1 && idxs->size(0) == boxes.size(0), op, ": idxs must be [N] for boxes [N, 4], got ",
                idxs->sizes());
    TORCH_CHECK(at::isIntegralType(idxs->scalar_type(), /*includeBool=*/false), op,
                ": idxs must have an integer dtype, got ", idxs->scalar_type());
    TORCH_CHECK(idxs->device() == boxes.device(), op, ": idxs must be on the device of boxes");
  }
}

namespace {

at::Tensor score_order(const at::Tensor& scores) {
  return std::get<1>(scores.sort(/*stable=*/true, /*dim=*/0, /*descending=*/true));
}

// Runs the kernel on the boxes in score order (grouped by class when idxs is
// given). Returns the kept boxes' original indices by decreasing score,
// padded with -1 to `padded_length`, and their count.
std::tuple<at::Tensor, at::Tensor> suppress(SortedNmsKernel kernel, const at::Tensor& boxes, const at::Tensor& scores,
                                            const std::optional<at::Tensor>& idxs, double iou_threshold,
                                            int64_t padded_length) {
  const int64_t n = boxes.size(0);
  const at::Tensor order = score_order(scores);
  if (!idxs) {
    const at::Tensor sorted = boxes.index_select(0, order).contiguous();
    auto [positions, count] = kernel(sorted, std::nullopt, iou_threshold, padded_length);
    const at::Tensor kept = at::where(positions >= 0, order.index_select(0, positions.clamp_min(0)), -1);
    return {kept, count};
  }
  // Group by class, keeping score order inside each class; suppression never
  // crosses a class, so each group is scanned on its own.
  const at::Tensor classes_by_score = idxs->to(at::kLong).index_select(0, order);
  const at::Tensor by_class = std::get<1>(classes_by_score.sort(/*stable=*/true, /*dim=*/0, /*descending=*/false));
  const at::Tensor sorted = boxes.index_select(0, order.index_select(0, by_class)).contiguous();
  const at::Tensor classes = classes_by_score.index_select(0, by_class).contiguous();
  auto [positions, count] = kernel(sorted, classes, iou_threshold, n);
  // Back to score order: a kept box's rank in `order`, then its index.
  const at::Tensor ranks = at::where(positions >= 0, by_class.index_select(0, positions.clamp_min(0)), n);
  const at::Tensor ranks_in_order = std::get<0>(ranks.sort(/*stable=*/false, /*dim=*/0, /*descending=*/false));
  at::Tensor kept = at::where(ranks_in_order < n, order.index_select(0, ranks_in_order.clamp_max(n - 1)), -1);
  if (padded_length < n) {
    kept = kept.narrow(0, 0, padded_length);
    count = count.clamp_max(padded_length);
  }
  return {kept, count};
}

at::Tensor exact_length(const at::Tensor& kept, const at::Tensor& count) {
  return kept.narrow(0, 0, count.item<int64_t>());
}

at::Tensor empty_indices(const at::Tensor& like) {
  return at::empty({0}, like.options().dtype(at::kLong));
}

}  // namespace

at::Tensor nms_with(SortedNmsKernel kernel, const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold) {
  check_nms_arguments("nms", boxes, scores, std::nullopt, iou_threshold);
  if (boxes.size(0) == 0) {
    return empty_indices(boxes);
  }
  auto [kept, count] = suppress(kernel, boxes, scores, std::nullopt, iou_threshold, boxes.size(0));
  return exact_length(kept, count);
}

at::Tensor batched_nms_with(SortedNmsKernel kernel, const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold) {
  check_nms_arguments("batched_nms", boxes, scores, idxs, iou_threshold);
  if (boxes.size(0) == 0) {
    return empty_indices(boxes);
  }
  auto [kept, count] = suppress(kernel, boxes, scores, idxs, iou_threshold, boxes.size(0));
  return exact_length(kept, count);
}

std::tuple<at::Tensor, at::Tensor> nms_padded_with(SortedNmsKernel kernel, const at::Tensor& boxes,
                                                   const at::Tensor& scores, const std::optional<at::Tensor>& idxs,
                                                   double iou_threshold, int64_t max_output) {
  check_nms_arguments("nms_padded", boxes, scores, idxs, iou_threshold);
  TORCH_CHECK(max_output >= 0, "nms_padded: max_output must be non-negative, got ", max_output);
  const auto long_options = boxes.options().dtype(at::kLong);
  if (boxes.size(0) == 0 || max_output == 0) {
    return {at::full({max_output}, -1, long_options), at::zeros({}, long_options)};
  }
  auto [kept, count] = suppress(kernel, boxes, scores, idxs, iou_threshold, std::min(max_output, boxes.size(0)));
  if (kept.size(0) < max_output) {
    kept = at::cat({kept, at::full({max_output - kept.size(0)}, -1, long_options)});
  }
  return {kept, count};
}

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def("nms(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor");
  m.def("batched_nms(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor");
  m.def(
      "nms_padded(Tensor boxes, Tensor scores, Tensor? idxs, float iou_threshold, int max_output) -> "
      "(Tensor, Tensor)");
  m.def(
      "soft_nms(Tensor boxes, Tensor scores, float iou_threshold, float sigma, float score_threshold, int method) -> "
      "(Tensor, Tensor)");
  m.def("box_iou(Tensor boxes1, Tensor boxes2) -> Tensor");
}

}  // namespace fastops
