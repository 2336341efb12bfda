"""Registrations of the segmentation-loss ops: the C++ ops
(``fastops::soft_dice_statistics``, ``fastops::lovasz_segments``, kernels in
``fastops._C``) and the Triton ops with the same schemas (``*_triton``,
launchers in ``fastops.triton_kernels.soft_dice`` / ``.lovasz``) get their fake
kernels and autograd formulas here, except the autograd of the C++
soft_dice_statistics, which is registered in C++ (csrc/ops/soft_dice_autograd.cpp)
because the Python one cost a tenth of the loss at small sizes.

soft_dice_statistics returns per-(unit, class) sums; its backward takes their
gradient and makes one elementwise pass. lovasz_segments returns the segment
losses and what the backward needs (foreground and valid counts and the sorted
entries, which carry the permutation); only the losses are differentiable.
First-order gradients; the targets and labels get none.
"""

from __future__ import annotations

import torch

from fastops import _library

_SCHEMAS = {
    "soft_dice_statistics": (
        "(Tensor input, Tensor target, bool multiclass, bool from_logits, int? ignore_index, "
        "bool per_image, bool with_bce) -> Tensor"
    ),
    "_soft_dice_statistics_backward": (
        "(Tensor grad_statistics, Tensor input, Tensor target, bool multiclass, bool from_logits, "
        "int? ignore_index, bool per_image) -> Tensor"
    ),
    "lovasz_segments": (
        "(Tensor input, Tensor labels, int kind, int? ignore_index, bool per_image, "
        "int foreground_class) -> (Tensor, Tensor, Tensor, Tensor)"
    ),
    "_lovasz_segments_backward": (
        "(Tensor grad_losses, Tensor input, Tensor labels, Tensor foreground_counts, "
        "Tensor valid_counts, Tensor sorted_entries, int kind, int? ignore_index, bool per_image, "
        "int foreground_class) -> Tensor"
    ),
}

STATISTICS = 6


def _accumulation_dtype(input: torch.Tensor) -> torch.dtype:
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def _soft_dice_statistics_fake(
    input, target, multiclass, from_logits, ignore_index, per_image, with_bce
):
    torch._check(input.dim() == 3, lambda: "soft_dice_statistics: input must be [N, C, S]")
    units = input.shape[0] if per_image else 1
    return input.new_empty(units, input.shape[1], STATISTICS, dtype=_accumulation_dtype(input))


def _soft_dice_statistics_backward_fake(
    grad_statistics, input, target, multiclass, from_logits, ignore_index, per_image
):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _lovasz_segments_fake(input, labels, kind, ignore_index, per_image, foreground_class):
    torch._check(input.dim() == 3, lambda: "lovasz_segments: input must be [N, C, S]")
    n, c, s = input.shape
    units = n if per_image else 1
    classes = 1 if kind == 2 else c
    return (
        input.new_empty(units, classes, dtype=_accumulation_dtype(input)),
        labels.new_empty(units, classes, dtype=torch.long),
        labels.new_empty(units, dtype=torch.long),
        labels.new_empty(n * s * classes, dtype=torch.int32),
    )


def _lovasz_segments_backward_fake(
    grad_losses,
    input,
    labels,
    foreground_counts,
    valid_counts,
    sorted_entries,
    kind,
    ignore_index,
    per_image,
    foreground_class,
):
    return torch.empty_like(input, memory_format=torch.contiguous_format)


