"""Soft-Dice and BCE − ln(Dice) losses.

Both are functions of six sums per (unit, class) — Σp, Σt, Σp·t, Σ|p − t|,
Σ BCE, #valid — that one fused kernel (``fastops::soft_dice_statistics``)
computes in a single pass over the predictions and targets, without a one-hot
tensor and with float32 accumulation for float16/bfloat16; its backward is a
second single pass. The losses are formed from those [units, classes, 6] sums
by one more C++ op each (``_soft_dice_loss_from_statistics``,
``_bce_dice_loss_from_statistics``: value and closed-form backward, autograd in
C++), because as a dozen tensor ops the formula cost more than the kernels at
small sizes; the same formulas as tensor ops remain for a build without the
extension.
"""

from __future__ import annotations

import math

import torch

from fastops import _library, backends, reference
from fastops.losses._checks import (
    as_labels,
    check_classes_list,
    check_floating,
    check_label_values,
    check_optional_int,
    check_probabilities,
    check_same_batch,
)

MODES = ("binary", "multiclass", "multilabel")
_PREDICTION_SUM, _TARGET_SUM, _PRODUCT_SUM, _DIFFERENCE_SUM, _BCE_SUM, _VALID_COUNT = range(6)


def _as_target_values(target: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
    if target.device != input.device:
        raise ValueError(f"target is on {target.device} but input is on {input.device}")
    return target.to(input.dtype)


def _normalise(input, target, mode, ignore_index, from_logits):
    """(input [N, C, S] contiguous, target [N, S] int64 or [N, C, S]) for the kernel."""
    check_floating("input", input)
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    check_optional_int("ignore_index", ignore_index)
    if input.dim() < 2:
        raise ValueError(f"input must be [N, C, *], got shape {tuple(input.shape)}")
    n, c = input.shape[:2]
    pixels = math.prod(input.shape[2:])
    check_same_batch("target", target, input)
    x = input.reshape(n, c, pixels).contiguous()
    if mode == "multiclass":
        labels = as_labels("target", target, input)
        if tuple(labels.shape) != (n, *input.shape[2:]):
            raise ValueError(
                f"multiclass target must be labels of shape {(n, *input.shape[2:])} for input "
                f"{tuple(input.shape)}, got {tuple(labels.shape)}"
            )
        check_label_values("target", labels, f"class labels in [0, {c})", 0, c - 1, ignore_index)
        t = labels.reshape(n, pixels).contiguous()
    else:
        if mode == "binary" and c != 1:
            raise ValueError(f"binary mode takes input [N, 1, *], got shape {tuple(input.shape)}")
        t = _as_target_values(target, input)
        if t.numel() != input.numel() or (mode == "multilabel" and t.shape != input.shape):
            raise ValueError(
                f"target of shape {tuple(t.shape)} does not match input of shape {tuple(input.shape)}"
            )
        t = t.reshape(n, c, pixels).contiguous()
    if not from_logits:
        check_probabilities("input", input)
    return x, t


def _statistics(x, t, multiclass, from_logits, ignore_index, per_image, with_bce):
    backend = backends.select("soft_dice_statistics", x.device)
    op = (
        torch.ops.fastops.soft_dice_statistics_triton
        if backend == "triton"
        else torch.ops.fastops.soft_dice_statistics
    )
    return backend, lambda: op(x, t, multiclass, from_logits, ignore_index, per_image, with_bce)


def soft_dice_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    mode: str = "binary",
    classes: list[int] | None = None,
    log_loss: bool = False,
    from_logits: bool = True,
    smooth: float = 0.0,
    ignore_index: int | None = None,
    eps: float = 1e-7,
    per_image: bool = False,
    class_weights: list[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Soft Dice loss with segmentation_models_pytorch's ``DiceLoss`` values.

    Args:
        input: ``[N, C, *]`` logits (``from_logits``) or probabilities; ``C = 1`` in binary mode.
        target: binary: ``[N, *]`` or ``[N, 1, *]`` values in [0, 1]; multiclass: int labels
            ``[N, *]`` in ``[0, C)``; multilabel: ``[N, C, *]`` values in [0, 1].
        mode: ``"binary"`` (sigmoid), ``"multiclass"`` (softmax over C), ``"multilabel"`` (sigmoid).
        classes: the classes whose losses are averaged (all when None; not in binary mode).
        log_loss: ``−ln(max(score, eps))`` instead of ``1 − score``.
        from_logits: apply the softmax/sigmoid to ``input`` first.
        smooth, eps: see below. ignore_index: target value whose elements are left out.
        per_image: score each (image, class) instead of each class over the batch.
        class_weights: per-class weights of the mean (segmentation_models_pytorch ≥ 0.5).

    Per class c (over the batch, or per image), with p the probabilities and t the
    targets of the valid elements: I = (Σp + Σt − Σ|p − t|)/2 (= Σp·t for hard targets),
    score = (I + smooth) / max(½(Σp + Σt) + smooth, eps) written as SMP does; a class with
    Σt = 0 contributes 0 and still counts in the mean. Returns a scalar in input's dtype.
    """
    x, t = _normalise(input, target, mode, ignore_index, from_logits)
    multiclass = mode == "multiclass"
    if classes is not None:
        if mode == "binary":
            raise ValueError("classes is not supported with mode='binary'")
        classes = check_classes_list("classes", classes, x.shape[1])
    weights = None
    if class_weights is not None:
        if mode == "binary":
            raise ValueError("class_weights are not supported with mode='binary'")
        weights = torch.as_tensor(class_weights, dtype=torch.float64, device=x.device).flatten()
        if weights.numel() != x.shape[1]:
            raise ValueError(
                f"class_weights must have one weight per class ({x.shape[1]}), got {weights.numel()}"
            )
    backend, statistics = _statistics(x, t, multiclass, from_logits, ignore_index, per_image, False)
    if backend == "reference":
        return reference.soft_dice_loss(
            x,
            t,
            multiclass,
            classes,
            log_loss,
            from_logits,
            smooth,
            ignore_index,
            eps,
            per_image,
            weights,
        )
    sums = statistics()
    units = sums.shape[0]
    selected = x.shape[1] if classes is None else len(classes)
    if _library.extension_loaded() and units * selected > 0:
        coefficients = _class_coefficients(x.shape[1], classes, weights)
        scale = 1.0 / (units * (selected if weights is None else 1))
        loss = torch.ops.fastops._soft_dice_loss_from_statistics(
            sums, coefficients, scale, float(smooth), float(eps), bool(log_loss)
        )
        return loss.to(input.dtype)
    return _loss_from_statistics(sums, classes, weights, log_loss, smooth, eps).to(input.dtype)


def _class_coefficients(num_classes, classes, weights):
    """Each class's weight in the sum over classes (None: all 1): a class listed
    twice counts twice; class_weights are normalised over the selected classes."""
    if classes is None and weights is None:
        return None
    index = list(range(num_classes)) if classes is None else classes
    chosen = torch.ones(len(index), dtype=torch.float64) if weights is None else weights[index]
    coefficients = torch.zeros(num_classes, dtype=torch.float64, device=chosen.device)
    coefficients.index_add_(0, torch.tensor(index, device=chosen.device), chosen)
    if weights is not None:
        coefficients = coefficients / chosen.sum()
    return coefficients


def _loss_from_statistics(sums, classes, weights, log_loss, smooth, eps):
    """The same loss as tensor ops (without the extension, and for an empty mean)."""
    p_sum, t_sum, _, difference_sum = sums.unbind(-1)[:4]
    total = p_sum + t_sum
    score = ((total - difference_sum) * 0.5 + smooth) / (total * 0.5 + smooth).clamp_min(eps)
    loss = -torch.log(score.clamp_min(eps)) if log_loss else 1.0 - score
    loss = loss * (t_sum > 0).to(loss.dtype)
    if weights is not None:
        weights = weights.to(loss.dtype)
    if classes is not None:
        loss = loss[..., classes]
        weights = None if weights is None else weights[classes]
    if weights is None:
        return loss.mean()
    return ((loss * weights).sum(-1) / weights.sum()).mean()


def bce_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    dice_weight: float = 1.0,
    smooth: float = 1.0,
    per_image: bool = False,
    ignore_index: int | None = None,
) -> torch.Tensor:
    """BCE-with-logits minus ``dice_weight`` times the log of the soft Dice
    (Iglovikov et al.'s BCE − ln(overlap), with the Dice as the overlap).

    Args:
        logits: ``[N, C, *]`` logits (``C = 1`` for a binary problem; each channel
            is its own sigmoid, as in multilabel segmentation).
        target: values in [0, 1] of logits' shape (``[N, *]`` also when ``C = 1``).
        ignore_index: target value whose elements are left out of both terms.

    With σ the sigmoid, p = σ(x), and sums over the valid elements::

        BCE  = Σ [max(x, 0) − x·t + ln(1 + e^−|x|)] / #valid      (0 if none is valid)
        D_c  = (2·Σ p·t + smooth) / (Σ p + Σ t + smooth)           per class c over the batch,
                                                                   or per (image, class) when
                                                                   per_image; D_c = 1 when the
                                                                   denominator is 0
        LOSS = BCE − dice_weight · mean_c ln(max(D_c, 1e-7))

    Returns a scalar in logits' dtype.
    """
    x, t = _normalise(
        logits,
        target,
        "multilabel" if _is_multilabel(logits, target) else "binary",
        ignore_index,
        True,
    )
    backend, statistics = _statistics(x, t, False, True, ignore_index, per_image, True)
    if backend == "reference":
        return reference.bce_dice_loss(x, t, dice_weight, smooth, per_image, ignore_index)
    sums = statistics()
    if _library.extension_loaded():
        loss = torch.ops.fastops._bce_dice_loss_from_statistics(
            sums, float(dice_weight), float(smooth)
        )
        return loss.to(logits.dtype)
    bce = sums[..., _BCE_SUM].sum() / sums[..., _VALID_COUNT].sum().clamp_min(1)
    numerator = 2 * sums[..., _PRODUCT_SUM] + smooth
    denominator = sums[..., _PREDICTION_SUM] + sums[..., _TARGET_SUM] + smooth
    dice = torch.where(denominator == 0, torch.ones_like(numerator), numerator / denominator)
    loss = bce - dice_weight * torch.log(dice.clamp_min(1e-7)).mean()
    return loss.to(logits.dtype)


def _is_multilabel(logits: torch.Tensor, target: torch.Tensor) -> bool:
    return not (isinstance(logits, torch.Tensor) and logits.dim() >= 2 and logits.shape[1] == 1)


class DiceLoss(torch.nn.modules.loss._Loss):
    """segmentation_models_pytorch's ``DiceLoss`` constructor and values, on the
    fused kernels (:func:`soft_dice_loss`), plus ``per_image``."""

    def __init__(
        self,
        mode: str,
        classes: list[int] | None = None,
        log_loss: bool = False,
        from_logits: bool = True,
        smooth: float = 0.0,
        ignore_index: int | None = None,
        eps: float = 1e-7,
        class_weights: list[float] | None = None,
        per_image: bool = False,
    ):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if classes is not None and mode == "binary":
            raise ValueError("classes is not supported with mode='binary'")
        if class_weights is not None and mode == "binary":
            raise ValueError("class_weights are not supported with mode='binary'")
        self.mode = mode
        self.classes = classes
        self.log_loss = log_loss
        self.from_logits = from_logits
        self.smooth = smooth
        self.ignore_index = ignore_index
        self.eps = eps
        self.class_weights = class_weights
        self.per_image = per_image

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        return soft_dice_loss(
            y_pred,
            y_true,
            self.mode,
            self.classes,
            self.log_loss,
            self.from_logits,
            self.smooth,
            self.ignore_index,
            self.eps,
            self.per_image,
            self.class_weights,
        )


class BCEDiceLoss(torch.nn.modules.loss._Loss):
    """BCE − dice_weight·ln(soft Dice) (:func:`bce_dice_loss`) as a module."""

    def __init__(
        self,
        dice_weight: float = 1.0,
        smooth: float = 1.0,
        per_image: bool = False,
        ignore_index: int | None = None,
    ):
        super().__init__()
        self.dice_weight = dice_weight
        self.smooth = smooth
        self.per_image = per_image
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return bce_dice_loss(
            logits, target, self.dice_weight, self.smooth, self.per_image, self.ignore_index
        )
