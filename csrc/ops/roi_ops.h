#pragma once
// Host-side argument checking and problem set-up shared by the RoI ops
// (roi_align, roi_pool, multi_scale_roi_align) and their CPU and CUDA kernels.
//
// roi_align is multi_scale_roi_align with one level: the kernels take a list
// of feature maps (the FPN levels, at most kMaxRoiLevels) and an optional
// int64 [K] level per RoI; without levels every RoI samples level 0.
//
// Layout: the kernels compute channels-last when every level is dense
// channels-last and not also plain contiguous (pooling_memory_format), and
// otherwise channels-first; outputs and input gradients take that layout.

#include <ATen/core/Tensor.h>

#include <array>
#include <optional>
#include <vector>

namespace fastops {

constexpr int kMaxRoiLevels = 8;

struct RoiProblem {
  int64_t num_rois = 0;
  int64_t batch_size = 0;
  int64_t channels = 0;
  int64_t pooled_h = 0;
  int64_t pooled_w = 0;
  int64_t sampling_ratio = 0;  // roi_align only
  bool aligned = false;        // roi_align only
  bool channels_last = false;
  int num_levels = 0;
  std::array<int64_t, kMaxRoiLevels> heights{};
  std::array<int64_t, kMaxRoiLevels> widths{};
  std::array<double, kMaxRoiLevels> spatial_scales{};
};

// Checks the feature maps (4-D, one dtype/device, equal N and C, floating),
// rois ([K, 5], dtype and device of the features), levels (int64 [K] or none,
// required when there are several levels), spatial_scales (one per level,
// finite and positive), pooled sizes (positive). Returns the problem and the
// feature maps in the kernel's layout (copied only when not already in it).
RoiProblem make_roi_problem(const char* op, at::TensorList features, const at::Tensor& rois,
                            const std::optional<at::Tensor>& levels, at::ArrayRef<double> spatial_scales,
                            int64_t pooled_h, int64_t pooled_w, std::vector<at::Tensor>& dense_features);

// The same problem for a backward pass, from the output gradient and the sizes
// of the levels; `grad` [K, C, pooled_h, pooled_w] is made dense in the
// kernel's layout (channels-last when `grad` is).
RoiProblem make_roi_backward_problem(const char* op, at::Tensor& grad, const at::Tensor& rois,
                                     const std::optional<at::Tensor>& levels, at::ArrayRef<double> spatial_scales,
                                     int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                     at::IntArrayRef heights, at::IntArrayRef widths);

// Raises naming rois when some rois[k, 0] (truncated toward zero) is not in
// [0, batch_size), or some level is not in [0, num_levels). CPU tensors only;
// the CUDA kernels report through a status word instead.
void check_roi_indices_cpu(const char* op, const at::Tensor& rois, const std::optional<at::Tensor>& levels,
                           int64_t batch_size, int num_levels);

// The error for a bad batch index or level found by a kernel.
[[noreturn]] void throw_bad_roi(const char* op, int64_t roi, bool bad_level, int64_t batch_size, int num_levels);

// Output / gradient tensors of the problem's layout.
at::Tensor empty_roi_output(const RoiProblem& p, const at::TensorOptions& options);
std::vector<at::Tensor> zeros_roi_input_grads(const RoiProblem& p, const at::TensorOptions& options);

// Sizes of the list for `features`, for the backward schemas.
std::vector<int64_t> level_heights(at::TensorList features);
std::vector<int64_t> level_widths(at::TensorList features);

}  // namespace fastops
