"""Building blocks shared by the segmentation models: argument and input checks,
the conv-norm-ReLU block, and transposed convolutions initialised to bilinear
upsampling."""

from __future__ import annotations

import torch
from torch import nn

from fastops.models.operators import Operators

NORMS: tuple[str | None, ...] = ("batch", "group", None)

# VGG16's five stages (FCN-8s, SegNet): convolutions per stage, and the stage
# widths as multiples of the first (64 in VGG16).
VGG16_STAGE_DEPTHS = (2, 2, 3, 3, 3)
VGG16_WIDTH_MULTIPLIERS = (1, 2, 4, 8, 8)


def check_positive_int(value, name: str, owner: str) -> int:
    """``value`` as an int; ``ValueError`` naming ``name`` unless it is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{owner}: {name} must be a positive int, got {value!r}")
    return value


def check_input(x, in_channels: int, size_divisor: int, owner: str) -> None:
    """Raises unless ``x`` is ``[B, in_channels, H, W]`` with ``H`` and ``W``
    positive multiples of ``size_divisor``, before the model runs anything."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(
            f"{owner}: x must be [B, {in_channels}, H, W] (4-D), got shape {tuple(x.shape)}"
        )
    if x.shape[1] != in_channels:
        raise ValueError(
            f"{owner}: x has {x.shape[1]} channels but the model was built with "
            f"in_channels={in_channels} (shape {tuple(x.shape)})"
        )
    height, width = x.shape[-2:]
    if height < 1 or width < 1 or height % size_divisor or width % size_divisor:
        raise ValueError(
            f"{owner}: x's height and width must be positive multiples of {size_divisor}, "
            f"got {height}x{width}"
        )


def group_norm_groups(channels: int) -> int:
    """Panoptic FPN's 32 groups, or, for fewer or other channel counts, the
    largest number of equal groups up to 32 that leaves at least 2 channels in
    each: group norm must normalise more than one value, even on the 1x1 map a
    32-pixel input leaves at stride 32 (1 for a single channel)."""
    return max(
        (g for g in range(1, 33) if channels % g == 0 and channels // g >= 2),
        default=1,
    )


class ConvNormReLU(nn.Sequential):
    """``kernel_size`` x ``kernel_size`` convolution ("same" padding), then batch
    norm (``norm="batch"``), group norm (``"group"``, :func:`group_norm_groups`
    groups) or nothing (``None``, the convolution then has a bias), then ReLU.

    The convolution starts from He et al.'s initialisation for ReLU networks
    (normal, std sqrt(2 / fan_in)), the one U-Net's paper prescribes; the norm
    layers start as the identity."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 3, norm: str | None = "batch"
    ) -> None:
        if norm not in NORMS:
            raise ValueError(f"ConvNormReLU: norm must be one of {list(NORMS)}, got {norm!r}")
        conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=norm is None
        )
        layers: list[nn.Module] = [conv]
        if norm == "batch":
            layers.append(nn.BatchNorm2d(out_channels))
        elif norm == "group":
            layers.append(nn.GroupNorm(group_norm_groups(out_channels), out_channels))
        layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)
        nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)


def bilinear_kernel(kernel_size: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The ``[kernel_size, kernel_size]`` bilinear interpolation kernel of FCN: the
    outer product of a triangle of half-width ``factor = ceil(kernel_size / 2)``
    centred on the kernel. With ``kernel_size = 2 * factor``, stride ``factor`` and
    padding ``factor // 2`` (``factor`` even), a transposed convolution with this
    kernel is bilinear upsampling by ``factor`` (``align_corners=False``) away from
    the borders, where it reads zeros instead of repeating the edge."""
    factor = (kernel_size + 1) // 2
    center = factor - 1 if kernel_size % 2 == 1 else factor - 0.5
    taps = torch.arange(kernel_size, dtype=torch.float64)
    triangle = 1 - (taps - center).abs() / factor
    return torch.outer(triangle, triangle).to(dtype)


@torch.no_grad()
def init_bilinear_(module: nn.ConvTranspose2d) -> None:
    """Sets a square transposed convolution with as many output as input channels
    to per-channel bilinear interpolation: channel ``c`` upsamples channel ``c``
    alone (a diagonal weight for ``groups=1``), and the bias, if any, to zero."""
    in_channels, out_per_group, kernel_h, kernel_w = module.weight.shape
    if kernel_h != kernel_w or module.out_channels != in_channels:
        raise ValueError(
            "init_bilinear_: needs a square kernel and out_channels == in_channels, got weight "
            f"{tuple(module.weight.shape)} with groups={module.groups}"
        )
    module.weight.zero_()
    kernel = bilinear_kernel(kernel_h, module.weight.dtype)
    for channel in range(in_channels):
        # weight[c, j] connects input channel c (of group g = c // per_group) to output
        # channel g * per_group + j; j = c mod per_group makes that c itself, the groups
        # being as wide on both sides.
        module.weight[channel, channel % out_per_group] = kernel
    if module.bias is not None:
        module.bias.zero_()


def bilinear_upsampling(ops: Operators, channels: int, factor: int) -> nn.Module:
    """A learnable ``factor`` x upsampling of ``channels`` channels, ``ops.ConvTranspose2d``
    with kernel ``2 * factor``, stride ``factor``, padding ``factor // 2`` and no bias
    (exactly ``factor`` times the input size), initialised by :func:`init_bilinear_`.
    ``factor`` must be even (the geometry of FCN's upsampling layers)."""
    if factor < 2 or factor % 2:
        raise ValueError(f"bilinear_upsampling: factor must be even and >= 2, got {factor}")
    module = ops.ConvTranspose2d(
        channels, channels, 2 * factor, stride=factor, padding=factor // 2, bias=False
    )
    init_bilinear_(module)
    return module
