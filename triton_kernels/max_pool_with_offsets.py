"""Triton max-pooling that records int8 window offsets, and its backward.

Forward: one element per output window; positions visited in raster order, a
value replaces the maximum when greater or NaN (PyTorch's rule). Backward: one
element per input position, summing (in a fixed order, no atomics) the output
gradients of the covering windows whose offset names it.

Shapes: input ``[N, C, *plane]``; values and offsets ``[N, C, *windows]``;
1 to 3 spatial dims, NCHW-style or channels-last, as the input.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastops._poison import empty_output
from fastops._pooling import pool_output_size, pooling_memory_format
from fastops.triton_kernels._launch import block_size, compute_dtype
from fastops.triton_kernels._pooling_window import (
    PoolWindows,
    covering_range,
    decompose,
    offset_target,
    plane_base,
)


@triton.jit
def _forward_kernel(
    input_ptr,
    values_ptr,
    offsets_ptr,
    total,
    C,
    W0,
    W1,
    W2,
    P0,
    P1,
    P2,
    S0,
    S1,
    S2,
    PAD0,
    PAD1,
    PAD2,
    K0: tl.constexpr,
    K1: tl.constexpr,
    K2: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_bounds = e < total
    i0, i1, i2, outer, channel = decompose(e, C, W0, W1, W2, CHANNELS_LAST)
    base = plane_base(outer, channel, P0 * P1 * P2, C, CHANNELS_LAST)
    step = 1
    if CHANNELS_LAST:
        step = C
    start0 = i0 * S0 - PAD0
    start1 = i1 * S1 - PAD1
    start2 = i2 * S2 - PAD2
    # A window of -inf reports its first position inside the plane.
    best_offset = (
        (tl.maximum(start0, 0) - start0) * K1 + (tl.maximum(start1, 0) - start1)
    ) * K2 + (tl.maximum(start2, 0) - start2)
    best = tl.full((BLOCK,), float("-inf"), COMPUTE_DTYPE)
    for r0 in tl.static_range(K0):
        for r1 in tl.static_range(K1):
            for r2 in tl.static_range(K2):
                q0 = start0 + r0
                q1 = start1 + r1
                q2 = start2 + r2
                inside = (
                    in_bounds
                    & (q0 >= 0)
                    & (q0 < P0)
                    & (q1 >= 0)
                    & (q1 < P1)
                    & (q2 >= 0)
                    & (q2 < P2)
                )
                value = tl.load(
                    input_ptr + base + ((q0 * P1 + q1) * P2 + q2) * step, mask=inside, other=0
                )
                value = value.to(COMPUTE_DTYPE)
                better = inside & ((value > best) | (value != value))
                best = tl.where(better, value, best)
                best_offset = tl.where(better, (r0 * K1 + r1) * K2 + r2, best_offset)
    tl.store(values_ptr + e, best.to(values_ptr.dtype.element_ty), mask=in_bounds)
    tl.store(offsets_ptr + e, best_offset.to(tl.int8), mask=in_bounds)


@triton.jit
def _backward_kernel(
    grad_output_ptr,
    offsets_ptr,
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
    SPAN0: tl.constexpr,
    SPAN1: tl.constexpr,
    SPAN2: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    e = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_bounds = e < total
    p0, p1, p2, outer, channel = decompose(e, C, P0, P1, P2, CHANNELS_LAST)
    base = plane_base(outer, channel, W0 * W1 * W2, C, CHANNELS_LAST)
    step = 1
    if CHANNELS_LAST:
        step = C
    position = (p0 * P1 + p1) * P2 + p2
    first0, last0 = covering_range(p0, W0, K0, S0, PAD0)
    first1, last1 = covering_range(p1, W1, K1, S1, PAD1)
    first2, last2 = covering_range(p2, W2, K2, S2, PAD2)
    total_grad = tl.zeros((BLOCK,), COMPUTE_DTYPE)
    # Descending raster order, as the C++ kernels, so every backend adds alike.
    for a in tl.static_range(SPAN0):
        i0 = last0 - a
        for b in tl.static_range(SPAN1):
            i1 = last1 - b
            for c in tl.static_range(SPAN2):
                i2 = last2 - c
                covers = in_bounds & (i0 >= first0) & (i1 >= first1) & (i2 >= first2)
                window = base + ((i0 * W1 + i1) * W2 + i2) * step
                offset = tl.load(offsets_ptr + window, mask=covers, other=-1).to(tl.int64)
                target = offset_target(
                    offset, i0, i1, i2, P0, P1, P2, K0, K1, K2, S0, S1, S2, PAD0, PAD1, PAD2
                )
                hit = covers & (target == position)
                grad = tl.load(grad_output_ptr + window, mask=hit, other=0).to(COMPUTE_DTYPE)
                total_grad += grad
    tl.store(grad_input_ptr + e, total_grad.to(grad_input_ptr.dtype.element_ty), mask=in_bounds)


def max_pool_with_offsets_forward(
    input: torch.Tensor,
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    ceil_mode: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(values, int8 offsets), both ``[N, C, *windows]``, of ``[N, C, *plane]`` input."""
    dims = len(kernel_size)
    if input.dim() != dims + 2:
        raise RuntimeError(
            f"max_pool_with_offsets: input must have {dims + 2} dims, got {tuple(input.shape)}"
        )
    memory_format = pooling_memory_format(input)
    input = input.contiguous(memory_format=memory_format)
    n, c = input.shape[:2]
    windows = [
        pool_output_size(input.shape[2 + d], kernel_size[d], stride[d], padding[d], ceil_mode)
        for d in range(dims)
    ]
    g = PoolWindows.make(windows, input.shape[2:], kernel_size, stride, padding)
    shape = (n, c, *windows)
    values = empty_output(
        shape, dtype=input.dtype, device=input.device, memory_format=memory_format
    )
    offsets = empty_output(
        shape, dtype=torch.int8, device=input.device, memory_format=memory_format
    )
    total = values.numel()
    if total == 0:
        return values, offsets
    block = block_size(total)
    _forward_kernel[(triton.cdiv(total, block),)](
        input,
        values,
        offsets,
        total,
        c,
        *g.windows,
        *g.plane,
        *g.stride,
        *g.padding,
        K0=g.kernel[0],
        K1=g.kernel[1],
        K2=g.kernel[2],
        CHANNELS_LAST=memory_format != torch.contiguous_format,
        COMPUTE_DTYPE=compute_dtype(input.dtype),
        BLOCK=block,
    )
    return values, offsets


