"""U-Net: Ronneberger, Fischer and Brox, "U-Net: Convolutional Networks for
Biomedical Image Segmentation", MICCAI 2015."""

from __future__ import annotations

import torch
from torch import nn

from fastops.models.operators import Operators, get_operators
from fastops.models.segmentation._layers import ConvNormReLU, check_input, check_positive_int


class DoubleConv(nn.Sequential):
    """U-Net's unit: two 3x3 convolutions, each followed by (optional batch norm and) ReLU."""

    def __init__(self, in_channels: int, out_channels: int, batch_norm: bool) -> None:
        norm = "batch" if batch_norm else None
        super().__init__(
            ConvNormReLU(in_channels, out_channels, norm=norm),
            ConvNormReLU(out_channels, out_channels, norm=norm),
        )


class UNet(nn.Module):
    """U-Net (Ronneberger, Fischer and Brox, "U-Net: Convolutional Networks for
    Biomedical Image Segmentation", MICCAI 2015).

    ``forward(x [B, in_channels, H, W]) -> logits [B, num_classes, H, W]``, with
    ``H`` and ``W`` multiples of ``2 ** depth`` (:attr:`size_divisor`).
    ``num_classes`` counts the background.

    * Contracting path: ``depth`` levels of two 3x3 convolutions and ReLU, each
      followed by 2x2 max-pooling, the width doubling from ``base_channels``
      at every level; two more convolutions of ``base_channels * 2 ** depth``
      channels at the bottom (``depth=4``, ``base_channels=64`` is the paper's
      64..1024).
    * Expansive path: per level, a 2x2 stride-2 up-convolution halving the
      width (``ops.ConvTranspose2d``), concatenation with the contracting
      path's map of that level (skip first), and two 3x3 convolutions and ReLU.
    * A 1x1 convolution to ``num_classes``.

    Departures from the paper:

    * the 3x3 convolutions are padded ("same"), so the output has the input's
      size and the skip maps need no cropping (the paper's valid convolutions
      turn 572x572 into 388x388); this is why the size must divide by
      ``2 ** depth``;
    * ``batch_norm=True`` (the default) puts batch normalisation between every
      3x3 convolution and its ReLU, which the paper does not have;
      ``batch_norm=False`` gives the paper's layers (convolutions with bias).

    The convolutions start from the paper's initialisation (normal, std
    ``sqrt(2 / fan_in)``); the up-convolutions keep PyTorch's default.
    ``operators`` ("fastops" or "torch", see :mod:`fastops.models.operators`)
    selects the up-convolution implementation; the parameters are the same.
    """

    def __init__(
        self,
        num_classes: int,
        base_channels: int = 64,
        depth: int = 4,
        in_channels: int = 3,
        batch_norm: bool = True,
        operators: str | Operators = "fastops",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive_int(num_classes, "num_classes", name)
        check_positive_int(base_channels, "base_channels", name)
        check_positive_int(depth, "depth", name)
        check_positive_int(in_channels, "in_channels", name)
        if not isinstance(batch_norm, bool):
            raise ValueError(f"{name}: batch_norm must be a bool, got {batch_norm!r}")
        ops = get_operators(operators)
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.depth = depth
        self.size_divisor = 2**depth

        widths = [base_channels * 2**level for level in range(depth + 1)]
        inputs = [in_channels, *widths[:-1]]
        # One unit per level, the last (deepest) one being the bottleneck.
        self.encoder = nn.ModuleList(
            DoubleConv(i, w, batch_norm) for i, w in zip(inputs, widths, strict=True)
        )
        self.pool = nn.MaxPool2d(2, 2)
        # Deepest level first, in the order the expansive path runs.
        self.up = nn.ModuleList(
            ops.ConvTranspose2d(widths[level + 1], widths[level], 2, stride=2)
            for level in range(depth - 1, -1, -1)
        )
        self.decoder = nn.ModuleList(
            DoubleConv(2 * widths[level], widths[level], batch_norm)
            for level in range(depth - 1, -1, -1)
        )
        self.classifier = nn.Conv2d(widths[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.size_divisor, type(self).__name__)
        skips = []
        for level, unit in enumerate(self.encoder):
            if level > 0:
                x = self.pool(x)
            x = unit(x)
            skips.append(x)
        skips.pop()  # the bottleneck's output is x itself
        for up, unit in zip(self.up, self.decoder, strict=True):
            x = unit(torch.cat([skips.pop(), up(x)], dim=1))
        return self.classifier(x)
