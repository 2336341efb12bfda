"""Launch helpers shared by the Triton kernels."""

from __future__ import annotations

import os

import torch
import triton
import triton.language as tl


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    """The torch dtype kernels accumulate in: float64 for float64 data, else float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def compute_dtype(dtype: torch.dtype):
    """The Triton dtype kernels compute in: float64 for float64 data; float16 and
    bfloat16 are only loaded and stored, and computed in float32 (which the
    interpreter also gets right)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def block_size(total: int) -> int:
    """Elements per program: 1024 keeps a GPU's SMs full without tails; the
    interpreter pays per program, so it gets larger blocks."""
    if interpreting():
        return min(16384, max(1024, triton.next_power_of_2(total)))
    return 1024
