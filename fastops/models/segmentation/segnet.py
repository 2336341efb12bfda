"""SegNet: Badrinarayanan, Kendall and Cipolla, "SegNet: A Deep Convolutional
Encoder-Decoder Architecture for Image Segmentation", TPAMI 2017."""

from __future__ import annotations

import torch
from torch import nn

from fastops.models.operators import Operators, get_operators
from fastops.models.segmentation._layers import (
    VGG16_STAGE_DEPTHS,
    VGG16_WIDTH_MULTIPLIERS,
    ConvNormReLU,
    check_input,
    check_positive_int,
)


class SegNet(nn.Module):
    """SegNet (Badrinarayanan, Kendall and Cipolla, "SegNet: A Deep Convolutional
    Encoder-Decoder Architecture for Image Segmentation", TPAMI 2017).

    ``forward(x [B, in_channels, H, W]) -> logits [B, num_classes, H, W]`` for any
    ``H, W >= 1`` (:attr:`size_divisor` is 1). ``num_classes`` counts the background.

    * Encoder: the 13 convolutions of VGG16 with batch normalisation, in five
      stages of 2, 2, 3, 3, 3 conv3x3-BN-ReLU blocks of ``base_channels`` x
      (1, 2, 4, 8, 8) channels (64 gives VGG16's widths), each stage closed by
      2x2 stride-2 max-pooling that records where every maximum came from
      (``ops.max_pool``; the fastops operators record int8 window offsets, 8
      times fewer index bytes than PyTorch's int64 positions).
    * Decoder: the mirror image. Each stage max-unpools (``ops.max_unpool``) with
      the indices of its encoder stage, to that stage's size, then applies as
      many conv3x3-BN-ReLU blocks as the encoder stage had, the last one
      narrowing to the next stage's width. In the last stage the final
      convolution is the 3x3 classifier to ``num_classes`` (no norm, no ReLU).

    ``num_stages`` (1 to 5, default 5) keeps the first stages of encoder and
    decoder only: 4 is the depth of the paper's SegNet-Basic (4 encoders and 4
    decoders), which suits small inputs; at 64x64 five stages pool down to 2x2
    and learn markedly slower (``python -m fastops.train segnet`` uses 4).

    Pooling uses ceil mode, as Caffe's pooling did, and unpooling restores the
    recorded sizes, so odd sizes (CamVid's 360x480 reaches 12x15 at stride 32)
    need no padding or cropping.

    ``operators`` ("fastops" or "torch", see :mod:`fastops.models.operators`)
    selects the pooling and unpooling implementations; the parameters are the
    same for both.
    """

    size_divisor = 1

    def __init__(
        self,
        num_classes: int,
        base_channels: int = 64,
        in_channels: int = 3,
        operators: str | Operators = "fastops",
        num_stages: int = 5,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive_int(num_classes, "num_classes", name)
        check_positive_int(base_channels, "base_channels", name)
        check_positive_int(in_channels, "in_channels", name)
        check_positive_int(num_stages, "num_stages", name)
        if num_stages > len(VGG16_STAGE_DEPTHS):
            raise ValueError(f"{name}: num_stages must be at most 5, got {num_stages}")
        ops = get_operators(operators)
        # The two functions alone, not the whole set: they pickle by reference.
        self._max_pool = ops.max_pool
        self._max_unpool = ops.max_unpool
        self.num_classes = num_classes
        self.in_channels = in_channels

        stage_depths = VGG16_STAGE_DEPTHS[:num_stages]
        widths = [base_channels * m for m in VGG16_WIDTH_MULTIPLIERS[:num_stages]]
        encoder = []
        previous = in_channels
        for depth, width in zip(stage_depths, widths, strict=True):
            blocks = []
            for _ in range(depth):
                blocks.append(ConvNormReLU(previous, width))
                previous = width
            encoder.append(nn.Sequential(*blocks))
        self.encoder = nn.ModuleList(encoder)

        # Deepest stage first, in the order the decoder runs.
        decoder = []
        for stage in range(len(widths) - 1, -1, -1):
            width = widths[stage]
            # The classifier replaces the last block of the shallowest stage.
            depth = stage_depths[stage] - (1 if stage == 0 else 0)
            narrowed = widths[stage - 1] if stage > 0 else width
            blocks = [
                ConvNormReLU(width, narrowed if i == depth - 1 else width) for i in range(depth)
            ]
            decoder.append(nn.Sequential(*blocks))
        self.decoder = nn.ModuleList(decoder)
        self.classifier = nn.Conv2d(widths[0], num_classes, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.size_divisor, type(self).__name__)
        pooled_indices = []
        unpooled_sizes = []
        for stage in self.encoder:
            x = stage(x)
            unpooled_sizes.append(x.shape[-2:])
            x, indices = self._max_pool(x, 2, 2, ceil_mode=True)
            pooled_indices.append(indices)
        for stage in self.decoder:
            x = self._max_unpool(x, pooled_indices.pop(), 2, 2, output_size=unpooled_sizes.pop())
            x = stage(x)
        return self.classifier(x)
