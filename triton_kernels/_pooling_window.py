"""Window geometry for the Triton pooling kernels: the Triton twin of
csrc/ops/pooling_window_math.h (see there for the vocabulary). Problems are
3-D (depth, height, width); 1-D and 2-D ones have leading sizes of 1."""

from __future__ import annotations

from dataclasses import dataclass

import triton
import triton.language as tl


@dataclass(frozen=True)
class PoolWindows:
    """Sizes padded to three spatial dims (leading ones are 1, kernel 1, stride 1, padding 0)."""

    windows: tuple[int, int, int]
    plane: tuple[int, int, int]
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]
    padding: tuple[int, int, int]

    @staticmethod
    def make(windows, plane, kernel, stride, padding) -> PoolWindows:
        lead = 3 - len(kernel)

        def pad(values, fill):
            return tuple([fill] * lead + [int(v) for v in values])

        return PoolWindows(
            pad(windows, 1), pad(plane, 1), pad(kernel, 1), pad(stride, 1), pad(padding, 0)
        )

    def every_window_meets_plane(self) -> bool:
        for n, p, k, s, pad in zip(
            self.windows, self.plane, self.kernel, self.stride, self.padding, strict=True
        ):
            if n and (k - pad <= 0 or (n - 1) * s - pad >= p):
                return False
        return True

    def max_covering(self) -> tuple[int, int, int]:
        """Per dim, the most windows that can cover one plane position: ceil(k / s)."""
        return tuple(
            min(-(-k // s), max(n, 1))
            for k, s, n in zip(self.kernel, self.stride, self.windows, strict=True)
        )

    def scalars(self) -> tuple[int, ...]:
        """The kernel arguments W0..W2, P0..P2, K0..K2, S0..S2, PAD0..PAD2."""
        return (*self.windows, *self.plane, *self.kernel, *self.stride, *self.padding)


@triton.jit
def decompose(e, C, S0, S1, S2, CHANNELS_LAST: tl.constexpr):
    """Coordinates of element e of a dense [N, C, S0, S1, S2] tensor (channels
    last: [N, S0, S1, S2, C]): spatial p0, p1, p2; outer (n*C + c, or n when
    channels-last) and channel (c, or 0)."""
    rest = e
    channel = e * 0
    if CHANNELS_LAST:
        channel = rest % C
        rest = rest // C
    p2 = rest % S2
    rest = rest // S2
    p1 = rest % S1
    rest = rest // S1
    p0 = rest % S0
    outer = rest // S0
    return p0, p1, p2, outer, channel


@triton.jit
def plane_base(outer, channel, volume, C, CHANNELS_LAST: tl.constexpr):
    """Offset of the first element of an (n, c) plane of `volume` positions."""
    base = outer * volume
    if CHANNELS_LAST:
        base = outer * volume * C + channel
    return base


@triton.jit
def covering_range(pos, windows, kernel, stride, padding):
    """Inclusive range [first, last] of windows whose span contains plane position pos."""
    shifted = pos + padding
    last = tl.minimum(shifted // stride, windows - 1)
    first = tl.where(shifted >= kernel, (shifted - kernel) // stride + 1, 0)
    return first, last


@triton.jit
def offset_target(offset, i0, i1, i2, P0, P1, P2, K0, K1, K2, S0, S1, S2, PAD0, PAD1, PAD2):
    """Plane-linear position named by int8 window offsets (int64 tensor), or -1."""
    valid = (offset >= 0) & (offset < K0 * K1 * K2)
    r2 = offset % K2
    rest = offset // K2
    r1 = rest % K1
    r0 = rest // K1
    q0 = i0 * S0 - PAD0 + r0
    q1 = i1 * S1 - PAD1 + r1
    q2 = i2 * S2 - PAD2 + r2
    valid = valid & (q0 >= 0) & (q0 < P0) & (q1 >= 0) & (q1 < P1) & (q2 >= 0) & (q2 < P2)
    return tl.where(valid, (q0 * P1 + q1) * P2 + q2, -1)
