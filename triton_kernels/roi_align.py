"""Triton roi_align and multi_scale_roi_align (roi_align is the one-level case),
forward and backward.

The per-element math mirrors csrc/ops/roi_align_math.h operation for
operation: the same sampling grid, sample points and bilinear taps, the same
summation order, correctly rounded division (``div_rn``) and no fused
multiply-adds (``enable_fp_fusion=False``), so the values equal the C++
kernels' bit for bit in float32 and float64. Compute is in float32 (float64
for float64); float16/bfloat16 are only loaded and stored.

Kernels:

* ``_forward_kernel``: one program per (RoI, block of BLOCK output elements of
  that RoI). The RoI's ``C * pooled_h * pooled_w`` outputs are contiguous in
  both layouts (``[C, ph, pw]`` or ``[ph, pw, C]``), so a lane decomposes its
  index into (channel, bin); channels-last lanes are consecutive channels of
  one bin (coalesced taps), NCHW lanes consecutive bins of a channel. The RoI's
  grid and the per-sample offsets ``(i + 0.5) * bin / samples`` are per program.
* ``_backward_atomic_kernel``: the forward's decomposition; each tap adds
  ``grad * w / count`` with an atomic add into a float32 (float64) buffer.
* ``_backward_ordered_kernel`` (deterministic): one program per (level, image,
  block of channels), lanes = channels, so no two lanes touch one address. It
  scans every RoI in ascending order and, for those of its image and level,
  bins ph, pw, samples iy, ix and the taps ll, lh, hl, hh, adding each with a
  plain load/add/store: the summation order of the CPU kernel
  (csrc/cpu/roi_align.cpp), hence the same bits. Slow but exact.

Levels: up to 8 feature maps, passed as 8 pointer arguments (None past
NUM_LEVELS) and selected per RoI with a scalar ``tl.where`` chain; their
heights, widths and spatial scales travel as scalar arguments (a scale as the
int64 bits of its double, so float64 compute sees the exact value) and need no
host-to-device copy.

Bad RoIs (batch index outside [0, N) after truncation toward zero, NaN, or a
level outside [0, L)) read nothing and give zeros; the forward kernel records
the first in a status word, and the launcher raises IndexError with the C++
message (except during CUDA graph capture).

Shapes: features ``L x [N, C, H_l, W_l]``; rois ``[K, 5]`` (batch index, x1,
y1, x2, y2); levels int64 ``[K]``; output ``[K, C, pooled_h, pooled_w]``,
NCHW-style or channels-last (pooling_memory_format of the features, of grad
for the backward).
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl

from fastops._poison import empty_output
from fastops._pooling import roi_memory_format
from fastops.triton_kernels._launch import accumulate_dtype, compute_dtype, interpreting

MAX_LEVELS = 8
_MAX_ADAPTIVE_SAMPLES = tl.constexpr(512)  # kMaxAdaptiveSamples
# Status word value when every RoI is valid; otherwise 2 * k + (1 if only the
# level of RoI k is bad), the smallest such code (atomic min).
NO_BAD_ROI = 2**62

_SCALAR_ARGS = [
    *[f"H{i}" for i in range(MAX_LEVELS)],
    *[f"W{i}" for i in range(MAX_LEVELS)],
    *[f"S{i}" for i in range(MAX_LEVELS)],
    "N",
    "C",
    "K",
    "pooled_h",
    "pooled_w",
    "sampling_ratio",
    "blocks_per_roi",
    "channel_blocks",
]


# ----------------------------------------------------------------------------
# Device helpers (those without a leading underscore are shared with roi_pool.py)
# ----------------------------------------------------------------------------


@triton.jit
def div_rn(a, b):
    """a / b correctly rounded: float64 `/` is; float32 `/` is not."""
    if a.dtype == tl.float64:
        q = a / b
    else:
        q = tl.math.div_rn(a, b)
    return q


@triton.jit
def is_finite(v):
    return tl.abs(v) < float("inf")


@triton.jit
def to_storage(v, out_dtype: tl.constexpr):
    """v (float32/float64) in the storage dtype, rounded to nearest even.
    bfloat16 is rounded here, as c10::BFloat16 does (NaN -> 0x7FC0): the
    interpreter's float32 -> bfloat16 conversion truncates."""
    if out_dtype == tl.bfloat16:
        bits = v.to(tl.uint32, bitcast=True)
        rounded = (bits + (0x7FFF + ((bits >> 16) & 1))) >> 16
        rounded = tl.where(v != v, 0x7FC0, rounded)
        out = rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)
    else:
        out = v.to(out_dtype)
    return out


