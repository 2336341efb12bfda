"""Transposed convolution: conv_transpose2d and conv_transpose1d, drop-ins for
``torch.nn.functional.conv_transpose2d`` / ``conv_transpose1d`` (same
arguments, defaults, weight layout ``[C_in, C_out / groups, *kernel]``,
unbatched input and values), plus a fused epilogue: ``activation="relu"``
applies the ReLU after the bias in the same kernel.

The kernels never multiply an inserted zero: every backend splits a
stride-s convolution into its s^2 output phases, each a dense stride-1 GEMM
over the phase's taps (the CPU with ATen's GEMM on a gathered operand, CUDA
and Triton as implicit GEMMs); kernel == stride is then one plain GEMM whose
store interleaves the output. channels_last input is computed without a layout
copy and gives a channels_last output. float16/bfloat16 accumulate in float32.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastops import backends, reference

_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_ACTIVATIONS = (None, "relu")


def _tuple(value, dims: int, name: str, api: str) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * dims
    if (
        isinstance(value, Sequence)
        and not isinstance(value, str)
        and len(value) == dims
        and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    ):
        return list(value)
    if isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 1 and dims > 1:
        return _tuple(value[0], dims, name, api)
    raise TypeError(f"{api}: {name} must be an int or a tuple of {dims} ints, got {value!r}")


def _check_tensor(t, name: str, api: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{api}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATING:
        raise TypeError(
            f"{api}: {name} must be float16, bfloat16, float32 or float64, got {t.dtype}"
        )


def _conv_transpose(
    input, weight, bias, stride, padding, output_padding, groups, dilation, activation, dims: int
):
    api = f"conv_transpose{dims}d"
    _check_tensor(input, "input", api)
    _check_tensor(weight, "weight", api)
    if input.dim() not in (dims + 1, dims + 2):
        layout = "H, W" if dims == 2 else "L"
        raise ValueError(
            f"{api}: input must be [N, C_in, {layout}] or unbatched [C_in, {layout}], "
            f"got shape {tuple(input.shape)}"
        )
    if weight.dim() != dims + 2:
        kernel = "kH, kW" if dims == 2 else "k"
        raise ValueError(
            f"{api}: weight must be [C_in, C_out / groups, {kernel}] ({dims + 2}-D), got shape "
            f"{tuple(weight.shape)}"
        )
    if weight.dtype != input.dtype:
        raise TypeError(
            f"{api}: weight ({weight.dtype}) must have the dtype of input ({input.dtype})"
        )
    if weight.device != input.device:
        raise RuntimeError(
            f"{api}: weight must be on the device of input ({input.device}), got {weight.device}"
        )
    if isinstance(groups, bool) or not isinstance(groups, int) or groups <= 0:
        raise ValueError(f"{api}: groups must be a positive int, got {groups!r}")
    stride = _tuple(stride, dims, "stride", api)
    padding = _tuple(padding, dims, "padding", api)
    output_padding = _tuple(output_padding, dims, "output_padding", api)
    dilation = _tuple(dilation, dims, "dilation", api)
    if any(s <= 0 for s in stride):
        raise ValueError(f"{api}: stride must be positive, got {stride}")
    if any(d <= 0 for d in dilation):
        raise ValueError(f"{api}: dilation must be positive, got {dilation}")
    if any(p < 0 for p in padding):
        raise ValueError(f"{api}: padding must be non-negative, got {padding}")
    if any(o < 0 for o in output_padding):
        raise ValueError(f"{api}: output_padding must be non-negative, got {output_padding}")
    if any(o >= max(s, d) for o, s, d in zip(output_padding, stride, dilation, strict=True)):
        raise ValueError(
            f"{api}: output_padding must be smaller than either stride or dilation, got "
            f"output_padding={output_padding}, stride={stride}, dilation={dilation}"
        )
    if activation not in _ACTIVATIONS:
        raise ValueError(f"{api}: activation must be None or 'relu', got {activation!r}")

    batched = input.dim() == dims + 2
    x = input if batched else input.unsqueeze(0)
    in_channels = x.shape[1]
    if weight.shape[0] != in_channels:
        raise ValueError(
            f"{api}: input has {in_channels} channels but weight {tuple(weight.shape)} expects "
            f"{weight.shape[0]} (weight is [C_in, C_out / groups, *kernel])"
        )
    if in_channels % groups != 0:
        raise ValueError(
            f"{api}: in_channels ({in_channels}) must be divisible by groups ({groups})"
        )
    if any(k == 0 for k in weight.shape[2:]):
        raise ValueError(
            f"{api}: weight must have a positive kernel size, got {tuple(weight.shape)}"
        )
    out_channels = weight.shape[1] * groups
    if bias is not None:
        _check_tensor(bias, "bias", api)
        if bias.shape != (out_channels,):
            raise ValueError(
                f"{api}: bias must be [{out_channels}] (out_channels), got shape {tuple(bias.shape)}"
            )
        if bias.dtype != input.dtype or bias.device != input.device:
            raise TypeError(f"{api}: bias must have the dtype and device of input")
    if any(size == 0 for size in x.shape[2:]):
        raise ValueError(f"{api}: input has a spatial size of 0: {tuple(input.shape)}")
    spatial = list(x.shape[2:])
    for d in range(dims):
        out = (
            (spatial[d] - 1) * stride[d]
            - 2 * padding[d]
            + dilation[d] * (weight.shape[2 + d] - 1)
            + output_padding[d]
            + 1
        )
        if out <= 0:
            raise ValueError(
                f"{api}: the output size along spatial dim {d} would be {out}: padding {padding} is "
                f"too large for input {spatial} and kernel {list(weight.shape[2:])}"
            )

    if dims == 1:
        # A height-1 conv_transpose2d.
        x = x.unsqueeze(2)
        weight = weight.unsqueeze(2)
        stride, padding = [1, *stride], [0, *padding]
        output_padding, dilation = [0, *output_padding], [1, *dilation]
    relu = activation == "relu"
    backend = backends.select("conv_transpose", input.device)
    if backend == "reference":
        out = reference.conv_transpose(
            x, weight, bias, stride, padding, output_padding, groups, dilation, relu
        )
    else:
        op = (
            torch.ops.fastops.conv_transpose_triton
            if backend == "triton"
            else torch.ops.fastops.conv_transpose
        )
        out = op(x, weight, bias, stride, padding, output_padding, groups, dilation, relu)
    if dims == 1:
        out = out.squeeze(2)
    return out if batched else out.squeeze(0)


def conv_transpose2d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    output_padding: int | tuple[int, int] = 0,
    groups: int = 1,
    dilation: int | tuple[int, int] = 1,
    *,
    activation: str | None = None,
) -> torch.Tensor:
    """2-D transposed convolution, as ``torch.nn.functional.conv_transpose2d``.

    ``input [N, C_in, H, W]`` (or unbatched ``[C_in, H, W]``); ``weight
    [C_in, C_out / groups, kH, kW]``; ``bias [C_out]`` or None. Output
    ``[N, C_out, H_out, W_out]`` with ``H_out = (H - 1) * stride - 2 * padding +
    dilation * (kH - 1) + output_padding + 1`` (W likewise), in the input's layout
    (channels_last in, channels_last out). ``output_padding`` must be smaller
    than stride or dilation. ``activation="relu"`` returns ``relu(conv + bias)``
    from the same kernel.
    """
    return _conv_transpose(
        input, weight, bias, stride, padding, output_padding, groups, dilation, activation, 2
    )


def conv_transpose1d(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    stride: int | tuple[int] = 1,
    padding: int | tuple[int] = 0,
    output_padding: int | tuple[int] = 0,
    groups: int = 1,
    dilation: int | tuple[int] = 1,
    *,
    activation: str | None = None,
) -> torch.Tensor:
    """1-D transposed convolution, as ``torch.nn.functional.conv_transpose1d``:
    ``input [N, C_in, L]`` (or ``[C_in, L]``), ``weight [C_in, C_out / groups, k]``;
    output length ``(L - 1) * stride - 2 * padding + dilation * (k - 1) +
    output_padding + 1``. Computed as a height-1 :func:`conv_transpose2d`."""
    return _conv_transpose(
        input, weight, bias, stride, padding, output_padding, groups, dilation, activation, 1
    )
