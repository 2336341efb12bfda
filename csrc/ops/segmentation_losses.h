#pragma once
// Host-side problem descriptions of the segmentation-loss ops (soft-Dice
// statistics and Lovász segments), checked once and shared by their CPU and
// CUDA kernels. Schemas and checks: csrc/ops/segmentation_losses.cpp.

#include <ATen/core/Tensor.h>
#include <c10/macros/Macros.h>

#include <cstdint>
#include <optional>

namespace fastops {

// soft_dice_statistics(input [N, C, S], target, ...) -> [U, C, 6]; target is
// int64 [N, S] labels when multiclass, else [N, C, S] of input's dtype.
struct SoftDiceProblem {
  int64_t batch = 0;
  int64_t classes = 0;
  int64_t pixels = 0;  // S, elements per (image, class)
  int64_t units = 0;   // U: batch when per_image, else 1
  bool multiclass = false;
  bool from_logits = false;
  bool with_bce = false;
  bool has_ignore = false;
  int64_t ignore_index = 0;
};

SoftDiceProblem make_soft_dice_problem(const char* op, const at::Tensor& input, const at::Tensor& target,
                                       bool multiclass, bool from_logits, std::optional<int64_t> ignore_index,
                                       bool per_image, bool with_bce);

// The accumulation dtype of the statistics: float64 for float64 input, else float32.
at::ScalarType soft_dice_statistics_dtype(const at::Tensor& input);

// Checks the arguments of _soft_dice_loss_from_statistics(_backward): statistics
// float32/float64 [U, C, 6]; class_coefficients, when given, [C] on its device.
// Returns the coefficients as a contiguous tensor of the statistics' dtype
// (undefined when none were given).
at::Tensor check_dice_loss_arguments(const char* op, const at::Tensor& statistics,
                                     const std::optional<at::Tensor>& class_coefficients);

// Checks the incoming gradient of those ops' backward: a scalar on the
// statistics' device. Returns it in the statistics' dtype.
at::Tensor check_dice_loss_gradient(const char* op, const at::Tensor& grad, const at::Tensor& statistics);

// lovasz_segments(input [N, C, S], labels int64 [N, S], kind, ...) ->
//   (losses [U, K], foreground_counts int64 [U, K], valid_counts int64 [U], sorted_entries int32 [N·S·K])
// with K segment classes per unit: C for the softmax kinds, 1 for the hinge
// (input [N, 1, S]). When C == 1 a softmax kind has one segment whose
// foreground is label == foreground_class (Berman's sigmoid form).
struct LovaszProblem {
  int64_t batch = 0;
  int64_t classes = 0;           // C of the input
  int64_t pixels = 0;            // S
  int64_t units = 0;             // U
  int64_t segment_classes = 0;   // K
  int64_t kind = 0;              // lovasz::Kind
  int64_t foreground_class = 0;  // used when C == 1
  bool per_image = false;
  bool has_ignore = false;
  int64_t ignore_index = 0;

  // Host and device: the CPU and CUDA kernels share these rules.
  C10_HOST_DEVICE int64_t unit_of_image(int64_t n) const { return per_image ? n : 0; }
  C10_HOST_DEVICE bool is_foreground(int64_t label, int64_t segment_class) const {
    if (kind == 2) {
      return label == 1;
    }
    return label == (classes == 1 ? foreground_class : segment_class);
  }
  C10_HOST_DEVICE bool is_valid(int64_t label) const { return !has_ignore || label != ignore_index; }
};

LovaszProblem make_lovasz_problem(const char* op, const at::Tensor& input, const at::Tensor& labels, int64_t kind,
                                  std::optional<int64_t> ignore_index, bool per_image, int64_t foreground_class);

// The dtype of the segment losses: float64 for float64 input, else float32.
at::ScalarType lovasz_loss_dtype(const at::Tensor& input);

}  // namespace fastops
