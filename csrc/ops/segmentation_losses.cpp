// Schemas of the segmentation-loss ops and the host-side checks their
// kernels share.
//
// soft_dice_statistics(input [N, C, S], target, multiclass, from_logits, ignore_index?, per_image, with_bce)
//   -> float [U, C, 6]: per (unit, class) Σp, Σt, Σp·t, Σ|p − t|, Σ bce_with_logits(x, t), #valid
//   (soft_dice_math.h). The BCE column is filled only when with_bce (multilabel logits).
// _soft_dice_statistics_backward(grad_statistics [U, C, 6], input, target, ...) -> grad_input [N, C, S]
//
// lovasz_segments(input [N, C, S], labels int64 [N, S], kind, ignore_index?, per_image, foreground_class)
//   -> (losses [U, K], foreground_counts int64 [U, K], valid_counts int64 [U], sorted_entries int32 [N·S·K])
//   Segment (u, k) holds its unit's valid pixels sorted by decreasing error, at
//   [K·(valid pixels of the units before u) + k·valid_counts[u], + valid_counts[u]) of
//   sorted_entries (lovasz_math.h has the entry format and the gradient).
// _lovasz_segments_backward(grad_losses [U, K], input, labels, foreground_counts, valid_counts,
//   sorted_entries, kind, ignore_index?, per_image, foreground_class) -> grad_input [N, C, S]
//
// _soft_dice_loss_from_statistics(statistics [U, C, 6], class_coefficients [C]?, scale, smooth, eps,
//   log_loss) -> scalar: scale · Σ_{u,c} coefficient_c · dice_loss_term (soft_dice_math.h), the
//   soft-Dice loss in one op (as tensor ops its ~13 autograd nodes cost more than the kernels
//   at batch 2 on a CPU); coefficient 1 when none are given.
// _soft_dice_loss_from_statistics_backward(grad, statistics, ...) -> grad_statistics [U, C, 6]
// _bce_dice_loss_from_statistics(statistics [U, C, 6], dice_weight, smooth) -> scalar
//   BCE − dice_weight·mean ln(Dice) (soft_dice_math.h), likewise in one op; and its _backward.
//
// The other losses are formed from these in Python (fastops/losses/), on
// tensors of [units, classes] size; the kernels are the only per-element work.

#include "ops/segmentation_losses.h"

#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>

#include "ops/lovasz_math.h"
#include "ops/soft_dice_math.h"

