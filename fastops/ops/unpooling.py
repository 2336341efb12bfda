"""Max-unpooling (the partial inverse of max-pooling) and max-pooling that
records int8 window offsets.

Drop-in for ``torch.nn.functional.max_unpool1d/2d/3d``: same arguments,
defaults, output sizes and errors, and the same values bit for bit. Beyond
PyTorch:

* the kernels know the window geometry, so when every index lies in its own
  window (always, for indices from max-pooling) the output is computed by a
  gather: one write per element, no zero fill, no scatter, no atomics;
* deterministic: equal results run to run, also under
  ``torch.use_deterministic_algorithms(True)`` (where PyTorch's raises); when
  several indices name one position, the last in raster order wins, as in
  PyTorch's CPU kernel;
* an index outside the output plane raises a ``RuntimeError`` naming
  ``indices`` on every backend, CUDA included (no device-side assert, no 32-bit
  truncation);
* :func:`max_pool2d_with_offsets` returns each maximum's int8 offset inside its
  window instead of an int64 plane position, and :func:`max_unpool2d` accepts
  those offsets: 8 times fewer index bytes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from fastops import backends, reference
from fastops._pooling import pool_output_size, unpool_output_size

_IntOrSeq = int | Sequence[int]


def _tuple(value: _IntOrSeq, dims: int, name: str, api: str) -> list[int]:
    if isinstance(value, bool) or not isinstance(value, int | Sequence | torch.Size):
        raise TypeError(
            f"{api}: {name} must be an int or a sequence of {dims} ints, got {type(value).__name__}"
        )
    values = [value] * dims if isinstance(value, int) else list(value)
    if len(values) == 1 and dims > 1:
        values = values * dims
    if len(values) != dims or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in values
    ):
        raise TypeError(f"{api}: {name} must be an int or a sequence of {dims} ints, got {value!r}")
    return values


def _pool_params(
    kernel_size, stride, padding, dims: int, api: str
) -> tuple[list[int], list[int], list[int]]:
    kernel = _tuple(kernel_size, dims, "kernel_size", api)
    strides = kernel if stride is None else _tuple(stride, dims, "stride", api)
    pads = _tuple(padding, dims, "padding", api)
    if any(k <= 0 for k in kernel):
        raise ValueError(f"{api}: kernel_size must be positive, got {kernel_size!r}")
    if any(s <= 0 for s in strides):
        raise ValueError(f"{api}: stride must be positive, got {stride!r}")
    if any(p < 0 for p in pads):
        raise ValueError(f"{api}: padding must be non-negative, got {padding!r}")
    return kernel, strides, pads


def _check_tensor(value, name: str, api: str) -> None:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{api}: {name} must be a torch.Tensor, got {type(value).__name__}")


_FLOATING = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _max_unpool(
    input: torch.Tensor,
    indices: torch.Tensor,
    kernel_size: _IntOrSeq,
    stride: _IntOrSeq | None,
    padding: _IntOrSeq,
    output_size: Sequence[int] | None,
    dims: int,
    api: str,
) -> torch.Tensor:
    _check_tensor(input, "input", api)
    _check_tensor(indices, "indices", api)
    kernel, strides, pads = _pool_params(kernel_size, stride, padding, dims, api)
    if input.dim() not in (dims + 1, dims + 2):
        raise ValueError(
            f"{api}: input must be {dims + 1}-D (C, *spatial) or {dims + 2}-D (N, C, *spatial), "
            f"got shape {tuple(input.shape)}"
        )
    if indices.shape != input.shape:
        raise ValueError(
            f"{api}: indices must have the shape of input {tuple(input.shape)}, got {tuple(indices.shape)}"
        )
    if input.dtype not in _FLOATING:
        raise TypeError(
            f"{api}: input must be float16, bfloat16, float32 or float64, got {input.dtype}"
        )
    allowed = (torch.int64, torch.int8) if dims == 2 else (torch.int64,)
    if indices.dtype not in allowed:
        kinds = (
            "int64 (positions in the output plane) or int8 (window offsets)"
            if dims == 2
            else "int64"
        )
        raise TypeError(f"{api}: indices must be {kinds}, got {indices.dtype}")
    if indices.device != input.device:
        raise RuntimeError(
            f"{api}: indices must be on the device of input ({input.device}), got {indices.device}"
        )
    if indices.dtype == torch.int8 and kernel[0] * kernel[1] > 128:
        raise ValueError(
            f"{api}: int8 window offsets need windows of at most 128 elements, got {kernel}"
        )
    spatial = unpool_output_size(input.shape[-dims:], kernel, strides, pads, output_size)

    unbatched = input.dim() == dims + 1
    if unbatched:
        input, indices = input.unsqueeze(0), indices.unsqueeze(0)
    backend = backends.select("max_unpool", input.device)
    if backend == "reference":
        output = reference.max_unpool(input, indices, spatial, kernel, strides, pads)
    elif backend == "triton":
        output = torch.ops.fastops.max_unpool_triton(input, indices, spatial, kernel, strides, pads)
    else:
        output = torch.ops.fastops.max_unpool(input, indices, spatial, kernel, strides, pads)
    return output.squeeze(0) if unbatched else output


def max_unpool1d(
    input: torch.Tensor,
    indices: torch.Tensor,
    kernel_size: _IntOrSeq,
    stride: _IntOrSeq | None = None,
    padding: _IntOrSeq = 0,
    output_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Partial inverse of max_pool1d: ``[N, C, L]`` (or ``[C, L]``) values and their
    int64 ``indices`` to ``[N, C, L_out]``, zeros where no index points.

    ``L_out = (L - 1) * stride - 2 * padding + kernel_size`` unless ``output_size``
    (1 or 3 entries, within ``stride`` of that default) says otherwise.
    Same semantics as :func:`torch.nn.functional.max_unpool1d`.
    """
    return _max_unpool(input, indices, kernel_size, stride, padding, output_size, 1, "max_unpool1d")


