"""Semantic FPN: Lin et al., "Feature Pyramid Networks for Object Detection",
CVPR 2017, with the semantic segmentation branch of Kirillov, Girshick, He and
Dollár, "Panoptic Feature Pyramid Networks", CVPR 2019."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fastops.models.backbones import FeaturePyramid, ResNetBackbone
from fastops.models.operators import Operators, get_operators
from fastops.models.segmentation._layers import (
    ConvNormReLU,
    bilinear_upsampling,
    check_input,
    check_positive_int,
)

PYRAMID_LEVELS = 4  # P2..P5, strides 4..32


def _check_four_positive_ints(values, name: str, owner: str) -> tuple[int, ...]:
    if isinstance(values, str) or not isinstance(values, Sequence) or len(values) != 4:
        raise ValueError(f"{owner}: {name} must be a sequence of 4 positive ints, got {values!r}")
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{owner}: {name} must be a sequence of 4 positive ints, got {values!r}"
            )
    return tuple(values)


class FPNSegmentation(nn.Module):
    """Semantic FPN: a ResNet and feature pyramid (Lin et al., "Feature Pyramid
    Networks for Object Detection", CVPR 2017) with the semantic segmentation
    branch of Panoptic FPN (Kirillov, Girshick, He and Dollár, "Panoptic Feature
    Pyramid Networks", CVPR 2019).

    ``forward(x [B, in_channels, H, W]) -> logits [B, num_classes, H, W]``, with
    ``H`` and ``W`` multiples of 32 (:attr:`size_divisor`). ``num_classes`` counts
    the background.

    * Backbone: :class:`~fastops.models.backbones.ResNetBackbone` with
      ``backbone_widths`` and ``backbone_blocks`` (the defaults are ResNet-18's
      body), C2..C5 at strides 4..32.
    * Pyramid: :class:`~fastops.models.backbones.FeaturePyramid`, P2..P5 of
      ``fpn_channels`` channels.
    * Head: level P_k goes through ``k - 2`` stages of conv3x3-GroupNorm-ReLU and
      2x upsampling, reaching stride 4 (P2 through one conv3x3-GroupNorm-ReLU
      stage without upsampling, as in Detectron2's implementation); the four
      ``head_channels``-channel maps are summed, a 1x1 convolution gives the
      class scores at stride 4, and a 4x upsampling brings them to the input
      size. Group norm has the paper's 32 groups when ``head_channels`` makes
      32 equal groups of at least two channels (64, 96, 128, ...), otherwise
      the most equal groups of at least two channels, so that the 1x1 stride-32
      map of a 32-pixel input still has more than one value per group.

    Departure from the paper: its upsamplings are fixed bilinear interpolation;
    here each is a learnable ``ops.ConvTranspose2d`` (kernel ``2 * factor``,
    stride ``factor``, no bias) initialised to per-channel bilinear upsampling,
    so the network starts as the paper's and the transposed-convolution
    operator is exercised. Away from the borders the initial upsampling equals
    ``F.interpolate(mode="bilinear", align_corners=False)``; at the borders it
    reads zeros instead of repeating the edge. A 2x upsampling is a full
    ``head_channels`` x ``head_channels`` 4x4 kernel (it may learn to mix
    channels): 4 * ``head_channels`` multiply-adds per output value where the
    fixed interpolation has 4.

    ``operators`` ("fastops" or "torch", see :mod:`fastops.models.operators`)
    selects the transposed-convolution implementation; the parameters are the same.
    """

    size_divisor = 32

    def __init__(
        self,
        num_classes: int,
        backbone_widths: Sequence[int] = (64, 128, 256, 512),
        backbone_blocks: Sequence[int] = (2, 2, 2, 2),
        fpn_channels: int = 128,
        head_channels: int = 64,
        in_channels: int = 3,
        operators: str | Operators = "fastops",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive_int(num_classes, "num_classes", name)
        backbone_widths = _check_four_positive_ints(backbone_widths, "backbone_widths", name)
        backbone_blocks = _check_four_positive_ints(backbone_blocks, "backbone_blocks", name)
        check_positive_int(fpn_channels, "fpn_channels", name)
        check_positive_int(head_channels, "head_channels", name)
        check_positive_int(in_channels, "in_channels", name)
        ops = get_operators(operators)
        self.num_classes = num_classes
        self.in_channels = in_channels

        self.backbone = ResNetBackbone(backbone_widths, backbone_blocks, in_channels)
        self.fpn = FeaturePyramid(backbone_widths, fpn_channels)
        heads = []
        for level in range(PYRAMID_LEVELS):
            stages: list[nn.Module] = []
            for stage in range(max(level, 1)):
                source = fpn_channels if stage == 0 else head_channels
                stages.append(ConvNormReLU(source, head_channels, norm="group"))
                if level > 0:
                    stages.append(bilinear_upsampling(ops, head_channels, 2))
            heads.append(nn.Sequential(*stages))
        self.heads = nn.ModuleList(heads)
        self.classifier = nn.Conv2d(head_channels, num_classes, 1)
        self.upsample = bilinear_upsampling(ops, num_classes, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.size_divisor, type(self).__name__)
        pyramid = self.fpn(self.backbone(x))
        fused = None
        for head, level in zip(self.heads, pyramid.values(), strict=True):
            mapped = head(level)
            fused = mapped if fused is None else fused + mapped
        return self.upsample(self.classifier(fused))
