"""What a benchmark case is: one operator call on one shape, the PyTorch
implementation it replaces, the fastops backends that run it, and the bytes it
must move at the least (the floor: bytes / device copy bandwidth) and, for
compute-bound operators, the useful floating-point operations it performs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import fastops


@dataclass
class Case:
    family: str  # "unpooling"
    op: str  # public fastops name, e.g. "max_unpool2d"
    name: str  # where the shape comes from, e.g. "SegNet up1"
    shape: str  # human-readable shape, e.g. "4x64x180x240 -> 360x480"
    dtype: torch.dtype
    direction: str  # "forward" or "forward+backward"
    variant: str  # e.g. "int64 indices" or "int8 offsets"
    min_bytes: int  # the bytes the call must read and write at the least
    reference: Callable[[], object]  # the PyTorch implementation replaced
    reference_name: str  # e.g. "F.max_unpool2d"
    run: Callable[[], object] = field(
        repr=False, default=None
    )  # the fastops call, on the active backend
    graph: bool = False  # also time inside a CUDA graph (small, launch-bound calls)
    flops: int = 0  # useful floating-point operations, for compute-bound ops (0: not counted)
    # Several forms of the reference (e.g. per memory layout): each is timed and the
    # fastest counts as the reference; None: `reference` alone.
    references: dict[str, Callable[[], object]] | None = field(repr=False, default=None)
    # Calls timed in the same run that bound the op from below (e.g. a key-value sort of as
    # many elements as the Lovász loss sorts); recorded per row, never counted as a reference.
    floors: dict[str, Callable[[], object]] | None = field(repr=False, default=None)
    runs: int | None = None  # CUDA timing runs, fewer for calls that take seconds


def on_backend(backend: str, fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run under ``fastops.use_backend(backend)``."""

    def run():
        with fastops.use_backend(backend):
            return fn()

    return run


def forward_backward(
    fn: Callable[[torch.Tensor], torch.Tensor], leaf: torch.Tensor, grad: torch.Tensor
):
    """A call that runs ``fn(leaf)`` and its backward with ``grad``."""
    leaf = leaf.detach().requires_grad_()

    def run():
        leaf.grad = None
        fn(leaf).backward(grad)

    return run