@triton.jit
def as_int64(v):
    return tl.cast(v, tl.int64)


@triton.jit
def roi_source(
    rois_ptr,
    levels_ptr,
    k,
    N,
    HAS_LEVELS: tl.constexpr,
    NUM_LEVELS: tl.constexpr,
    ACC: tl.constexpr,
):
    """(image, level, ok, code) of RoI k: roi_batch_index of rois[k, 0] and
    levels[k] (0 without levels), ok when both are valid, and its status code."""
    value = tl.load(rois_ptr + as_int64(k) * 5).to(ACC)
    batch_ok = (value > -1.0) & (value < tl.cast(N, ACC))
    image = tl.where(batch_ok, value, 0.0).to(tl.int64)  # truncation toward zero
    code = 2 * as_int64(k) + batch_ok.to(tl.int64)
    if HAS_LEVELS:
        level = tl.load(levels_ptr + k)
        level_ok = (level >= 0) & (level < NUM_LEVELS)
        ok = batch_ok & level_ok
        level = tl.where(level_ok, level, 0)
    else:
        level = tl.zeros((), tl.int64)
        ok = batch_ok
    return image, level, ok, code


@triton.jit
def _pick(level, v0, v1, v2, v3, v4, v5, v6, v7, NUM_LEVELS: tl.constexpr):
    """v[level] for a scalar level in [0, NUM_LEVELS): pointers or integers."""
    v = v0
    if NUM_LEVELS > 1:
        v = tl.where(level == 1, v1, v)
    if NUM_LEVELS > 2:
        v = tl.where(level == 2, v2, v)
    if NUM_LEVELS > 3:
        v = tl.where(level == 3, v3, v)
    if NUM_LEVELS > 4:
        v = tl.where(level == 4, v4, v)
    if NUM_LEVELS > 5:
        v = tl.where(level == 5, v5, v)
    if NUM_LEVELS > 6:
        v = tl.where(level == 6, v6, v)
    if NUM_LEVELS > 7:
        v = tl.where(level == 7, v7, v)
    return v


@triton.jit
def _samples_per_bin(bin, sampling_ratio, MAX_SAMPLES: tl.constexpr):
    adaptive = tl.ceil(bin)
    capped = tl.where(adaptive < MAX_SAMPLES, adaptive, MAX_SAMPLES * 1.0)
    adaptive_samples = tl.where(adaptive > 0.0, capped, 0.0).to(tl.int64)
    return tl.where(sampling_ratio > 0, as_int64(sampling_ratio), adaptive_samples)


@triton.jit
def _level_map(
    level,
    p0, p1, p2, p3, p4, p5, p6, p7,
    H0, H1, H2, H3, H4, H5, H6, H7,
    W0, W1, W2, W3, W4, W5, W6, W7,
    S0, S1, S2, S3, S4, S5, S6, S7,
    NUM_LEVELS: tl.constexpr,
    ACC: tl.constexpr,
):  # fmt: skip
    """(pointer, H, W, spatial scale) of feature map `level`."""
    base_ptr = _pick(level, p0, p1, p2, p3, p4, p5, p6, p7, NUM_LEVELS)
    H = as_int64(_pick(level, H0, H1, H2, H3, H4, H5, H6, H7, NUM_LEVELS))
    W = as_int64(_pick(level, W0, W1, W2, W3, W4, W5, W6, W7, NUM_LEVELS))
    scale_bits = as_int64(_pick(level, S0, S1, S2, S3, S4, S5, S6, S7, NUM_LEVELS))
    scale = scale_bits.to(tl.float64, bitcast=True).to(ACC)
    return base_ptr, H, W, scale


