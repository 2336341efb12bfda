"""Triton transposed convolution (torch.nn.functional.conv_transpose2d), forward
and backward, as implicit GEMMs. Geometry as in fastops/_conv_transpose.py and
csrc/ops/conv_transpose_math.h.

Kernels:

* ``_forward_kernel``: phase (sub-pixel) decomposition. The outputs
  ``(qh + sh * jh, qw + sw * jw)`` of output phase ``(qh, qw)`` form a stride-1
  convolution of the input with the phase's taps (those with
  ``t * d == (q + p) mod s``: ``first_tap, first_tap + s / gcd(s, d), ...``,
  found in the kernel from the scalar geometry); tap ``t`` reads input
  ``j + phase_input_offset(q, t)``. A program computes a BLOCK_M x BLOCK_N tile
  (M = the phase's output pixels across the batch, N = output channels of one
  group) in one loop over (phase tap, BLOCK_K chunk of the group's input
  channels); only taps that fall off the input border are masked, no inserted
  zero is multiplied. One launch covers every phase and group; a phase without
  taps gets the bias (or 0), so every output is written. Kernel == stride
  (U-Net 2x2 s2) is one GEMM ``[N*H*W, C_in] x [C_in, C_out]`` per phase with
  interleaved stores. Bias and ReLU are applied in the epilogue.
* ``_grad_input_kernel``: grad_input is the ordinary strided convolution of
  grad_output, ``dx[n, ci, ih, iw] = sum over (th, tw, co) of
  g[n, co, ih*sh - ph + th*dh, iw*sw - pw + tw*dw] * w[ci, co, th, tw]``:
  M = input pixels, N = input channels of a group, K = taps x output channels.
* ``_grad_weight_kernel``: per (group, tap) tiles over (ci, co) of
  ``sum over (n, ih, iw) of x[n, ci, ih, iw] * g[n, co, oh, ow]``; the pixel
  reduction is split into a fixed number of chunks whose float32 (float64)
  partials are summed in a fixed order by the launcher: deterministic, no
  atomics.
* ``_grad_bias_kernel``: per-channel sums of grad_output over chunks of
  pixels, partials summed by the launcher as for the weight.

The backward kernels read grad_output through the forward's ReLU mask
(gradient only where ``output > 0``) when the forward fused one.

Products: ``tl.dot`` with float32 accumulation. float32 operands use TF32 only
when ``torch.backends.cuda.matmul.allow_tf32`` is set (otherwise the IEEE dot
is FMA code, given smaller tiles); float16/bfloat16 go to the tensor cores as
stored, except under ``TRITON_INTERPRET=1``, whose 16-bit arithmetic is wrong,
where they are converted to float32 first. float64 (triton 3.6/3.7 accept an
fp64 ``tl.dot`` but have no fp64 tensor-core path on sm90,
triton-lang/triton#5483) and groups with fewer than 8 channels on a channel
dimension of the GEMM (depthwise) use a broadcast multiply and sum in float64
(float32) instead: the same kernels, behind the MODE constexpr.

Tiles whose contiguous dimension is the pixels (NCHW: the index arithmetic
hides the contiguity from Triton) are loaded and stored transposed (PIX_FAST),
so that threads run along memory; channels-last tiles run along channels and
get vectorised loads.

Shapes: input ``[N, C_in, H, W]``, weight ``[C_in, C_out / groups, kH, kW]``,
bias ``[C_out]``, output ``[N, C_out, H_out, W_out]`` in the input's layout
(conv_memory_format: NCHW or channels-last); the kernels address every tensor
by its strides, so nothing is copied to another layout. The weight is
rearranged to ``[kH, kW, C_in, C_out / groups]`` per call (it is small).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from fastops._conv_transpose import conv_memory_format, output_length, tap_step
from fastops._poison import empty_output
from fastops.triton_kernels._launch import accumulate_dtype, compute_dtype, interpreting

# How a kernel multiplies its tiles (the MODE constexpr).
_DOT = 0  # tl.dot on the stored dtype (GPU)
_DOT_F32 = 1  # tl.dot on float32 operands (interpreter, 16-bit data)
_FMA = 2  # broadcast multiply and sum (float64, small channel groups)

# Groups narrower than this on a channel dimension of the GEMM go to _FMA
# (tl.dot would pad them to 16).
_MIN_DOT_WIDTH = 8

_GEOMETRY_ARGS = [
    "N",
    "H",
    "W",
    "OH",
    "OW",
    "KH",
    "KW",
    "SH",
    "SW",
    "PH",
    "PW",
    "DH",
    "DW",
    "STEP_H",
    "STEP_W",
    "DSTEP_H",
    "DSTEP_W",
    "m_tiles",
    "n_tiles",
    "chunk",
    "split",
]


# ----------------------------------------------------------------------------
# Device helpers
# ----------------------------------------------------------------------------


@triton.jit
def _index(v, WIDE: tl.constexpr):
    """Index arithmetic in int64 when some tensor or count needs it, else int32."""
    if WIDE:
        v = v.to(tl.int64)
    return v


@triton.jit
def _mma(acc, a, b, MODE: tl.constexpr, PRECISION: tl.constexpr):
    """acc + a @ b for a [M, K] and b [K, N] tile."""
    if MODE == 0:
        acc = tl.dot(a, b, acc, input_precision=PRECISION)
    elif MODE == 1:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    else:
        prod = a.to(acc.dtype)[:, :, None] * b.to(acc.dtype)[None, :, :]
        acc += tl.sum(prod, axis=1)
    return acc


@triton.jit
def _load_tile(ptr, rows, cols, row_ok, col_ok, ROWS_FAST: tl.constexpr):
    """tile[r, c] = ptr[rows[r] + cols[c]] (0 where masked). ROWS_FAST: the rows
    run along memory (NCHW pixels, whose contiguity the index arithmetic hides),
    so the tile is loaded transposed, threads running along the rows."""
    if ROWS_FAST:
        t = tl.load(
            ptr + cols[:, None] + rows[None, :], mask=col_ok[:, None] & row_ok[None, :], other=0
        )
        tile = tl.trans(t)
    else:
        tile = tl.load(
            ptr + rows[:, None] + cols[None, :], mask=row_ok[:, None] & col_ok[None, :], other=0
        )
    return tile


@triton.jit
def _store_tile(ptr, rows, cols, value, row_ok, col_ok, ROWS_FAST: tl.constexpr):
    """ptr[rows[r] + cols[c]] = value[r, c] where both masks hold."""
    if ROWS_FAST:
        tl.store(
            ptr + cols[:, None] + rows[None, :],
            tl.trans(value),
            mask=col_ok[:, None] & row_ok[None, :],
        )
    else:
        tl.store(ptr + rows[:, None] + cols[None, :], value, mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _masked_grad(
    g_ptr,
    y_ptr,
    g_rows,
    g_cols,
    y_rows,
    y_cols,
    row_ok,
    col_ok,
    RELU: tl.constexpr,
    ROWS_FAST: tl.constexpr,
):
    """A tile of grad_output, 0 where masked and, after a fused ReLU, where
    output <= 0 (NaN included, as threshold_backward)."""
    v = _load_tile(g_ptr, g_rows, g_cols, row_ok, col_ok, ROWS_FAST)
    if RELU:
        y = _load_tile(y_ptr, y_rows, y_cols, row_ok, col_ok, ROWS_FAST)
        v = tl.where(y > 0, v, tl.zeros_like(v))
    return v


@triton.jit
def _phase_taps(q, K, S, P, D, STEP):
    """Taps of output phase q along one axis (first_tap, phase_tap_count and
    phase_input_offset of the first tap): tap first + i * STEP reads input
    j + offset - i * (STEP * D / S) for output q + S * j."""
    r = (q + P) % S
    first = K
    for t in range(0, tl.minimum(STEP, K)):
        first = tl.where((first == K) & ((t * D) % S == r), t, first)
    count = tl.where(first < K, (K - 1 - first) // STEP + 1, 0)
    # An exact division for a tap of the phase (the numerator may be negative).
    offset = tl.where(first < K, (q + P - first * D) // S, 0)
    return first, count, offset


@triton.jit
def _phase_length(out, q, S):
    return tl.where(q >= out, 0, (out - q + S - 1) // S)


# ----------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------


@triton.jit(do_not_specialize=_GEOMETRY_ARGS)
def _forward_kernel(
    x_ptr,
    w_ptr,
    bias_ptr,
    out_ptr,
    N,
    H,
    W,
    OH,
    OW,
    C_IN,
    CIN_G,
    COUT_G,
    KH,
    KW,
    SH,
    SW,
    PH,
    PW,
    DH,
    DW,
    STEP_H,
    STEP_W,
    DSTEP_H,
    DSTEP_W,
    x_sn,
    x_sc,
    x_sh,
    x_sw,
    o_sn,
    o_sc,
    o_sh,
    o_sw,
    m_tiles,
    n_tiles,
    HAS_BIAS: tl.constexpr,
    RELU: tl.constexpr,
    MODE: tl.constexpr,
    PRECISION: tl.constexpr,
    ACC: tl.constexpr,
    WIDE: tl.constexpr,
    PIX_FAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Program (output channel tile fastest, pixel tile, phase, group) of
    out[n, g * COUT_G + co, qh + SH * jh, qw + SW * jw]; weight [KH, KW, C_IN, COUT_G]."""
    pid = tl.program_id(0)
    n_tile = pid % n_tiles
    rest = pid // n_tiles
    m_tile = rest % m_tiles
    gp = rest // m_tiles
    phase = gp % (SH * SW)
    g = _index(gp // (SH * SW), WIDE)
    qh = phase // SW
    qw = phase % SW
    LH = _phase_length(OH, qh, SH)
    LW = _phase_length(OW, qw, SW)
    M = _index(N, WIDE) * LH * LW
    if _index(m_tile, WIDE) * BLOCK_M >= M:
        return  # past the end of a shorter (or empty) phase
    first_h, count_h, off_h = _phase_taps(qh, KH, SH, PH, DH, STEP_H)
    first_w, count_w, off_w = _phase_taps(qw, KW, SW, PW, DW, STEP_W)

    m = _index(m_tile, WIDE) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < M
    jw = m % LW
    t = m // LW
    jh = t % LH
    n = t // LH
    x_base = n * x_sn + g * CIN_G * x_sc
    co = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co < COUT_G
    kk = tl.arange(0, BLOCK_K)

    k_chunks = tl.cdiv(CIN_G, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), ACC)
    # One loop over (tap of the phase, chunk of the group's input channels).
    for it in range(0, count_h * count_w * k_chunks):
        tap = it // k_chunks
        kc = it - tap * k_chunks
        i = tap // count_w
        j = tap - i * count_w
        th = first_h + i * STEP_H
        tw = first_w + j * STEP_W
        ih = jh + (off_h - i * DSTEP_H)
        iw = jw + (off_w - j * DSTEP_W)
        row_ok = m_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        k = kc * BLOCK_K + kk
        k_ok = k < CIN_G
        a = _load_tile(
            x_ptr, x_base + ih * x_sh + iw * x_sw, _index(k, WIDE) * x_sc, row_ok, k_ok, PIX_FAST
        )
        w_row = (_index(th * KW + tw, WIDE) * C_IN + g * CIN_G + k) * COUT_G
        b = _load_tile(w_ptr, w_row, co, k_ok, co_ok, False)
        acc = _mma(acc, a, b, MODE, PRECISION)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + g * COUT_G + co, mask=co_ok, other=0)
        acc += bias.to(ACC)[None, :]
    if RELU:
        acc = tl.where(acc < 0, 0.0, acc)  # NaN stays NaN, as torch.relu
    oh = qh + SH * jh
    ow = qw + SW * jw
    _store_tile(
        out_ptr,
        n * o_sn + oh * o_sh + ow * o_sw,
        (g * COUT_G + co) * o_sc,
        acc.to(out_ptr.dtype.element_ty),
        m_ok,
        co_ok,
        PIX_FAST,
    )