def max_pool_with_offsets_backward(
    grad_output: torch.Tensor,
    offsets: torch.Tensor,
    input_size: list[int],
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
) -> torch.Tensor:
    """grad_input ``[N, C, *input_size]`` from grad_output and offsets ``[N, C, *windows]``."""
    memory_format = pooling_memory_format(offsets)
    offsets = offsets.contiguous(memory_format=memory_format)
    grad_output = grad_output.contiguous(memory_format=memory_format)
    n, c = offsets.shape[:2]
    g = PoolWindows.make(offsets.shape[2:], input_size, kernel_size, stride, padding)
    grad_input = empty_output(
        (n, c, *input_size),
        dtype=grad_output.dtype,
        device=grad_output.device,
        memory_format=memory_format,
    )
    total = grad_input.numel()
    if total == 0:
        return grad_input
    span = g.max_covering()
    block = block_size(total)
    _backward_kernel[(triton.cdiv(total, block),)](
        grad_output,
        offsets,
        grad_input,
        total,
        c,
        *g.scalars(),
        CHANNELS_LAST=memory_format != torch.contiguous_format,
        SPAN0=span[0],
        SPAN1=span[1],
        SPAN2=span[2],
        COMPUTE_DTYPE=compute_dtype(grad_output.dtype),
        BLOCK=block,
    )
    return grad_input
