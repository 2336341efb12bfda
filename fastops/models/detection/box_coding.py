"""Box geometry and the box parametrisation of the R-CNN family.

Boxes are ``(x1, y1, x2, y2)`` in pixels, in the last dimension of a tensor.

:class:`BoxCoder` is the regression parametrisation of Girshick et al., "Rich
feature hierarchies for accurate object detection and semantic segmentation"
(R-CNN, CVPR 2014, appendix C), used unchanged by Fast R-CNN (Girshick, ICCV
2015), Faster R-CNN (Ren et al., NeurIPS 2015) and Mask R-CNN (He et al., ICCV
2017): a box is described relative to a reference box (an anchor or a proposal)
by its centre offset in units of the reference's size and the logarithm of its
size ratio,

    dx = wx (x - xa) / wa    dy = wy (y - ya) / ha
    dw = ww log(w / wa)      dh = wh log(h / ha)

with per-coordinate weights ``(wx, wy, ww, wh)``: 1 for the RPN, ``(10, 10, 5,
5)`` for the box head (which scales its targets to unit variance). Decoding
clamps ``dw`` and ``dh`` to ``log(1000 / 16)`` so that an untrained network
cannot produce boxes of infinite size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

DEFAULT_LOG_SCALE_CLIP = math.log(1000.0 / 16)


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """``[..., 4] -> [...]``: ``(x2 - x1) * (y2 - y1)`` (negative for inverted boxes)."""
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def pairwise_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Intersection over union of every pair: ``[N, 4], [M, 4] -> [N, M]``.

    A pair whose union is empty (two zero-area boxes) has IoU 0, not NaN, so
    that it never counts as a match.
    """
    top_left = torch.maximum(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.minimum(boxes1[:, None, 2:], boxes2[None, :, 2:])
    overlap = (bottom_right - top_left).clamp(min=0)
    intersection = overlap[..., 0] * overlap[..., 1]
    union = box_area(boxes1)[:, None] + box_area(boxes2)[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-12), 0.0)


def clip_boxes_to_image(boxes: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Clamps ``[..., 4]`` boxes to an image of ``(height, width)``."""
    height, width = image_size
    x = boxes[..., 0::2].clamp(min=0, max=width)
    y = boxes[..., 1::2].clamp(min=0, max=height)
    return torch.stack((x[..., 0], y[..., 0], x[..., 1], y[..., 1]), dim=-1)


def boxes_at_least(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """``[N, 4] -> bool [N]``: boxes whose width and height are both ``>= min_size``."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return (widths >= min_size) & (heights >= min_size)


class BoxCoder:
    """Encodes boxes as regression targets relative to reference boxes and
    decodes predicted deltas back into boxes (see the module docstring).

    ``weights``: ``(wx, wy, ww, wh)``, positive. ``log_scale_clip``: the upper
    bound of the decoded ``dw`` and ``dh``, ``log(1000 / 16)`` by default.

    Both methods broadcast over leading dimensions: ``encode(boxes [..., 4],
    references [..., 4]) -> deltas [..., 4]`` and ``decode(deltas [..., 4],
    references [..., 4]) -> boxes [..., 4]``, so per-class deltas
    ``[N, C, 4]`` decode against proposals ``[N, 1, 4]`` in one call.
    """

    def __init__(
        self,
        weights: Sequence[float] = (1.0, 1.0, 1.0, 1.0),
        log_scale_clip: float = DEFAULT_LOG_SCALE_CLIP,
    ) -> None:
        weights = tuple(float(w) for w in weights)
        if len(weights) != 4 or not all(math.isfinite(w) and w > 0 for w in weights):
            raise ValueError(f"BoxCoder: weights must be 4 positive numbers, got {weights}")
        if not (math.isfinite(log_scale_clip) and log_scale_clip > 0):
            raise ValueError(f"BoxCoder: log_scale_clip must be positive, got {log_scale_clip}")
        self.weights = weights
        self.log_scale_clip = float(log_scale_clip)

    def __repr__(self) -> str:
        return f"BoxCoder(weights={self.weights}, log_scale_clip={self.log_scale_clip:.4f})"

    @staticmethod
    def _centre_size(boxes: torch.Tensor) -> tuple[torch.Tensor, ...]:
        widths = boxes[..., 2] - boxes[..., 0]
        heights = boxes[..., 3] - boxes[..., 1]
        return boxes[..., 0] + 0.5 * widths, boxes[..., 1] + 0.5 * heights, widths, heights

    def encode(self, boxes: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """The deltas that turn ``references`` into ``boxes`` (both of positive size)."""
        wx, wy, ww, wh = self.weights
        x, y, w, h = self._centre_size(boxes)
        xa, ya, wa, ha = self._centre_size(references)
        return torch.stack(
            (
                wx * (x - xa) / wa,
                wy * (y - ya) / ha,
                ww * torch.log(w / wa),
                wh * torch.log(h / ha),
            ),
            dim=-1,
        )

    def decode(self, deltas: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
        """The boxes that ``deltas`` describe relative to ``references``."""
        references = references.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        xa, ya, wa, ha = self._centre_size(references)
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = (deltas[..., 2] / ww).clamp(max=self.log_scale_clip)
        dh = (deltas[..., 3] / wh).clamp(max=self.log_scale_clip)
        x = dx * wa + xa
        y = dy * ha + ya
        half_w = 0.5 * torch.exp(dw) * wa
        half_h = 0.5 * torch.exp(dh) * ha
        return torch.stack((x - half_w, y - half_h, x + half_w, y + half_h), dim=-1)