@triton.jit
def _roi_align_grid(
    rois_ptr,
    k,
    scale,
    pooled_h,
    pooled_w,
    sampling_ratio,
    ALIGNED: tl.constexpr,
    ACC: tl.constexpr,
):
    """roi_align_grid of roi_align_math.h: start_y, start_x, bin_h, bin_w,
    samples_y, samples_x, count."""
    row = rois_ptr + as_int64(k) * 5
    x1 = tl.load(row + 1).to(ACC)
    y1 = tl.load(row + 2).to(ACC)
    x2 = tl.load(row + 3).to(ACC)
    y2 = tl.load(row + 4).to(ACC)
    if ALIGNED:
        offset = 0.5
    else:
        offset = 0.0
    start_x = x1 * scale - offset
    start_y = y1 * scale - offset
    width = (x2 * scale - offset) - start_x
    height = (y2 * scale - offset) - start_y
    if not ALIGNED:
        width = tl.where(width < 1.0, 1.0, width)
        height = tl.where(height < 1.0, 1.0, height)
    bin_h = div_rn(height, tl.cast(pooled_h, ACC))
    bin_w = div_rn(width, tl.cast(pooled_w, ACC))
    finite = (
        is_finite(x1)
        & is_finite(y1)
        & is_finite(x2)
        & is_finite(y2)
        & is_finite(bin_h)
        & is_finite(bin_w)
    )
    samples_y = tl.where(finite, _samples_per_bin(bin_h, sampling_ratio, _MAX_ADAPTIVE_SAMPLES), 0)
    samples_x = tl.where(finite, _samples_per_bin(bin_w, sampling_ratio, _MAX_ADAPTIVE_SAMPLES), 0)
    samples = samples_y * samples_x
    count = tl.where(samples > 1, samples, 1).to(ACC)
    return start_y, start_x, bin_h, bin_w, samples_y, samples_x, count


@triton.jit
def _within(i, bin, samples, ACC: tl.constexpr):
    """((i + 0.5) * bin) / samples: the offset of sample i inside its bin."""
    return div_rn((tl.cast(i, ACC) + 0.5) * bin, tl.cast(samples, ACC))


@triton.jit
def _sample_taps(row, i, bin, samples, size, ACC: tl.constexpr):
    """_axis_taps of sample i of the bin that starts at `row`."""
    return _axis_taps(row + _within(i, bin, samples, ACC), size, ACC)


@triton.jit
def _axis_taps(v, size, ACC: tl.constexpr):
    """One dimension of bilinear_taps: (low, high, l, h, inside) of coordinate
    v on an axis of `size` pixels; l = v - low and h = 1 - l after clamping."""
    # (size > 0) folded into the bound: the interpreter mistypes a scalar
    # boolean broadcast into a block by `&`.
    upper = tl.where(size > 0, tl.cast(size, ACC), -2.0)
    inside = (v >= -1.0) & (v <= upper)
    v = tl.where(inside, v, 0.0)  # keeps the conversion below defined
    v = tl.where(v <= 0.0, 0.0, v)
    low = v.to(tl.int64)
    top = low >= size - 1
    low = tl.where(top, size - 1, low)
    high = tl.where(top, low, low + 1)
    v = tl.where(top, low.to(ACC), v)
    lo = v - low.to(ACC)
    hi = 1.0 - lo
    return low, high, lo, hi, inside


