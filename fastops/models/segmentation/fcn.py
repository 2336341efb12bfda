"""FCN-8s: Long, Shelhamer and Darrell, "Fully Convolutional Networks for
Semantic Segmentation", CVPR 2015."""

from __future__ import annotations

import torch
from torch import nn

from fastops.models.operators import Operators, get_operators
from fastops.models.segmentation._layers import (
    VGG16_STAGE_DEPTHS,
    VGG16_WIDTH_MULTIPLIERS,
    ConvNormReLU,
    bilinear_upsampling,
    check_input,
    check_positive_int,
)

# fc6/fc7 width relative to base_channels: VGG16's 4096 for base_channels=64.
FC_WIDTH_MULTIPLIER = 64


class FCN8s(nn.Module):
    """FCN-8s (Long, Shelhamer and Darrell, "Fully Convolutional Networks for
    Semantic Segmentation", CVPR 2015) on a VGG16 encoder.

    ``forward(x [B, in_channels, H, W]) -> logits [B, num_classes, H, W]``, with
    ``H`` and ``W`` multiples of 32 (:attr:`size_divisor`). ``num_classes`` counts
    the background.

    * Encoder: VGG16's five stages of 3x3 convolutions (2, 2, 3, 3, 3 of them,
      ``base_channels`` x (1, 2, 4, 8, 8) channels; 64 gives VGG16's widths),
      each closed by 2x2 max-pooling; fc6 (7x7) and fc7 (1x1) as convolutions of
      ``64 * base_channels`` channels (VGG16's 4096), each followed by dropout 0.5.
    * Head: 1x1 class scores on fc7 (``score_fr``), pool4 (``score_pool4``) and
      pool3 (``score_pool3``); ``upscore2`` (4x4, stride 2) brings the stride-32
      scores to stride 16, where pool4's are added; ``upscore_pool4`` (4x4,
      stride 2) brings the sum to stride 8, where pool3's are added;
      ``upscore8`` (16x16, stride 8) brings it to the input size. The three are
      ``ops.ConvTranspose2d`` layers without bias, initialised to per-class
      bilinear upsampling and learned, as in the paper (section 3.3). The score
      layers start at zero, as the paper initialises its class scoring layers,
      so training starts from uniform predictions with the skip branches closed.

    Departures from the paper, which fine-tunes an ImageNet VGG16 at a fixed
    input padding of 100 pixels and crops the upsampled scores back:

    * the convolutions are padded ("same"), so the feature maps are exactly the
      input size over 2, 4, ..., 32 and no cropping is needed; this is why the
      input size must be a multiple of 32;
    * ``batch_norm=True`` (the default) puts batch normalisation after every
      encoder convolution and fc6/fc7, so the network trains from scratch;
      ``batch_norm=False`` gives the paper's layers (convolutions with bias).

    ``operators`` ("fastops" or "torch", see :mod:`fastops.models.operators`)
    selects the transposed-convolution implementation; the parameters and the
    state_dict are the same for both.
    """

    size_divisor = 32

    def __init__(
        self,
        num_classes: int,
        base_channels: int = 64,
        in_channels: int = 3,
        operators: str | Operators = "fastops",
        batch_norm: bool = True,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive_int(num_classes, "num_classes", name)
        check_positive_int(base_channels, "base_channels", name)
        check_positive_int(in_channels, "in_channels", name)
        if not isinstance(batch_norm, bool):
            raise ValueError(f"{name}: batch_norm must be a bool, got {batch_norm!r}")
        ops = get_operators(operators)
        norm = "batch" if batch_norm else None
        self.num_classes = num_classes
        self.in_channels = in_channels

        stages = []
        previous = in_channels
        for depth, multiplier in zip(VGG16_STAGE_DEPTHS, VGG16_WIDTH_MULTIPLIERS, strict=True):
            width = base_channels * multiplier
            layers = []
            for _ in range(depth):
                layers.append(ConvNormReLU(previous, width, norm=norm))
                previous = width
            layers.append(nn.MaxPool2d(2, 2))
            stages.append(nn.Sequential(*layers))
        self.encoder = nn.ModuleList(stages)

        fc_width = FC_WIDTH_MULTIPLIER * base_channels
        self.fc6 = nn.Sequential(ConvNormReLU(previous, fc_width, 7, norm=norm), nn.Dropout(0.5))
        self.fc7 = nn.Sequential(ConvNormReLU(fc_width, fc_width, 1, norm=norm), nn.Dropout(0.5))

        self.score_fr = nn.Conv2d(fc_width, num_classes, 1)
        self.score_pool4 = nn.Conv2d(base_channels * VGG16_WIDTH_MULTIPLIERS[3], num_classes, 1)
        self.score_pool3 = nn.Conv2d(base_channels * VGG16_WIDTH_MULTIPLIERS[2], num_classes, 1)
        for score in (self.score_fr, self.score_pool4, self.score_pool3):
            nn.init.zeros_(score.weight)
            nn.init.zeros_(score.bias)

        self.upscore2 = bilinear_upsampling(ops, num_classes, 2)
        self.upscore_pool4 = bilinear_upsampling(ops, num_classes, 2)
        self.upscore8 = bilinear_upsampling(ops, num_classes, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.size_divisor, type(self).__name__)
        for stage in self.encoder[:3]:
            x = stage(x)
        pool3 = x
        pool4 = self.encoder[3](pool3)
        pool5 = self.encoder[4](pool4)
        scores = self.score_fr(self.fc7(self.fc6(pool5)))
        scores = self.upscore2(scores) + self.score_pool4(pool4)
        scores = self.upscore_pool4(scores) + self.score_pool3(pool3)
        return self.upscore8(scores)
