"""Triton soft-Dice statistics, forward and backward. Per-element math as
csrc/ops/soft_dice_math.h; contract as the CPU and CUDA kernels
(csrc/ops/segmentation_losses.cpp).

Kernels:

* ``_statistics_kernel``: program (image and chunk of pixels, class block) walks
  ``tiles_per_chunk`` tiles of ``[BLOCK_C, BLOCK_S]`` (classes x pixels),
  reading input and target once, and reduces each tile over its pixels into
  per-class sums kept in registers: Σp, Σt, Σp·t, Σ|p − t|, Σ bce_with_logits
  (float32, float64 for float64 input) and the valid count (int32). Multiclass
  tiles hold every class of their pixels (BLOCK_C = next_power_of_2(C), one
  class block), so the softmax over classes is done in registers; multilabel
  classes are independent and are split into blocks of at most 4. Each
  program writes its sums to its own row of a ``[N, chunks, C, 5]`` float
  buffer and a ``[N, chunks, C]`` int32 count buffer; the launcher sums them
  over the chunks (and the images, unless per_image) with ``torch.sum``, a
  fixed-order reduction, and the counts in int64: deterministic, no atomics.
* ``_statistics_backward_kernel``: one tile per program, same tiling; every
  element of grad_input is written (0 for invalid elements).

The number of chunks is a function of the shape and dtype only (about 2048
programs on a GPU), so the sums do not depend on the run or on which GPU runs
them. Extra memory: the partial sums, 24 B (float64: 44 B) per (program,
class), nothing per element.

Shapes: input ``[N, C, S]`` contiguous; target int64 ``[N, S]`` labels
(multiclass) or ``[N, C, S]`` of input's dtype (multilabel); statistics
``[U, C, 6]`` with U = N if per_image else 1; grad_input ``[N, C, S]``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastops._poison import empty_output
from fastops.triton_kernels._launch import accumulate_dtype, compute_dtype, interpreting

_SUMS = 5  # the float columns 0..4; the count (column 5) is summed in int64
_MULTILABEL_BLOCK_C = 4  # multilabel classes are independent: small blocks, fewer registers
_PROGRAMS_TARGET = 2048  # about 15 per SM of an H100; device-independent on purpose


# ----------------------------------------------------------------------------
# Device helpers (soft_dice_math.h)
# ----------------------------------------------------------------------------


@triton.jit
def _div(a, b):
    """a / b correctly rounded, as C++'s (Triton's float32 `/` is not)."""
    if b.dtype == tl.float64:
        q = a / b
    else:
        q = tl.math.div_rn(a, b)
    return q


@triton.jit
def _sigmoid(x):
    """soft_dice::sigmoid: e = exp(−|x|) is exp(−x) for x >= 0, exp(x) below."""
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, _div(1.0, 1.0 + e), _div(e, 1.0 + e))


@triton.jit
def _sigmoid_slope(x):
    """σ'(x) = σ(x)·σ(−x) = e/(1 + e)² with e = exp(−|x|): one exp, and no
    rounding to zero where σ(x) rounds to 1."""
    e = tl.exp(-tl.abs(x))
    r = _div(1.0, 1.0 + e)
    return e * r * r


@triton.jit
def _log1p(y):
    """log(1 + y) to within a few ulps (Goldberg's correction of the rounded
    1 + y); tl has no log1p and the interpreter lacks libdevice's."""
    u = 1.0 + y
    return tl.where(u == 1.0, y, tl.log(u) * _div(y, u - 1.0))


@triton.jit
def _bce_with_logits(x, t):
    return tl.where(x > 0, x, 0.0) - x * t + _log1p(tl.exp(-tl.abs(x)))


@triton.jit
def _sign(v):
    return tl.where(v > 0, 1.0, tl.where(v < 0, -1.0, 0.0)).to(v.dtype)


@triton.jit
def _softmax_over_rows(x, row_ok):
    """Softmax of each column of a [BLOCK_C, BLOCK_S] tile over its valid rows
    (rows past C get p = 0)."""
    x = tl.where(row_ok[:, None], x, float("-inf"))
    m = tl.max(x, axis=0)
    e = tl.exp(x - m[None, :])
    return _div(e, tl.sum(e, axis=0)[None, :])


