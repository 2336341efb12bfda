#pragma once
// Per-element math of the soft-Dice statistics, shared by the CPU and CUDA
// kernels (csrc/cpu/soft_dice.cpp, csrc/cuda/soft_dice.cu).
//
// The forward reduces, per (unit, class), six sums over the valid elements
// (unit = image when per_image, else the whole batch):
//   Σp, Σt, Σp·t, Σ|p − t|, Σ bce_with_logits(x, t), #valid
// where p is the prediction after the activation (softmax over classes,
// sigmoid, or none) and t the target (one-hot of the label in multiclass).
// Everything a Dice, Jaccard or BCE − ln(Dice) loss needs is a function of
// these sums, so only this reduction and its backward touch every element;
// the soft-Dice and BCE − ln(Dice) losses are then formed from the
// [units, classes, 6] sums by small ops whose per-term math is below.

#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>

namespace fastops::soft_dice {

constexpr int kStatistics = 6;
enum Statistic : int {
  kPredictionSum = 0,
  kTargetSum = 1,
  kProductSum = 2,
  kAbsoluteDifferenceSum = 3,
  kBceSum = 4,
  kValidCount = 5,
};

// The logistic terms are written in e = exp(−|x|), which never overflows, so
// a kernel can compute e for a whole array at once (the CPU kernels do, with
// vectorised exp/log1p) and finish each term here:
//   σ(x) = 1/(1 + e) for x ≥ 0, e/(1 + e) otherwise;
//   σ'(x) = σ(x)·σ(−x) = e/(1 + e)², which does not round to zero where σ(x)
//     rounds to 1 (as logsigmoid(x).exp() differentiates);
//   bce(x, t) = max(x, 0) − x·t + log1p(e), torch's binary_cross_entropy_with_logits.
template <typename T>
C10_HOST_DEVICE inline T sigmoid_from_exp(T x, T e) {
  const T r = T(1) / (T(1) + e);
  const T er = e * r;
  return x >= T(0) ? r : er;
}
template <typename T>
C10_HOST_DEVICE inline T sigmoid_slope_from_exp(T e) {
  const T r = T(1) / (T(1) + e);
  return e * r * r;
}
template <typename T>
C10_HOST_DEVICE inline T bce_from_exp(T x, T t, T log1p_e) {
  return (x > T(0) ? x : T(0)) - x * t + log1p_e;
}

template <typename T>
C10_HOST_DEVICE inline T exp_of_minus_abs(T x) {
  return std::exp(-std::abs(x));
}
template <typename T>
C10_HOST_DEVICE inline T sigmoid(T x) {
  return sigmoid_from_exp(x, exp_of_minus_abs(x));
}
template <typename T>
C10_HOST_DEVICE inline T sigmoid_slope(T x) {
  return sigmoid_slope_from_exp(exp_of_minus_abs(x));
}
template <typename T>
C10_HOST_DEVICE inline T bce_with_logits(T x, T t) {
  return bce_from_exp(x, t, std::log1p(exp_of_minus_abs(x)));
}

// d bce / dx = σ(x) − t.
template <typename T>
C10_HOST_DEVICE inline T bce_with_logits_slope(T x, T t) {
  return sigmoid(x) - t;
}

// sign(v) with sign(0) = 0, torch.sign's (and the L1 norm's subgradient).
template <typename T>
C10_HOST_DEVICE inline T sign(T v) {
  return v > T(0) ? T(1) : (v < T(0) ? T(-1) : T(0));
}

// The derivative of Σp·w0 + Σt·w1 + Σp·t·w2 + Σ|p − t|·w3 with respect to
// one p, for the statistic gradients g = [w0..w5] of its (unit, class). The
// BCE term depends on the logit, not on p: bce_with_logits_slope adds it.
template <typename T>
C10_HOST_DEVICE inline T prediction_gradient(const T* g, T p, T t) {
  return g[kPredictionSum] + g[kProductSum] * t + g[kAbsoluteDifferenceSum] * sign(p - t);
}

// Whether a multilabel target value takes part (it is not the ignore value).
template <typename T>
C10_HOST_DEVICE inline bool target_is_valid(T t, bool has_ignore, double ignore_value) {
  return !has_ignore || static_cast<double>(t) != ignore_value;
}

// Whether a multiclass label takes part. A label outside [0, C) that is not
// the ignore value is background in every class (the public functions reject
// such labels before any kernel runs, except while compiling or capturing).
C10_HOST_DEVICE inline bool label_is_valid(int64_t label, bool has_ignore, int64_t ignore_index) {
  return !has_ignore || label != ignore_index;
}

// The soft-Dice loss of one (unit, class) from its sums s[6], as
// fastops.losses.soft_dice_loss defines it (segmentation_models_pytorch's
// DiceLoss), and its derivative with respect to the sums. With S = Σp + Σt:
//   numerator   = (S − Σ|p − t|)/2 + smooth   (= I + smooth, I = Σp·t for hard targets)
//   denominator = max(S/2 + smooth, eps)      (= I + ½fp + ½fn + smooth)
//   score = numerator / denominator
//   loss  = 1 − score, or −ln(max(score, eps)) with log_loss; times [Σt > 0]
// (a product, so a NaN loss of an absent class stays NaN, as in SMP). The
// derivatives follow PyTorch's for the same expression: a clamp passes the
// gradient where its input is ≥ the bound (so not at NaN).
template <typename T>
struct DiceScore {
  T numerator, raw_denominator, denominator, score;
};

template <typename T>
C10_HOST_DEVICE inline DiceScore<T> dice_score(const T* s, T smooth, T eps) {
  DiceScore<T> d;
  const T total = s[kPredictionSum] + s[kTargetSum];
  d.numerator = (total - s[kAbsoluteDifferenceSum]) * T(0.5) + smooth;
  d.raw_denominator = total * T(0.5) + smooth;
  d.denominator = d.raw_denominator < eps ? eps : d.raw_denominator;
  d.score = d.numerator / d.denominator;
  return d;
}

template <typename T>
C10_HOST_DEVICE inline T dice_loss_term(const T* s, T smooth, T eps, bool log_loss) {
  const DiceScore<T> d = dice_score(s, smooth, eps);
  const T loss = log_loss ? -std::log(d.score < eps ? eps : d.score) : T(1) - d.score;
  return loss * (s[kTargetSum] > T(0) ? T(1) : T(0));
}

// Writes d(grad · dice_loss_term(s))/ds to g[6] (0 for the columns the loss
// does not read; the step of [Σt > 0] at 0 has derivative 0).
template <typename T>
C10_HOST_DEVICE inline void dice_loss_term_gradient(const T* s, T smooth, T eps, bool log_loss, T grad, T* g) {
  const DiceScore<T> d = dice_score(s, smooth, eps);
  const T grad_loss = grad * (s[kTargetSum] > T(0) ? T(1) : T(0));
  T grad_score = -grad_loss;
  if (log_loss) {
    grad_score = d.score >= eps ? -grad_loss / d.score : T(0);
  }
  const T grad_numerator = grad_score / d.denominator;
  const T grad_denominator =
      d.raw_denominator >= eps ? -grad_score * d.numerator / (d.denominator * d.denominator) : T(0);
  const T grad_total = (grad_numerator + grad_denominator) * T(0.5);
  g[kPredictionSum] = grad_total;
  g[kTargetSum] = grad_total;
  g[kProductSum] = T(0);
  g[kAbsoluteDifferenceSum] = -grad_numerator * T(0.5);
  g[kBceSum] = T(0);
  g[kValidCount] = T(0);
}

// BCE − ln(Dice) (fastops.losses.bce_dice_loss): the loss is
//   Σ bce / max(#valid, 1) − dice_weight · mean_{u,c} ln(max(D, 1e-7)),
//   D = (2Σp·t + smooth)/(Σp + Σt + smooth), D = 1 where that denominator is 0.
// The BCE part needs the sums over every (unit, class), so the kernels add
// those up themselves; these are the per-(unit, class) log term and its
// derivative (written to g[kPredictionSum], g[kTargetSum], g[kProductSum]).
constexpr double kBceDiceFloor = 1e-7;

template <typename T>
C10_HOST_DEVICE inline T bce_dice_log_term(const T* s, T smooth) {
  const T numerator = T(2) * s[kProductSum] + smooth;
  const T denominator = s[kPredictionSum] + s[kTargetSum] + smooth;
  const T dice = denominator == T(0) ? T(1) : numerator / denominator;
  return std::log(dice < T(kBceDiceFloor) ? T(kBceDiceFloor) : dice);
}

// grad is d loss / d(ln term) (= −dice_weight / terms times the incoming gradient).
template <typename T>
C10_HOST_DEVICE inline void bce_dice_log_term_gradient(const T* s, T smooth, T grad, T* g) {
  const T numerator = T(2) * s[kProductSum] + smooth;
  const T denominator = s[kPredictionSum] + s[kTargetSum] + smooth;
  T grad_numerator = T(0), grad_denominator = T(0);
  if (denominator != T(0)) {
    const T dice = numerator / denominator;
    const T grad_dice = dice >= T(kBceDiceFloor) ? grad / dice : T(0);
    grad_numerator = grad_dice / denominator;
    grad_denominator = -grad_dice * numerator / (denominator * denominator);
  }
  g[kPredictionSum] = grad_denominator;
  g[kTargetSum] = grad_denominator;
  g[kProductSum] = T(2) * grad_numerator;
  g[kAbsoluteDifferenceSum] = T(0);
}

}  // namespace fastops::soft_dice
