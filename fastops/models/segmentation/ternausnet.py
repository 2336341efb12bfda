"""TernausNet-11: Iglovikov and Shvets, "TernausNet: U-Net with VGG11 Encoder
Pre-Trained on ImageNet for Image Segmentation", arXiv:1801.05746, 2018."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
from torch import nn

from fastops.models.operators import Operators, get_operators
from fastops.models.segmentation._layers import ConvNormReLU, check_input, check_positive_int

# torchvision's VGG11 ("configuration A") `features`: output widths of the 3x3
# convolutions, "M" for 2x2 max-pooling. Each convolution is followed by a ReLU,
# so `features.{i}` numbers the modules exactly as torchvision does.
VGG11_FEATURES = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def vgg11_features(in_channels: int) -> nn.Sequential:
    """torchvision's ``vgg11().features`` (without batch norm), module for module,
    with torchvision's initialisation."""
    layers: list[nn.Module] = []
    previous = in_channels
    for entry in VGG11_FEATURES:
        if entry == "M":
            layers.append(nn.MaxPool2d(2, 2))
            continue
        conv = nn.Conv2d(previous, entry, 3, padding=1)
        nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(conv.bias)
        layers += [conv, nn.ReLU(inplace=True)]
        previous = entry
    return nn.Sequential(*layers)


class DecoderBlock(nn.Sequential):
    """TernausNet's decoder block: conv3x3 + ReLU to ``middle_channels``, then a
    3x3 stride-2 transposed convolution (padding 1, output padding 1: exactly
    twice the size) + ReLU to ``out_channels``, the ReLU fused into the
    transposed convolution by the fastops operators."""

    def __init__(
        self, in_channels: int, middle_channels: int, out_channels: int, ops: Operators
    ) -> None:
        super().__init__(
            ConvNormReLU(in_channels, middle_channels, norm=None),
            ops.ConvTranspose2d(
                middle_channels,
                out_channels,
                3,
                stride=2,
                padding=1,
                output_padding=1,
                activation="relu",
            ),
        )


