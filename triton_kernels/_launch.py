"""Launch helpers shared by the Triton kernels."""

from __future__ import annotations

import os

import triton


def interpreting() -> bool:
    """Whether Triton runs kernels in its interpreter (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def block_size(total: int) -> int:
    """Elements per program: 1024 keeps a GPU's SMs full without tails; the
    interpreter pays per program, so it gets larger blocks."""
    if interpreting():
        return min(16384, max(1024, triton.next_power_of_2(total)))
    return 1024
