// Autograd of soft_dice_statistics and of the ops forming the soft-Dice and
// BCE − ln(Dice) losses from its output, in C++.
//
// Registered from Python (torch.library.register_autograd) the same formula
// cost ~150 us of Python per forward+backward on a 2-core CPU, a tenth of the
// whole soft-Dice loss at Pascal VOC/4 (bench/NOTES.md); here it costs what
// PyTorch's own autograd costs, as in pooling_autograd.cpp. The Triton twin
// keeps the Python registration (fastops/_registrations/segmentation_losses.py).
//
//   soft_dice_statistics: grad_input = _soft_dice_statistics_backward(grad, input, target, ...)
//   _soft_dice_loss_from_statistics, _bce_dice_loss_from_statistics:
//     grad_statistics = their _backward ops (closed forms, soft_dice_math.h)
//   (first-order: the backward ops have no derivative; targets and coefficients get none)

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <optional>

namespace fastops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

at::Tensor statistics_call(const at::Tensor& input, const at::Tensor& target, bool multiclass, bool from_logits,
                           std::optional<int64_t> ignore_index, bool per_image, bool with_bce) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastops::soft_dice_statistics", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, bool, bool,
                                               std::optional<int64_t>, bool, bool)>();
  return op.call(input, target, multiclass, from_logits, ignore_index, per_image, with_bce);
}

at::Tensor statistics_backward_call(const at::Tensor& grad_statistics, const at::Tensor& input,
                                    const at::Tensor& target, bool multiclass, bool from_logits,
                                    std::optional<int64_t> ignore_index, bool per_image) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastops::_soft_dice_statistics_backward", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, bool, bool,
                                               std::optional<int64_t>, bool)>();
  return op.call(grad_statistics, input, target, multiclass, from_logits, ignore_index, per_image);
}

class SoftDiceStatisticsFunction : public torch::autograd::Function<SoftDiceStatisticsFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& target,
                            bool multiclass, bool from_logits, std::optional<int64_t> ignore_index, bool per_image,
                            bool with_bce) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({input, target});
    ctx->saved_data["multiclass"] = multiclass;
    ctx->saved_data["from_logits"] = from_logits;
    ctx->saved_data["ignore_index"] = ignore_index;
    ctx->saved_data["per_image"] = per_image;
    return statistics_call(input, target, multiclass, from_logits, ignore_index, per_image, with_bce);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto ignore_index = ctx->saved_data["ignore_index"].toOptional<int64_t>();
    const at::Tensor grad_input = statistics_backward_call(
        grads[0].contiguous(), saved[0], saved[1], ctx->saved_data["multiclass"].toBool(),
        ctx->saved_data["from_logits"].toBool(), ignore_index, ctx->saved_data["per_image"].toBool());
    return {grad_input, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor loss_call(const at::Tensor& statistics, const std::optional<at::Tensor>& class_coefficients, double scale,
                     double smooth, double eps, bool log_loss) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastops::_soft_dice_loss_from_statistics", "")
                             .typed<at::Tensor(const at::Tensor&, const std::optional<at::Tensor>&, double, double,
                                               double, bool)>();
  return op.call(statistics, class_coefficients, scale, smooth, eps, log_loss);
}

at::Tensor loss_backward_call(const at::Tensor& grad, const at::Tensor& statistics,
                              const std::optional<at::Tensor>& class_coefficients, double scale, double smooth,
                              double eps, bool log_loss) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastops::_soft_dice_loss_from_statistics_backward", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                               double, double, double, bool)>();
  return op.call(grad, statistics, class_coefficients, scale, smooth, eps, log_loss);
}

class SoftDiceLossFunction : public torch::autograd::Function<SoftDiceLossFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& statistics,
                            const std::optional<at::Tensor>& class_coefficients, double scale, double smooth,
                            double eps, bool log_loss) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({statistics, class_coefficients.value_or(at::Tensor())});
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["smooth"] = smooth;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["log_loss"] = log_loss;
    return loss_call(statistics, class_coefficients, scale, smooth, eps, log_loss);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const std::optional<at::Tensor> coefficients =
        saved[1].defined() ? std::optional<at::Tensor>(saved[1]) : std::nullopt;
    const at::Tensor grad_statistics =
        loss_backward_call(grads[0], saved[0], coefficients, ctx->saved_data["scale"].toDouble(),
                           ctx->saved_data["smooth"].toDouble(), ctx->saved_data["eps"].toDouble(),
                           ctx->saved_data["log_loss"].toBool());
    return {grad_statistics, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor soft_dice_loss_from_statistics_autograd(const at::Tensor& statistics,
                                                   const std::optional<at::Tensor>& class_coefficients, double scale,
                                                   double smooth, double eps, bool log_loss) {
  return SoftDiceLossFunction::apply(statistics, class_coefficients, scale, smooth, eps, log_loss);
}

at::Tensor bce_dice_call(const at::Tensor& statistics, double dice_weight, double smooth) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastops::_bce_dice_loss_from_statistics", "")
                             .typed<at::Tensor(const at::Tensor&, double, double)>();
  return op.call(statistics, dice_weight, smooth);
}

at::Tensor bce_dice_backward_call(const at::Tensor& grad, const at::Tensor& statistics, double dice_weight,
                                  double smooth) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("fastops::_bce_dice_loss_from_statistics_backward", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&, double, double)>();
  return op.call(grad, statistics, dice_weight, smooth);
}

class BceDiceLossFunction : public torch::autograd::Function<BceDiceLossFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& statistics, double dice_weight, double smooth) {
    at::AutoDispatchBelowADInplaceOrView guard;
    ctx->save_for_backward({statistics});
    ctx->saved_data["dice_weight"] = dice_weight;
    ctx->saved_data["smooth"] = smooth;
    return bce_dice_call(statistics, dice_weight, smooth);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const at::Tensor statistics = ctx->get_saved_variables()[0];
    return {bce_dice_backward_call(grads[0], statistics, ctx->saved_data["dice_weight"].toDouble(),
                                   ctx->saved_data["smooth"].toDouble()),
            at::Tensor(), at::Tensor()};
  }
};

at::Tensor bce_dice_loss_from_statistics_autograd(const at::Tensor& statistics, double dice_weight, double smooth) {
  return BceDiceLossFunction::apply(statistics, dice_weight, smooth);
}

at::Tensor soft_dice_statistics_autograd(const at::Tensor& input, const at::Tensor& target, bool multiclass,
                                         bool from_logits, std::optional<int64_t> ignore_index, bool per_image,
                                         bool with_bce) {
  return SoftDiceStatisticsFunction::apply(input, target, multiclass, from_logits, ignore_index, per_image,
                                           with_bce);
}

}  // namespace

TORCH_LIBRARY_IMPL(fastops, Autograd, m) {
  m.impl("soft_dice_statistics", &soft_dice_statistics_autograd);
  m.impl("_soft_dice_loss_from_statistics", &soft_dice_loss_from_statistics_autograd);
  m.impl("_bce_dice_loss_from_statistics", &bce_dice_loss_from_statistics_autograd);
}

}  // namespace fastops