def _register(suffix: str) -> None:
    dice_backward = getattr(torch.ops.fastops, "_soft_dice_statistics_backward" + suffix)
    lovasz_backward = getattr(torch.ops.fastops, "_lovasz_segments_backward" + suffix)

    def dice_setup(ctx, inputs, output):
        input, target, multiclass, from_logits, ignore_index, per_image, _with_bce = inputs
        ctx.save_for_backward(input, target)
        ctx.params = (multiclass, from_logits, ignore_index, per_image)

    def dice_backward_formula(ctx, grad):
        input, target = ctx.saved_tensors
        grad_input = dice_backward(grad.contiguous(), input, target, *ctx.params)
        return grad_input, None, None, None, None, None, None

    def lovasz_setup(ctx, inputs, output):
        input, labels, kind, ignore_index, per_image, foreground_class = inputs
        _losses, foreground_counts, valid_counts, sorted_entries = output
        ctx.mark_non_differentiable(foreground_counts, valid_counts, sorted_entries)
        ctx.save_for_backward(input, labels, foreground_counts, valid_counts, sorted_entries)
        ctx.params = (kind, ignore_index, per_image, foreground_class)

    def lovasz_backward_formula(ctx, grad_losses, *_unused):
        input, labels, foreground_counts, valid_counts, sorted_entries = ctx.saved_tensors
        grad_input = lovasz_backward(
            grad_losses.contiguous(),
            input,
            labels,
            foreground_counts,
            valid_counts,
            sorted_entries,
            *ctx.params,
        )
        return grad_input, None, None, None, None, None

    fakes = {
        "soft_dice_statistics": _soft_dice_statistics_fake,
        "_soft_dice_statistics_backward": _soft_dice_statistics_backward_fake,
        "lovasz_segments": _lovasz_segments_fake,
        "_lovasz_segments_backward": _lovasz_segments_backward_fake,
    }
    for name, fake in fakes.items():
        torch.library.register_fake(f"fastops::{name}{suffix}")(fake)
    if suffix:  # the C++ op's autograd is in C++ (csrc/ops/soft_dice_autograd.cpp): less per call
        torch.library.register_autograd(
            f"fastops::soft_dice_statistics{suffix}",
            dice_backward_formula,
            setup_context=dice_setup,
        )
    torch.library.register_autograd(
        f"fastops::lovasz_segments{suffix}", lovasz_backward_formula, setup_context=lovasz_setup
    )


def _define_triton_ops() -> None:
    """The Triton ops; their kernel modules are imported on first call."""

    def soft_dice():
        from fastops.triton_kernels import soft_dice

        return soft_dice

    def lovasz():
        from fastops.triton_kernels import lovasz

        return lovasz

    impls = {
        "soft_dice_statistics": lambda *args: soft_dice().soft_dice_statistics(*args),
        "_soft_dice_statistics_backward": lambda *args: soft_dice().soft_dice_statistics_backward(
            *args
        ),
        "lovasz_segments": lambda *args: lovasz().lovasz_segments(*args),
        "_lovasz_segments_backward": lambda *args: lovasz().lovasz_segments_backward(*args),
    }
    for name, schema in _SCHEMAS.items():
        torch.library.define(f"fastops::{name}_triton", schema)
        torch.library.impl(f"fastops::{name}_triton", ("cpu", "cuda"))(impls[name])


def _soft_dice_loss_from_statistics_fake(
    statistics, class_coefficients, scale, smooth, eps, log_loss
):
    torch._check(
        statistics.dim() == 3, lambda: "_soft_dice_loss_from_statistics: statistics must be 3-D"
    )
    return statistics.new_empty(())


def _soft_dice_loss_from_statistics_backward_fake(
    grad, statistics, class_coefficients, scale, smooth, eps, log_loss
):
    return torch.empty_like(statistics, memory_format=torch.contiguous_format)


def _bce_dice_loss_from_statistics_fake(statistics, dice_weight, smooth):
    torch._check(
        statistics.dim() == 3, lambda: "_bce_dice_loss_from_statistics: statistics must be 3-D"
    )
    return statistics.new_empty(())


def _bce_dice_loss_from_statistics_backward_fake(grad, statistics, dice_weight, smooth):
    return torch.empty_like(statistics, memory_format=torch.contiguous_format)


def _register_loss_from_statistics() -> None:
    """The C++-only ops that form the soft-Dice and BCE − ln(Dice) losses from
    the statistics (any backend's); their autograd is in C++
    (csrc/ops/soft_dice_autograd.cpp)."""
    torch.library.register_fake("fastops::_bce_dice_loss_from_statistics")(
        _bce_dice_loss_from_statistics_fake
    )
    torch.library.register_fake("fastops::_bce_dice_loss_from_statistics_backward")(
        _bce_dice_loss_from_statistics_backward_fake
    )
    torch.library.register_fake("fastops::_soft_dice_loss_from_statistics")(
        _soft_dice_loss_from_statistics_fake
    )
    torch.library.register_fake("fastops::_soft_dice_loss_from_statistics_backward")(
        _soft_dice_loss_from_statistics_backward_fake
    )


_define_triton_ops()
_register("_triton")
if _library.extension_loaded():
    _register("")
    _register_loss_from_statistics()
