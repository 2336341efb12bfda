"""Triton roi_pool, forward and backward.

The bins and the max rule mirror csrc/ops/roi_pool_math.h: corners rounded
half away from zero (and clamped to +-2^30), bin sizes divided with
``div_rn``, windows [floor(p * bin), ceil((p + 1) * bin)) + start clipped to
the map, a raster scan in which the first element initialises the maximum and
a later one replaces it when greater or NaN (over a non-NaN maximum); an
empty bin gives 0 and argmax -1. Values are compared in float32 (float64 for
float64), which for float16/bfloat16 is the comparison of the stored values.

Kernels:

* ``_forward_kernel``: one program per (RoI, block of BLOCK output elements of
  that RoI), each lane one (channel, bin), as roi_align's forward; the scan
  covers the largest window of the block, each lane masked to its own.
* ``_backward_atomic_kernel``: the same lanes; each adds its gradient at its
  argmax with an atomic add into a float32 (float64) buffer.
* ``_backward_ordered_kernel`` (deterministic): one program per (image, block
  of channels), lanes = channels; RoIs in ascending order, then bins, each
  added with a plain load/add/store: the CPU kernel's order and bits.

Bad batch indices read nothing and give empty bins; the forward records the
first in a status word and the launcher raises IndexError (roi_align.py).

Shapes: input ``[N, C, H, W]``; rois ``[K, 5]`` (batch index, x1, y1, x2,
y2); output and int32 argmax (``h * W + w``) ``[K, C, pooled_h, pooled_w]``,
NCHW-style or channels-last (pooling_memory_format of the input, of grad for
the backward).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastops._poison import empty_output
from fastops._pooling import pooling_memory_format
from fastops.triton_kernels._launch import accumulate_dtype, compute_dtype
from fastops.triton_kernels.roi_align import (
    NO_BAD_ROI,
    add_to,
    as_int64,
    channel_lanes,
    div_rn,
    is_finite,
    ordered_channel_blocks,
    plane_base,
    raise_bad_roi,
    roi_block,
    roi_element_blocks,
    roi_source,
    scale_bits,
    storage_dtype,
    to_storage,
    zeroed_gradient,
)

_SCALAR_ARGS = [
    "N",
    "C",
    "H",
    "W",
    "K",
    "scale",
    "pooled_h",
    "pooled_w",
    "blocks_per_roi",
    "channel_blocks",
]


@triton.jit
def _corner(v, scale, finite):
    """roi_pool_corner: round(v * scale) half away from zero, clamped to
    +-2^30, as int64 (0 where the RoI is not finite)."""
    r = tl.where(finite, v * scale, 0.0)
    t = tl.where(r < 0.0, tl.ceil(r), tl.floor(r))  # toward zero
    d = r - t  # exact
    t = tl.where(d >= 0.5, t + 1.0, tl.where(d <= -0.5, t - 1.0, t))
    t = tl.where(t < -1073741824.0, -1073741824.0, tl.where(t > 1073741824.0, 1073741824.0, t))
    return t.to(tl.int64)


@triton.jit
def _roi_pool_grid(rois_ptr, k, scale, pooled_h, pooled_w, ACC: tl.constexpr):
    """roi_pool_grid: start_h, start_w, bin_h, bin_w, valid."""
    row = rois_ptr + as_int64(k) * 5
    x1 = tl.load(row + 1).to(ACC)
    y1 = tl.load(row + 2).to(ACC)
    x2 = tl.load(row + 3).to(ACC)
    y2 = tl.load(row + 4).to(ACC)
    finite = is_finite(x1) & is_finite(y1) & is_finite(x2) & is_finite(y2)
    start_w = _corner(x1, scale, finite)
    start_h = _corner(y1, scale, finite)
    end_w = _corner(x2, scale, finite)
    end_h = _corner(y2, scale, finite)
    width = tl.maximum(end_w - start_w + 1, 1)
    height = tl.maximum(end_h - start_h + 1, 1)
    bin_h = div_rn(height.to(ACC), tl.cast(pooled_h, ACC))
    bin_w = div_rn(width.to(ACC), tl.cast(pooled_w, ACC))
    return start_h, start_w, bin_h, bin_w, finite


@triton.jit
def _window(p, start, bin, size, ACC: tl.constexpr):
    """[begin, end) of bin p along one axis, clipped to [0, size]."""
    begin = tl.floor(p.to(ACC) * bin).to(tl.int64) + start
    end = tl.ceil((p + 1).to(ACC) * bin).to(tl.int64) + start
    begin = tl.minimum(tl.maximum(begin, 0), size)
    end = tl.minimum(tl.maximum(end, 0), size)
    return begin, end


@triton.jit
def _bin_program(
    rois_ptr,
    N,
    C,
    H,
    W,
    pooled_h,
    pooled_w,
    blocks_per_roi,
    CHANNELS_LAST: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The prologue of the per-RoI kernels: (RoI k, blk, offset of the lanes'
    outputs, valid, ph, pw, H, W, ok, status code, the lanes' plane, step)."""
    k, blk, off, valid, c, ph, pw = roi_block(
        blocks_per_roi, C, pooled_h, pooled_w, CHANNELS_LAST, BLOCK
    )
    C = as_int64(C)
    H = as_int64(H)
    W = as_int64(W)
    image, _, ok, code = roi_source(rois_ptr, None, k, N, False, 1, ACC)
    plane, step = plane_base(image, c, C, H, W, CHANNELS_LAST)
    return k, blk, off, valid, ph, pw, H, W, ok, code, plane, step


