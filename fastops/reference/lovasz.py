"""Reference Lovász-softmax and Lovász-hinge losses (Berman, Rannen Triki and
Blaschko, "The Lovász-Softmax loss", CVPR 2018, Algorithm 1): plain PyTorch,
one sort per (unit, class) in a Python loop, written from the paper to be read.

Inputs are normalised by the public functions (fastops.losses): predictions
``[N, C, *]`` (C = 1 for the hinge and the sigmoid form), labels int64
``[N, *]``. A unit is an image when ``per_image``, else the whole batch.
Differences from Berman's code, on purpose: a unit whose pixels are all
ignored contributes 0 (the reference returns an empty tensor); one valid pixel
works; counts are exact integers; the Lovász gradient is differenced in the
compute dtype (float64 for float64 input).
"""

from __future__ import annotations

import math

import torch


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def lovasz_grad(foreground_sorted: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """g_k = J_k − J_{k−1} for foreground flags in decreasing-error order,
    J_k = 1 − I_k/U_k with I_k = G − #fg(≤k), U_k = G + #bg(≤k)."""
    fg = foreground_sorted.to(torch.int64)
    total = fg.sum()
    intersection = total - fg.cumsum(0)
    union = total + (1 - fg).cumsum(0)
    jaccard = 1.0 - intersection.to(dtype) / union.to(dtype)
    if jaccard.numel() > 1:
        jaccard = torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])
    return jaccard


def _segment_loss(errors: torch.Tensor, foreground: torch.Tensor, hinge: bool) -> torch.Tensor:
    if errors.numel() == 0:
        return errors.sum()
    # Stable, so equal errors keep increasing pixel order (as the kernels do).
    sorted_errors, order = torch.sort(errors, descending=True, stable=True)
    gradient = lovasz_grad(foreground[order], errors.dtype)
    if hinge:
        sorted_errors = torch.relu(sorted_errors)
    return torch.dot(sorted_errors, gradient)


def _units(tensor: torch.Tensor, per_image: bool) -> list[torch.Tensor]:
    return list(tensor) if per_image else [tensor.transpose(0, 1).reshape(tensor.shape[1], -1)]


def lovasz_softmax(
    probas: torch.Tensor,
    labels: torch.Tensor,
    classes: str | list[int] = "present",
    per_image: bool = False,
    ignore: int | None = None,
    from_logits: bool = False,
) -> torch.Tensor:
    """Mean over units of the mean over the selected classes of Σ e_sorted·g,
    e = |fg − p|; a unit with no selected class contributes 0. With C = 1,
    ``classes`` is ``[k]``: p is the sigmoid probability of foreground label k."""
    n, c = probas.shape[:2]
    x = probas.reshape(n, c, math.prod(probas.shape[2:])).to(_compute_dtype(probas.dtype))
    if from_logits:
        x = torch.sigmoid(x) if c == 1 else torch.softmax(x, dim=1)
    y = labels.reshape(n, 1, math.prod(labels.shape[1:]))
    unit_losses = []
    for p, lab in zip(_units(x, per_image), _units(y, per_image), strict=True):
        lab = lab.reshape(-1)
        if per_image:
            p = p.reshape(c, -1)
        valid = torch.ones_like(lab, dtype=torch.bool) if ignore is None else lab != ignore
        p, lab = p[:, valid], lab[valid]
        selected = range(c) if isinstance(classes, str) else classes
        losses = []
        for k in selected:
            foreground = lab == (classes[0] if c == 1 else k)
            if classes == "present" and not bool(foreground.any()):
                continue
            errors = (foreground.to(p.dtype) - p[0 if c == 1 else k]).abs()
            losses.append(_segment_loss(errors, foreground, hinge=False))
        unit_losses.append(torch.stack(losses).mean() if losses else x.sum() * 0)
    loss = torch.stack(unit_losses).mean() if unit_losses else x.sum() * 0
    return loss.to(probas.dtype)


def lovasz_hinge(
    logits: torch.Tensor, labels: torch.Tensor, per_image: bool = True, ignore: int | None = None
) -> torch.Tensor:
    """Mean over units of Σ max(e_sorted, 0)·g, e = 1 − x·(2y − 1), y ∈ {0, 1}."""
    n = logits.shape[0]
    x = logits.reshape(n, 1, math.prod(logits.shape[1:])).to(_compute_dtype(logits.dtype))
    y = labels.reshape(n, 1, math.prod(labels.shape[1:]))
    unit_losses = []
    for scores, lab in zip(_units(x, per_image), _units(y, per_image), strict=True):
        scores, lab = scores.reshape(-1), lab.reshape(-1)
        valid = torch.ones_like(lab, dtype=torch.bool) if ignore is None else lab != ignore
        scores, lab = scores[valid], lab[valid]
        foreground = lab == 1
        signs = foreground.to(scores.dtype) * 2 - 1
        unit_losses.append(_segment_loss(1.0 - scores * signs, foreground, hinge=True))
    loss = torch.stack(unit_losses).mean() if unit_losses else x.sum() * 0
    return loss.to(logits.dtype)
