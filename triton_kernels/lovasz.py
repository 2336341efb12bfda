"""Triton Lovász segments (Lovász-softmax and Lovász-hinge), forward and
backward. Per-element math as csrc/ops/lovasz_math.h (the sigmoid and the
softmax are soft_dice.py's, as the C++ uses soft_dice_math.h's); contract as
the CPU and CUDA kernels (csrc/ops/segmentation_losses.cpp).

A segment is a (unit, class) pair: unit = image when per_image, else the
batch; K classes (C for the softmax kinds, 1 for the hinge); L = N·S·K
(pixel, class) entries. Forward:

1. ``_keys_kernel`` (program = a [BLOCK_C, BLOCK_S] tile: every class of
   BLOCK_S pixels of one image, so the softmax over classes is in registers)
   computes each entry's error and sort key at position ``k·N·S + n·S + s``
   (within a segment, increasing pixel index). float16/bfloat16/float32 input: one int64
   key ``(segment << 32) | descending_key(float32 error)``, segment
   ``u·K + k`` for a valid pixel and ``U·K`` for an ignored one (they sort
   last). float64 input: the 64-bit descending key (top bit flipped, so that
   int64 order is its unsigned order) and the segment id in two arrays.
2. One ``torch.sort(stable=True)`` of the packed keys (float64: a stable sort
   by error key, then a stable sort by segment). Stability keeps ties in
   increasing pixel index; NaN errors sort first. Segments come out in order,
   so segment (u, k) starts at K·Σ_{u'<u} valid_counts[u'] + k·valid_counts[u]:
   the contract's layout of sorted_entries.
3. ``_entries_kernel`` turns each sorted position's source index into
   ``pack_entry(n·S + s, foreground)``, or kUnusedEntry (-1) for an ignored
   pixel's (positions past the segments, as the CPU kernel fills them).
4. ``torch.cumsum`` of the foreground bits into ``cum[1:]`` (``cum[0] = 0``,
   int32 while L < 2^31, else int64): ``cum[p]`` = foreground entries before
   position p, so fg_before = ``cum[p] − cum[segment start]`` and G =
   ``cum[segment end] − cum[segment start]``, exact for any length.
5. ``_terms_kernel`` (program = BLOCK consecutive sorted positions): per entry
   ``lovasz_gradient`` and the loss term ``e·g`` (hinge: ``max(e, 0)·g``, e
   decoded from the key), then a segmented inclusive scan of the terms inside
   the block (``tl.associative_scan`` keyed by segment). It stores the scan at
   the block's last position (``block_tail[b]``: that segment's part of block
   b) and at each segment's last entry (``segment_tail[s]``: the segment's part
   of the block where it ends). Each slot has one writer.
6. ``_segment_sums_kernel`` (program = segment): loss = Σ block_tail[b] over
   the blocks the segment starts in or runs through, in block order, plus
   segment_tail[s]. A fixed-order reduction: deterministic, no atomics.

Gradients, terms and sums are in float32 for 16/32-bit input (float64 for
float64), lovasz_gradient<acc> as the contract has it; the CPU kernel sums in
double and rounds once, so float32 losses agree with it to rounding, not bit
for bit. Divisions are correctly rounded (``div_rn``) and the kernels are
compiled without FMA contraction, so the errors, hence the order, are the
C++'s wherever exp agrees (softmax from logits).

Backward: the same cumsum of the foreground bits of sorted_entries, then
``_scatter_kernel`` (program = BLOCK sorted positions) finds each position's
unit by a binary search of the units' ends, its class and rank from
valid_counts, recomputes g, and writes w·g·slope at the entry's (n, c, s):
kinds 0 and 2 straight into a zeroed grad_input (every valid (pixel, class)
is in exactly one segment, so there are no conflicts); kind 1 writes w·g into
an [N, C, S] buffer (float32, float64 for float64) and
``_logits_backward_kernel`` (the keys kernel's tiling) applies the error
slope and the softmax (sigmoid when C == 1) Jacobian per pixel, writing every
element (0 at ignored pixels).

Extra memory per entry (forward, 32-bit keys): at the sort's peak the keys,
the sorted keys and the int64 sort indices, 24 B, plus the sort's own
scratch; afterwards sorted keys 8 B, indices 8 B (freed after step 3),
foreground bits 1 B (temporary) and cum 4 B, besides the 4 B of
sorted_entries (an output). float64 adds 4 B segment ids, a second sort and
its gathers. Backward: 1 B + 4 B per entry, and for kind 1 a 4 B (float64:
8 B) w·g buffer per input element.

Shapes: input ``[N, C, S]`` contiguous, labels int64 ``[N, S]``; losses and
foreground_counts ``[U, K]``, valid_counts ``[U]``, sorted_entries int32
``[N·S·K]``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from fastops._poison import empty_output
from fastops.triton_kernels._launch import accumulate_dtype, compute_dtype, interpreting
from fastops.triton_kernels.soft_dice import (
    _div,
    _sigmoid,
    _sigmoid_slope,
    _softmax_over_rows,
    _tiles,
)

_SOFTMAX_PROBABILITIES = 0
_SOFTMAX_LOGITS = 1
_HINGE = 2

_LOW32 = tl.constexpr(0xFFFFFFFF)
_SIGN32 = tl.constexpr(0x80000000)
_MAGNITUDE32 = tl.constexpr(0x7FFFFFFF)
_MAGNITUDE64 = tl.constexpr(0x7FFFFFFFFFFFFFFF)
_SIGN64 = tl.constexpr(-(2**63))
_QUIET_NAN32 = tl.constexpr(0x7FC00000)
_QUIET_NAN64 = tl.constexpr(0x7FF8000000000000)


# ----------------------------------------------------------------------------
# Device helpers (lovasz_math.h)
# ----------------------------------------------------------------------------


@triton.jit
def _is_foreground(
    label, segment_class, foreground_class, KIND: tl.constexpr, ONE_CLASS: tl.constexpr
):
    """LovaszProblem::is_foreground."""
    if KIND == 2:
        fg = label == 1
    elif ONE_CLASS:
        fg = label == foreground_class
    else:
        fg = label == segment_class
    return fg


@triton.jit
def _softmax_error(p, fg):
    d = p - fg.to(p.dtype)
    return tl.where(d < 0, -d, d)  # a NaN keeps its sign bit, as the C++


@triton.jit
def _softmax_error_slope(p, fg):
    d = p - fg.to(p.dtype)
    return tl.where(d > 0, 1.0, tl.where(d < 0, -1.0, 0.0)).to(p.dtype)


@triton.jit
def _hinge_error(x, fg):
    return 1.0 - tl.where(fg, x, -x)


@triton.jit
def _hinge_error_slope(x, fg):
    slope = tl.where(fg, -1.0, 1.0)
    return tl.where(_hinge_error(x, fg) <= 0, 0.0, slope).to(x.dtype)  # NaN: slope, as torch.relu


@triton.jit
def _descending_key32(e):
    """descending_key(float), as an int64 in [0, 2^32)."""
    bits = e.to(tl.int32, bitcast=True).to(tl.int64) & _LOW32
    bits = tl.where(e != e, _QUIET_NAN32, bits)  # every NaN sorts first, whatever its sign
    return tl.where(bits >= _SIGN32, bits, (~bits) & _MAGNITUDE32)


@triton.jit
def _error_of_key32(key):
    bits = tl.where(key >= _SIGN32, key, (~key) & _MAGNITUDE32)
    return bits.to(tl.int32).to(tl.float32, bitcast=True)


@triton.jit
def _descending_key64(e):
    """descending_key(double) with the top bit flipped: int64 order = its
    unsigned order."""
    bits = e.to(tl.int64, bitcast=True)
    bits = tl.where(e != e, _QUIET_NAN64, bits)
    return tl.where(bits < 0, bits & _MAGNITUDE64, ~bits)


@triton.jit
def _error_of_key64(key):
    bits = tl.where(key < 0, ~key, key | _SIGN64)
    return bits.to(tl.float64, bitcast=True)


@triton.jit
def _lovasz_gradient(fg, fg_before, rank, total_fg, ACC: tl.constexpr):
    """lovasz_gradient<ACC> of int64 counts."""
    union_before = total_fg + (rank - fg_before)
    union = tl.where(union_before == 0, 1, union_before).to(ACC)  # the 0 case is answered apart
    next_union = (tl.where(union_before == 0, 1, union_before) + 1).to(ACC)
    intersection = (total_fg - fg_before).to(ACC)
    background = tl.where(union_before == 0, 1.0, _div(intersection, union * next_union))
    return tl.where(fg, _div(1.0, union), background).to(ACC)


@triton.jit
def _segmented_add(value_a, segment_a, value_b, segment_b):
    """Combine of an inclusive scan per segment (segments non-decreasing)."""
    return tl.where(segment_a == segment_b, value_a + value_b, value_b), segment_b


@triton.jit
def _probabilities(x, c_ok, KIND: tl.constexpr, ONE_CLASS: tl.constexpr):
    """p of a [BLOCK_C, BLOCK_S] tile: the input (kind 0), its softmax over
    classes or sigmoid when C == 1 (kind 1)."""
    if KIND == 1:
        if ONE_CLASS:
            p = _sigmoid(x)
        else:
            p = _softmax_over_rows(x, c_ok)
    else:
        p = x
    return p


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------


@triton.jit(do_not_specialize=["ignore_index", "foreground_class"])
def _keys_kernel(
    input_ptr,
    labels_ptr,
    keys_ptr,
    segments_ptr,
    C,
    S,
    NS,
    K,
    UK,
    ignore_index,
    foreground_class,
    s_tiles,
    KIND: tl.constexpr,
    ONE_CLASS: tl.constexpr,
    PER_IMAGE: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    WIDE_KEY: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Program (image · s_tiles + pixel tile): sort keys of its (class, pixel)
    entries at k·NS + n·S + s (WIDE_KEY: error keys and segment ids apart)."""
    pid = tl.program_id(0).to(tl.int64)
    n = pid // s_tiles
    s = (pid - n * s_tiles) * BLOCK_S + tl.arange(0, BLOCK_S)
    cs = tl.arange(0, BLOCK_C).to(tl.int64)
    c_ok = cs < C
    s_ok = s < S
    in_range = c_ok[:, None] & s_ok[None, :]
    x = tl.load(input_ptr + (n * C + cs)[:, None] * S + s[None, :], mask=in_range, other=0).to(
        COMPUTE_DTYPE
    )
    label = tl.load(labels_ptr + n * S + s, mask=s_ok, other=0)
    fg = _is_foreground(label[None, :], cs[:, None], foreground_class, KIND, ONE_CLASS)
    if KIND == 2:
        error = _hinge_error(x, fg)
    else:
        error = _softmax_error(_probabilities(x, c_ok, KIND, ONE_CLASS), fg)
    valid = s_ok
    if HAS_IGNORE:
        valid = valid & (label != ignore_index)
    unit = n if PER_IMAGE else 0
    segment = tl.where(valid[None, :], unit * K + cs[:, None], UK)
    position = cs[:, None] * NS + (n * S + s)[None, :]
    if WIDE_KEY:
        tl.store(keys_ptr + position, _descending_key64(error), mask=in_range)
        tl.store(segments_ptr + position, segment.to(segments_ptr.dtype.element_ty), mask=in_range)
    else:
        key = (segment << 32) | _descending_key32(error.to(tl.float32))
        tl.store(keys_ptr + position, key, mask=in_range)


