"""Registrations of the RoI ops: roi_align, multi_scale_roi_align, roi_pool.

Each has a C++ op (``fastops::roi_align``, kernels in ``fastops._C``) and a
Triton op with the same schema (``fastops::roi_align_triton``, launchers in
``fastops.triton_kernels.roi_align`` / ``roi_pool``). Both get the fake kernels
and autograd formulas here: the backward of each is its private
``_<op>_backward`` op, deterministic (no order-dependent floating-point
atomics) when ``torch.are_deterministic_algorithms_enabled()``. The gradient
of the feature maps takes their layout; rois get no gradient (as torchvision).
"""

from __future__ import annotations

import torch

from fastops import _library
from fastops._pooling import roi_memory_format

_SCHEMAS = {
    "roi_align": (
        "(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
        "int sampling_ratio, bool aligned) -> Tensor"
    ),
    "_roi_align_backward": (
        "(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
        "SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, "
        "bool aligned, bool deterministic) -> Tensor"
    ),
    "multi_scale_roi_align": (
        "(Tensor[] features, Tensor rois, Tensor levels, float[] spatial_scales, SymInt pooled_height, "
        "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor"
    ),
    "_multi_scale_roi_align_backward": (
        "(Tensor grad, Tensor rois, Tensor levels, float[] spatial_scales, SymInt pooled_height, "
        "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt[] heights, SymInt[] widths, "
        "int sampling_ratio, bool aligned, bool deterministic) -> Tensor[]"
    ),
    "roi_pool": (
        "(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
        "-> (Tensor, Tensor)"
    ),
    "_roi_pool_backward": (
        "(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width, "
        "bool deterministic) -> Tensor"
    ),
}


def _empty(shape, like: torch.Tensor, memory_format, dtype=None) -> torch.Tensor:
    return torch.empty(
        shape, dtype=dtype or like.dtype, device=like.device, memory_format=memory_format
    )


def _check_rois(rois):
    torch._check(rois.dim() == 2 and rois.shape[1] == 5, lambda: "rois must be [K, 5]")


def _roi_align_fake(
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned
):
    _check_rois(rois)
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    return _empty(shape, input, roi_memory_format([input]))


def _roi_align_backward_fake(
    grad,
    rois,
    spatial_scale,
    pooled_height,
    pooled_width,
    batch_size,
    channels,
    height,
    width,
    sampling_ratio,
    aligned,
    deterministic,
):
    return _empty((batch_size, channels, height, width), grad, roi_memory_format([grad]))


def _multi_scale_fake(
    features, rois, levels, spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned
):
    _check_rois(rois)
    shape = (rois.shape[0], features[0].shape[1], pooled_height, pooled_width)
    return _empty(shape, features[0], roi_memory_format(features))


def _multi_scale_backward_fake(
    grad,
    rois,
    levels,
    spatial_scales,
    pooled_height,
    pooled_width,
    batch_size,
    channels,
    heights,
    widths,
    sampling_ratio,
    aligned,
    deterministic,
):
    layout = roi_memory_format([grad])
    return [
        _empty((batch_size, channels, h, w), grad, layout)
        for h, w in zip(heights, widths, strict=True)
    ]


def _roi_pool_fake(input, rois, spatial_scale, pooled_height, pooled_width):
    _check_rois(rois)
    shape = (rois.shape[0], input.shape[1], pooled_height, pooled_width)
    layout = roi_memory_format([input])
    return _empty(shape, input, layout), _empty(shape, input, layout, torch.int32)


def _roi_pool_backward_fake(
    grad,
    rois,
    argmax,
    spatial_scale,
    pooled_height,
    pooled_width,
    batch_size,
    channels,
    height,
    width,
    deterministic,
):
    return _empty((batch_size, channels, height, width), grad, roi_memory_format([grad]))


_FAKES = {
    "roi_align": _roi_align_fake,
    "_roi_align_backward": _roi_align_backward_fake,
    "multi_scale_roi_align": _multi_scale_fake,
    "_multi_scale_roi_align_backward": _multi_scale_backward_fake,
    "roi_pool": _roi_pool_fake,
    "_roi_pool_backward": _roi_pool_backward_fake,
}