@triton.jit
def _load_tile(
    input_ptr,
    target_ptr,
    n,
    cs,
    s,
    C,
    S,
    ignore_index,
    MULTICLASS: tl.constexpr,
    FROM_LOGITS: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
):
    """(x, p, t, valid) of the [BLOCK_C, BLOCK_S] tile of classes cs, pixels s."""
    c_ok = cs < C
    s_ok = s < S
    in_range = c_ok[:, None] & s_ok[None, :]
    offsets = (n * C + cs)[:, None] * S + s[None, :]
    x = tl.load(input_ptr + offsets, mask=in_range, other=0).to(COMPUTE_DTYPE)
    if MULTICLASS:
        label = tl.load(target_ptr + n * S + s, mask=s_ok, other=0)
        pixel_ok = s_ok
        if HAS_IGNORE:
            pixel_ok = pixel_ok & (label != ignore_index)
        valid = c_ok[:, None] & pixel_ok[None, :]
        # A label outside [0, C) is background for every class (never an index).
        t = (label[None, :] == cs[:, None]).to(COMPUTE_DTYPE)
        if FROM_LOGITS:
            p = _softmax_over_rows(x, c_ok)
        else:
            p = x
    else:
        target = tl.load(target_ptr + offsets, mask=in_range, other=0)
        valid = in_range
        t = target.to(COMPUTE_DTYPE)
        if HAS_IGNORE:
            # target_is_valid: compared as doubles (the float32 of a 16-bit
            # value is exact; the interpreter converts bfloat16 only to float32).
            valid = valid & (t.to(tl.float64) != ignore_index.to(tl.float64))
        if FROM_LOGITS:
            p = _sigmoid(x)
        else:
            p = x
    return x, p, t, valid


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------