@triton.jit(do_not_specialize=["ignore_index", "foreground_class"])
def _entries_kernel(
    order_ptr,
    labels_ptr,
    entries_ptr,
    NS,
    L,
    ignore_index,
    foreground_class,
    KIND: tl.constexpr,
    ONE_CLASS: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """sorted_entries[p] = pack_entry(pixel, foreground) of the entry sorted to
    p; kUnusedEntry (-1) for an ignored pixel's (they sort past the segments)."""
    position = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_range = position < L
    source = tl.load(order_ptr + position, mask=in_range, other=0)
    segment_class = source // NS
    pixel = source - segment_class * NS
    label = tl.load(labels_ptr + pixel, mask=in_range, other=0)
    fg = _is_foreground(label, segment_class, foreground_class, KIND, ONE_CLASS)
    entry = (pixel | (fg.to(tl.int64) << 31)).to(tl.int32)  # the flag wraps to the sign bit
    if HAS_IGNORE:
        entry = tl.where(label != ignore_index, entry, -1)
    tl.store(entries_ptr + position, entry, mask=in_range)


@triton.jit
def _terms_kernel(
    keys_ptr,
    segments_ptr,
    entries_ptr,
    cum_ptr,
    starts_ptr,
    lengths_ptr,
    foreground_ptr,
    block_tail_ptr,
    segment_tail_ptr,
    L,
    UK,
    HINGE: tl.constexpr,
    WIDE_KEY: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Program b (BLOCK sorted positions): e·g per entry and their segmented
    scan; stores block_tail[b] and segment_tail[s] of the segments ending here."""
    block = tl.program_id(0).to(tl.int64)
    lane = tl.arange(0, BLOCK)
    position = block * BLOCK + lane
    in_range = position < L
    if WIDE_KEY:
        segment = tl.load(segments_ptr + position, mask=in_range, other=0).to(tl.int64)
        error = _error_of_key64(tl.load(keys_ptr + position, mask=in_range, other=0))
    else:
        packed = tl.load(keys_ptr + position, mask=in_range, other=0)
        segment = packed >> 32
        error = _error_of_key32(packed & _LOW32)
    segment = tl.where(in_range, segment, UK)
    valid = segment < UK
    seg = tl.where(valid, segment, 0)
    start = tl.load(starts_ptr + seg)
    length = tl.load(lengths_ptr + seg)
    total_fg = tl.load(foreground_ptr + seg)
    fg = tl.load(entries_ptr + position, mask=valid, other=0) < 0
    fg_before = (tl.load(cum_ptr + position, mask=valid, other=0) - tl.load(cum_ptr + start)).to(
        tl.int64
    )
    rank = position - start
    g = _lovasz_gradient(fg, fg_before, rank, total_fg, ACC)
    error = error.to(ACC)
    if HINGE:
        error = tl.where((error > 0) | (error != error), error, 0.0)  # hinge_loss_term
    term = tl.where(valid, error * g, 0.0)
    partial, _ = tl.associative_scan((term, segment), 0, _segmented_add)
    tl.store(block_tail_ptr + block + lane * 0, partial, mask=lane == BLOCK - 1)
    tl.store(segment_tail_ptr + seg, partial, mask=valid & (rank == length - 1))


@triton.jit
def _segment_sums_kernel(
    block_tail_ptr,
    segment_tail_ptr,
    starts_ptr,
    lengths_ptr,
    losses_ptr,
    TERMS_BLOCK: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Program s: losses[s] = Σ block_tail over the blocks segment s starts in
    or runs through (block order), + segment_tail[s]; 0 when empty."""
    seg = tl.program_id(0).to(tl.int64)
    start = tl.load(starts_ptr + seg)
    length = tl.load(lengths_ptr + seg)
    first = start // TERMS_BLOCK
    last = tl.where(length > 0, (start + tl.maximum(length, 1) - 1) // TERMS_BLOCK, first)
    acc = tl.zeros((BLOCK,), losses_ptr.dtype.element_ty)
    for b0 in range(first, last, BLOCK):
        blocks = b0 + tl.arange(0, BLOCK)
        acc += tl.load(block_tail_ptr + blocks, mask=blocks < last, other=0)
    tail = tl.load(segment_tail_ptr + seg, mask=length > 0, other=0)
    tl.store(losses_ptr + seg, tl.sum(acc, axis=0) + tail)


@triton.jit
def _scatter_kernel(
    grad_losses_ptr,
    input_ptr,
    entries_ptr,
    cum_ptr,
    unit_ends_ptr,
    valid_counts_ptr,
    foreground_ptr,
    out_ptr,
    C,
    S,
    K,
    U,
    L,
    search_steps,
    KIND: tl.constexpr,
    ONE_CLASS: tl.constexpr,
    ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Program (BLOCK sorted positions): w·g·slope at each entry's element
    (kind 1: w·g, into the buffer out_ptr)."""
    position = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    in_range = position < L
    # unit = how many units end at or before the position (ends non-decreasing).
    lo = tl.zeros((BLOCK,), tl.int64)
    hi = tl.zeros((BLOCK,), tl.int64) + U
    for _ in range(search_steps):
        active = lo < hi
        mid = (lo + hi) // 2
        end = tl.load(unit_ends_ptr + mid, mask=active, other=0)
        right = active & (end <= position)
        lo = tl.where(right, mid + 1, lo)
        hi = tl.where(active & ~right, mid, hi)
    valid = in_range & (lo < U)
    unit = tl.where(valid, lo, 0)
    count = tl.load(valid_counts_ptr + unit)
    base = tl.load(unit_ends_ptr + unit) - K * count
    offset = position - base
    segment_class = offset // tl.maximum(count, 1)
    rank = offset - segment_class * count
    start = base + segment_class * count
    seg = tl.where(valid, unit * K + segment_class, 0)
    total_fg = tl.load(foreground_ptr + seg)
    w = tl.load(grad_losses_ptr + seg).to(ACC)
    entry = tl.load(entries_ptr + position, mask=valid, other=0)
    fg = entry < 0
    pixel = (entry & _MAGNITUDE32).to(tl.int64)
    fg_before = (
        tl.load(cum_ptr + position, mask=valid, other=0)
        - tl.load(cum_ptr + tl.where(valid, start, 0))
    ).to(tl.int64)
    wg = w * _lovasz_gradient(fg, fg_before, rank, total_fg, ACC)
    n = pixel // S
    s = pixel - n * S
    if ONE_CLASS:
        c = segment_class * 0
    else:
        c = segment_class
    element = (n * C + c) * S + s
    if KIND == 1:
        tl.store(out_ptr + element, wg, mask=valid)
    else:
        v = tl.load(input_ptr + element, mask=valid, other=0).to(ACC)
        if KIND == 0:
            grad = wg * _softmax_error_slope(v, fg)
        else:
            grad = wg * _hinge_error_slope(v, fg)
        tl.store(out_ptr + element, grad.to(out_ptr.dtype.element_ty), mask=valid)


@triton.jit(do_not_specialize=["ignore_index", "foreground_class"])
def _logits_backward_kernel(
    wg_ptr,
    input_ptr,
    labels_ptr,
    out_ptr,
    C,
    S,
    ignore_index,
    foreground_class,
    s_tiles,
    ONE_CLASS: tl.constexpr,
    HAS_IGNORE: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_S: tl.constexpr,
):
    """Program (image · s_tiles + pixel tile), kind 1: dp = w·g·softmax_error_slope(p, fg),
    then dx = p (dp − Σ p·dp) (C > 1) or dp·sigmoid_slope(x) (C == 1)."""
    pid = tl.program_id(0).to(tl.int64)
    n = pid // s_tiles
    s = (pid - n * s_tiles) * BLOCK_S + tl.arange(0, BLOCK_S)
    cs = tl.arange(0, BLOCK_C).to(tl.int64)
    c_ok = cs < C
    s_ok = s < S
    in_range = c_ok[:, None] & s_ok[None, :]
    element = (n * C + cs)[:, None] * S + s[None, :]
    x = tl.load(input_ptr + element, mask=in_range, other=0).to(COMPUTE_DTYPE)
    label = tl.load(labels_ptr + n * S + s, mask=s_ok, other=0)
    valid = s_ok
    if HAS_IGNORE:
        valid = valid & (label != ignore_index)
    valid = c_ok[:, None] & valid[None, :]
    fg = _is_foreground(label[None, :], cs[:, None], foreground_class, 1, ONE_CLASS)
    p = _probabilities(x, c_ok, 1, ONE_CLASS)
    wg = tl.load(wg_ptr + element, mask=valid, other=0).to(COMPUTE_DTYPE)
    dp = tl.where(valid, wg * _softmax_error_slope(p, fg), 0.0)
    if ONE_CLASS:
        dx = dp * _sigmoid_slope(x)
    else:
        dx = p * (dp - tl.sum(p * dp, axis=0)[None, :])
    dx = tl.where(valid, dx, 0.0)
    tl.store(out_ptr + element, dx.to(out_ptr.dtype.element_ty), mask=in_range)


# ----------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------


def _pixel_tiles(classes: int, pixels: int, dtype: torch.dtype) -> dict:
    """BLOCK_C (every class: the softmax is per pixel), BLOCK_S, num_warps:
    soft_dice's multiclass tiles."""
    return _tiles(classes, pixels, True, dtype)


def _sorted_block(total: int) -> int:
    """Sorted positions per program of the entries, terms and scatter kernels
    (8 warps: 4 a thread, about 75 registers on sm_90, 110 for float64)."""
    if interpreting():
        return min(4096, max(16, triton.next_power_of_2(total)))
    return 1024


def _sorted_launch(block: int) -> dict:
    return {} if interpreting() else dict(num_warps=max(1, min(8, block // 128)))


_SUMS_BLOCK = 256  # block tails per step of _segment_sums_kernel


def _foreground_scan(sorted_entries: torch.Tensor) -> torch.Tensor:
    """cum[p] = foreground entries before position p, cum [L + 1]."""
    total = sorted_entries.numel()
    dtype = torch.int32 if total < 2**31 - 1 else torch.int64
    cum = torch.empty(total + 1, dtype=dtype, device=sorted_entries.device)
    cum[:1].zero_()
    torch.cumsum(sorted_entries < 0, 0, dtype=dtype, out=cum[1:])
    return cum


def _valid_counts(labels: torch.Tensor, ignore_index: int | None, per_image: bool) -> torch.Tensor:
    n, s = labels.shape
    if ignore_index is None:
        return torch.full(
            (n if per_image else 1,),
            s if per_image else n * s,
            dtype=torch.int64,
            device=labels.device,
        )
    valid = labels != ignore_index
    return valid.sum(dim=1) if per_image else valid.sum().reshape(1)


def _flags(input: torch.Tensor, kind: int) -> dict:
    return dict(KIND=int(kind), ONE_CLASS=input.shape[1] == 1)


def lovasz_segments(
    input: torch.Tensor,
    labels: torch.Tensor,
    kind: int,
    ignore_index: int | None,
    per_image: bool,
    foreground_class: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Lovász segments of input ``[N, C, S]`` against labels int64 ``[N, S]``.

    Returns:
        losses ``[U, K]`` (float32, float64 for float64 input),
        foreground_counts int64 ``[U, K]``, valid_counts int64 ``[U]`` and
        sorted_entries int32 ``[N·S·K]`` (lovasz_math.h's pack_entry, each
        segment by decreasing error, ties by increasing pixel; the entries
        past K·Σ valid_counts are -1, kUnusedEntry).
    """
    n, c, s = input.shape
    k = 1 if kind == _HINGE else c
    units = n if per_image else 1
    uk = units * k
    total = n * s * k
    device = input.device
    acc = accumulate_dtype(input.dtype)
    if total == 0:
        return (
            torch.zeros((units, k), dtype=acc, device=device),
            torch.zeros((units, k), dtype=torch.int64, device=device),
            torch.zeros((units,), dtype=torch.int64, device=device),
            torch.zeros((total,), dtype=torch.int32, device=device),
        )
    flags = _flags(input, kind)
    ignore = 0 if ignore_index is None else int(ignore_index)
    wide = input.dtype == torch.float64
    keys = torch.empty(total, dtype=torch.int64, device=device)
    segments = None
    if wide:
        segments = torch.empty(
            total, dtype=torch.int32 if uk < 2**31 - 1 else torch.int64, device=device
        )
    tiles = _pixel_tiles(c, s, input.dtype)
    s_tiles = triton.cdiv(s, tiles["BLOCK_S"])
    _keys_kernel[(n * s_tiles,)](
        input, labels, keys, segments, c, s, n * s, k, uk, ignore, int(foreground_class), s_tiles,
        PER_IMAGE=bool(per_image), HAS_IGNORE=ignore_index is not None, WIDE_KEY=wide,
        COMPUTE_DTYPE=compute_dtype(input.dtype), **flags, **tiles, enable_fp_fusion=False,
    )  # fmt: skip
    if wide:
        keys, order = torch.sort(keys, stable=True)
        segments, by_segment = torch.sort(segments[order], stable=True)
        order = order[by_segment]
        keys = keys[by_segment]
        del by_segment
    else:
        keys, order = torch.sort(keys, stable=True)
    block = _sorted_block(total)
    blocks = triton.cdiv(total, block)
    sorted_entries = empty_output((total,), dtype=torch.int32, device=device)
    _entries_kernel[(blocks,)](
        order, labels, sorted_entries, n * s, total, ignore, int(foreground_class),
        HAS_IGNORE=ignore_index is not None, BLOCK=block, **flags, **_sorted_launch(block),
    )  # fmt: skip
    del order
    cum = _foreground_scan(sorted_entries)

    valid_counts = _valid_counts(labels, ignore_index, per_image)
    bases = k * (torch.cumsum(valid_counts, 0) - valid_counts)
    starts = (
        bases[:, None] + torch.arange(k, device=device)[None, :] * valid_counts[:, None]
    ).reshape(uk)
    lengths = valid_counts[:, None].expand(units, k).reshape(uk).contiguous()
    foreground_counts = (cum[starts + lengths] - cum[starts]).to(torch.int64)

    block_tail = torch.empty(blocks, dtype=acc, device=device)
    segment_tail = torch.empty(uk, dtype=acc, device=device)
    _terms_kernel[(blocks,)](
        keys, segments, sorted_entries, cum, starts, lengths, foreground_counts, block_tail,
        segment_tail, total, uk,
        HINGE=kind == _HINGE, WIDE_KEY=wide, ACC=compute_dtype(input.dtype), BLOCK=block, enable_fp_fusion=False,
        **_sorted_launch(block),
    )  # fmt: skip
    losses = empty_output((units, k), dtype=acc, device=device)
    _segment_sums_kernel[(uk,)](
        block_tail, segment_tail, starts, lengths, losses, TERMS_BLOCK=block, BLOCK=_SUMS_BLOCK
    )
    return losses, foreground_counts.view(units, k), valid_counts, sorted_entries


def lovasz_segments_backward(
    grad_losses: torch.Tensor,
    input: torch.Tensor,
    labels: torch.Tensor,
    foreground_counts: torch.Tensor,
    valid_counts: torch.Tensor,
    sorted_entries: torch.Tensor,
    kind: int,
    ignore_index: int | None,
    per_image: bool,
    foreground_class: int,
) -> torch.Tensor:
    """grad_input ``[N, C, S]`` (input's dtype) of lovasz_segments' losses for
    grad_losses ``[U, K]``; 0 at ignored pixels."""
    n, c, s = input.shape
    k = 1 if kind == _HINGE else c
    units = n if per_image else 1
    total = n * s * k
    if total == 0:
        return torch.zeros_like(input)
    device = input.device
    acc = accumulate_dtype(input.dtype)
    flags = _flags(input, kind)
    grad_losses = grad_losses.contiguous()
    foreground_counts = foreground_counts.contiguous()
    valid_counts = valid_counts.contiguous()
    cum = _foreground_scan(sorted_entries)
    unit_ends = k * torch.cumsum(valid_counts, 0)
    if kind == _SOFTMAX_LOGITS:
        target = torch.empty((n, c, s), dtype=acc, device=device)  # w·g, read where valid only
    else:
        target = torch.zeros_like(input)
    block = _sorted_block(total)
    _scatter_kernel[(triton.cdiv(total, block),)](
        grad_losses, input, sorted_entries, cum, unit_ends, valid_counts, foreground_counts, target,
        c, s, k, units, total, units.bit_length(),
        ACC=compute_dtype(input.dtype), BLOCK=block, enable_fp_fusion=False, **flags, **_sorted_launch(block),
    )  # fmt: skip
    if kind != _SOFTMAX_LOGITS:
        return target
    out = empty_output((n, c, s), dtype=input.dtype, device=device)
    tiles = _pixel_tiles(c, s, input.dtype)
    s_tiles = triton.cdiv(s, tiles["BLOCK_S"])
    _logits_backward_kernel[(n * s_tiles,)](
        target, input, labels, out, c, s, 0 if ignore_index is None else int(ignore_index),
        int(foreground_class), s_tiles,
        ONE_CLASS=flags["ONE_CLASS"], HAS_IGNORE=ignore_index is not None,
        COMPUTE_DTYPE=compute_dtype(input.dtype), enable_fp_fusion=False, **tiles,
    )  # fmt: skip
    return out
