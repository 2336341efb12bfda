"""Transposed-convolution geometry shared by the public functions, the fake
kernels, the reference and the Triton launchers. The C++ kernels use the same
rules (csrc/ops/conv_transpose_math.h).

Along one axis with input length ``in``, kernel ``k``, stride ``s``, padding
``p``, dilation ``d`` and output padding ``op``: ``out = (in - 1) * s - 2 * p +
d * (k - 1) + op + 1``, and output ``o`` sums the taps ``t`` with ``o = i * s -
p + t * d`` for an input ``i`` in ``[0, in)``. Output ``o`` sees only the taps
with ``t * d == (o + p) mod s`` (its phase); the outputs ``o = q + s * j`` of
output phase ``q`` form a stride-1 convolution in which tap ``t`` reads input
``j + phase_input_offset(q, t)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from fastops._pooling import pooling_memory_format


def output_length(
    size: int, kernel: int, stride: int, padding: int, dilation: int, output_padding: int
) -> int:
    return (size - 1) * stride - 2 * padding + dilation * (kernel - 1) + output_padding + 1


def tap_step(stride: int, dilation: int) -> int:
    """Distance between consecutive taps of one phase."""
    return stride // math.gcd(stride, dilation)


def first_tap(residue: int, kernel: int, stride: int, dilation: int) -> int:
    """The smallest tap t with ``t * dilation == residue (mod stride)``, or ``kernel``
    when the phase has none."""
    for t in range(min(tap_step(stride, dilation), kernel)):
        if (t * dilation) % stride == residue:
            return t
    return kernel


def phase_taps(phase: int, kernel: int, stride: int, padding: int, dilation: int) -> list[int]:
    """The taps of output phase ``phase`` in [0, stride), ascending."""
    first = first_tap((phase + padding) % stride, kernel, stride, dilation)
    return list(range(first, kernel, tap_step(stride, dilation)))


def phase_length(out: int, phase: int, stride: int) -> int:
    """Number of outputs ``o = phase + stride * j`` in [0, out)."""
    return 0 if phase >= out else (out - phase + stride - 1) // stride


def phase_input_offset(phase: int, tap: int, stride: int, padding: int, dilation: int) -> int:
    """Output ``phase + stride * j`` reads input ``j + offset`` through ``tap`` (exact)."""
    numerator = phase + padding - tap * dilation
    assert numerator % stride == 0, "tap is not in this phase"
    return numerator // stride


def conv_memory_format(input: torch.Tensor) -> torch.memory_format:
    """The layout the kernels compute in and return: the input's
    (pooling_memory_format: channels-last when dense channels-last and not also
    contiguous)."""
    return pooling_memory_format(input)


def output_padding_for_size(
    input_size: Sequence[int],
    output_size: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    dilation: Sequence[int],
) -> list[int]:
    """The output_padding that gives ``output_size`` (the spatial sizes, or with the
    leading batch/channel sizes), as ``torch.nn.ConvTranspose*d`` computes it from
    ``forward(input, output_size)``; raises ``ValueError`` for an impossible size."""
    dims = len(kernel_size)
    output_size = list(output_size)
    if len(output_size) == dims + 2:
        output_size = output_size[2:]
    if len(output_size) != dims:
        raise ValueError(
            f"output_size must have {dims} or {dims + 2} elements (got {len(output_size)})"
        )
    spatial = list(input_size)[-dims:]
    smallest = [
        output_length(spatial[d], kernel_size[d], stride[d], padding[d], dilation[d], 0)
        for d in range(dims)
    ]
    largest = [smallest[d] + stride[d] - 1 for d in range(dims)]
    for d in range(dims):
        if not smallest[d] <= output_size[d] <= largest[d]:
            raise ValueError(
                f"requested an output size of {output_size}, but valid sizes range from "
                f"{smallest} to {largest} (for an input of {spatial})"
            )
    return [output_size[d] - smallest[d] for d in range(dims)]
