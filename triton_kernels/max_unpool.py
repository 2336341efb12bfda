"""Triton max-unpooling: the gather forward, the exact scatter fallback and the
backward gather. Same algorithm and status protocol as the CUDA kernels
(csrc/cuda/max_unpool.cu):

1. ``_gather_kernel``: each output element reads the indices of the windows
   covering it and takes the value of the last whose index names it, or 0.
   One checker element per window classifies the window's index into the
   status word: bit 1 = stray (inside the plane, outside its window), bit 2 =
   out of range (names no position of the plane).
2. When bit 1 is set (or some window misses the plane, so the gather cannot
   check it), the exact scatter runs: ``_clear_writers_kernel``,
   ``_scatter_writers_kernel`` (atomic max of each target's last writer) and
   ``_gather_writers_kernel``. These kernels read the status word on the device
   and do nothing unless bit 1 is set, so the sequence can be captured in a
   CUDA graph without a host synchronisation.
3. Outside graph capture the launcher reads the status word and raises for bit 2.

Shapes: input and indices ``[N, C, *windows]``; output ``[N, C, *output_size]``,
1 to 3 spatial dims, NCHW-style or channels-last, as the input.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastops._poison import empty_output
from fastops._pooling import invalid_unpool_index_message, pooling_memory_format
from fastops.triton_kernels._launch import block_size
from fastops.triton_kernels._pooling_window import (
    PoolWindows,
    covering_range,
    decompose,
    offset_target,
    plane_base,
)

_STRAY = 1
_OUT_OF_RANGE = 2


@triton.jit
def _stored_target(
    stored, i0, i1, i2, P0, P1, P2, K0, K1, K2, S0, S1, S2, PAD0, PAD1, PAD2, OFFSETS: tl.constexpr
):
    """Plane-linear position the stored index of window (i0, i1, i2) names, or -1."""
    if OFFSETS:
        target = offset_target(
            stored, i0, i1, i2, P0, P1, P2, K0, K1, K2, S0, S1, S2, PAD0, PAD1, PAD2
        )
    else:
        target = tl.where((stored >= 0) & (stored < P0 * P1 * P2), stored, -1)
    return target


@triton.jit
def _gather_kernel(
    input_ptr,
    indices_ptr,
    output_ptr,
    status_ptr,
    total,
    C,
    W0,
    W1,
    W2,
    P0,
    P1,
    P2,
    K0,
    K1,
    K2,
    S0,
    S1,
    S2,
    PAD0,
    PAD1,
    PAD2,
    CHANNELS_LAST: tl.constexpr,
    OFFSETS: tl.constexpr,
    SPAN0: tl.constexpr,
    SPAN1: tl.constexpr,
    SPAN2: tl.constexpr,
    BLOCK: tl.constexpr,
):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_bounds = e < total
    o0, o1, o2, outer, channel = decompose(e, C, P0, P1, P2, CHANNELS_LAST)
    base = plane_base(outer, channel, W0 * W1 * W2, C, CHANNELS_LAST)
    step = 1
    if CHANNELS_LAST:
        step = C
    position = (o0 * P1 + o1) * P2 + o2
    first0, last0 = covering_range(o0, W0, K0, S0, PAD0)
    first1, last1 = covering_range(o1, W1, K1, S1, PAD1)
    first2, last2 = covering_range(o2, W2, K2, S2, PAD2)

    source = tl.full((BLOCK,), -1, tl.int64)
    status = tl.zeros((BLOCK,), tl.int64)
    bad = tl.zeros((BLOCK,), tl.int64)
    # Windows in descending raster order: the first match is the last writer.
    for a in tl.static_range(SPAN0):
        i0 = last0 - a
        for b in tl.static_range(SPAN1):
            i1 = last1 - b
            for c in tl.static_range(SPAN2):
                i2 = last2 - c
                covers = in_bounds & (i0 >= first0) & (i1 >= first1) & (i2 >= first2)
                window = (i0 * W1 + i1) * W2 + i2
                stored = tl.load(indices_ptr + base + window * step, mask=covers, other=-1).to(
                    tl.int64
                )
                target = _stored_target(
                    stored,
                    i0,
                    i1,
                    i2,
                    P0,
                    P1,
                    P2,
                    K0,
                    K1,
                    K2,
                    S0,
                    S1,
                    S2,
                    PAD0,
                    PAD1,
                    PAD2,
                    OFFSETS,
                )
                source = tl.where(covers & (source < 0) & (target == position), window, source)

                start0 = i0 * S0 - PAD0
                start1 = i1 * S1 - PAD1
                start2 = i2 * S2 - PAD2
                checker = (
                    covers
                    & (o0 == tl.maximum(start0, 0))
                    & (o1 == tl.maximum(start1, 0))
                    & (o2 == tl.maximum(start2, 0))
                )
                # An offset cannot leave its window; a plane position can.
                flag = tl.where(target < 0, 2, 0)
                if not OFFSETS:
                    q2 = stored % P2
                    q1 = (stored // P2) % P1
                    q0 = stored // (P2 * P1)
                    stray = (
                        (q0 < start0)
                        | (q0 >= start0 + K0)
                        | (q1 < start1)
                        | (q1 >= start1 + K1)
                        | (q2 < start2)
                        | (q2 >= start2 + K2)
                    )
                    flag = tl.where(target < 0, 2, tl.where(stray, 1, 0))
                flag = tl.where(checker, flag, 0)
                status = status | flag
                bad = tl.where(flag != 0, stored, bad)

    value = tl.load(input_ptr + base + source * step, mask=in_bounds & (source >= 0), other=0)
    tl.store(output_ptr + e, value, mask=in_bounds)
    # Two status bits: OR them as two maxima (tl.reduce_or is not in every triton).
    block_status = tl.max(status & 1, axis=0) | tl.max(status & 2, axis=0)
    if block_status != 0:
        tl.atomic_or(status_ptr, block_status)
        tl.store(status_ptr + 1, tl.max(tl.where(status != 0, bad, -(2**62)), axis=0))


@triton.jit
def _clear_writers_kernel(writers_ptr, status_ptr, total, BLOCK: tl.constexpr):
    if (tl.load(status_ptr) & 1) == 0:
        return
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    tl.store(writers_ptr + e, tl.zeros((BLOCK,), tl.int64), mask=e < total)


@triton.jit
def _scatter_writers_kernel(
    indices_ptr,
    writers_ptr,
    status_ptr,
    total,
    C,
    W0,
    W1,
    W2,
    P0,
    P1,
    P2,
    K0,
    K1,
    K2,
    S0,
    S1,
    S2,
    PAD0,
    PAD1,
    PAD2,
    CHANNELS_LAST: tl.constexpr,
    OFFSETS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """writers[plane position] = 1 + the last window (raster order) whose index names it."""
    if (tl.load(status_ptr) & 1) == 0:
        return
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_bounds = e < total
    i0, i1, i2, outer, channel = decompose(e, C, W0, W1, W2, CHANNELS_LAST)
    stored = tl.load(indices_ptr + e, mask=in_bounds, other=0).to(tl.int64)
    target = _stored_target(
        stored, i0, i1, i2, P0, P1, P2, K0, K1, K2, S0, S1, S2, PAD0, PAD1, PAD2, OFFSETS
    )
    window = (i0 * W1 + i1) * W2 + i2
    step = 1
    if CHANNELS_LAST:
        step = C
    out_base = plane_base(outer, channel, P0 * P1 * P2, C, CHANNELS_LAST)
    valid = in_bounds & (target >= 0)
    tl.atomic_max(writers_ptr + out_base + target * step, window + 1, mask=valid)
    invalid = in_bounds & (target < 0)
    if tl.max(invalid.to(tl.int32), axis=0) != 0:
        tl.atomic_or(status_ptr, 2)
        tl.store(status_ptr + 1, tl.max(tl.where(invalid, stored, -(2**62)), axis=0))


@triton.jit
def _gather_writers_kernel(
    input_ptr,
    writers_ptr,
    output_ptr,
    status_ptr,
    total,
    C,
    W0,
    W1,
    W2,
    P0,
    P1,
    P2,
    CHANNELS_LAST: tl.constexpr,
    BLOCK: tl.constexpr,
):
    if (tl.load(status_ptr) & 1) == 0:
        return
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_bounds = e < total
    _, _, _, outer, channel = decompose(e, C, P0, P1, P2, CHANNELS_LAST)
    base = plane_base(outer, channel, W0 * W1 * W2, C, CHANNELS_LAST)
    step = 1
    if CHANNELS_LAST:
        step = C
    window = tl.load(writers_ptr + e, mask=in_bounds, other=0) - 1
    value = tl.load(input_ptr + base + window * step, mask=in_bounds & (window >= 0), other=0)
    tl.store(output_ptr + e, value, mask=in_bounds)


@triton.jit
def _backward_kernel(
    grad_output_ptr,
    indices_ptr,
    grad_input_ptr,
    total,
    C,
    W0,
    W1,
    W2,
    P0,
    P1,
    P2,
    K0,
    K1,
    K2,
    S0,
    S1,
    S2,
    PAD0,
    PAD1,
    PAD2,
    CHANNELS_LAST: tl.constexpr,
    OFFSETS: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """grad_input[window] = grad_output[target of the window's index], 0 for none."""
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_bounds = e < total
    i0, i1, i2, outer, channel = decompose(e, C, W0, W1, W2, CHANNELS_LAST)
    stored = tl.load(indices_ptr + e, mask=in_bounds, other=0).to(tl.int64)
    target = _stored_target(
        stored, i0, i1, i2, P0, P1, P2, K0, K1, K2, S0, S1, S2, PAD0, PAD1, PAD2, OFFSETS
    )
    step = 1
    if CHANNELS_LAST:
        step = C
    out_base = plane_base(outer, channel, P0 * P1 * P2, C, CHANNELS_LAST)
    grad = tl.load(
        grad_output_ptr + out_base + target * step, mask=in_bounds & (target >= 0), other=0
    )
    tl.store(grad_input_ptr + e, grad, mask=in_bounds)


def _is_capturing(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def max_unpool_forward(
    input: torch.Tensor,
    indices: torch.Tensor,
    output_size: list[int],
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
) -> torch.Tensor:
    """``[N, C, *windows]`` values and indices (int64 plane positions or int8
    window offsets) to the ``[N, C, *output_size]`` plane."""
    if indices.shape != input.shape or input.dim() != len(kernel_size) + 2:
        raise RuntimeError(
            f"max_unpool: indices {tuple(indices.shape)} and input {tuple(input.shape)} must match"
        )
    if indices.dtype not in (torch.int64, torch.int8):
        raise RuntimeError(f"max_unpool: indices must be int64 or int8, got {indices.dtype}")
    memory_format = pooling_memory_format(input)
    input = input.contiguous(memory_format=memory_format)
    indices = indices.contiguous(memory_format=memory_format)
    n, c = input.shape[:2]
    g = PoolWindows.make(input.shape[2:], output_size, kernel_size, stride, padding)
    output = empty_output(
        (n, c, *output_size), dtype=input.dtype, device=input.device, memory_format=memory_format
    )
    total = output.numel()
    if total == 0:
        return output
    channels_last = memory_format != torch.contiguous_format
    offsets = indices.dtype == torch.int8
    block = block_size(total)
    status = torch.zeros(2, dtype=torch.int64, device=input.device)
    if g.every_window_meets_plane():
        _gather_kernel[(triton.cdiv(total, block),)](
            input,
            indices,
            output,
            status,
            total,
            c,
            *g.scalars(),
            CHANNELS_LAST=channels_last,
            OFFSETS=offsets,
            SPAN0=g.max_covering()[0],
            SPAN1=g.max_covering()[1],
            SPAN2=g.max_covering()[2],
            BLOCK=block,
        )
    else:
        # The gather cannot check windows that miss the plane: scatter instead.
        status[0] = _STRAY
    capturing = _is_capturing(input)
    if not capturing:
        flags, bad = status.tolist()
        if flags & _OUT_OF_RANGE:
            raise RuntimeError(invalid_unpool_index_message(bad, output_size, offsets, kernel_size))
        if not flags & _STRAY:
            return output
    writers = torch.empty(
        output.shape, dtype=torch.int64, device=input.device, memory_format=memory_format
    )
    _clear_writers_kernel[(triton.cdiv(total, block),)](writers, status, total, BLOCK=block)
    windows_total = input.numel()
    window_block = block_size(windows_total)
    _scatter_writers_kernel[(triton.cdiv(windows_total, window_block),)](
        indices,
        writers,
        status,
        windows_total,
        c,
        *g.scalars(),
        CHANNELS_LAST=channels_last,
        OFFSETS=offsets,
        BLOCK=window_block,
    )
    _gather_writers_kernel[(triton.cdiv(total, block),)](
        input,
        writers,
        output,
        status,
        total,
        c,
        *g.windows,
        *g.plane,
        CHANNELS_LAST=channels_last,
        BLOCK=block,
    )
    if not capturing:
        flags, bad = status.tolist()
        if flags & _OUT_OF_RANGE:
            raise RuntimeError(invalid_unpool_index_message(bad, output_size, offsets, kernel_size))
    return output


def max_unpool_backward(
    grad_output: torch.Tensor,
    indices: torch.Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
) -> torch.Tensor:
    """grad_input ``[N, C, *windows]``: grad_output ``[N, C, *plane]`` gathered at the indices."""
    memory_format = pooling_memory_format(indices)
    indices = indices.contiguous(memory_format=memory_format)
    grad_output = grad_output.contiguous(memory_format=memory_format)
    c = indices.shape[1]
    g = PoolWindows.make(indices.shape[2:], grad_output.shape[2:], kernel_size, stride, padding)
    grad_input = empty_output(
        indices.shape,
        dtype=grad_output.dtype,
        device=grad_output.device,
        memory_format=memory_format,
    )
    total = grad_input.numel()
    if total == 0:
        return grad_input
    block = block_size(total)
    _backward_kernel[(triton.cdiv(total, block),)](
        grad_output,
        indices,
        grad_input,
        total,
        c,
        *g.scalars(),
        CHANNELS_LAST=memory_format != torch.contiguous_format,
        OFFSETS=indices.dtype == torch.int8,
        BLOCK=block,
    )
    return grad_input