@triton.jit
def roi_lanes(k, blk, C, pooled_h, pooled_w, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    """Lane e of block blk of RoI k: (offset of output element, in range,
    channel, ph, pw); the RoI's C * ph * pw elements are contiguous. The
    decomposition is in int32 (the launcher checks C * ph * pw < 2^31)."""
    C = tl.cast(C, tl.int32)
    bins = tl.cast(pooled_h, tl.int32) * tl.cast(pooled_w, tl.int32)
    e = blk * BLOCK + tl.arange(0, BLOCK)
    valid = e < C * bins
    c_div = tl.maximum(C, 1)
    if CHANNELS_LAST:
        c = e % c_div
        b = e // c_div
    else:
        c = e // bins
        b = e % bins
    ph = b // pooled_w
    pw = b % pooled_w
    return as_int64(k) * C * bins + e, valid, c, ph, pw


@triton.jit
def roi_block(
    blocks_per_roi, C, pooled_h, pooled_w, CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr
):
    """Program (RoI k, block blk of its outputs): (k, blk) and roi_lanes."""
    pid = tl.program_id(0)
    k = pid // blocks_per_roi
    blk = pid % blocks_per_roi
    off, valid, c, ph, pw = roi_lanes(k, blk, C, pooled_h, pooled_w, CHANNELS_LAST, BLOCK)
    return k, blk, off, valid, c, ph, pw


@triton.jit
def channel_lanes(cb, C, bins, CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr):
    """Channel block cb of the ordered kernels: (channels c, c < C, offset of
    channel c in a RoI's gradient, step between bins)."""
    c = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    if CHANNELS_LAST:
        channel_at = as_int64(c)
        bin_stride = C
    else:
        channel_at = as_int64(c) * bins
        bin_stride = tl.full((), 1, tl.int64)
    return c, c_mask, channel_at, bin_stride


@triton.jit
def plane_base(image, c, C, H, W, CHANNELS_LAST: tl.constexpr):
    """(offset of pixel (0, 0) of channel c of image, step between pixels)."""
    if CHANNELS_LAST:
        base = image * H * W * C + as_int64(c)
        step = C
    else:
        base = (image * C + as_int64(c)) * (H * W)
        step = tl.full((), 1, tl.int64)
    return base, step


@triton.jit
def _interpolate(
    ptr, mask, W, step, y_low, y_high, x_low, x_high, ly, hy, lx, hx, ACC: tl.constexpr
):
    """interpolate(): ((w_ll * v_ll + w_lh * v_lh) + w_hl * v_hl) + w_hh * v_hh,
    with w_ll = hy * hx, w_lh = hy * lx, w_hl = ly * hx, w_hh = ly * lx."""
    v_ll = tl.load(ptr + (y_low * W + x_low) * step, mask=mask, other=0).to(ACC)
    v_lh = tl.load(ptr + (y_low * W + x_high) * step, mask=mask, other=0).to(ACC)
    v_hl = tl.load(ptr + (y_high * W + x_low) * step, mask=mask, other=0).to(ACC)
    v_hh = tl.load(ptr + (y_high * W + x_high) * step, mask=mask, other=0).to(ACC)
    return ((hy * hx) * v_ll + (hy * lx) * v_lh + (ly * hx) * v_hl) + (ly * lx) * v_hh


@triton.jit
def _bin_program(
    p0, p1, p2, p3, p4, p5, p6, p7,
    H0, H1, H2, H3, H4, H5, H6, H7,
    W0, W1, W2, W3, W4, W5, W6, W7,
    S0, S1, S2, S3, S4, S5, S6, S7,
    rois_ptr,
    levels_ptr,
    N,
    C,
    pooled_h,
    pooled_w,
    sampling_ratio,
    blocks_per_roi,
    NUM_LEVELS: tl.constexpr,
    HAS_LEVELS: tl.constexpr,
    ALIGNED: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """The prologue of the per-RoI kernels: (offset of the lanes' outputs,
    valid, blk, ok, status code, pointer to the lanes' plane of the RoI's
    level, step, H, W, bin origins row_y and row_x, bin_h, bin_w, samples_y
    (0 for a bad RoI), samples_x, count)."""
    k, blk, off, valid, c, ph, pw = roi_block(
        blocks_per_roi, C, pooled_h, pooled_w, CHANNELS_LAST, BLOCK
    )
    C = as_int64(C)

    image, level, ok, code = roi_source(rois_ptr, levels_ptr, k, N, HAS_LEVELS, NUM_LEVELS, ACC)
    base_ptr, H, W, scale = _level_map(
        level,
        p0, p1, p2, p3, p4, p5, p6, p7,
        H0, H1, H2, H3, H4, H5, H6, H7,
        W0, W1, W2, W3, W4, W5, W6, W7,
        S0, S1, S2, S3, S4, S5, S6, S7,
        NUM_LEVELS, ACC,
    )  # fmt: skip

    start_y, start_x, bin_h, bin_w, samples_y, samples_x, count = _roi_align_grid(
        rois_ptr, k, scale, pooled_h, pooled_w, sampling_ratio, ALIGNED, ACC
    )
    samples_y = tl.where(ok, samples_y, 0)
    plane, step = plane_base(image, c, C, H, W, CHANNELS_LAST)
    row_y = start_y + ph.to(ACC) * bin_h
    row_x = start_x + pw.to(ACC) * bin_w
    return (
        off, valid, blk, ok, code, base_ptr + plane, step, H, W,
        row_y, row_x, bin_h, bin_w, samples_y, samples_x, count,
    )  # fmt: skip


@triton.jit
def add_to(ptr, value, mask, ATOMIC: tl.constexpr):
    """*ptr += value: an atomic add, or (lanes that own their addresses) a
    plain load/add/store."""
    if ATOMIC:
        tl.atomic_add(ptr, value, mask=mask, sem="relaxed")
    else:
        old = tl.load(ptr, mask=mask, other=0)
        tl.store(ptr, old + value, mask=mask)


@triton.jit
def _scatter_taps(
    ptr, mask, W, step, y_low, y_high, x_low, x_high, ly, hy, lx, hx, g, count, ATOMIC: tl.constexpr
):
    """tap_gradient() g * w / count added to the taps ll, lh, hl, hh, in that order."""
    add_to(ptr + (y_low * W + x_low) * step, div_rn(g * (hy * hx), count), mask, ATOMIC)
    add_to(ptr + (y_low * W + x_high) * step, div_rn(g * (hy * lx), count), mask, ATOMIC)
    add_to(ptr + (y_high * W + x_low) * step, div_rn(g * (ly * hx), count), mask, ATOMIC)
    add_to(ptr + (y_high * W + x_high) * step, div_rn(g * (ly * lx), count), mask, ATOMIC)


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------


@triton.jit(do_not_specialize=_SCALAR_ARGS)
def _forward_kernel(
    f0, f1, f2, f3, f4, f5, f6, f7,
    H0, H1, H2, H3, H4, H5, H6, H7,
    W0, W1, W2, W3, W4, W5, W6, W7,
    S0, S1, S2, S3, S4, S5, S6, S7,
    rois_ptr,
    levels_ptr,
    out_ptr,
    status_ptr,
    N,
    C,
    pooled_h,
    pooled_w,
    sampling_ratio,
    blocks_per_roi,
    NUM_LEVELS: tl.constexpr,
    HAS_LEVELS: tl.constexpr,
    ALIGNED: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    ACC: tl.constexpr,
    STORE: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    (
        out_off, valid, blk, ok, code, plane_ptr, step, H, W,
        row_y, row_x, bin_h, bin_w, samples_y, samples_x, count,
    ) = _bin_program(
        f0, f1, f2, f3, f4, f5, f6, f7,
        H0, H1, H2, H3, H4, H5, H6, H7,
        W0, W1, W2, W3, W4, W5, W6, W7,
        S0, S1, S2, S3, S4, S5, S6, S7,
        rois_ptr, levels_ptr, N, C, pooled_h, pooled_w, sampling_ratio, blocks_per_roi,
        NUM_LEVELS, HAS_LEVELS, ALIGNED, CHANNELS_LAST, ACC, BLOCK,
    )  # fmt: skip
    if (ok == 0) & (blk == 0):
        tl.atomic_min(status_ptr, code)

    total = tl.zeros((BLOCK,), ACC)
    for iy in range(samples_y):
        y_low, y_high, ly, hy, inside_y = _sample_taps(row_y, iy, bin_h, samples_y, H, ACC)
        for ix in range(samples_x):
            x_low, x_high, lx, hx, inside_x = _sample_taps(row_x, ix, bin_w, samples_x, W, ACC)
            inside = inside_y & inside_x & valid
            value = _interpolate(
                plane_ptr, inside, W, step, y_low, y_high, x_low, x_high, ly, hy, lx, hx, ACC
            )
            total = tl.where(inside, total + value, total)
    result = div_rn(total, count)
    tl.store(out_ptr + out_off, to_storage(result, STORE), mask=valid)


@triton.jit(do_not_specialize=_SCALAR_ARGS)
def _backward_atomic_kernel(
    g0, g1, g2, g3, g4, g5, g6, g7,
    H0, H1, H2, H3, H4, H5, H6, H7,
    W0, W1, W2, W3, W4, W5, W6, W7,
    S0, S1, S2, S3, S4, S5, S6, S7,
    rois_ptr,
    levels_ptr,
    grad_ptr,
    N,
    C,
    pooled_h,
    pooled_w,
    sampling_ratio,
    blocks_per_roi,
    NUM_LEVELS: tl.constexpr,
    HAS_LEVELS: tl.constexpr,
    ALIGNED: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):  # fmt: skip
    """Atomic adds of grad * w / count into the float32/float64 buffers g_l."""
    (
        grad_off, valid, _, _, _, plane_ptr, step, H, W,
        row_y, row_x, bin_h, bin_w, samples_y, samples_x, count,
    ) = _bin_program(
        g0, g1, g2, g3, g4, g5, g6, g7,
        H0, H1, H2, H3, H4, H5, H6, H7,
        W0, W1, W2, W3, W4, W5, W6, W7,
        S0, S1, S2, S3, S4, S5, S6, S7,
        rois_ptr, levels_ptr, N, C, pooled_h, pooled_w, sampling_ratio, blocks_per_roi,
        NUM_LEVELS, HAS_LEVELS, ALIGNED, CHANNELS_LAST, ACC, BLOCK,
    )  # fmt: skip
    g = tl.load(grad_ptr + grad_off, mask=valid, other=0).to(ACC)

    for iy in range(samples_y):
        y_low, y_high, ly, hy, inside_y = _sample_taps(row_y, iy, bin_h, samples_y, H, ACC)
        for ix in range(samples_x):
            x_low, x_high, lx, hx, inside_x = _sample_taps(row_x, ix, bin_w, samples_x, W, ACC)
            inside = inside_y & inside_x & valid
            _scatter_taps(
                plane_ptr, inside, W, step, y_low, y_high, x_low, x_high, ly, hy, lx, hx,
                g, count, True,
            )  # fmt: skip


@triton.jit(do_not_specialize=_SCALAR_ARGS)
def _backward_ordered_kernel(
    g0, g1, g2, g3, g4, g5, g6, g7,
    H0, H1, H2, H3, H4, H5, H6, H7,
    W0, W1, W2, W3, W4, W5, W6, W7,
    S0, S1, S2, S3, S4, S5, S6, S7,
    rois_ptr,
    levels_ptr,
    grad_ptr,
    K,
    N,
    C,
    pooled_h,
    pooled_w,
    sampling_ratio,
    channel_blocks,
    NUM_LEVELS: tl.constexpr,
    HAS_LEVELS: tl.constexpr,
    ALIGNED: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK_C: tl.constexpr,
):  # fmt: skip
    """Program (level, image, channel block): the CPU kernel's summation order."""
    pid = tl.program_id(0)
    cb = pid % channel_blocks
    rest = pid // channel_blocks
    image = as_int64(rest % N)
    my_level = rest // N
    C = as_int64(C)
    bins = pooled_h * pooled_w
    c, c_mask, grad_channel, bin_stride = channel_lanes(cb, C, bins, CHANNELS_LAST, BLOCK_C)

    base_ptr, H, W, scale = _level_map(
        my_level,
        g0, g1, g2, g3, g4, g5, g6, g7,
        H0, H1, H2, H3, H4, H5, H6, H7,
        W0, W1, W2, W3, W4, W5, W6, W7,
        S0, S1, S2, S3, S4, S5, S6, S7,
        NUM_LEVELS, ACC,
    )  # fmt: skip
    plane, step = plane_base(image, c, C, H, W, CHANNELS_LAST)
    acc_ptr = base_ptr + plane

    for k in range(K):
        roi_image, roi_level, ok, _ = roi_source(
            rois_ptr, levels_ptr, k, N, HAS_LEVELS, NUM_LEVELS, ACC
        )
        if ok & (roi_image == image) & (roi_level == my_level):
            start_y, start_x, bin_h, bin_w, samples_y, samples_x, count = _roi_align_grid(
                rois_ptr, k, scale, pooled_h, pooled_w, sampling_ratio, ALIGNED, ACC
            )
            grad_roi = grad_ptr + as_int64(k) * C * bins + grad_channel
            for ph in range(pooled_h):
                row_y = start_y + tl.cast(ph, ACC) * bin_h
                for pw in range(pooled_w):
                    row_x = start_x + tl.cast(pw, ACC) * bin_w
                    g = tl.load(
                        grad_roi + (ph * pooled_w + pw) * bin_stride, mask=c_mask, other=0
                    ).to(ACC)
                    for iy in range(samples_y):
                        y_low, y_high, ly, hy, inside_y = _sample_taps(
                            row_y, iy, bin_h, samples_y, H, ACC
                        )
                        for ix in range(samples_x):
                            x_low, x_high, lx, hx, inside_x = _sample_taps(
                                row_x, ix, bin_w, samples_x, W, ACC
                            )
                            if inside_y & inside_x:
                                _scatter_taps(
                                    acc_ptr, c_mask, W, step, y_low, y_high, x_low, x_high,
                                    ly, hy, lx, hx, g, count, False,
                                )  # fmt: skip


# ----------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------


_STORAGE_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


def storage_dtype(dtype: torch.dtype):
    return _STORAGE_DTYPES[dtype]


def is_capturing(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def raise_bad_roi(op: str, status: torch.Tensor, batch_size: int, num_levels: int) -> None:
    """Raises IndexError for the first bad RoI the kernel recorded, with the
    message of csrc/ops/roi_ops.cpp throw_bad_roi; nothing during graph capture."""
    if is_capturing(status):
        return
    code = int(status.item())
    if code >= NO_BAD_ROI:
        return
    k, bad_level_only = divmod(code, 2)
    if bad_level_only:
        raise IndexError(f"{op}: levels[{k}] is not a level in [0, {num_levels})")
    raise IndexError(
        f"{op}: rois[{k}, 0] is not a batch index of the input: it must lie in [0, {batch_size}) "
        "(it is truncated toward zero)"
    )


def scale_bits(scale: float) -> int:
    """The double's bits as a signed int64: a Triton float argument is float32."""
    return struct.unpack("<q", struct.pack("<d", float(scale)))[0]


def _level_args(pointers, heights, widths, scales) -> list:
    """The 32 per-level arguments: pointers (None past the last level), heights,
    widths and scale bits (0 past the last level)."""
    pad = MAX_LEVELS - len(pointers)
    return [
        *pointers, *([None] * pad),
        *[int(h) for h in heights], *([0] * pad),
        *[int(w) for w in widths], *([0] * pad),
        *[scale_bits(s) for s in scales], *([0] * pad),
    ]  # fmt: skip


def element_block(per_roi: int) -> tuple[int, int]:
    """(output elements per program, warps) for the per-RoI kernels. On a GPU
    256 elements over 4 warps: 7 x 7 bins of 256 channels are 49 whole blocks,
    and the sm_90 forward stays at 64 registers (512 elements took 96). The
    interpreter pays per program: one program per RoI there (up to 4096)."""
    block = triton.next_power_of_2(max(per_roi, 1))
    if interpreting():
        return min(4096, block), 4
    block = min(256, max(32, block))
    return block, max(1, block // 64)


def roi_element_blocks(op: str, per_roi: int) -> tuple[int, int, int]:
    """(BLOCK, warps, programs per RoI) of the per-RoI kernels; raises when
    the RoI's ``per_roi`` elements do not fit int32."""
    if per_roi >= 2**31:
        raise RuntimeError(f"{op}: more than 2^31 - 1 output elements per RoI")
    block, num_warps = element_block(per_roi)
    return block, num_warps, triton.cdiv(per_roi, block)


def ordered_channel_blocks(channels: int) -> tuple[int, int]:
    """(BLOCK_C, channel blocks) of the ordered (deterministic) backward
    kernels. Lanes are channels, one warp per program (BLOCK_C >= 32), so
    that no lane of a program shares an element with another."""
    block_c = min(128, max(32, triton.next_power_of_2(channels))) if interpreting() else 32
    return block_c, triton.cdiv(channels, block_c)


def zeroed_gradient(
    grad: torch.Tensor, batch_size: int, channels: int, height: int, width: int, memory_format
):
    """The zero ``[N, C, H, W]`` gradient the backward kernels scatter into,
    in accumulate_dtype (float32 for 16-bit types)."""
    return torch.empty(
        (batch_size, channels, height, width),
        dtype=accumulate_dtype(grad.dtype),
        device=grad.device,
        memory_format=memory_format,
    ).zero_()


def _check_levels(num_levels: int) -> None:
    if not 1 <= num_levels <= MAX_LEVELS:
        raise ValueError(f"between 1 and {MAX_LEVELS} feature maps, got {num_levels}")


def _forward(
    op: str,
    features: list[torch.Tensor],
    rois: torch.Tensor,
    levels: torch.Tensor | None,
    spatial_scales: list[float],
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    _check_levels(len(features))
    memory_format = roi_memory_format(features)
    features = [f.contiguous(memory_format=memory_format) for f in features]
    n, c = features[0].shape[:2]
    k = rois.shape[0]
    output = empty_output(
        (k, c, pooled_height, pooled_width),
        dtype=features[0].dtype,
        device=features[0].device,
        memory_format=memory_format,
    )
    if k == 0:
        return output
    block, num_warps, blocks_per_roi = roi_element_blocks(op, c * pooled_height * pooled_width)
    blocks_per_roi = max(1, blocks_per_roi)
    status = torch.full((1,), NO_BAD_ROI, dtype=torch.int64, device=rois.device)
    _forward_kernel[(k * blocks_per_roi,)](
        *_level_args(features, [f.shape[2] for f in features], [f.shape[3] for f in features], spatial_scales),
        rois.contiguous(), None if levels is None else levels.contiguous(), output, status,
        n, c, pooled_height, pooled_width, sampling_ratio, blocks_per_roi,
        NUM_LEVELS=len(features), HAS_LEVELS=levels is not None, ALIGNED=bool(aligned),
        CHANNELS_LAST=memory_format == torch.channels_last, ACC=compute_dtype(output.dtype),
        STORE=storage_dtype(output.dtype), BLOCK=block,
        num_warps=num_warps, enable_fp_fusion=False,
    )  # fmt: skip
    # As the CUDA kernels: roi_align reads the status back (a synchronisation);
    # multi_scale_roi_align does not on a GPU (bad RoIs give zeros there).
    if levels is None or not rois.is_cuda:
        raise_bad_roi(op, status, n, len(features))
    return output


def _backward(
    grad: torch.Tensor,
    rois: torch.Tensor,
    levels: torch.Tensor | None,
    spatial_scales: list[float],
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    heights: list[int],
    widths: list[int],
    sampling_ratio: int,
    aligned: bool,
    deterministic: bool,
) -> list[torch.Tensor]:
    _check_levels(len(heights))
    memory_format = roi_memory_format([grad])
    grad = grad.contiguous(memory_format=memory_format)
    acc_dtype = accumulate_dtype(grad.dtype)
    buffers = [
        zeroed_gradient(grad, batch_size, channels, h, w, memory_format)
        for h, w in zip(heights, widths, strict=True)
    ]
    k = rois.shape[0]
    if k and channels and batch_size:
        common = dict(
            NUM_LEVELS=len(heights), HAS_LEVELS=levels is not None, ALIGNED=bool(aligned),
            CHANNELS_LAST=memory_format == torch.channels_last, ACC=compute_dtype(grad.dtype),
            enable_fp_fusion=False,
        )  # fmt: skip
        level_args = _level_args(buffers, heights, widths, spatial_scales)
        rois = rois.contiguous()
        levels = None if levels is None else levels.contiguous()
        if deterministic:
            block_c, channel_blocks = ordered_channel_blocks(channels)
            _backward_ordered_kernel[(len(heights) * batch_size * channel_blocks,)](
                *level_args, rois, levels, grad,
                k, batch_size, channels, pooled_height, pooled_width, sampling_ratio, channel_blocks,
                BLOCK_C=block_c, num_warps=1, num_stages=1, **common,
            )  # fmt: skip
        else:
            block, num_warps, blocks_per_roi = roi_element_blocks(
                "roi_align backward", channels * pooled_height * pooled_width
            )
            _backward_atomic_kernel[(k * blocks_per_roi,)](
                *level_args, rois, levels, grad,
                batch_size, channels, pooled_height, pooled_width, sampling_ratio, blocks_per_roi,
                BLOCK=block, num_warps=num_warps, **common,
            )  # fmt: skip
    if acc_dtype == grad.dtype:
        return buffers
    return [b.to(grad.dtype) for b in buffers]


def roi_align(
    input: torch.Tensor,
    rois: torch.Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """input ``[N, C, H, W]``, rois ``[K, 5]`` -> ``[K, C, pooled_height, pooled_width]``."""
    return _forward(
        "roi_align",
        [input],
        rois,
        None,
        [spatial_scale],
        pooled_height,
        pooled_width,
        sampling_ratio,
        aligned,
    )


def roi_align_backward(
    grad: torch.Tensor,
    rois: torch.Tensor,
    spatial_scale: float,
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    height: int,
    width: int,
    sampling_ratio: int,
    aligned: bool,
    deterministic: bool,
) -> torch.Tensor:
    """grad ``[K, C, pooled_height, pooled_width]`` -> grad_input ``[N, C, H, W]``."""
    return _backward(
        grad, rois, None, [spatial_scale], pooled_height, pooled_width, batch_size, channels,
        [height], [width], sampling_ratio, aligned, deterministic,
    )[0]  # fmt: skip


def multi_scale_roi_align(
    features: list[torch.Tensor],
    rois: torch.Tensor,
    levels: torch.Tensor,
    spatial_scales: list[float],
    pooled_height: int,
    pooled_width: int,
    sampling_ratio: int,
    aligned: bool,
) -> torch.Tensor:
    """features ``L x [N, C, H_l, W_l]`` (L <= 8), rois ``[K, 5]``, levels int64
    ``[K]`` -> ``[K, C, pooled_height, pooled_width]``, RoI k sampled from
    features[levels[k]] at spatial_scales[levels[k]]."""
    return _forward(
        "multi_scale_roi_align", list(features), rois, levels, list(spatial_scales),
        pooled_height, pooled_width, sampling_ratio, aligned,
    )  # fmt: skip


def multi_scale_roi_align_backward(
    grad: torch.Tensor,
    rois: torch.Tensor,
    levels: torch.Tensor,
    spatial_scales: list[float],
    pooled_height: int,
    pooled_width: int,
    batch_size: int,
    channels: int,
    heights: list[int],
    widths: list[int],
    sampling_ratio: int,
    aligned: bool,
    deterministic: bool,
) -> list[torch.Tensor]:
    """grad ``[K, C, pooled_height, pooled_width]`` -> one ``[N, C, H_l, W_l]``
    gradient per level."""
    return _backward(
        grad, rois, levels, list(spatial_scales), pooled_height, pooled_width, batch_size, channels,
        list(heights), list(widths), sampling_ratio, aligned, deterministic,
    )  # fmt: skip
