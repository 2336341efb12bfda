"""Box operations: IoU, non-maximum suppression (plain, batched, fixed-size)
and soft-NMS.

Drop-ins for ``torchvision.ops.box_iou``, ``nms`` and ``batched_nms``: same
arguments and, on inputs without tied scores, the same kept indices. Rules,
identical on every backend and device:

* Boxes are ``(x1, y1, x2, y2)``; IoU is computed in float32 (float64 for
  float64 boxes) with one formula (``csrc/ops/box_iou_math.h``), so backends
  agree exactly, not merely closely.
* A box is suppressed when its IoU with a kept box (of its category) placed
  earlier in the order is strictly greater than ``iou_threshold``.
* The order is decreasing score; **equal scores keep the lower index first**;
  NaN scores come first (``torch.sort``'s order).
* A NaN IoU never suppresses: two zero-area boxes, or a box with a NaN
  coordinate, suppress nothing and are suppressed by nothing.

Beyond torchvision: ``batched_nms`` compares categories inside the kernel (no
coordinate offset, no per-class loop); ``nms_padded`` and
``batched_nms_padded`` return fixed-size results with no host
synchronisation (CUDA-graph capturable); ``soft_nms``.
"""

from __future__ import annotations

import math

import torch

from fastops import backends, reference

_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_SOFT_NMS_METHODS = {"gaussian": 0, "linear": 1}


def _check_boxes(boxes, name: str, api: str) -> None:
    if not isinstance(boxes, torch.Tensor):
        raise TypeError(f"{api}: {name} must be a torch.Tensor, got {type(boxes).__name__}")
    if boxes.dim() != 2 or boxes.shape[1] != 4:
        raise ValueError(
            f"{api}: {name} must be [N, 4] (x1, y1, x2, y2), got shape {tuple(boxes.shape)}"
        )
    if boxes.dtype not in _FLOATING:
        raise TypeError(
            f"{api}: {name} must be float16, bfloat16, float32 or float64, got {boxes.dtype}"
        )


def _check_number(
    value, name: str, api: str, low: float | None = None, high: float | None = None
) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{api}: {name} must be a number, got {type(value).__name__}")
    value = float(value)
    if (
        math.isnan(value)
        or (low is not None and value < low)
        or (high is not None and value > high)
    ):
        bounds = (
            f" in [{low}, {high}]"
            if high is not None
            else f" >= {low}"
            if low is not None
            else " (not NaN)"
        )
        raise ValueError(f"{api}: {name} must be a number{bounds}, got {value}")
    return value


def _check_nms(boxes, scores, iou_threshold, api: str, idxs=None, with_idxs: bool = False) -> float:
    _check_boxes(boxes, "boxes", api)
    if not isinstance(scores, torch.Tensor):
        raise TypeError(f"{api}: scores must be a torch.Tensor, got {type(scores).__name__}")
    if scores.dim() != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(
            f"{api}: scores must be [N] for boxes [N, 4], got {tuple(scores.shape)} and {tuple(boxes.shape)}"
        )
    if scores.dtype != boxes.dtype and not torch.is_autocast_enabled(boxes.device.type):
        raise TypeError(
            f"{api}: scores ({scores.dtype}) must have the dtype of boxes ({boxes.dtype})"
        )
    if scores.device != boxes.device:
        raise RuntimeError(
            f"{api}: scores must be on the device of boxes ({boxes.device}), got {scores.device}"
        )
    if with_idxs:
        if not isinstance(idxs, torch.Tensor):
            raise TypeError(f"{api}: idxs must be a torch.Tensor, got {type(idxs).__name__}")
        if idxs.dim() != 1 or idxs.shape[0] != boxes.shape[0]:
            raise ValueError(f"{api}: idxs must be [N] for boxes [N, 4], got {tuple(idxs.shape)}")
        if idxs.dtype.is_floating_point or idxs.dtype.is_complex or idxs.dtype == torch.bool:
            raise TypeError(f"{api}: idxs must have an integer dtype, got {idxs.dtype}")
        if idxs.device != boxes.device:
            raise RuntimeError(
                f"{api}: idxs must be on the device of boxes ({boxes.device}), got {idxs.device}"
            )
    return _check_number(iou_threshold, "iou_threshold", api, 0.0, 1.0)


def _autocast_float32(boxes: torch.Tensor, scores: torch.Tensor):
    """Boxes and scores of different dtypes (accepted only under torch.autocast)
    both in float32, as torchvision's autocast kernels compute NMS."""
    if boxes.dtype == scores.dtype:
        return boxes, scores
    return boxes.float(), scores.float()


def _check_max_output(max_output, api: str) -> int:
    if isinstance(max_output, bool) or not isinstance(max_output, int) or max_output < 0:
        raise ValueError(f"{api}: max_output must be a non-negative int, got {max_output!r}")
    return max_output