def max_unpool2d(
    input: torch.Tensor,
    indices: torch.Tensor,
    kernel_size: _IntOrSeq,
    stride: _IntOrSeq | None = None,
    padding: _IntOrSeq = 0,
    output_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Partial inverse of max_pool2d: ``[N, C, H, W]`` (or ``[C, H, W]``) values to
    ``[N, C, H_out, W_out]``, each value at the position its index names and zeros
    elsewhere, in the input's memory format (NCHW or channels_last).

    ``indices`` is either int64 positions in the flattened output plane, as
    ``torch.nn.functional.max_pool2d(..., return_indices=True)`` returns them, or
    int8 offsets inside each window, as :func:`max_pool2d_with_offsets` returns them.
    ``H_out = (H - 1) * stride - 2 * padding + kernel_size`` (likewise W) unless
    ``output_size`` (2 or 4 entries, each within ``stride`` of that default) is
    given: pass the pooled input's size when ceil-mode pooling made odd sizes.
    Same semantics and errors as :func:`torch.nn.functional.max_unpool2d`.
    """
    return _max_unpool(input, indices, kernel_size, stride, padding, output_size, 2, "max_unpool2d")


def max_unpool3d(
    input: torch.Tensor,
    indices: torch.Tensor,
    kernel_size: _IntOrSeq,
    stride: _IntOrSeq | None = None,
    padding: _IntOrSeq = 0,
    output_size: Sequence[int] | None = None,
) -> torch.Tensor:
    """Partial inverse of max_pool3d: ``[N, C, D, H, W]`` (or ``[C, D, H, W]``)
    values and int64 ``indices`` to ``[N, C, D_out, H_out, W_out]``, in the input's
    memory format (NCDHW or channels_last_3d).
    Same semantics as :func:`torch.nn.functional.max_unpool3d`.
    """
    return _max_unpool(input, indices, kernel_size, stride, padding, output_size, 3, "max_unpool3d")


def max_pool2d_with_offsets(
    input: torch.Tensor,
    kernel_size: _IntOrSeq,
    stride: _IntOrSeq | None = None,
    padding: _IntOrSeq = 0,
    ceil_mode: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """2-D max-pooling returning ``(values, offsets)``.

    ``values`` equals ``torch.nn.functional.max_pool2d(input, kernel_size, stride,
    padding, ceil_mode=ceil_mode)`` (same NaN and tie rules). ``offsets`` (int8, same
    shape) gives each maximum's position inside its window, ``r_h * kernel_w + r_w``
    for the position ``(oh * stride_h - padding_h + r_h, ow * stride_w - padding_w + r_w)``,
    where PyTorch would return an int64 plane position: SegNet's observation that a
    few bits per window suffice. Feed them to :func:`max_unpool2d`. Windows may hold
    at most 128 elements. ``input`` is ``[N, C, H, W]`` or ``[C, H, W]``; the outputs
    keep its memory format. ``values`` is differentiable.
    """
    api = "max_pool2d_with_offsets"
    _check_tensor(input, "input", api)
    kernel, strides, pads = _pool_params(kernel_size, stride, padding, 2, api)
    if input.dim() not in (3, 4):
        raise ValueError(
            f"{api}: input must be 3-D (C, H, W) or 4-D (N, C, H, W), got shape {tuple(input.shape)}"
        )
    if input.dtype not in _FLOATING:
        raise TypeError(
            f"{api}: input must be float16, bfloat16, float32 or float64, got {input.dtype}"
        )
    if kernel[0] * kernel[1] > 128:
        raise ValueError(
            f"{api}: int8 offsets need windows of at most 128 elements, got kernel_size {kernel}"
        )
    for k, p in zip(kernel, pads, strict=True):
        if p > k // 2:
            raise ValueError(
                f"{api}: pad should be at most half of effective kernel size, but got pad={p}, kernel_size={k}"
            )
    if not isinstance(ceil_mode, bool):
        raise TypeError(f"{api}: ceil_mode must be a bool, got {type(ceil_mode).__name__}")
    pooled = [
        pool_output_size(input.shape[-2 + d], kernel[d], strides[d], pads[d], ceil_mode)
        for d in range(2)
    ]
    if min(pooled) < 1:
        raise ValueError(
            f"{api}: given input size {tuple(input.shape[-2:])}, the calculated output size {tuple(pooled)} is too small"
        )

    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    backend = backends.select("max_pool_with_offsets", input.device)
    if backend == "reference":
        values, offsets = reference.max_pool_with_offsets(input, kernel, strides, pads, ceil_mode)
    elif backend == "triton":
        values, offsets = torch.ops.fastops.max_pool_with_offsets_triton(
            input, kernel, strides, pads, ceil_mode
        )
    else:
        values, offsets = torch.ops.fastops.max_pool_with_offsets(
            input, kernel, strides, pads, ceil_mode
        )
    if unbatched:
        return values.squeeze(0), offsets.squeeze(0)
    return values, offsets