@triton.jit(do_not_specialize=_GEOMETRY_ARGS)
def _grad_input_kernel(
    g_ptr,
    y_ptr,
    w_ptr,
    gx_ptr,
    N,
    H,
    W,
    OH,
    OW,
    C_IN,
    CIN_G,
    COUT_G,
    KH,
    KW,
    SH,
    SW,
    PH,
    PW,
    DH,
    DW,
    g_sn,
    g_sc,
    g_sh,
    g_sw,
    y_sn,
    y_sc,
    y_sh,
    y_sw,
    x_sn,
    x_sc,
    x_sh,
    x_sw,
    m_tiles,
    n_tiles,
    RELU: tl.constexpr,
    MODE: tl.constexpr,
    PRECISION: tl.constexpr,
    ACC: tl.constexpr,
    WIDE: tl.constexpr,
    PIX_FAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Program (input channel tile fastest, pixel tile, group) of
    grad_x[n, g * CIN_G + ci, ih, iw]; K = (tap, output channel chunk)."""
    pid = tl.program_id(0)
    n_tile = pid % n_tiles
    rest = pid // n_tiles
    m_tile = rest % m_tiles
    g = _index(rest // m_tiles, WIDE)

    M = _index(N, WIDE) * H * W
    m = _index(m_tile, WIDE) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = m < M
    iw = m % W
    t = m // W
    ih = t % H
    n = t // H
    g_base = n * g_sn + g * COUT_G * g_sc
    y_base = n * y_sn + g * COUT_G * y_sc
    ci = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    ci_ok = ci < CIN_G
    kk = tl.arange(0, BLOCK_K)

    k_chunks = tl.cdiv(COUT_G, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), ACC)
    for it in range(0, KH * KW * k_chunks):
        tap = it // k_chunks
        kc = it - tap * k_chunks
        th = tap // KW
        tw = tap - th * KW
        oh = ih * SH + (th * DH - PH)
        ow = iw * SW + (tw * DW - PW)
        row_ok = m_ok & (oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW)
        k = kc * BLOCK_K + kk
        k_ok = k < COUT_G
        k_at = _index(k, WIDE)
        a = _masked_grad(
            g_ptr,
            y_ptr,
            g_base + oh * g_sh + ow * g_sw,
            k_at * g_sc,
            y_base + oh * y_sh + ow * y_sw,
            k_at * y_sc,
            row_ok,
            k_ok,
            RELU,
            PIX_FAST,
        )
        # b[co, ci] = weight[g * CIN_G + ci, co, th, tw], contiguous along co
        w_col = (_index(tap, WIDE) * C_IN + g * CIN_G + ci) * COUT_G
        b = _load_tile(w_ptr, k, w_col, k_ok, ci_ok, True)
        acc = _mma(acc, a, b, MODE, PRECISION)
    _store_tile(
        gx_ptr,
        n * x_sn + ih * x_sh + iw * x_sw,
        (g * CIN_G + ci) * x_sc,
        acc.to(gx_ptr.dtype.element_ty),
        m_ok,
        ci_ok,
        PIX_FAST,
    )


@triton.jit(do_not_specialize=_GEOMETRY_ARGS)
def _grad_weight_kernel(
    x_ptr,
    g_ptr,
    y_ptr,
    part_ptr,
    N,
    H,
    W,
    OH,
    OW,
    C_IN,
    CIN_G,
    COUT_G,
    KH,
    KW,
    SH,
    SW,
    PH,
    PW,
    DH,
    DW,
    x_sn,
    x_sc,
    x_sh,
    x_sw,
    g_sn,
    g_sc,
    g_sh,
    g_sw,
    y_sn,
    y_sc,
    y_sh,
    y_sw,
    chunk,
    split,
    m_tiles,
    n_tiles,
    RELU: tl.constexpr,
    MODE: tl.constexpr,
    PRECISION: tl.constexpr,
    ACC: tl.constexpr,
    WIDE: tl.constexpr,
    PIX_FAST: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """Program (output channel tile fastest, input channel tile, pixel chunk,
    tap, group): partial[s, th, tw, g * CIN_G + ci, co] = sum over the chunk's
    input pixels (n, ih, iw) of x[n, ci, ih, iw] * g[n, co, oh, ow]."""
    pid = tl.program_id(0)
    n_tile = pid % n_tiles
    rest = pid // n_tiles
    m_tile = rest % m_tiles
    rest = rest // m_tiles
    s = rest % split
    rest = rest // split
    tap = rest % (KH * KW)
    g = _index(rest // (KH * KW), WIDE)
    th = tap // KW
    tw = tap - th * KW

    ci = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    ci_ok = ci < CIN_G
    co = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    co_ok = co < COUT_G
    x_chan = (g * CIN_G + ci) * x_sc
    g_chan = (g * COUT_G + co) * g_sc
    y_chan = (g * COUT_G + co) * y_sc
    kk = tl.arange(0, BLOCK_K)

    P = _index(N, WIDE) * H * W
    start = _index(s, WIDE) * chunk
    end = tl.minimum(start + chunk, P)
    acc = tl.zeros((BLOCK_M, BLOCK_N), ACC)
    for p0 in range(start, end, BLOCK_K):
        p = p0 + kk
        iw = p % W
        q = p // W
        ih = q % H
        n = q // H
        oh = ih * SH + (th * DH - PH)
        ow = iw * SW + (tw * DW - PW)
        ok = (p < end) & (oh >= 0) & (oh < OH) & (ow >= 0) & (ow < OW)
        a = _load_tile(x_ptr, x_chan, n * x_sn + ih * x_sh + iw * x_sw, ci_ok, ok, not PIX_FAST)
        b = _masked_grad(
            g_ptr,
            y_ptr,
            n * g_sn + oh * g_sh + ow * g_sw,
            g_chan,
            n * y_sn + oh * y_sh + ow * y_sw,
            y_chan,
            ok,
            co_ok,
            RELU,
            PIX_FAST,
        )
        acc = _mma(acc, a, b, MODE, PRECISION)
    row = ((_index(s, WIDE) * KH * KW + tap) * C_IN + g * CIN_G + ci) * COUT_G
    tl.store(
        part_ptr + row[:, None] + co[None, :],
        acc,
        mask=ci_ok[:, None] & co_ok[None, :],
    )


@triton.jit(do_not_specialize=["N", "C", "OH", "OW", "chunk", "n_tiles"])
def _grad_bias_kernel(
    g_ptr,
    y_ptr,
    part_ptr,
    N,
    C,
    OH,
    OW,
    g_sn,
    g_sc,
    g_sh,
    g_sw,
    y_sn,
    y_sc,
    y_sh,
    y_sw,
    chunk,
    n_tiles,
    RELU: tl.constexpr,
    ACC: tl.constexpr,
    WIDE: tl.constexpr,
    PIX_FAST: tl.constexpr,
    BLOCK_P: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Program (channel tile fastest, pixel chunk): partial[s, c] = sum of the
    (masked) grad_output over the chunk's pixels (n, oh, ow)."""
    pid = tl.program_id(0)
    c_tile = pid % n_tiles
    s = pid // n_tiles
    c = c_tile * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    g_chan = _index(c, WIDE) * g_sc
    y_chan = _index(c, WIDE) * y_sc
    kk = tl.arange(0, BLOCK_P)
    P = _index(N, WIDE) * OH * OW
    start = _index(s, WIDE) * chunk
    end = tl.minimum(start + chunk, P)
    acc = tl.zeros((BLOCK_P, BLOCK_C), ACC)
    for p0 in range(start, end, BLOCK_P):
        p = p0 + kk
        ow = p % OW
        q = p // OW
        oh = q % OH
        n = q // OH
        v = _masked_grad(
            g_ptr,
            y_ptr,
            n * g_sn + oh * g_sh + ow * g_sw,
            g_chan,
            n * y_sn + oh * y_sh + ow * y_sw,
            y_chan,
            p < end,
            c_ok,
            RELU,
            PIX_FAST,
        )
        acc += v.to(ACC)
    tl.store(part_ptr + _index(s, WIDE) * C + c, tl.sum(acc, axis=0), mask=c_ok)


# ----------------------------------------------------------------------------
# Launch configuration
# ----------------------------------------------------------------------------

# Offsets stay in int32 below this many elements per tensor (with room for the
# masked lanes' out-of-range offsets).
_INT32_LIMIT = 2**30


def _wide(*counts: int) -> bool:
    return max(counts) >= _INT32_LIMIT


def _np2(v: int) -> int:
    return triton.next_power_of_2(max(1, v))


def _clamp(v: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, v))


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _programs_target(device: torch.device) -> int:
    """About two waves of programs (used to size split reductions)."""
    if interpreting() or device.type != "cuda":
        return 1
    index = device.index if device.index is not None else torch.cuda.current_device()
    return 2 * _sm_count(index)


