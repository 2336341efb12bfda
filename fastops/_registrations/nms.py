"""Registrations of the box ops: nms, batched_nms, nms_padded, soft_nms, box_iou.

Each has a C++ op (``fastops::nms``, kernels in ``fastops._C``) and a Triton
op with the same schema (``fastops::nms_triton``, launchers in
``fastops.triton_kernels.nms``). Both get the same fake kernels: nms,
batched_nms and soft_nms return a data-dependent number of boxes (an unbacked
size under torch.compile), nms_padded fixed shapes. box_iou is differentiable:
its backward is the vector-Jacobian product of the reference formula.
"""

from __future__ import annotations

import torch

from fastops import _library, reference

_SCHEMAS = {
    "nms": "(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor",
    "batched_nms": "(Tensor boxes, Tensor scores, Tensor idxs, float iou_threshold) -> Tensor",
    "nms_padded": (
        "(Tensor boxes, Tensor scores, Tensor? idxs, float iou_threshold, int max_output) -> (Tensor, Tensor)"
    ),
    "soft_nms": (
        "(Tensor boxes, Tensor scores, float iou_threshold, float sigma, float score_threshold, int method) -> "
        "(Tensor, Tensor)"
    ),
    "box_iou": "(Tensor boxes1, Tensor boxes2) -> Tensor",
}


def _check_boxes(boxes):
    torch._check(boxes.dim() == 2 and boxes.shape[1] == 4, lambda: "boxes must be [N, 4]")


def _nms_fake(boxes, scores, iou_threshold):
    _check_boxes(boxes)
    return boxes.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.long)


def _batched_nms_fake(boxes, scores, idxs, iou_threshold):
    _check_boxes(boxes)
    return boxes.new_empty(torch.library.get_ctx().new_dynamic_size(), dtype=torch.long)


def _nms_padded_fake(boxes, scores, idxs, iou_threshold, max_output):
    _check_boxes(boxes)
    return boxes.new_empty(max_output, dtype=torch.long), boxes.new_empty((), dtype=torch.long)


def _soft_nms_fake(boxes, scores, iou_threshold, sigma, score_threshold, method):
    _check_boxes(boxes)
    kept = torch.library.get_ctx().new_dynamic_size()
    return boxes.new_empty(kept, dtype=torch.long), scores.new_empty(kept)


def _box_iou_fake(boxes1, boxes2):
    _check_boxes(boxes1)
    _check_boxes(boxes2)
    return boxes1.new_empty(boxes1.shape[0], boxes2.shape[0])


_FAKES = {
    "nms": _nms_fake,
    "batched_nms": _batched_nms_fake,
    "nms_padded": _nms_padded_fake,
    "soft_nms": _soft_nms_fake,
    "box_iou": _box_iou_fake,
}


def _box_iou_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _box_iou_backward(ctx, grad):
    boxes1, boxes2 = ctx.saved_tensors
    _, vjp = torch.func.vjp(reference.box_iou, boxes1, boxes2)
    return vjp(grad)


def _register(suffix: str) -> None:
    for name, fake in _FAKES.items():
        torch.library.register_fake(f"fastops::{name}{suffix}")(fake)
    torch.library.register_autograd(
        f"fastops::box_iou{suffix}", _box_iou_backward, setup_context=_box_iou_setup
    )


def _define_triton_ops() -> None:
    """The Triton ops; fastops.triton_kernels.nms is imported on first call."""

    def kernels():
        from fastops.triton_kernels import nms

        return nms

    impls = {
        "nms": lambda boxes, scores, iou_threshold: kernels().nms(boxes, scores, iou_threshold),
        "batched_nms": lambda boxes, scores, idxs, iou_threshold: kernels().batched_nms(
            boxes, scores, idxs, iou_threshold
        ),
        "nms_padded": lambda boxes, scores, idxs, iou_threshold, max_output: kernels().nms_padded(
            boxes, scores, idxs, iou_threshold, max_output
        ),
        "soft_nms": lambda boxes, scores, iou_threshold, sigma, score_threshold, method: (
            kernels().soft_nms(boxes, scores, iou_threshold, sigma, score_threshold, method)
        ),
        "box_iou": lambda boxes1, boxes2: kernels().box_iou(boxes1, boxes2),
    }
    for name, schema in _SCHEMAS.items():
        torch.library.define(f"fastops::{name}_triton", schema)
        torch.library.impl(f"fastops::{name}_triton", ("cpu", "cuda"))(impls[name])


_define_triton_ops()
_register("_triton")
if _library.extension_loaded():
    _register("")
