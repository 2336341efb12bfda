"""Pooling geometry shared by the public functions, the fake kernels and the
Triton launchers: output sizes and the memory layout of outputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pooling_memory_format(t: torch.Tensor) -> torch.memory_format:
    """The layout fastops pooling kernels compute in and return: channels-last for a
    4-D/5-D tensor that is dense channels-last and not also plain contiguous
    (C == 1 or 1x1 planes are both), otherwise contiguous. Anything else (a slice)
    is copied to that layout first. The C++ kernels apply the same rule
    (csrc/ops/pooling_host.cpp)."""
    if t.dim() == 4:
        channels_last = torch.channels_last
    elif t.dim() == 5:
        channels_last = torch.channels_last_3d
    else:
        return torch.contiguous_format
    if t.is_contiguous(memory_format=channels_last) and not t.is_contiguous():
        return channels_last
    return torch.contiguous_format


def roi_memory_format(features) -> torch.memory_format:
    """The layout the RoI kernels compute in and return: channels-last when
    every feature map is (pooling_memory_format), otherwise contiguous. The C++
    kernels apply the same rule (csrc/ops/roi_ops.cpp)."""
    if all(pooling_memory_format(f) == torch.channels_last for f in features):
        return torch.channels_last
    return torch.contiguous_format


def pool_output_size(size: int, kernel: int, stride: int, padding: int, ceil_mode: bool) -> int:
    """Output length of max-pooling along one dimension, as ATen's pooling_output_shape."""
    numerator = size + 2 * padding - (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)
    out = numerator // stride + 1
    if ceil_mode and (out - 1) * stride >= size + padding:
        # The last window must start inside the input or its left padding.
        out -= 1
    return out


def default_unpool_size(size: int, kernel: int, stride: int, padding: int) -> int:
    """Output length of max-unpooling when no output_size is given."""
    return (size - 1) * stride + kernel - 2 * padding


def unpool_output_size(
    input_spatial: Sequence[int],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    padding: Sequence[int],
    output_size: Sequence[int] | None,
) -> list[int]:
    """torch.nn.functional._unpool_output_size, with its error messages."""
    dims = len(kernel_size)
    default = [
        default_unpool_size(input_spatial[d], kernel_size[d], stride[d], padding[d])
        for d in range(dims)
    ]
    if output_size is None:
        result = default
    else:
        output_size = [int(s) for s in output_size]
        if len(output_size) == dims + 2:
            output_size = output_size[2:]
        if len(output_size) != dims:
            raise ValueError(
                "output_size should be a sequence containing "
                f"{dims} or {dims + 2} elements, but it has a length of '{len(output_size)}'"
            )
        for d in range(dims):
            min_size = default[d] - stride[d]
            max_size = default[d] + stride[d]
            if not (min_size < output_size[d] < max_size):
                raise ValueError(
                    f'invalid output_size "{output_size}" (dim {d} must be between {min_size} and {max_size})'
                )
        result = output_size
    for d in range(dims):
        if result[d] < 0:
            raise ValueError(
                "max_unpooling: output_size must contain non-negative spatial "
                f"dimensions, but got output_size[{d}]={result[d]}"
            )
    return result


def invalid_unpool_index_message(
    bad_value: int, output_size: Sequence[int], offsets: bool, kernel_size: Sequence[int]
) -> str:
    """The error for an index that names no position of the output plane; the
    same text as the C++ kernels' (csrc/ops/max_unpool.cpp)."""
    plane = "x".join(str(s) for s in output_size)
    if offsets:
        window = "x".join(str(k) for k in kernel_size)
        volume = 1
        for k in kernel_size:
            volume *= k
        return (
            f"max_unpool: indices holds int8 window offset {bad_value}, which names no position of its "
            f"{window} window inside the output plane of size {plane} (offsets must lie in [0, {volume}) "
            "and point inside the output)"
        )
    numel = 1
    for s in output_size:
        numel *= s
    return (
        f"max_unpool: Found an invalid max index in indices: {bad_value} (output volumes are of size "
        f"{plane}, so indices must lie in [0, {numel}))"
    )