def _mode(dtype: torch.dtype, n_width: int, k_width: int) -> int:
    if dtype == torch.float64 or min(n_width, k_width) < _MIN_DOT_WIDTH:
        return _FMA
    if interpreting() and dtype != torch.float32:
        return _DOT_F32
    return _DOT


def _precision(dtype: torch.dtype) -> str:
    if dtype == torch.float32 and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return "ieee"


def _is_16bit(dtype: torch.dtype) -> bool:
    return dtype in (torch.float16, torch.bfloat16)


def _tensor_cores(dtype: torch.dtype) -> bool:
    """Whether tl.dot runs on tensor cores (an IEEE float32 dot is FMA code,
    which needs smaller tiles to stay in registers)."""
    return _is_16bit(dtype) or _precision(dtype) == "tf32"


def _gemm_config(m_rows: int, n_width: int, k_width: int, dtype: torch.dtype) -> dict:
    """Tiles of the forward and grad_input GEMMs: M = pixels (large), N and K
    = channels of a group (K also runs over taps)."""
    mode = _mode(dtype, n_width, k_width)
    if interpreting():
        if mode == _FMA:
            bn, bk = min(_np2(n_width), 16), min(_np2(k_width), 16)
        else:
            bn, bk = _clamp(_np2(n_width), 16, 64), _clamp(_np2(k_width), 16, 64)
        bm = _clamp(_np2(m_rows), 16, 128)
        return dict(MODE=mode, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=4)
    if mode == _FMA:
        bn, bk = min(_np2(n_width), 16), min(_np2(k_width), 8)
        budget = 2048 if dtype == torch.float64 else 4096
        bm = _clamp(budget // (bn * bk), 32, 512)
        return dict(MODE=mode, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=4, num_stages=2)
    if not _tensor_cores(dtype):
        bn, bk = _clamp(_np2(n_width), 16, 64), 16
        return dict(MODE=mode, BLOCK_M=64, BLOCK_N=bn, BLOCK_K=bk, num_warps=4, num_stages=2)
    bn = _clamp(_np2(n_width), 16, 128)
    bk = _clamp(_np2(k_width), 16, 64 if _is_16bit(dtype) else 32)
    return dict(
        MODE=mode,
        BLOCK_M=128,
        BLOCK_N=bn,
        BLOCK_K=bk,
        num_warps=8 if bn >= 128 else 4,
        num_stages=3,
    )


def _wgrad_config(ci: int, co: int, pixels: int, dtype: torch.dtype) -> dict:
    """Tiles of the grad_weight GEMM: M = input channels, N = output channels
    of a group, K = input pixels (the split reduction)."""
    mode = _mode(dtype, co, ci)
    if interpreting():
        if mode == _FMA:
            bm, bn = min(_np2(ci), 16), min(_np2(co), 16)
            bk = _clamp(_np2(pixels), 16, 64)
        else:
            bm, bn = _clamp(_np2(ci), 16, 64), _clamp(_np2(co), 16, 64)
            bk = _clamp(_np2(pixels), 16, 128)
        return dict(MODE=mode, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=4)
    if mode == _FMA:
        bm, bn = min(_np2(ci), 16), min(_np2(co), 16)
        budget = 2048 if dtype == torch.float64 else 4096
        bk = _clamp(budget // (bm * bn), 8, 512)
        return dict(MODE=mode, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=4, num_stages=2)
    if not _tensor_cores(dtype):
        bm, bn = _clamp(_np2(ci), 16, 64), _clamp(_np2(co), 16, 64)
        return dict(MODE=mode, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=16, num_warps=4, num_stages=2)
    bm = _clamp(_np2(ci), 16, 128)
    bn = _clamp(_np2(co), 16, 128)
    bk = 32
    return dict(
        MODE=mode,
        BLOCK_M=bm,
        BLOCK_N=bn,
        BLOCK_K=bk,
        num_warps=8 if bm * bn >= 128 * 128 else 4,
        num_stages=3,
    )


def _split(total: int, block: int, programs: int, device: torch.device) -> tuple[int, int]:
    """(chunk, split): the reduction over `total` elements cut into `split`
    chunks of `chunk` (a multiple of `block`) so that about two waves of
    programs run; a fixed function of the shape, so the sums are deterministic."""
    if interpreting():
        split = min(2, triton.cdiv(total, block))
    else:
        split = triton.cdiv(_programs_target(device), max(1, programs))
        split = _clamp(split, 1, min(64, triton.cdiv(total, 8 * block)))
    chunk = triton.cdiv(triton.cdiv(total, split), block) * block
    return chunk, triton.cdiv(total, chunk)


# ----------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------


def _pair(op: str, name: str, values, minimum: int) -> tuple[int, int]:
    values = [int(v) for v in values]
    if len(values) != 2 or any(v < minimum or v > 2**31 - 1 for v in values):
        kind = "positive" if minimum > 0 else "non-negative"
        raise RuntimeError(f"{op}: {name} must have 2 entries and be {kind}, got {values}")
    return values[0], values[1]


def _check(op: str, input: torch.Tensor, weight: torch.Tensor, groups: int) -> None:
    if input.dim() != 4:
        raise RuntimeError(f"{op}: input must be [N, C_in, H, W], got shape {list(input.shape)}")
    if weight.dim() != 4:
        raise RuntimeError(
            f"{op}: weight must be [C_in, C_out / groups, kH, kW], got shape {list(weight.shape)}"
        )
    if groups <= 0:
        raise RuntimeError(f"{op}: groups must be positive, got {groups}")
    if input.shape[1] != weight.shape[0]:
        raise RuntimeError(
            f"{op}: input has {input.shape[1]} channels but weight expects {weight.shape[0]} (its first dimension)"
        )
    if input.shape[1] % groups:
        raise RuntimeError(
            f"{op}: in_channels ({input.shape[1]}) must be divisible by groups ({groups})"
        )
    if weight.shape[2] <= 0 or weight.shape[3] <= 0:
        raise RuntimeError(
            f"{op}: weight must have a positive kernel size, got {list(weight.shape)}"
        )


def _strides(t: torch.Tensor) -> tuple[int, int, int, int]:
    return tuple(int(v) for v in t.stride())


def _weight_taps_first(weight: torch.Tensor) -> torch.Tensor:
    """[C_in, C_out / groups, kH, kW] -> contiguous [kH, kW, C_in, C_out / groups]."""
    return weight.permute(2, 3, 0, 1).contiguous()


def conv_transpose(
    input: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    output_padding: list[int],
    groups: int,
    dilation: list[int],
    relu: bool,
) -> torch.Tensor:
    """input ``[N, C_in, H, W]``, weight ``[C_in, C_out / groups, kH, kW]``, bias
    ``[C_out]`` or None -> ``[N, C_out, H_out, W_out]`` in the input's layout,
    ``relu(conv_transpose2d(...) + bias)`` when ``relu``."""
    op = "conv_transpose"
    _check(op, input, weight, groups)
    sh, sw = _pair(op, "stride", stride, 1)
    ph, pw = _pair(op, "padding", padding, 0)
    dh, dw = _pair(op, "dilation", dilation, 1)
    oph, opw = _pair(op, "output_padding", output_padding, 0)
    if oph >= max(sh, dh) or opw >= max(sw, dw):
        raise RuntimeError(
            f"{op}: output_padding must be smaller than either stride or dilation, got output_padding {[oph, opw]}"
        )
    n, c_in, h, w = input.shape
    _, cout_g, kh, kw = weight.shape
    c_out = cout_g * groups
    oh = output_length(h, kh, sh, ph, dh, oph)
    ow = output_length(w, kw, sw, pw, dw, opw)
    if oh <= 0 or ow <= 0:
        raise RuntimeError(f"{op}: the output size ({oh}x{ow}) is not positive for input {h}x{w}")
    if bias is not None and (bias.dim() != 1 or bias.shape[0] != c_out):
        raise RuntimeError(
            f"{op}: bias must be [{c_out}] (out_channels), got shape {list(bias.shape)}"
        )
    memory_format = conv_memory_format(input)
    input = input.contiguous(memory_format=memory_format)
    out = empty_output(
        (n, c_out, oh, ow), dtype=input.dtype, device=input.device, memory_format=memory_format
    )
    if out.numel() == 0:
        return out
    if input.numel() == 0:
        # No input channels (or pixels): only the bias reaches the output.
        if bias is None:
            out.zero_()
        else:
            out.copy_(bias.view(1, c_out, 1, 1).expand_as(out))
            if relu:
                out.relu_()
        return out

    cin_g = c_in // groups
    w_t = _weight_taps_first(weight)
    phase_rows = n * triton.cdiv(oh, sh) * triton.cdiv(ow, sw)  # phase (0, 0) is the longest
    cfg = _gemm_config(phase_rows, cout_g, cin_g, input.dtype)
    m_tiles = triton.cdiv(phase_rows, cfg["BLOCK_M"])
    n_tiles = triton.cdiv(cout_g, cfg["BLOCK_N"])
    step_h, step_w = tap_step(sh, dh), tap_step(sw, dw)
    grid = (n_tiles * m_tiles * sh * sw * groups,)
    _forward_kernel[grid](
        input, w_t, bias if bias is not None else out, out,
        n, h, w, oh, ow, c_in, cin_g, cout_g, kh, kw, sh, sw, ph, pw, dh, dw,
        step_h, step_w, step_h * dh // sh, step_w * dw // sw,
        *_strides(input), *_strides(out), m_tiles, n_tiles,
        HAS_BIAS=bias is not None, RELU=bool(relu), PRECISION=_precision(input.dtype),
        ACC=compute_dtype(input.dtype), WIDE=_wide(input.numel(), out.numel(), w_t.numel()),
        PIX_FAST=memory_format != torch.channels_last,
        **cfg,
    )  # fmt: skip
    return out


def conv_transpose_backward(
    grad_output: torch.Tensor,
    input: torch.Tensor,
    weight: torch.Tensor,
    output: torch.Tensor | None,
    stride: list[int],
    padding: list[int],
    groups: int,
    dilation: list[int],
    output_mask: list[bool],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """grad_output ``[N, C_out, H_out, W_out]`` -> (grad_input in the input's shape
    and layout, grad_weight contiguous in the weight's shape, grad_bias
    ``[C_out]``); ``output`` is the forward result of a fused ReLU (the gradient
    passes where it is > 0) or None. Gradients not in ``output_mask`` come back as
    empty ``[0]`` tensors."""
    op = "conv_transpose_backward"
    _check(op, input, weight, groups)
    sh, sw = _pair(op, "stride", stride, 1)
    ph, pw = _pair(op, "padding", padding, 0)
    dh, dw = _pair(op, "dilation", dilation, 1)
    n, c_in, h, w = input.shape
    _, cout_g, kh, kw = weight.shape
    c_out = cout_g * groups
    cin_g = c_in // groups
    if grad_output.dim() != 4 or grad_output.shape[0] != n or grad_output.shape[1] != c_out:
        raise RuntimeError(
            f"{op}: grad_output must be [{n}, {c_out}, H_out, W_out], got shape {list(grad_output.shape)}"
        )
    oh, ow = grad_output.shape[2], grad_output.shape[3]
    extra_h = oh - output_length(h, kh, sh, ph, dh, 0)
    extra_w = ow - output_length(w, kw, sw, pw, dw, 0)
    if not (0 <= extra_h < max(sh, dh) and 0 <= extra_w < max(sw, dw)):
        raise RuntimeError(
            f"{op}: output_padding must be smaller than either stride or dilation, got output_padding {[extra_h, extra_w]}"
        )
    if output is not None and output.shape != grad_output.shape:
        raise RuntimeError(
            f"{op}: output must have the shape of grad_output {list(grad_output.shape)}, got {list(output.shape)}"
        )
    memory_format = conv_memory_format(input)
    input = input.contiguous(memory_format=memory_format)
    grad_output = grad_output.contiguous(memory_format=memory_format)
    relu = output is not None
    y = output.contiguous(memory_format=memory_format) if relu else grad_output
    dtype, device = input.dtype, input.device
    acc_dtype = accumulate_dtype(dtype)
    precision = _precision(dtype)
    wide = _wide(input.numel(), grad_output.numel())
    pix_fast = memory_format != torch.channels_last
    common = dict(
        RELU=relu, PRECISION=precision, ACC=compute_dtype(dtype), WIDE=wide, PIX_FAST=pix_fast
    )

    def none() -> torch.Tensor:
        return torch.empty(0, dtype=dtype, device=device)

    grad_input = grad_weight = grad_bias = None
    if output_mask[0]:
        grad_input = empty_output(
            input.shape, dtype=dtype, device=device, memory_format=memory_format
        )
        if grad_input.numel() and (c_out == 0 or grad_output.numel() == 0):
            grad_input.zero_()
        elif grad_input.numel():
            w_t = _weight_taps_first(weight)
            cfg = _gemm_config(n * h * w, cin_g, cout_g, dtype)
            m_tiles = triton.cdiv(n * h * w, cfg["BLOCK_M"])
            n_tiles = triton.cdiv(cin_g, cfg["BLOCK_N"])
            _grad_input_kernel[(n_tiles * m_tiles * groups,)](
                grad_output, y, w_t, grad_input,
                n, h, w, oh, ow, c_in, cin_g, cout_g, kh, kw, sh, sw, ph, pw, dh, dw,
                *_strides(grad_output), *_strides(y), *_strides(grad_input), m_tiles, n_tiles,
                **common, **cfg,
            )  # fmt: skip

    if output_mask[1]:
        pixels = n * h * w
        if weight.numel() == 0 or pixels == 0 or grad_output.numel() == 0:
            grad_weight = torch.zeros(weight.shape, dtype=dtype, device=device)
        else:
            cfg = _wgrad_config(cin_g, cout_g, pixels, dtype)
            m_tiles = triton.cdiv(cin_g, cfg["BLOCK_M"])
            n_tiles = triton.cdiv(cout_g, cfg["BLOCK_N"])
            programs = n_tiles * m_tiles * kh * kw * groups
            chunk, split = _split(pixels, cfg["BLOCK_K"], programs, device)
            partial = empty_output((split, kh, kw, c_in, cout_g), dtype=acc_dtype, device=device)
            _grad_weight_kernel[(programs * split,)](
                input, grad_output, y, partial,
                n, h, w, oh, ow, c_in, cin_g, cout_g, kh, kw, sh, sw, ph, pw, dh, dw,
                *_strides(input), *_strides(grad_output), *_strides(y),
                chunk, split, m_tiles, n_tiles,
                **{**common, "WIDE": _wide(input.numel(), grad_output.numel(), partial.numel())},
                **cfg,
            )  # fmt: skip
            summed = partial[0] if split == 1 else partial.sum(dim=0)
            grad_weight = summed.permute(2, 3, 0, 1).to(dtype).contiguous()

    if output_mask[2]:
        pixels = n * oh * ow
        if c_out == 0 or pixels == 0:
            grad_bias = torch.zeros(c_out, dtype=dtype, device=device)
        else:
            if interpreting():
                block_c = min(_np2(c_out), 64)
                block_p = _clamp(_np2(pixels), 16, 256)
            else:
                block_c, block_p = min(_np2(c_out), 32), 128
            c_tiles = triton.cdiv(c_out, block_c)
            chunk, split = _split(pixels, block_p, c_tiles, device)
            partial = empty_output((split, c_out), dtype=acc_dtype, device=device)
            _grad_bias_kernel[(c_tiles * split,)](
                grad_output, y, partial, n, c_out, oh, ow,
                *_strides(grad_output), *_strides(y), chunk, c_tiles,
                RELU=relu, ACC=compute_dtype(dtype),
                WIDE=_wide(grad_output.numel(), partial.numel()), PIX_FAST=pix_fast,
                BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4,
            )  # fmt: skip
            summed = partial[0] if split == 1 else partial.sum(dim=0)
            grad_bias = summed.to(dtype)

    return (
        grad_input if grad_input is not None else none(),
        grad_weight if grad_weight is not None else none(),
        grad_bias if grad_bias is not None else none(),
    )
