"""Reference soft-Dice and BCE − ln(Dice) losses: plain PyTorch, written to be
read, with a one-hot target and autograd for the gradient.

Inputs are already normalised by the public functions (fastops.losses):
``input`` is ``[N, C, *]``; ``target`` is int64 labels ``[N, *]`` when
multiclass, else a tensor of ``input``'s shape and dtype. The losses are
computed in float32 (float64 for float64 input) and returned in input's dtype.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _probabilities_and_targets(input, target, multiclass, from_logits, ignore_index):
    """(p, t, valid) as [N, C, S] tensors in the compute dtype."""
    n, c = input.shape[:2]
    pixels = math.prod(input.shape[2:])
    x = input.reshape(n, c, pixels).to(_compute_dtype(input.dtype))
    if multiclass:
        labels = target.reshape(n, pixels)
        valid = torch.ones_like(labels, dtype=torch.bool)
        if ignore_index is not None:
            valid = labels != ignore_index
        p = torch.softmax(x, dim=1) if from_logits else x
        classes = torch.arange(c, device=labels.device).view(1, c, 1)
        t = (labels.unsqueeze(1) == classes).to(x.dtype)
        valid = valid.unsqueeze(1).expand(n, c, -1)
    else:
        t = target.reshape(n, c, pixels).to(x.dtype)
        valid = torch.ones_like(t, dtype=torch.bool)
        if ignore_index is not None:
            valid = t != ignore_index
        p = torch.sigmoid(x) if from_logits else x
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    return torch.where(valid, p, zero), torch.where(valid, t, zero), valid, x


def soft_dice_loss(
    input: torch.Tensor,
    target: torch.Tensor,
    multiclass: bool,
    classes: list[int] | None = None,
    log_loss: bool = False,
    from_logits: bool = True,
    smooth: float = 0.0,
    ignore_index: int | None = None,
    eps: float = 1e-7,
    per_image: bool = False,
    class_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """segmentation_models_pytorch's DiceLoss (0.6): per class over the batch
    (per (image, class) when per_image), intersection I = (Σp + Σt − Σ|p − t|)/2,
    score = (I + smooth) / max(I + ½(Σp − I) + ½(Σt − I) + smooth, eps), loss
    1 − score or −ln(max(score, eps)), zero for classes absent from the target,
    then the mean (weighted by class_weights) over the selected classes."""
    p, t, _, _ = _probabilities_and_targets(input, target, multiclass, from_logits, ignore_index)
    dims = (2,) if per_image else (0, 2)
    p_sum, t_sum = p.sum(dims), t.sum(dims)
    difference = (p - t).abs().sum(dims)
    intersection = (p_sum + t_sum - difference) / 2
    fp, fn = p_sum - intersection, t_sum - intersection
    score = (intersection + smooth) / (intersection + 0.5 * fp + 0.5 * fn + smooth).clamp_min(eps)
    loss = -torch.log(score.clamp_min(eps)) if log_loss else 1.0 - score
    loss = loss * (t_sum > 0).to(loss.dtype)
    weights = None if class_weights is None else class_weights.to(loss)
    if classes is not None:
        loss = loss[..., classes]
        weights = None if weights is None else weights[classes]
    if weights is None:
        return loss.mean().to(input.dtype)
    loss = loss * weights
    return (loss.sum(-1) / weights.sum()).mean().to(input.dtype)


def bce_dice_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    dice_weight: float = 1.0,
    smooth: float = 1.0,
    per_image: bool = False,
    ignore_index: int | None = None,
    eps: float = 1e-7,
) -> torch.Tensor:
    """BCE − dice_weight·mean ln(max(D, eps)), D = (2Σpt + smooth)/(Σp + Σt + smooth)
    per class (per (image, class) when per_image), D = 1 where Σp + Σt + smooth = 0;
    BCE is the mean of binary_cross_entropy_with_logits over the valid elements
    (0 when there are none)."""
    p, t, valid, x = _probabilities_and_targets(logits, target, False, True, ignore_index)
    bce = F.binary_cross_entropy_with_logits(x, t, reduction="none")
    bce = torch.where(valid, bce, torch.zeros_like(bce)).sum() / valid.sum().clamp_min(1)
    dims = (2,) if per_image else (0, 2)
    numerator = 2 * (p * t).sum(dims) + smooth
    denominator = p.sum(dims) + t.sum(dims) + smooth
    dice = torch.where(denominator == 0, torch.ones_like(numerator), numerator / denominator)
    return (bce - dice_weight * torch.log(dice.clamp_min(eps)).mean()).to(logits.dtype)