namespace fastops {
namespace {

void check_floating(const char* op, const char* name, const at::Tensor& t) {
  const auto type = t.scalar_type();
  TORCH_CHECK(type == at::kFloat || type == at::kDouble || type == at::kHalf || type == at::kBFloat16, op, ": ",
              name, " must be float16, bfloat16, float32 or float64, got ", type);
}

}  // namespace

at::ScalarType soft_dice_statistics_dtype(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

at::ScalarType lovasz_loss_dtype(const at::Tensor& input) {
  return input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

SoftDiceProblem make_soft_dice_problem(const char* op, const at::Tensor& input, const at::Tensor& target,
                                       bool multiclass, bool from_logits, std::optional<int64_t> ignore_index,
                                       bool per_image, bool with_bce) {
  TORCH_CHECK(input.dim() == 3, op, ": input must be [N, C, S], got shape ", input.sizes());
  check_floating(op, "input", input);
  TORCH_CHECK(target.device() == input.device(), op, ": target must be on the device of input");
  if (multiclass) {
    TORCH_CHECK(target.scalar_type() == at::kLong, op, ": multiclass target must be int64 labels, got ",
                target.scalar_type());
    TORCH_CHECK(target.dim() == 2 && target.size(0) == input.size(0) && target.size(1) == input.size(2), op,
                ": multiclass target must be [N, S] for input [N, C, S], got ", target.sizes(), " and ",
                input.sizes());
    TORCH_CHECK(!with_bce, op, ": with_bce needs multilabel targets");
  } else {
    TORCH_CHECK(target.sizes() == input.sizes(), op, ": target must have the shape of input ", input.sizes(),
                ", got ", target.sizes());
    TORCH_CHECK(target.scalar_type() == input.scalar_type(), op, ": target (", target.scalar_type(),
                ") must have the dtype of input (", input.scalar_type(), ")");
    TORCH_CHECK(!with_bce || from_logits, op, ": with_bce needs from_logits");
  }
  SoftDiceProblem p;
  p.batch = input.size(0);
  p.classes = input.size(1);
  p.pixels = input.size(2);
  p.units = per_image ? p.batch : 1;
  p.multiclass = multiclass;
  p.from_logits = from_logits;
  p.with_bce = with_bce;
  p.has_ignore = ignore_index.has_value();
  p.ignore_index = ignore_index.value_or(0);
  return p;
}

LovaszProblem make_lovasz_problem(const char* op, const at::Tensor& input, const at::Tensor& labels, int64_t kind,
                                  std::optional<int64_t> ignore_index, bool per_image, int64_t foreground_class) {
  TORCH_CHECK(input.dim() == 3, op, ": input must be [N, C, S], got shape ", input.sizes());
  check_floating(op, "input", input);
  TORCH_CHECK(kind >= lovasz::kSoftmaxProbabilities && kind <= lovasz::kHinge, op, ": unknown kind ", kind);
  TORCH_CHECK(labels.device() == input.device(), op, ": labels must be on the device of input");
  TORCH_CHECK(labels.scalar_type() == at::kLong, op, ": labels must be int64, got ", labels.scalar_type());
  TORCH_CHECK(labels.dim() == 2 && labels.size(0) == input.size(0) && labels.size(1) == input.size(2), op,
              ": labels must be [N, S] for input [N, C, S], got ", labels.sizes(), " and ", input.sizes());
  TORCH_CHECK(kind != lovasz::kHinge || input.size(1) == 1, op, ": the hinge takes one channel, got ",
              input.size(1));
  TORCH_CHECK(input.size(0) * input.size(2) < std::numeric_limits<int32_t>::max(), op,
              ": at most 2^31 - 1 pixels (N·S), got ", input.size(0) * input.size(2));
  LovaszProblem p;
  p.batch = input.size(0);
  p.classes = input.size(1);
  p.pixels = input.size(2);
  p.per_image = per_image;
  p.units = per_image ? p.batch : 1;
  p.kind = kind;
  p.segment_classes = kind == lovasz::kHinge ? 1 : p.classes;
  p.foreground_class = foreground_class;
  p.has_ignore = ignore_index.has_value();
  p.ignore_index = ignore_index.value_or(0);
  return p;
}

at::Tensor check_dice_loss_arguments(const char* op, const at::Tensor& statistics,
                                     const std::optional<at::Tensor>& class_coefficients) {
  TORCH_CHECK(statistics.dim() == 3 && statistics.size(2) == soft_dice::kStatistics, op,
              ": statistics must be [units, classes, 6], got ", statistics.sizes());
  TORCH_CHECK(statistics.scalar_type() == at::kFloat || statistics.scalar_type() == at::kDouble, op,
              ": statistics must be float32 or float64, got ", statistics.scalar_type());
  if (!class_coefficients.has_value()) {
    return at::Tensor();
  }
  const at::Tensor& coefficients = *class_coefficients;
  TORCH_CHECK(coefficients.dim() == 1 && coefficients.size(0) == statistics.size(1), op,
              ": class_coefficients must be [", statistics.size(1), "], got ", coefficients.sizes());
  TORCH_CHECK(coefficients.device() == statistics.device(), op,
              ": class_coefficients must be on the device of statistics");
  return coefficients.to(statistics.scalar_type()).contiguous();
}

at::Tensor check_dice_loss_gradient(const char* op, const at::Tensor& grad, const at::Tensor& statistics) {
  TORCH_CHECK(grad.numel() == 1 && grad.device() == statistics.device(), op,
              ": grad must be a scalar on the device of statistics, got ", grad.sizes(), " on ", grad.device());
  return grad.to(statistics.scalar_type()).reshape({});
}

TORCH_LIBRARY_FRAGMENT(fastops, m) {
  m.def(
      "soft_dice_statistics(Tensor input, Tensor target, bool multiclass, bool from_logits, int? ignore_index, "
      "bool per_image, bool with_bce) -> Tensor");
  m.def(
      "_soft_dice_statistics_backward(Tensor grad_statistics, Tensor input, Tensor target, bool multiclass, "
      "bool from_logits, int? ignore_index, bool per_image) -> Tensor");
  m.def(
      "_soft_dice_loss_from_statistics(Tensor statistics, Tensor? class_coefficients, float scale, float smooth, "
      "float eps, bool log_loss) -> Tensor");
  m.def(
      "_soft_dice_loss_from_statistics_backward(Tensor grad, Tensor statistics, Tensor? class_coefficients, "
      "float scale, float smooth, float eps, bool log_loss) -> Tensor");
  m.def("_bce_dice_loss_from_statistics(Tensor statistics, float dice_weight, float smooth) -> Tensor");
  m.def(
      "_bce_dice_loss_from_statistics_backward(Tensor grad, Tensor statistics, float dice_weight, float smooth) "
      "-> Tensor");
  m.def(
      "lovasz_segments(Tensor input, Tensor labels, int kind, int? ignore_index, bool per_image, "
      "int foreground_class) -> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "_lovasz_segments_backward(Tensor grad_losses, Tensor input, Tensor labels, Tensor foreground_counts, "
      "Tensor valid_counts, Tensor sorted_entries, int kind, int? ignore_index, bool per_image, "
      "int foreground_class) -> Tensor");
}

}  // namespace fastops
