"""Test hook shared with the C++ kernels (csrc/common/poison.h): with
``FASTOPS_POISON_OUTPUTS=1`` set before fastops is imported, every output a
launcher allocates starts as NaN (all-ones bits for integer tensors), so an
element a kernel forgets to write fails the tests instead of passing by luck."""

from __future__ import annotations

import os

import torch

POISON_OUTPUTS = os.environ.get("FASTOPS_POISON_OUTPUTS", "") not in ("", "0")


def empty_output(
    shape,
    *,
    dtype: torch.dtype,
    device: torch.device,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """``torch.empty``, poisoned when the hook is on."""
    out = torch.empty(shape, dtype=dtype, device=device, memory_format=memory_format)
    if POISON_OUTPUTS and out.numel():
        out.fill_(float("nan") if out.is_floating_point() else -1)
    return out
