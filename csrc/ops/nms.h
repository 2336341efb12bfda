#pragma once
// nms, batched_nms, nms_padded: argument checks and the device-independent
// steps (score sort, class grouping, index mapping) around a device kernel
// that runs greedy suppression on boxes already in order.

#include <ATen/core/Tensor.h>

#include <optional>
#include <tuple>

namespace fastops {

// The device step. `boxes` [N, 4] contiguous, sorted by decreasing score
// (ties: lower original index first), grouped by class when `classes` (int64
// [N], ascending) is given. Greedy suppression within each class: returns the
// positions (into the sorted order) of the kept boxes, ascending, in an int64
// [max_output] tensor padded with -1, and their number as an int64 scalar
// tensor (at most max_output; for one class the scan stops there).
using SortedNmsKernel = std::tuple<at::Tensor, at::Tensor> (*)(const at::Tensor& boxes,
                                                                const std::optional<at::Tensor>& classes,
                                                                double iou_threshold, int64_t max_output);

// Kept indices by decreasing score, exact length (one device-to-host copy).
at::Tensor nms_with(SortedNmsKernel kernel, const at::Tensor& boxes, const at::Tensor& scores, double iou_threshold);
at::Tensor batched_nms_with(SortedNmsKernel kernel, const at::Tensor& boxes, const at::Tensor& scores,
                            const at::Tensor& idxs, double iou_threshold);

// Kept indices by decreasing score padded with -1 to max_output, and their
// count: no host synchronisation, fixed shapes.
std::tuple<at::Tensor, at::Tensor> nms_padded_with(SortedNmsKernel kernel, const at::Tensor& boxes,
                                                   const at::Tensor& scores, const std::optional<at::Tensor>& idxs,
                                                   double iou_threshold, int64_t max_output);

// Argument checks shared with soft_nms and box_iou.
void check_boxes(const char* op, const char* name, const at::Tensor& boxes);
void check_nms_arguments(const char* op, const at::Tensor& boxes, const at::Tensor& scores,
                         const std::optional<at::Tensor>& idxs, double iou_threshold);

enum class SoftNmsMethod : int64_t { kGaussian = 0, kLinear = 1 };

}  // namespace fastops
