"""Backbones shared by the pyramid models: a small residual network and a
feature pyramid on top of it.

* :class:`ResNetBackbone` (He et al., Deep Residual Learning for Image
  Recognition, CVPR 2016): a stem of stride 4 and four stages of basic blocks,
  returning C2..C5 (strides 4, 8, 16, 32). The widths are arguments so the
  same code serves a CPU demo (16..128 channels) and ResNet-18's (64..512).
* :class:`FeaturePyramid` (Lin et al., Feature Pyramid Networks for Object
  Detection, CVPR 2017): 1x1 lateral convolutions, a nearest-neighbour 2x
  top-down pathway, 3x3 output convolutions, and optionally a P6 level made by
  max-pooling P5 with stride 2 (Faster R-CNN's RPN uses it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity (or 1x1) shortcut."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = (
            nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
            if stride != 1 or in_channels != out_channels
            else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.shortcut(x), inplace=True)


class ResNetBackbone(nn.Module):
    """``forward(x [B, in_channels, H, W]) -> OrderedDict(c2, c3, c4, c5)`` at
    strides 4, 8, 16 and 32, with ``widths[i]`` channels each.

    ``widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2)`` is ResNet-18's body.
    """

    def __init__(
        self,
        widths: Sequence[int] = (32, 64, 128, 256),
        blocks: Sequence[int] = (1, 1, 1, 1),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if len(widths) != 4 or len(blocks) != 4:
            raise ValueError(
                f"ResNetBackbone: need 4 widths and 4 block counts, got {widths}, {blocks}"
            )
        self.widths = tuple(int(w) for w in widths)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 7, 2, 3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        stages = []
        previous = widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks, strict=True)):
            layers = [BasicBlock(previous, width, 1 if i == 0 else 2)]
            layers += [BasicBlock(width, width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            previous = width
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        x = self.stem(x)
        features: OrderedDict[str, torch.Tensor] = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            features[f"c{i + 2}"] = x
        return features


class FeaturePyramid(nn.Module):
    """``forward(features: dict of maps, finest first) -> OrderedDict("0", "1", ...)``:
    one ``out_channels`` map per input level (P2.. for C2..), plus ``"pool"``
    (max-pool of the coarsest, stride 2) when ``extra_pool_level``. The keys
    are torchvision's, so ``MultiScaleRoIAlign(["0", "1", "2", "3"], ...)``
    reads them."""

    def __init__(
        self, in_channels: Sequence[int], out_channels: int, extra_pool_level: bool = False
    ) -> None:
        super().__init__()
        self.out_channels = out_channels
        self.extra_pool_level = extra_pool_level
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.ModuleList(
            nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in in_channels
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.zeros_(module.bias)

    def forward(self, features: dict[str, torch.Tensor]) -> OrderedDict[str, torch.Tensor]:
        maps = list(features.values())
        if len(maps) != len(self.lateral):
            raise ValueError(
                f"FeaturePyramid: expected {len(self.lateral)} levels, got {len(maps)}"
            )
        top = self.lateral[-1](maps[-1])
        results = [self.output[-1](top)]
        for i in range(len(maps) - 2, -1, -1):
            lateral = self.lateral[i](maps[i])
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
            results.insert(0, self.output[i](top))
        pyramid = OrderedDict((str(i), p) for i, p in enumerate(results))
        if self.extra_pool_level:
            pyramid["pool"] = F.max_pool2d(results[-1], 1, 2, 0)
        return pyramid
