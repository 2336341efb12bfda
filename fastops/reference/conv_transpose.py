"""Reference transposed convolution: plain PyTorch, written to be read,
differentiable through autograd.

The definition, directly: every input pixel times every tap of the weight
(one product per (input, tap), nothing multiplied by an inserted zero),
summed into the output position ``i * stride - padding + tap * dilation``
(``torch.nn.functional.fold`` is exactly that sum), then the bias and the
optional ReLU. Computed in float32 (float64 for float64 input).

Shapes: ``input [N, C_in, H, W]``, ``weight [C_in, C_out / groups, kH, kW]``,
``bias [C_out]`` or None; output ``[N, C_out, H_out, W_out]`` with ``H_out =
(H - 1) * stride - 2 * padding + dilation * (kH - 1) + output_padding + 1``,
in the input's layout (``conv_memory_format``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from fastops._conv_transpose import conv_memory_format, output_length
from fastops.reference.nms import compute_dtype


def conv_transpose(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: Sequence[int],
    padding: Sequence[int],
    output_padding: Sequence[int],
    groups: int,
    dilation: Sequence[int],
    relu: bool,
) -> torch.Tensor:
    batch, in_channels, height, width = input.shape
    _, out_per_group, kernel_h, kernel_w = weight.shape
    dtype = compute_dtype(input.dtype)
    x = input.to(dtype).reshape(batch, groups, in_channels // groups, height * width)
    w = weight.to(dtype).reshape(groups, in_channels // groups, out_per_group * kernel_h * kernel_w)
    # products[n, g, (co, th, tw), (ih, iw)] = sum over ci of x[n, g, ci, ih, iw] * w[g, ci, co, th, tw]
    products = torch.einsum("ngcl,gck->ngkl", x, w).reshape(
        batch, groups * out_per_group * kernel_h * kernel_w, height * width
    )
    out_h = output_length(height, kernel_h, stride[0], padding[0], dilation[0], output_padding[0])
    out_w = output_length(width, kernel_w, stride[1], padding[1], dilation[1], output_padding[1])
    # Uncropped output (padding 0, no output_padding), then the window that
    # padding and output_padding select; output_padding may reach past it.
    full_h = output_length(height, kernel_h, stride[0], 0, dilation[0], 0)
    full_w = output_length(width, kernel_w, stride[1], 0, dilation[1], 0)
    full = F.fold(
        products,
        (full_h, full_w),
        (kernel_h, kernel_w),
        dilation=tuple(dilation),
        stride=tuple(stride),
    )
    full = F.pad(
        full, (0, max(0, padding[1] + out_w - full_w), 0, max(0, padding[0] + out_h - full_h))
    )
    out = full[:, :, padding[0] : padding[0] + out_h, padding[1] : padding[1] + out_w]
    if bias is not None:
        out = out + bias.to(dtype)[None, :, None, None]
    if relu:
        out = torch.relu(out)
    return out.to(input.dtype).contiguous(memory_format=conv_memory_format(input))
