"""Lovász-softmax and Lovász-hinge losses (Berman, Rannen Triki and Blaschko,
CVPR 2018) with the arguments, defaults and values of Berman's reference
``lovasz_losses.py``.

One kernel (``fastops::lovasz_segments``) computes every (unit, class)
segment at once: errors, one segmented sort, the Lovász gradient from exact
integer counts and each segment's loss; its backward scatters the gradient
through the saved sorted entries. Which classes count ('present', 'all', a
list) and the means over classes and images are formed here on the
[units, classes] losses, on the device, without a host synchronisation.

Where the reference misbehaves, these return the mathematically right value:
a unit whose pixels are all ignored contributes 0 with zero gradient (the
reference returns an empty tensor); a single valid pixel works (it crashes
there); counts stay exact past 2^24 pixels (its float32 cumsum does not).
"""

from __future__ import annotations

import math

import torch

from fastops import backends, reference
from fastops.losses._checks import (
    as_labels,
    check_classes_list,
    check_floating,
    check_label_values,
    check_optional_int,
    check_probabilities,
    check_same_batch,
)

_SOFTMAX_PROBABILITIES, _SOFTMAX_LOGITS, _HINGE = 0, 1, 2


def _labels_like(labels, predictions: torch.Tensor) -> torch.Tensor:
    labels = as_labels("labels", labels, predictions)
    check_same_batch("labels", labels, predictions)
    n = predictions.shape[0]
    pixels = math.prod(predictions.shape[2:])
    if labels.numel() != n * pixels:
        raise ValueError(
            f"labels of shape {tuple(labels.shape)} do not match predictions of shape "
            f"{tuple(predictions.shape)} ({pixels} pixels per image)"
        )
    return labels.reshape(n, pixels).contiguous()


def _segments(x, labels, kind, ignore, per_image, foreground_class):
    backend = backends.select("lovasz_segments", x.device)
    if backend == "reference":
        return backend, None
    op = (
        torch.ops.fastops.lovasz_segments_triton
        if backend == "triton"
        else torch.ops.fastops.lovasz_segments
    )
    return backend, op(x, labels, kind, ignore, per_image, foreground_class)


def _mean_over_units(unit_losses: torch.Tensor) -> torch.Tensor:
    # A fixed divisor (no host read); an empty batch gives 0.
    return unit_losses.sum() / max(unit_losses.shape[0], 1)


def lovasz_softmax(
    probas: torch.Tensor,
    labels: torch.Tensor,
    classes: str | list[int] = "present",
    per_image: bool = False,
    ignore: int | None = None,
    *,
    from_logits: bool = False,
) -> torch.Tensor:
    """Multi-class Lovász-softmax loss, Berman's ``lovasz_softmax``.

    Args:
        probas: ``[B, C, H, W]`` (or ``[B, C, *]``) class probabilities; ``[B, H, W]``
            is the output of a sigmoid (one channel). With ``from_logits=True``, logits:
            the softmax over C (the sigmoid for one channel) is fused in the kernel.
        labels: ``[B, H, W]`` integer labels in ``[0, C)`` (or ``ignore``).
        classes: ``"present"`` (classes with a foreground pixel in the unit), ``"all"``,
            or a list of classes to average (repeats count twice, as in the reference).
            One channel takes ``[k]``: foreground is label k (the reference's sigmoid form).
        per_image: loss per image, then the mean over images; else over the batch.
        ignore: label whose pixels are left out.

    Per unit and class c: e = |1[y = c] − p_c| sorted decreasingly, loss_c = Σ e·g with g
    the Lovász gradient of the Jaccard loss; the unit's loss is the mean over the selected
    classes (0 if none), the result the mean over units. Labels outside ``[0, C)`` raise a
    ValueError; while compiling or capturing a CUDA graph they are not checked and count
    as background for every class (the reference's behaviour). Returns a scalar in probas'
    dtype.
    """
    check_floating("probas", probas)
    check_optional_int("ignore", ignore)
    if probas.dim() == 3:
        probas = probas.unsqueeze(1)
    if probas.dim() < 3:
        raise ValueError(
            f"probas must be [B, C, H, W] or [B, H, W], got shape {tuple(probas.shape)}"
        )
    n, c = probas.shape[:2]
    y = _labels_like(labels, probas)
    if c == 1:
        if isinstance(classes, str) or len(list(classes)) != 1:
            raise ValueError(
                "one-channel (sigmoid) probas need classes=[k], the label whose pixels are "
                f"foreground, got classes={classes!r}"
            )
        foreground_class = int(next(iter(classes)))
        weights = None
    else:
        foreground_class = -1
        if isinstance(classes, str):
            if classes not in ("present", "all"):
                raise ValueError(f"classes must be 'present', 'all' or a list, got {classes!r}")
            weights = None
        else:
            selected = check_classes_list("classes", classes, c)
            weights = [selected.count(k) for k in range(c)]
        check_label_values("labels", y, f"class labels in [0, {c})", 0, c - 1, ignore)
    if not from_logits:
        check_probabilities("probas", probas)
    x = probas.reshape(n, c, math.prod(probas.shape[2:])).contiguous()
    kind = _SOFTMAX_LOGITS if from_logits else _SOFTMAX_PROBABILITIES
    backend, outputs = _segments(x, y, kind, ignore, per_image, foreground_class)
    if backend == "reference":
        return reference.lovasz_softmax(
            x, y, classes if c > 1 else [foreground_class], per_image, ignore, from_logits
        )
    losses, foreground_counts, _, _ = outputs
    if c == 1:
        unit_losses = losses[:, 0]
    else:
        if weights is not None:
            class_weights = torch.tensor(weights, dtype=losses.dtype, device=losses.device)
            class_weights = class_weights.expand_as(losses)
        elif classes == "present":
            class_weights = (foreground_counts > 0).to(losses.dtype)
        else:
            class_weights = torch.ones_like(losses)
        unit_losses = (losses * class_weights).sum(1) / class_weights.sum(1).clamp_min(1)
    return _mean_over_units(unit_losses).to(probas.dtype)