def _op(name: str, backend: str):
    suffix = "_triton" if backend == "triton" else ""
    return getattr(torch.ops.fastops, name + suffix)


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """IoU of every pair: ``boxes1 [N, 4]``, ``boxes2 [M, 4]`` (x1, y1, x2, y2) to
    ``[N, M]`` in the boxes' dtype (computed in float32/float64). Differentiable.
    Same values as ``torchvision.ops.box_iou`` (which computes float16 areas in
    float16; fastops in float32)."""
    _check_boxes(boxes1, "boxes1", "box_iou")
    _check_boxes(boxes2, "boxes2", "box_iou")
    if boxes1.dtype != boxes2.dtype:
        raise TypeError(
            f"box_iou: boxes1 ({boxes1.dtype}) and boxes2 ({boxes2.dtype}) must have one dtype"
        )
    if boxes1.device != boxes2.device:
        raise RuntimeError(
            f"box_iou: boxes1 and boxes2 must be on one device, got {boxes1.device} and {boxes2.device}"
        )
    backend = backends.select("box_iou", boxes1.device)
    if backend == "reference":
        return reference.box_iou(boxes1, boxes2)
    return _op("box_iou", backend)(boxes1, boxes2)


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Greedy non-maximum suppression: int64 indices of the kept boxes, by
    decreasing score (equal scores: lower index first).

    ``boxes [N, 4]`` (x1, y1, x2, y2), ``scores [N]`` of the same dtype, and
    ``iou_threshold`` in [0, 1]: a box is dropped when its IoU with a kept box of
    higher place is strictly greater. As ``torchvision.ops.nms``. On CUDA the
    result's length costs one device-to-host copy; :func:`nms_padded` has none.
    """
    iou_threshold = _check_nms(boxes, scores, iou_threshold, "nms")
    boxes, scores = _autocast_float32(boxes, scores)
    backend = backends.select("nms", boxes.device)
    if backend == "reference":
        return reference.nms(boxes, scores, iou_threshold)
    return _op("nms", backend)(boxes, scores, iou_threshold)


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """:func:`nms` within each category of ``idxs [N]`` (integers): boxes of
    different categories never suppress each other. Kept indices by decreasing
    score, as ``torchvision.ops.batched_nms``; the categories are compared inside
    the kernel, with no coordinate offset and no per-category loop."""
    iou_threshold = _check_nms(boxes, scores, iou_threshold, "batched_nms", idxs, with_idxs=True)
    boxes, scores = _autocast_float32(boxes, scores)
    backend = backends.select("batched_nms", boxes.device)
    if backend == "reference":
        return reference.batched_nms(boxes, scores, idxs, iou_threshold)
    return _op("batched_nms", backend)(boxes, scores, idxs, iou_threshold)


def nms_padded(
    boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float, max_output: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`nms` with fixed-size results and no host synchronisation:
    ``(indices [max_output] int64, count [] int64)`` where ``indices[:count]`` are
    the first ``count = min(kept, max_output)`` kept indices and the rest is -1.
    Capturable in a CUDA graph and traceable by ``torch.compile(fullgraph=True)``."""
    iou_threshold = _check_nms(boxes, scores, iou_threshold, "nms_padded")
    max_output = _check_max_output(max_output, "nms_padded")
    boxes, scores = _autocast_float32(boxes, scores)
    backend = backends.select("nms_padded", boxes.device)
    if backend == "reference":
        return reference.nms_padded(boxes, scores, None, iou_threshold, max_output)
    return _op("nms_padded", backend)(boxes, scores, None, iou_threshold, max_output)


def batched_nms_padded(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor,
    iou_threshold: float,
    max_output: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`batched_nms` with the fixed-size, synchronisation-free results of
    :func:`nms_padded`: the ``max_output`` highest-scoring kept boxes over all
    categories."""
    iou_threshold = _check_nms(
        boxes, scores, iou_threshold, "batched_nms_padded", idxs, with_idxs=True
    )
    max_output = _check_max_output(max_output, "batched_nms_padded")
    boxes, scores = _autocast_float32(boxes, scores)
    backend = backends.select("nms_padded", boxes.device)
    if backend == "reference":
        return reference.nms_padded(boxes, scores, idxs, iou_threshold, max_output)
    return _op("nms_padded", backend)(boxes, scores, idxs, iou_threshold, max_output)


def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    method: str = "gaussian",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS (Bodla, Singh, Chellappa and Davis, ICCV 2017): instead of
    dropping the boxes that overlap a kept one, decay their scores.

    Repeatedly keeps the box with the highest remaining score (NaN first, ties
    to the lower index) and multiplies every other remaining score by
    ``exp(-iou**2 / sigma)`` (``method="gaussian"``; ``iou_threshold`` unused) or,
    where ``iou > iou_threshold``, by ``1 - iou`` (``method="linear"``), until the
    highest remaining score is below ``score_threshold``.

    Returns ``(indices [K] int64, scores [K])``: the kept boxes in the order they
    were kept (decreasing decayed score) and their decayed scores, in the dtype
    of ``scores`` (computed in float32/float64). O(N * K); sequential in K on
    every device.
    """
    api = "soft_nms"
    iou_threshold = _check_nms(boxes, scores, iou_threshold, api)
    sigma = _check_number(sigma, "sigma", api, 0.0)
    if sigma == 0.0:
        raise ValueError(f"{api}: sigma must be positive, got {sigma}")
    score_threshold = _check_number(score_threshold, "score_threshold", api)
    if method not in _SOFT_NMS_METHODS:
        raise ValueError(f"{api}: method must be 'gaussian' or 'linear', got {method!r}")
    boxes, scores = _autocast_float32(boxes, scores)
    backend = backends.select("soft_nms", boxes.device)
    if backend == "reference":
        return reference.soft_nms(boxes, scores, iou_threshold, sigma, score_threshold, method)
    return _op("soft_nms", backend)(
        boxes, scores, iou_threshold, sigma, score_threshold, _SOFT_NMS_METHODS[method]
    )