class TernausNet11(nn.Module):
    """TernausNet-11 (Iglovikov and Shvets, "TernausNet: U-Net with VGG11 Encoder
    Pre-Trained on ImageNet for Image Segmentation", arXiv:1801.05746, 2018):
    U-Net with torchvision's VGG11 as its encoder.

    ``forward(x [B, in_channels, H, W]) -> logits [B, num_classes, H, W]``, with
    ``H`` and ``W`` multiples of 32 (:attr:`size_divisor`). ``num_classes`` counts
    the background (the paper's binary masks are ``num_classes=1`` with a
    sigmoid, or ``num_classes=2`` with a softmax).

    * Encoder (:attr:`encoder`): torchvision's ``vgg11().features``, the same 21
      modules in the same order (8 conv3x3 + ReLU of 64, 128, 256, 256, 512, 512,
      512, 512 channels, five 2x2 max-pools), so ``encoder.{i}`` is
      ``features.{i}`` of a torchvision VGG11 state_dict. The output of each
      stage's last ReLU is a skip connection.
    * Decoder: a centre block on the stride-32 map, then four blocks, each on
      the previous block's output concatenated (first) with the skip of its
      scale, each block conv3x3 + ReLU then a 3x3 stride-2 transposed
      convolution + ReLU (``ops.ConvTranspose2d``), of ``num_filters`` x
      (16 -> 8) channels for the centre and (16 -> 8), (16 -> 4), (8 -> 2),
      (4 -> 1) for the four (middle -> output); then conv3x3 + ReLU to
      ``num_filters`` on the full-size concatenation and a 1x1 convolution to
      ``num_classes``.

    ``pretrained``: ``None`` (random initialisation, torchvision's for the
    encoder) or the path of a local file saved with ``torch.save`` holding a
    torchvision VGG11 state_dict (``vgg11(weights=...).state_dict()``, whose
    ``features.*`` entries are loaded and the classifier's ignored) or just its
    features (``vgg11(...).features.state_dict()``). Nothing is ever
    downloaded. A file whose entries do not fit raises ``ValueError`` naming it;
    the torchvision weights expect ``in_channels=3`` and inputs normalised with
    the ImageNet mean and standard deviation.

    ``operators`` ("fastops" or "torch", see :mod:`fastops.models.operators`)
    selects the transposed-convolution implementation; the parameters are the same.
    """

    size_divisor = 32

    def __init__(
        self,
        num_classes: int,
        num_filters: int = 32,
        pretrained: str | os.PathLike | None = None,
        in_channels: int = 3,
        operators: str | Operators = "fastops",
    ) -> None:
        super().__init__()
        name = type(self).__name__
        check_positive_int(num_classes, "num_classes", name)
        check_positive_int(num_filters, "num_filters", name)
        check_positive_int(in_channels, "in_channels", name)
        if pretrained is not None and not isinstance(pretrained, str | os.PathLike):
            raise ValueError(
                f"{name}: pretrained must be None or the path of a local VGG11 state_dict "
                f"file (nothing is downloaded), got {pretrained!r}"
            )
        ops = get_operators(operators)
        self.num_classes = num_classes
        self.in_channels = in_channels

        self.encoder = vgg11_features(in_channels)
        f = num_filters
        self.center = DecoderBlock(512, 16 * f, 8 * f, ops)
        self.decoder = nn.ModuleList(
            [
                DecoderBlock(512 + 8 * f, 16 * f, 8 * f, ops),
                DecoderBlock(512 + 8 * f, 16 * f, 4 * f, ops),
                DecoderBlock(256 + 4 * f, 8 * f, 2 * f, ops),
                DecoderBlock(128 + 2 * f, 4 * f, f, ops),
                ConvNormReLU(64 + f, f, norm=None),
            ]
        )
        self.classifier = nn.Conv2d(f, num_classes, 1)
        if pretrained is not None:
            self.load_vgg11_features(pretrained)

    def load_vgg11_features(self, path: str | os.PathLike) -> None:
        """Loads the encoder from a torchvision VGG11 state_dict file (see the class
        docstring); raises ``ValueError`` naming the file if its entries do not fit."""
        name = type(self).__name__
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{name}: pretrained={path!r} is not a file; pass the path of a local VGG11 "
                "state_dict saved with torch.save (nothing is downloaded)"
            )
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:
            raise ValueError(
                f"{name}: cannot read pretrained={path!r} as a state_dict saved with "
                f"torch.save: {type(error).__name__}: {error}"
            ) from error
        if not isinstance(state, Mapping) or not all(
            isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items()
        ):
            raise ValueError(
                f"{name}: pretrained={path!r} does not hold a state_dict (a mapping of "
                f"parameter names to tensors), but a {type(state).__name__}"
            )
        if any(key.startswith("features.") for key in state):
            features = {
                key.removeprefix("features."): value
                for key, value in state.items()
                if key.startswith("features.")
            }
        else:
            features = dict(state)

        expected = self.encoder.state_dict()
        missing = sorted(expected.keys() - features.keys())
        unexpected = sorted(features.keys() - expected.keys())
        if missing or unexpected:
            raise ValueError(
                f"{name}: pretrained={path!r} is not a torchvision VGG11 state_dict: "
                f"missing features entries {missing}, unexpected entries {unexpected}"
            )
        for key, value in expected.items():
            if features[key].shape != value.shape:
                raise ValueError(
                    f"{name}: pretrained={path!r} has features.{key} of shape "
                    f"{tuple(features[key].shape)}, the model expects {tuple(value.shape)} "
                    f"(in_channels={self.in_channels})"
                )
        self.encoder.load_state_dict(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_input(x, self.in_channels, self.size_divisor, type(self).__name__)
        skips = []
        for layer in self.encoder:
            if isinstance(layer, nn.MaxPool2d):
                skips.append(x)
            x = layer(x)
        x = self.center(x)
        for block in self.decoder:
            x = block(torch.cat([x, skips.pop()], dim=1))
        return self.classifier(x)
