"""Reference max-unpooling and max-pooling with int8 window offsets.

Shapes: ``input`` and ``indices`` are ``[N, C, *windows]`` with 1 to 3 spatial
dimensions; the unpooled plane is ``[N, C, *output_size]``. ``indices`` holds
either int64 positions in the flattened output plane (PyTorch's encoding) or
int8 offsets inside each window: ``(r_d * k_h + r_h) * k_w + r_w`` for the
position ``window_start + r`` of a window starting at
``window_index * stride - padding``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from fastops._pooling import invalid_unpool_index_message, pooling_memory_format


def window_starts(
    windows: list[int], stride: list[int], padding: list[int], device
) -> list[torch.Tensor]:
    """Per spatial dim, the first plane position of every window: ``i * stride - padding``."""
    return [
        torch.arange(n, device=device) * s - p
        for n, s, p in zip(windows, stride, padding, strict=True)
    ]


def offsets_to_positions(
    offsets: torch.Tensor,
    output_size: list[int],
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
) -> torch.Tensor:
    """Flat output-plane positions of int8 window offsets; -1 where an offset names
    no position of the plane (outside ``[0, prod(kernel_size))`` or off the plane)."""
    dims = len(kernel_size)
    windows = list(offsets.shape[-dims:])
    rest = offsets.long()
    valid = (rest >= 0) & (rest < math.prod(kernel_size))
    flat = torch.zeros_like(rest)
    starts = window_starts(windows, stride, padding, offsets.device)
    for d in reversed(range(dims)):
        r = rest % kernel_size[d]
        rest = rest // kernel_size[d]
        shape = [1] * offsets.dim()
        shape[offsets.dim() - dims + d] = -1
        position = starts[d].view(shape) + r
        valid &= (position >= 0) & (position < output_size[d])
        flat = flat + position * math.prod(output_size[d + 1 :])
    return torch.where(valid, flat, -1)


def positions_to_offsets(
    positions: torch.Tensor,
    input_size: list[int],
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
) -> torch.Tensor:
    """int8 window offsets of flat plane positions (each inside its own window)."""
    dims = len(kernel_size)
    windows = list(positions.shape[-dims:])
    starts = window_starts(windows, stride, padding, positions.device)
    offset = torch.zeros_like(positions)
    rest = positions
    for d in reversed(range(dims)):
        coordinate = rest % input_size[d]
        rest = rest // input_size[d]
        shape = [1] * positions.dim()
        shape[positions.dim() - dims + d] = -1
        offset = offset + (coordinate - starts[d].view(shape)) * math.prod(kernel_size[d + 1 :])
    return offset.to(torch.int8)


class _UnpoolScatter(torch.autograd.Function):
    """out[n, c, target[n, c, i]] = values[n, c, i], the last i winning, and
    target -1 dropped; the gradient of ``values`` is the gather of the output
    gradient at ``target`` (0 where it is -1)."""

    @staticmethod
    def forward(ctx, values: torch.Tensor, target: torch.Tensor, plane: int) -> torch.Tensor:
        # Slot `plane` collects the dropped (-1) targets and is cut off at the end.
        slot = torch.where(target < 0, plane, target)
        ctx.save_for_backward(slot)
        n, c, count = values.shape
        order = torch.arange(count, device=values.device).expand(n, c, count)
        writer = torch.full((n, c, plane + 1), -1, dtype=torch.long, device=values.device)
        writer.scatter_reduce_(2, slot, order, reduce="amax")
        writer = writer[..., :plane]
        gathered = values.gather(2, writer.clamp(min=0))
        return torch.where(
            writer >= 0, gathered, torch.zeros((), dtype=values.dtype, device=values.device)
        )

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (slot,) = ctx.saved_tensors
        return F.pad(grad, (0, 1)).gather(2, slot), None, None


def max_unpool(
    input: torch.Tensor,
    indices: torch.Tensor,
    output_size: list[int],
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
) -> torch.Tensor:
    """``[N, C, *windows]`` values and indices to the ``[N, C, *output_size]`` plane.

    Each value goes to the position its index names; positions no index names
    are 0; when several indices name one position, the last in raster order wins.
    An index that names no position raises, except under torch.compile, where
    the check (a data-dependent branch) is skipped and such a value is dropped.
    """
    plane = math.prod(output_size)
    if indices.dtype == torch.int8:
        target = offsets_to_positions(indices, output_size, kernel_size, stride, padding)
    else:
        target = torch.where((indices >= 0) & (indices < plane), indices, -1)
    target = target.flatten(2)
    if not torch.compiler.is_compiling() and bool((target < 0).any()):
        bad = int(indices.flatten(2)[target < 0][0])
        raise RuntimeError(
            invalid_unpool_index_message(bad, output_size, indices.dtype == torch.int8, kernel_size)
        )
    out = _UnpoolScatter.apply(input.flatten(2), target, plane)
    return out.unflatten(2, output_size).contiguous(memory_format=pooling_memory_format(input))


def max_pool_with_offsets(
    input: torch.Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    ceil_mode: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.nn.functional.max_pool{1,2,3}d, with each maximum's position given
    as an int8 offset inside its window instead of an int64 plane position."""
    dims = len(kernel_size)
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[dims - 1]
    values, positions = pool(
        input, kernel_size, stride, padding, ceil_mode=ceil_mode, return_indices=True
    )
    offsets = positions_to_offsets(
        positions, list(input.shape[-dims:]), kernel_size, stride, padding
    )
    return values, offsets.contiguous(memory_format=pooling_memory_format(values))
