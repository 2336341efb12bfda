// Schemas of the RoI ops and the host-side checks their kernels share.
//
// roi_align(input [N, C, H, W], rois [K, 5], ...) -> [K, C, pooled_height, pooled_width]
// multi_scale_roi_align(features: L x [N, C, H_l, W_l], rois [K, 5], levels int64 [K], ...) -> [K, C, ph, pw]
// roi_pool(input, rois, ...) -> (output [K, C, ph, pw], argmax int32 [K, C, ph, pw])
// The _backward ops return the gradients of the feature maps; `deterministic`
// selects, where a backend has both, the kernel whose result does not depend
// on the order of floating-point additions (the CPU kernels always are).
//
// rois rows are (batch index, x1, y1, x2, y2) in input-image coordinates;
// roi_align_math.h and roi_pool_math.h have the sampling rules.

#include "ops/roi_ops.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <cmath>

#include "common/poison.h"
#include "ops/pooling_host.h"
#include "ops/roi_align_math.h"

namespace fastops {
namespace {

void check_rois(const char* op, const at::Tensor& rois, const at::Tensor& like) {
  TORCH_CHECK(rois.dim() == 2 && rois.size(1) == 5, op,
              ": rois must be [K, 5] (batch index, x1, y1, x2, y2), got shape ", rois.sizes());
  TORCH_CHECK(rois.scalar_type() == like.scalar_type(), op, ": rois (", rois.scalar_type(),
              ") must have the dtype of the input (", like.scalar_type(), ")");
  TORCH_CHECK(rois.device() == like.device(), op, ": rois must be on the device of the input (", like.device(),
              "), got ", rois.device());
}

void check_levels(const char* op, const std::optional<at::Tensor>& levels, const at::Tensor& rois,
                  int num_levels) {
  if (!levels) {
    TORCH_CHECK(num_levels == 1, op, ": levels are required with ", num_levels, " feature maps");
    return;
  }
  TORCH_CHECK(levels->dim() == 1 && levels->size(0) == rois.size(0), op, ": levels must be [K] for rois [K, 5], got ",
              levels->sizes());
  TORCH_CHECK(levels->scalar_type() == at::kLong, op, ": levels must be int64, got ", levels->scalar_type());
  TORCH_CHECK(levels->device() == rois.device(), op, ": levels must be on the device of rois");
}

void check_pooled(const char* op, int64_t pooled_h, int64_t pooled_w) {
  TORCH_CHECK(pooled_h > 0 && pooled_w > 0, op, ": output_size must be positive, got (", pooled_h, ", ", pooled_w,
              ")");
}

RoiProblem base_problem(const char* op, const at::Tensor& rois, const std::optional<at::Tensor>& levels,
                        at::ArrayRef<double> spatial_scales, int64_t pooled_h, int64_t pooled_w) {
  const int64_t num_levels = static_cast<int64_t>(spatial_scales.size());
  TORCH_CHECK(num_levels >= 1 && num_levels <= kMaxRoiLevels, op, ": between 1 and ", kMaxRoiLevels,
              " feature maps, got ", num_levels);
  for (double scale : spatial_scales) {
    TORCH_CHECK(std::isfinite(scale) && scale > 0, op, ": spatial_scale must be finite and positive, got ", scale);
  }
  check_pooled(op, pooled_h, pooled_w);
  check_levels(op, levels, rois, static_cast<int>(num_levels));
  RoiProblem p;
  p.num_rois = rois.size(0);
  p.pooled_h = pooled_h;
  p.pooled_w = pooled_w;
  p.num_levels = static_cast<int>(num_levels);
  for (int64_t l = 0; l < num_levels; ++l) {
    p.spatial_scales[l] = spatial_scales[l];
  }
  return p;
}

}  // namespace

RoiProblem make_roi_problem(const char* op, at::TensorList features, const at::Tensor& rois,
                            const std::optional<at::Tensor>& levels, at::ArrayRef<double> spatial_scales,
                            int64_t pooled_h, int64_t pooled_w, std::vector<at::Tensor>& dense_features) {
  TORCH_CHECK(!features.empty(), op, ": no feature maps");
  TORCH_CHECK(features.size() == spatial_scales.size(), op, ": one spatial_scale per feature map, got ",
              spatial_scales.size(), " for ", features.size());
  const at::Tensor& first = features[0];
  bool all_channels_last = true;
  for (const at::Tensor& f : features) {
    TORCH_CHECK(f.dim() == 4, op, ": input must be [N, C, H, W], got shape ", f.sizes());
    check_floating_dtype(op, "input", f);
    TORCH_CHECK(f.scalar_type() == first.scalar_type() && f.device() == first.device(), op,
                ": the feature maps must share one dtype and device");
    TORCH_CHECK(f.size(0) == first.size(0) && f.size(1) == first.size(1), op,
                ": the feature maps must share N and C, got ", f.sizes(), " and ", first.sizes());
    all_channels_last = all_channels_last && is_channels_last(pooling_memory_format(f));
  }
  check_rois(op, rois, first);
  RoiProblem p = base_problem(op, rois, levels, spatial_scales, pooled_h, pooled_w);
  p.batch_size = first.size(0);
  p.channels = first.size(1);
  p.channels_last = all_channels_last;
  const auto format = all_channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  dense_features.clear();
  for (size_t l = 0; l < features.size(); ++l) {
    p.heights[l] = features[l].size(2);
    p.widths[l] = features[l].size(3);
    dense_features.push_back(features[l].contiguous(format));
  }
  return p;
}

RoiProblem make_roi_backward_problem(const char* op, at::Tensor& grad, const at::Tensor& rois,
                                     const std::optional<at::Tensor>& levels, at::ArrayRef<double> spatial_scales,
                                     int64_t pooled_h, int64_t pooled_w, int64_t batch_size, int64_t channels,
                                     at::IntArrayRef heights, at::IntArrayRef widths) {
  TORCH_CHECK(heights.size() == spatial_scales.size() && widths.size() == spatial_scales.size(), op,
              ": one height, width and spatial_scale per feature map");
  check_floating_dtype(op, "grad", grad);
  check_rois(op, rois, grad);
  RoiProblem p = base_problem(op, rois, levels, spatial_scales, pooled_h, pooled_w);
  TORCH_CHECK(grad.dim() == 4 && grad.size(0) == rois.size(0) && grad.size(1) == channels && grad.size(2) == pooled_h &&
                  grad.size(3) == pooled_w,
              op, ": grad must be [K, C, pooled_height, pooled_width] = [", rois.size(0), ", ", channels, ", ",
              pooled_h, ", ", pooled_w, "], got ", grad.sizes());
  TORCH_CHECK(batch_size >= 0 && channels >= 0, op, ": negative input size");
  p.batch_size = batch_size;
  p.channels = channels;
  p.channels_last = is_channels_last(pooling_memory_format(grad));
  grad = grad.contiguous(p.channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous);
  for (size_t l = 0; l < heights.size(); ++l) {
    TORCH_CHECK(heights[l] >= 0 && widths[l] >= 0, op, ": negative feature map size");
    p.heights[l] = heights[l];
    p.widths[l] = widths[l];
  }
  return p;
}

void check_roi_indices_cpu(const char* op, const at::Tensor& rois, const std::optional<at::Tensor>& levels,
                           int64_t batch_size, int num_levels) {
  const at::Tensor batch_column = rois.select(1, 0).to(at::kDouble).contiguous();
  const double* batch = batch_column.const_data_ptr<double>();
  const at::Tensor levels_dense = levels ? levels->contiguous() : at::Tensor();
  const int64_t* level = levels ? levels_dense.const_data_ptr<int64_t>() : nullptr;
  for (int64_t k = 0; k < rois.size(0); ++k) {
    if (roi_batch_index(batch[k], batch_size) < 0) {
      throw_bad_roi(op, k, false, batch_size, num_levels);
    }
    if (level && (level[k] < 0 || level[k] >= num_levels)) {
      throw_bad_roi(op, k, true, batch_size, num_levels);
    }
  }
}

void throw_bad_roi(const char* op, int64_t roi, bool bad_level, int64_t batch_size, int num_levels) {
  if (bad_level) {
    TORCH_CHECK_INDEX(false, op, ": levels[", roi, "] is not a level in [0, ", num_levels, ")");
  }
  TORCH_CHECK_INDEX(false, op, ": rois[", roi, ", 0] is not a batch index of the input: it must lie in [0, ",
                    batch_size, ") (it is truncated toward zero)");
}

at::Tensor empty_roi_output(const RoiProblem& p, const at::TensorOptions& options) {
  at::Tensor output = at::empty({p.num_rois, p.channels, p.pooled_h, p.pooled_w},
                   options.memory_format(p.channels_last ? at::MemoryFormat::ChannelsLast
                                                         : at::MemoryFormat::Contiguous));
  poison_if_enabled(output);
  return output;
}

std::vector<at::Tensor> zeros_roi_input_grads(const RoiProblem& p, const at::TensorOptions& options) {
  std::vector<at::Tensor> grads;
  for (int l = 0; l < p.num_levels; ++l) {
    // at::zeros ignores the memory format of its options.
    grads.push_back(at::empty({p.batch_size, p.channels, p.heights[l], p.widths[l]},
                              options.memory_format(p.channels_last ? at::MemoryFormat::ChannelsLast
                                                                    : at::MemoryFormat::Contiguous))
                        .zero_());
  }
  return grads;
}

std::vector<int64_t> level_heights(at::TensorList features) {
  std::vector<int64_t> sizes;
  for (const at::Tensor& f : features) {
    sizes.push_back(f.size(2));
  }
  return sizes;
}

std::vector<int64_t> level_widths(at::TensorList features) {
  std::vector<int64_t> sizes;
  for (const at::Tensor& f : features) {
    sizes.push_back(f.size(3));
  }
  return sizes;
}

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def(
      "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
      "int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, "
      "bool aligned, bool deterministic) -> Tensor");
  m.def(
      "multi_scale_roi_align(Tensor[] features, Tensor rois, Tensor levels, float[] spatial_scales, "
      "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor");
  m.def(
      "_multi_scale_roi_align_backward(Tensor grad, Tensor rois, Tensor levels, float[] spatial_scales, "
      "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt[] heights, "
      "SymInt[] widths, int sampling_ratio, bool aligned, bool deterministic) -> Tensor[]");
  m.def(
      "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) -> "
      "(Tensor, Tensor)");
  m.def(
      "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
      "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, bool deterministic) -> "
      "Tensor");
}

}  // namespace fastops