def _register(suffix: str) -> None:
    ops = torch.ops.fastops
    roi_align_backward_op = getattr(ops, "_roi_align_backward" + suffix)
    multi_scale_backward_op = getattr(ops, "_multi_scale_roi_align_backward" + suffix)
    roi_pool_backward_op = getattr(ops, "_roi_pool_backward" + suffix)

    def roi_align_setup(ctx, inputs, output):
        input, rois, *params = inputs
        ctx.save_for_backward(rois)
        ctx.params = params  # spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned
        ctx.input_shape = input.shape
        ctx.memory_format = roi_memory_format([input])

    def roi_align_backward(ctx, grad):
        (rois,) = ctx.saved_tensors
        spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = ctx.params
        grad_input = roi_align_backward_op(
            grad.contiguous(memory_format=ctx.memory_format),
            rois,
            spatial_scale,
            pooled_height,
            pooled_width,
            *ctx.input_shape,
            sampling_ratio,
            aligned,
            torch.are_deterministic_algorithms_enabled(),
        )
        return grad_input, None, None, None, None, None, None

    def multi_scale_setup(ctx, inputs, output):
        features, rois, levels, *params = inputs
        ctx.save_for_backward(rois, levels)
        ctx.params = params  # spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned
        ctx.batch_channels = features[0].shape[:2]
        ctx.heights = [f.shape[2] for f in features]
        ctx.widths = [f.shape[3] for f in features]
        ctx.memory_format = roi_memory_format(features)

    def multi_scale_backward(ctx, grad):
        rois, levels = ctx.saved_tensors
        spatial_scales, pooled_height, pooled_width, sampling_ratio, aligned = ctx.params
        grads = multi_scale_backward_op(
            grad.contiguous(memory_format=ctx.memory_format),
            rois,
            levels,
            spatial_scales,
            pooled_height,
            pooled_width,
            *ctx.batch_channels,
            ctx.heights,
            ctx.widths,
            sampling_ratio,
            aligned,
            torch.are_deterministic_algorithms_enabled(),
        )
        return list(grads), None, None, None, None, None, None, None

    def roi_pool_setup(ctx, inputs, output):
        input, rois, *params = inputs
        ctx.save_for_backward(rois, output[1])
        ctx.params = params  # spatial_scale, pooled_height, pooled_width
        ctx.input_shape = input.shape
        ctx.memory_format = roi_memory_format([input])
        ctx.mark_non_differentiable(output[1])

    def roi_pool_backward(ctx, grad, _grad_argmax):
        rois, argmax = ctx.saved_tensors
        spatial_scale, pooled_height, pooled_width = ctx.params
        grad_input = roi_pool_backward_op(
            grad.contiguous(memory_format=ctx.memory_format),
            rois,
            argmax,
            spatial_scale,
            pooled_height,
            pooled_width,
            *ctx.input_shape,
            torch.are_deterministic_algorithms_enabled(),
        )
        return grad_input, None, None, None, None

    for name, fake in _FAKES.items():
        torch.library.register_fake(f"fastops::{name}{suffix}")(fake)
    torch.library.register_autograd(
        f"fastops::roi_align{suffix}", roi_align_backward, setup_context=roi_align_setup
    )
    torch.library.register_autograd(
        f"fastops::multi_scale_roi_align{suffix}",
        multi_scale_backward,
        setup_context=multi_scale_setup,
    )
    torch.library.register_autograd(
        f"fastops::roi_pool{suffix}", roi_pool_backward, setup_context=roi_pool_setup
    )


def _define_triton_ops() -> None:
    """The Triton ops; their kernel modules are imported on first call."""

    def align():
        from fastops.triton_kernels import roi_align

        return roi_align

    def pool():
        from fastops.triton_kernels import roi_pool

        return roi_pool

    impls = {
        "roi_align": lambda *args: align().roi_align(*args),
        "_roi_align_backward": lambda *args: align().roi_align_backward(*args),
        "multi_scale_roi_align": lambda *args: align().multi_scale_roi_align(*args),
        "_multi_scale_roi_align_backward": lambda *args: align().multi_scale_roi_align_backward(
            *args
        ),
        "roi_pool": lambda *args: pool().roi_pool(*args),
        "_roi_pool_backward": lambda *args: pool().roi_pool_backward(*args),
    }
    for name, schema in _SCHEMAS.items():
        torch.library.define(f"fastops::{name}_triton", schema)
        torch.library.impl(f"fastops::{name}_triton", ("cpu", "cuda"))(impls[name])


_define_triton_ops()
_register("_triton")
if _library.extension_loaded():
    _register("")