@triton.jit(do_not_specialize=_SCALAR_ARGS)
def _forward_kernel(
    input_ptr,
    rois_ptr,
    out_ptr,
    argmax_ptr,
    status_ptr,
    N,
    C,
    H,
    W,
    scale,
    pooled_h,
    pooled_w,
    blocks_per_roi,
    CHANNELS_LAST: tl.constexpr,
    ACC: tl.constexpr,
    STORE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    k, blk, out_off, valid, ph, pw, H, W, ok, code, plane, step = _bin_program(
        rois_ptr, N, C, H, W, pooled_h, pooled_w, blocks_per_roi, CHANNELS_LAST, ACC, BLOCK
    )
    scale = as_int64(scale).to(tl.float64, bitcast=True).to(ACC)
    if (ok == 0) & (blk == 0):
        tl.atomic_min(status_ptr, code)
    start_h, start_w, bin_h, bin_w, finite = _roi_pool_grid(
        rois_ptr, k, scale, pooled_h, pooled_w, ACC
    )
    h_begin, h_end = _window(ph, start_h, bin_h, H, ACC)
    w_begin, w_end = _window(pw, start_w, bin_w, W, ACC)
    # The scan covers the block's largest window (none for a bad or non-finite RoI).
    rows = tl.max(tl.where(valid, tl.maximum(h_end - h_begin, 0), 0), axis=0)
    cols = tl.max(tl.where(valid, tl.maximum(w_end - w_begin, 0), 0), axis=0)
    rows = tl.where(ok & finite, rows, 0)

    best = tl.zeros((BLOCK,), ACC)
    best_at = tl.full((BLOCK,), -1, tl.int64)
    found = tl.zeros((BLOCK,), tl.int1)
    for i in range(rows):
        h = h_begin + i
        row_in = (h < h_end) & valid
        for j in range(cols):
            w = w_begin + j
            active = row_in & (w < w_end)
            position = h * W + w
            v = tl.load(input_ptr + plane + position * step, mask=active, other=0).to(ACC)
            take = active & ((found == 0) | (v > best) | ((v != v) & (best == best)))
            best = tl.where(take, v, best)
            best_at = tl.where(take, position, best_at)
            found = found | active
    best = tl.where(found, best, 0.0)
    tl.store(out_ptr + out_off, to_storage(best, STORE), mask=valid)
    tl.store(argmax_ptr + out_off, best_at.to(tl.int32), mask=valid)


@triton.jit(do_not_specialize=_SCALAR_ARGS)
def _backward_atomic_kernel(
    acc_ptr,
    grad_ptr,
    argmax_ptr,
    rois_ptr,
    N,
    C,
    H,
    W,
    pooled_h,
    pooled_w,
    blocks_per_roi,
    CHANNELS_LAST: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    _, _, off, valid, _, _, H, W, ok, _, plane, step = _bin_program(
        rois_ptr, N, C, H, W, pooled_h, pooled_w, blocks_per_roi, CHANNELS_LAST, ACC, BLOCK
    )
    if ok:
        position = tl.load(argmax_ptr + off, mask=valid, other=-1).to(tl.int64)
        g = tl.load(grad_ptr + off, mask=valid, other=0).to(ACC)
        hit = valid & (position >= 0) & (position < H * W)
        add_to(acc_ptr + plane + position * step, g, hit, True)


@triton.jit(do_not_specialize=_SCALAR_ARGS)
def _backward_ordered_kernel(
    acc_ptr,
    grad_ptr,
    argmax_ptr,
    rois_ptr,
    K,
    N,
    C,
    H,
    W,
    pooled_h,
    pooled_w,
    channel_blocks,
    CHANNELS_LAST: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Program (image, channel block): the CPU kernel's summation order."""
    pid = tl.program_id(0)
    cb = pid % channel_blocks
    image = as_int64(pid // channel_blocks)
    C = as_int64(C)
    H = as_int64(H)
    W = as_int64(W)
    bins = as_int64(pooled_h) * pooled_w
    c, c_mask, channel_at, bin_stride = channel_lanes(cb, C, bins, CHANNELS_LAST, BLOCK_C)
    plane, step = plane_base(image, c, C, H, W, CHANNELS_LAST)
    for k in range(K):
        roi_image, _, ok, _ = roi_source(rois_ptr, None, k, N, False, 1, ACC)
        if ok & (roi_image == image):
            roi_at = as_int64(k) * C * bins + channel_at
            for b in range(bins):
                at = roi_at + b * bin_stride
                position = tl.load(argmax_ptr + at, mask=c_mask, other=-1).to(tl.int64)
                g = tl.load(grad_ptr + at, mask=c_mask, other=0).to(ACC)
                hit = c_mask & (position >= 0) & (position < H * W)
                add_to(acc_ptr + plane + position * step, g, hit, False)


def roi_pool(
    input: torch.Tensor,
    rois: torch.Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """input ``[N, C, H, W]``, rois ``[K, 5]`` -> output and int32 argmax
    ``[K, C, pooled_height, pooled_width]``."""
    memory_format = pooling_memory_format(input)
    input = input.contiguous(memory_format=memory_format)
    n, c, h, w = input.shape
    if h * w > 2**31 - 1:
        raise RuntimeError(
            f"roi_pool: input planes of more than 2^31 - 1 elements do not fit the int32 argmax, got {list(input.shape)}"
        )
    k = rois.shape[0]
    shape = (k, c, pooled_height, pooled_width)
    output = empty_output(
        shape, dtype=input.dtype, device=input.device, memory_format=memory_format
    )
    argmax = empty_output(
        shape, dtype=torch.int32, device=input.device, memory_format=memory_format
    )
    if k == 0:
        return output, argmax
    block, num_warps, blocks_per_roi = roi_element_blocks(
        "roi_pool", c * pooled_height * pooled_width
    )
    blocks_per_roi = max(1, blocks_per_roi)
    status = torch.full((1,), NO_BAD_ROI, dtype=torch.int64, device=rois.device)
    _forward_kernel[(k * blocks_per_roi,)](
        input, rois.contiguous(), output, argmax, status,
        n, c, h, w, scale_bits(spatial_scale), pooled_height, pooled_width, blocks_per_roi,
        CHANNELS_LAST=memory_format == torch.channels_last, ACC=compute_dtype(input.dtype),
        STORE=storage_dtype(input.dtype), BLOCK=block, num_warps=num_warps, enable_fp_fusion=False,
    )  # fmt: skip
    raise_bad_roi("roi_pool", status, n, 1)
    return output, argmax


def roi_pool_backward(
    grad: torch.Tensor,
    rois: torch.Tensor,
    argmax: torch.Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    deterministic: bool,
) -> torch.Tensor:
    """grad and argmax ``[K, C, pooled_height, pooled_width]`` -> grad_input
    ``[N, C, H, W]``: each gradient added at its argmax (skipped when -1)."""
    memory_format = pooling_memory_format(grad)
    grad = grad.contiguous(memory_format=memory_format)
    argmax = argmax.contiguous(memory_format=memory_format)
    acc_dtype = accumulate_dtype(grad.dtype)
    buffer = zeroed_gradient(grad, batch_size, channels, height, width, memory_format)
    k = rois.shape[0]
    if k and channels and batch_size and height * width:
        common = dict(
            CHANNELS_LAST=memory_format == torch.channels_last,
            ACC=compute_dtype(grad.dtype),
            enable_fp_fusion=False,
        )
        rois = rois.contiguous()
        if deterministic:
            block_c, channel_blocks = ordered_channel_blocks(channels)
            _backward_ordered_kernel[(batch_size * channel_blocks,)](
                buffer, grad, argmax, rois,
                k, batch_size, channels, height, width, pooled_height, pooled_width, channel_blocks,
                BLOCK_C=block_c, num_warps=1, num_stages=1, **common,
            )  # fmt: skip
        else:
            block, num_warps, blocks_per_roi = roi_element_blocks(
                "roi_pool backward", channels * pooled_height * pooled_width
            )
            _backward_atomic_kernel[(k * blocks_per_roi,)](
                buffer, grad, argmax, rois,
                batch_size, channels, height, width, pooled_height, pooled_width, blocks_per_roi,
                BLOCK=block, num_warps=num_warps, **common,
            )  # fmt: skip
    if acc_dtype == grad.dtype:
        return buffer
    return buffer.to(grad.dtype)