def lovasz_hinge(
    logits: torch.Tensor,
    labels: torch.Tensor,
    per_image: bool = True,
    ignore: int | None = None,
) -> torch.Tensor:
    """Binary Lovász hinge loss, Berman's ``lovasz_hinge``.

    Args:
        logits: ``[B, H, W]`` (or any ``[B, *]``) scores, −∞ to +∞.
        labels: binary masks of the same number of pixels per image, 0 or 1 (or ``ignore``).
        per_image: loss per image, then the mean; else over the batch (the reference's
            default here is True, unlike lovasz_softmax).
        ignore: label whose pixels are left out.

    Per unit: e = 1 − x·(2y − 1) sorted decreasingly, loss = Σ max(e, 0)·g. Labels other
    than 0/1 raise a ValueError; while compiling or capturing they are not checked and
    only 1 counts as foreground. Returns a scalar in logits' dtype.
    """
    check_floating("logits", logits)
    check_optional_int("ignore", ignore)
    if logits.dim() < 1:
        raise ValueError("logits must be [B, *], got a 0-d tensor")
    n = logits.shape[0]
    x = logits.reshape(n, 1, math.prod(logits.shape[1:])).contiguous()
    y = _labels_like(labels, x)
    check_label_values("labels", y, "0 or 1", 0, 1, ignore)
    backend, outputs = _segments(x, y, _HINGE, ignore, per_image, 1)
    if backend == "reference":
        return reference.lovasz_hinge(x, y, per_image, ignore)
    losses = outputs[0]
    return _mean_over_units(losses[:, 0]).to(logits.dtype)


class LovaszLoss(torch.nn.modules.loss._Loss):
    """segmentation_models_pytorch's ``LovaszLoss`` constructor on the fused kernels.

    multiclass: :func:`lovasz_softmax` with ``classes="present"``, the softmax fused when
    ``from_logits`` (SMP always applies it; pass probabilities with ``from_logits=False``).
    binary / multilabel: :func:`lovasz_hinge` on the logits, all channels of an image one
    problem (``from_logits`` does not apply: the hinge takes scores, as in SMP).
    """

    def __init__(
        self,
        mode: str,
        per_image: bool = False,
        ignore_index: int | None = None,
        from_logits: bool = True,
    ):
        super().__init__()
        if mode not in ("binary", "multiclass", "multilabel"):
            raise ValueError(f"mode must be 'binary', 'multiclass' or 'multilabel', got {mode!r}")
        self.mode = mode
        self.per_image = per_image
        self.ignore_index = ignore_index
        self.from_logits = from_logits

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        if self.mode == "multiclass":
            return lovasz_softmax(
                y_pred,
                y_true,
                per_image=self.per_image,
                ignore=self.ignore_index,
                from_logits=self.from_logits,
            )
        return lovasz_hinge(y_pred, y_true, per_image=self.per_image, ignore=self.ignore_index)
