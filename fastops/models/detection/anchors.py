"""Anchor boxes for a feature pyramid (Ren et al., "Faster R-CNN", NeurIPS
2015, section 3.1.1; one size per level as in Lin et al., "Feature Pyramid
Networks for Object Detection", CVPR 2017, section 4.1)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn


def anchor_levels(
    value, name: str, num_levels: int | None, api: str = "AnchorGenerator"
) -> tuple[tuple[float, ...], ...]:
    """Positive numbers per pyramid level: one sequence per level, or (with
    ``num_levels``) a flat sequence that every level shares. Raises
    ``ValueError`` naming ``name``."""
    if isinstance(value, str) or not isinstance(value, Sequence) or not value:
        raise ValueError(f"{api}: {name} must be a non-empty sequence, got {value!r}")
    value = tuple(value)
    if all(isinstance(v, int | float) for v in value):
        if num_levels is None:
            raise ValueError(f"{api}: {name} needs one sequence per level, got {value!r}")
        value = (value,) * num_levels
    levels = []
    for level in value:
        if isinstance(level, str) or not isinstance(level, Sequence) or not level:
            raise ValueError(f"{api}: {name} must be non-empty sequences, got {value!r}")
        if not all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in level):
            raise ValueError(f"{api}: {name} must hold positive numbers, got {value!r}")
        levels.append(tuple(float(v) for v in level))
    return tuple(levels)


class AnchorGenerator(nn.Module):
    """Anchors of every pyramid level, for one (padded) image size.

    ``sizes``: one sequence of anchor sizes (the square root of the area, in
    pixels) per level, e.g. ``((16,), (32,), (64,), (128,), (256,))`` for P2..P6.
    ``aspect_ratios``: height / width ratios, either one sequence for all levels
    or one per level. Every level must have the same number of anchors per
    location (:attr:`num_anchors_per_location`), since the RPN head is shared.

    ``forward(image_size (H, W), feature_sizes [(h_l, w_l)], dtype, device) ->
    (anchors [sum_l h_l * w_l * A, 4], counts [h_l * w_l * A per level])``.
    The order is level, then row, then column, then anchor (sizes outer,
    ratios inner): the order in which the RPN flattens its outputs. Level
    ``l`` has stride ``H // h_l`` (and ``W // w_l``); anchors are centred on the
    top-left corner of their cell, ``(x * stride, y * stride)``, and their
    corners are rounded to whole pixels, as in Detectron and torchvision.
    """

    def __init__(
        self,
        sizes: Sequence[Sequence[float]] = ((16,), (32,), (64,), (128,), (256,)),
        aspect_ratios: Sequence[float] | Sequence[Sequence[float]] = (0.5, 1.0, 2.0),
    ) -> None:
        super().__init__()
        self.sizes = anchor_levels(sizes, "sizes", None)
        self.aspect_ratios = anchor_levels(aspect_ratios, "aspect_ratios", len(self.sizes))
        if len(self.aspect_ratios) != len(self.sizes):
            raise ValueError(
                f"AnchorGenerator: aspect_ratios has {len(self.aspect_ratios)} levels, "
                f"sizes has {len(self.sizes)}"
            )
        for level in range(len(self.sizes)):
            anchors = self.cell_anchors(level, torch.float64, torch.device("cpu"))
            if ((anchors[:, 2:] - anchors[:, :2]) <= 0).any():
                raise ValueError(
                    f"AnchorGenerator: sizes {self.sizes[level]} with aspect_ratios "
                    f"{self.aspect_ratios[level]} give anchors under one pixel"
                )
        counts = {len(s) * len(r) for s, r in zip(self.sizes, self.aspect_ratios, strict=True)}
        if len(counts) != 1:
            raise ValueError(
                "AnchorGenerator: every level needs the same number of anchors per location "
                f"(len(sizes[l]) * len(aspect_ratios[l])), got sizes={self.sizes}, "
                f"aspect_ratios={self.aspect_ratios}"
            )
        self.num_anchors_per_location = counts.pop()

    @property
    def num_levels(self) -> int:
        return len(self.sizes)

    def cell_anchors(self, level: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """``[A, 4]``: the anchors of one location of ``level``, centred on (0, 0)."""
        sizes = torch.tensor(self.sizes[level], dtype=torch.float64)
        ratios = torch.tensor(self.aspect_ratios[level], dtype=torch.float64)
        # ratio = h / w with area size^2: h = size * sqrt(ratio), w = size / sqrt(ratio).
        heights = (sizes[:, None] * ratios.sqrt()[None, :]).flatten()
        widths = (sizes[:, None] / ratios.sqrt()[None, :]).flatten()
        anchors = torch.stack((-widths, -heights, widths, heights), dim=1) / 2
        return anchors.round().to(dtype=dtype, device=device)

    def forward(
        self,
        image_size: tuple[int, int],
        feature_sizes: Sequence[tuple[int, int]],
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> tuple[torch.Tensor, list[int]]:
        if len(feature_sizes) != self.num_levels:
            raise ValueError(
                f"AnchorGenerator: {len(feature_sizes)} feature maps for {self.num_levels} levels "
                "of anchor sizes"
            )
        all_anchors, counts = [], []
        for level, (height, width) in enumerate(feature_sizes):
            stride_y, stride_x = image_size[0] // height, image_size[1] // width
            shift_x = torch.arange(width, dtype=dtype, device=device) * stride_x
            shift_y = torch.arange(height, dtype=dtype, device=device) * stride_y
            grid_y, grid_x = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = torch.stack((grid_x, grid_y, grid_x, grid_y), dim=-1).reshape(-1, 1, 4)
            anchors = (shifts + self.cell_anchors(level, dtype, device)[None]).reshape(-1, 4)
            all_anchors.append(anchors)
            counts.append(anchors.shape[0])
        return torch.cat(all_anchors), counts

    def extra_repr(self) -> str:
        return f"sizes={self.sizes}, aspect_ratios={self.aspect_ratios}"
