"""Reference box IoU, NMS, batched NMS, padded NMS and soft-NMS: plain PyTorch,
a Python loop over the boxes in order, written to be read.

Boxes are ``[N, 4]`` (x1, y1, x2, y2). IoU is computed in float32 (float64 for
float64 boxes) exactly as ``csrc/ops/box_iou_math.h``; a box is suppressed when
its IoU with a kept box of its class that comes earlier in the order is
strictly greater than the threshold. The order is decreasing score; equal
scores keep the lower index first; NaN scores come first (``torch.sort``).
"""

from __future__ import annotations

import torch


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """``[N, M]`` IoU of every pair, in the boxes' dtype (computed in float32/float64)."""
    return _iou(boxes1, boxes2).to(boxes1.dtype)


def _iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """box_iou in the compute dtype: what suppression decisions compare."""
    a = boxes1.to(compute_dtype(boxes1.dtype))
    b = boxes2.to(compute_dtype(boxes2.dtype))
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    # min/max keeping the first operand when the comparison is false (box_iou_math.h).
    left = torch.where(a[:, None, 0] < b[None, :, 0], b[None, :, 0], a[:, None, 0])
    top = torch.where(a[:, None, 1] < b[None, :, 1], b[None, :, 1], a[:, None, 1])
    right = torch.where(b[None, :, 2] < a[:, None, 2], b[None, :, 2], a[:, None, 2])
    bottom = torch.where(b[None, :, 3] < a[:, None, 3], b[None, :, 3], a[:, None, 3])
    w = right - left
    h = bottom - top
    inter = torch.where(w < 0, 0, w) * torch.where(h < 0, 0, h)
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def score_order(scores: torch.Tensor) -> torch.Tensor:
    return torch.sort(scores, stable=True, descending=True).indices


def _greedy(boxes: torch.Tensor, classes: torch.Tensor | None, iou_threshold: float) -> list[int]:
    """Positions kept by greedy suppression of boxes already in order."""
    n = boxes.shape[0]
    iou = _iou(boxes, boxes)
    threshold = torch.tensor(iou_threshold, dtype=iou.dtype)
    suppressed = torch.zeros(n, dtype=torch.bool, device=boxes.device)
    later = torch.ones(n, n, dtype=torch.bool, device=boxes.device).triu(1)
    if classes is not None:
        later &= classes[:, None] == classes[None, :]
    kept = []
    for i in range(n):
        if bool(suppressed[i]):
            continue
        kept.append(i)
        suppressed |= later[i] & (iou[i] > threshold)
    return kept


def nms(boxes: torch.Tensor, scores: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """Indices of the kept boxes, by decreasing score."""
    order = score_order(scores)
    kept = _greedy(boxes[order], None, iou_threshold)
    return order[torch.tensor(kept, dtype=torch.long, device=boxes.device)]


def batched_nms(
    boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float
) -> torch.Tensor:
    """nms within each category of ``idxs``; kept indices by decreasing score."""
    order = score_order(scores)
    kept = _greedy(boxes[order], idxs[order], iou_threshold)
    return order[torch.tensor(kept, dtype=torch.long, device=boxes.device)]


def nms_padded(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    idxs: torch.Tensor | None,
    iou_threshold: float,
    max_output: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``max_output`` kept indices padded with -1, and their count."""
    kept = (
        nms(boxes, scores, iou_threshold)
        if idxs is None
        else batched_nms(boxes, scores, idxs, iou_threshold)
    )
    kept = kept[:max_output]
    padded = torch.full((max_output,), -1, dtype=torch.long, device=boxes.device)
    padded[: kept.numel()] = kept
    return padded, torch.tensor(kept.numel(), dtype=torch.long, device=boxes.device)


def soft_nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_threshold: float,
    sigma: float,
    score_threshold: float,
    method: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Soft-NMS (Bodla et al., 2017): keep the highest remaining score, decay the
    others by ``exp(-iou^2 / sigma)`` ("gaussian") or, where ``iou >
    iou_threshold``, by ``1 - iou`` ("linear"); stop when the highest remaining
    score is below ``score_threshold``. Returns the kept indices in the order
    they were kept and their decayed scores."""
    dtype = compute_dtype(boxes.dtype)
    iou = _iou(boxes, boxes)
    score = scores.to(dtype).clone()
    alive = torch.ones(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    kept, kept_scores = [], []
    while bool(alive.any()):
        # The highest alive score; NaN counts as highest; ties to the lower index.
        alive_indices = alive.nonzero().squeeze(1)
        alive_scores = score[alive_indices]
        nan = torch.isnan(alive_scores)
        i = int(
            alive_indices[
                int(nan.nonzero()[0]) if bool(nan.any()) else int(torch.argmax(alive_scores))
            ]
        )
        if bool(score[i] < score_threshold):
            break
        kept.append(i)
        kept_scores.append(score[i])
        alive[i] = False
        if method == "linear":
            weight = torch.where(iou[i] > iou_threshold, 1 - iou[i], torch.ones_like(iou[i]))
        else:
            weight = torch.exp(-(iou[i] * iou[i]) / sigma)
        score = torch.where(alive, score * weight, score)
    indices = torch.tensor(kept, dtype=torch.long, device=boxes.device)
    values = torch.stack(kept_scores) if kept_scores else score.new_empty(0)
    return indices, values.to(scores.dtype)