@triton.jit(do_not_specialize=["ignore_index"])
def _statistics_kernel(
    input_ptr,
    target_ptr,
    sums_ptr,
    counts_ptr,
    C,
    S,
    ignore_index,
    tiles_per_chunk,
    chunks,
    MULTICLASS: tl.constexpr,
    FROM_LOGITS: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    WITH_BCE: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Program (image · chunks + chunk, class block): the sums of its pixels
    into row (image, chunk) of sums [N, chunks, C, 5] and counts [N, chunks, C]."""
    pid = tl.program_id(0).to(tl.int64)
    n = pid // chunks
    chunk = pid - n * chunks
    cs = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    prediction_sum = tl.zeros((BLOCK_C,), COMPUTE_DTYPE)
    target_sum = tl.zeros((BLOCK_C,), COMPUTE_DTYPE)
    product_sum = tl.zeros((BLOCK_C,), COMPUTE_DTYPE)
    difference_sum = tl.zeros((BLOCK_C,), COMPUTE_DTYPE)
    bce_sum = tl.zeros((BLOCK_C,), COMPUTE_DTYPE)
    count = tl.zeros((BLOCK_C,), tl.int32)
    for i in range(tiles_per_chunk):
        s = (chunk * tiles_per_chunk + i) * BLOCK_S + tl.arange(0, BLOCK_S)
        x, p, t, valid = _load_tile(
            input_ptr, target_ptr, n, cs, s, C, S, ignore_index,
            MULTICLASS, FROM_LOGITS, HAS_IGNORE, COMPUTE_DTYPE,
        )  # fmt: skip
        p_valid = tl.where(valid, p, 0.0)
        t_valid = tl.where(valid, t, 0.0)
        prediction_sum += tl.sum(p_valid, axis=1)
        target_sum += tl.sum(t_valid, axis=1)
        product_sum += tl.sum(p_valid * t_valid, axis=1)
        difference_sum += tl.sum(tl.where(valid, tl.abs(p - t), 0.0), axis=1)
        if WITH_BCE:
            bce_sum += tl.sum(tl.where(valid, _bce_with_logits(x, t), 0.0), axis=1)
        count += tl.sum(valid.to(tl.int32), axis=1)
    c_ok = cs < C
    row = (n * chunks + chunk) * C + cs
    out = sums_ptr + row * 5
    tl.store(out + 0, prediction_sum, mask=c_ok)
    tl.store(out + 1, target_sum, mask=c_ok)
    tl.store(out + 2, product_sum, mask=c_ok)
    tl.store(out + 3, difference_sum, mask=c_ok)
    tl.store(out + 4, bce_sum, mask=c_ok)
    tl.store(counts_ptr + row, count, mask=c_ok)


@triton.jit(do_not_specialize=["ignore_index"])
def _statistics_backward_kernel(
    grad_ptr,
    input_ptr,
    target_ptr,
    out_ptr,
    C,
    S,
    ignore_index,
    s_tiles,
    MULTICLASS: tl.constexpr,
    FROM_LOGITS: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    PER_IMAGE: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Program (image · s_tiles + pixel tile, class block): grad_input of the
    tile, with g = grad_statistics[unit, c, :] (prediction_gradient, then the
    activation)."""
    pid = tl.program_id(0).to(tl.int64)
    n = pid // s_tiles
    cs = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    s = (pid - n * s_tiles) * BLOCK_S + tl.arange(0, BLOCK_S)
    c_ok = cs < C
    x, p, t, valid = _load_tile(
        input_ptr, target_ptr, n, cs, s, C, S, ignore_index,
        MULTICLASS, FROM_LOGITS, HAS_IGNORE, COMPUTE_DTYPE,
    )  # fmt: skip
    unit = n if PER_IMAGE else 0
    g = grad_ptr + (unit * C + cs) * 6
    g0 = tl.load(g + 0, mask=c_ok, other=0).to(COMPUTE_DTYPE)[:, None]
    g2 = tl.load(g + 2, mask=c_ok, other=0).to(COMPUTE_DTYPE)[:, None]
    g3 = tl.load(g + 3, mask=c_ok, other=0).to(COMPUTE_DTYPE)[:, None]
    # prediction_gradient; rows past C have g = 0, so dp = 0 there.
    dp = g0 + g2 * t + g3 * _sign(p - t)
    if FROM_LOGITS:
        if MULTICLASS:
            # Softmax Jacobian per pixel: dx_c = p_c (dp_c − Σ_k p_k dp_k).
            dp = tl.where(c_ok[:, None], dp, 0.0)
            dx = p * (dp - tl.sum(p * dp, axis=0)[None, :])
        else:
            g4 = tl.load(g + 4, mask=c_ok, other=0).to(COMPUTE_DTYPE)[:, None]
            dx = dp * _sigmoid_slope(x) + g4 * (_sigmoid(x) - t)
    else:
        dx = dp
    dx = tl.where(valid, dx, 0.0)
    in_range = c_ok[:, None] & (s < S)[None, :]
    tl.store(
        out_ptr + (n * C + cs)[:, None] * S + s[None, :],
        dx.to(out_ptr.dtype.element_ty),
        mask=in_range,
    )


# ----------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------


def _tiles(classes: int, pixels: int, multiclass: bool, dtype: torch.dtype) -> dict:
    """BLOCK_C, BLOCK_S and num_warps of a [classes, pixels] tile. On a GPU a
    tile holds at most 2048 elements (C = 150: 256 x 8), 8 a thread (4 for
    float64): compiled for sm_90 (triton 3.7.1) these kernels then use 50 to
    128 registers, without spills in float32, where 16 a thread reach 255.
    The interpreter pays per program, so it gets whole images in one tile
    where it can."""
    block_c = triton.next_power_of_2(max(1, classes))
    if not multiclass:
        block_c = min(block_c, _MULTILABEL_BLOCK_C)
    pixels_np2 = triton.next_power_of_2(max(1, pixels))
    if interpreting():
        block_s = min(pixels_np2, max(16, 16384 // block_c))
        return dict(BLOCK_C=block_c, BLOCK_S=block_s)
    block_s = min(pixels_np2, max(8, min(1024, 2048 // block_c)))
    per_thread = 4 if dtype == torch.float64 else 8
    warps = max(1, min(16, block_c * block_s // (32 * per_thread)))
    return dict(BLOCK_C=block_c, BLOCK_S=block_s, num_warps=warps)


def _flags(multiclass: bool, from_logits: bool, ignore_index: int | None, input: torch.Tensor):
    return dict(
        MULTICLASS=bool(multiclass),
        FROM_LOGITS=bool(from_logits),
        HAS_IGNORE=ignore_index is not None,
        COMPUTE_DTYPE=compute_dtype(input.dtype),
    )


def soft_dice_statistics(
    input: torch.Tensor,
    target: torch.Tensor,
    multiclass: bool,
    from_logits: bool,
    ignore_index: int | None,
    per_image: bool,
    with_bce: bool,
) -> torch.Tensor:
    """Per (unit, class) Σp, Σt, Σp·t, Σ|p − t|, Σ bce_with_logits(x, t) (only
    when with_bce), #valid, over the valid elements.

    Args:
        input: ``[N, C, S]`` logits or probabilities, contiguous.
        target: int64 ``[N, S]`` labels (multiclass) or ``[N, C, S]`` of
            input's dtype (multilabel).

    Returns:
        ``[U, C, 6]``, float32 (float64 for float64 input); U = N if per_image else 1.
    """
    n, c, s = input.shape
    units = n if per_image else 1
    acc = accumulate_dtype(input.dtype)
    if n == 0 or c == 0 or s == 0:
        return torch.zeros((units, c, 6), dtype=acc, device=input.device)
    tiles = _tiles(c, s, multiclass, input.dtype)
    s_tiles = triton.cdiv(s, tiles["BLOCK_S"])
    c_blocks = triton.cdiv(c, tiles["BLOCK_C"])
    programs_per_image = max(1, triton.cdiv(_PROGRAMS_TARGET, n * c_blocks))
    if interpreting():
        programs_per_image = min(2, programs_per_image)
    tiles_per_chunk = triton.cdiv(s_tiles, min(s_tiles, programs_per_image))
    chunks = triton.cdiv(s_tiles, tiles_per_chunk)
    sums = torch.empty((n, chunks, c, _SUMS), dtype=acc, device=input.device)
    counts = torch.empty((n, chunks, c), dtype=torch.int32, device=input.device)
    _statistics_kernel[(n * chunks, c_blocks)](
        input, target, sums, counts, c, s, 0 if ignore_index is None else int(ignore_index),
        tiles_per_chunk, chunks,
        WITH_BCE=bool(with_bce), **_flags(multiclass, from_logits, ignore_index, input), **tiles,
    )  # fmt: skip
    if per_image:
        total = sums.sum(dim=1)
        valid = counts.sum(dim=1, dtype=torch.int64)
    else:
        total = sums.view(n * chunks, c, _SUMS).sum(dim=0, keepdim=True)
        valid = counts.view(n * chunks, c).sum(dim=0, keepdim=True, dtype=torch.int64)
    return torch.cat([total, valid.to(acc).unsqueeze(-1)], dim=-1)


def soft_dice_statistics_backward(
    grad_statistics: torch.Tensor,
    input: torch.Tensor,
    target: torch.Tensor,
    multiclass: bool,
    from_logits: bool,
    ignore_index: int | None,
    per_image: bool,
) -> torch.Tensor:
    """grad_input ``[N, C, S]`` (input's dtype) of soft_dice_statistics, for
    grad_statistics ``[U, C, 6]``; 0 at invalid elements."""
    n, c, s = input.shape
    if n == 0 or c == 0 or s == 0:
        return torch.zeros_like(input)
    grad_statistics = grad_statistics.contiguous()
    out = empty_output((n, c, s), dtype=input.dtype, device=input.device)
    tiles = _tiles(c, s, multiclass, input.dtype)
    s_tiles = triton.cdiv(s, tiles["BLOCK_S"])
    _statistics_backward_kernel[(n * s_tiles, triton.cdiv(c, tiles["BLOCK_C"]))](
        grad_statistics, input, target, out, c, s, 0 if ignore_index is None else int(ignore_index), s_tiles,
        PER_IMAGE=bool(per_image), **_flags(multiclass, from_logits, ignore_index, input), **tiles,
    )  # fmt: skip
    return out
