"""Which implementation ("backend") of an operator a call runs.

Every fastops operator has up to four backends:

=============  ===========================================  ==========================
``cuda``       CUDA C++ kernels in ``fastops._C``           CUDA tensors
``triton``     Triton kernels (``fastops.triton_kernels``)  CUDA tensors; CPU tensors
                                                            only under ``TRITON_INTERPRET=1``
``cpu``        C++ kernels in ``fastops._C``                CPU tensors
``reference``  plain PyTorch (``fastops.reference``)        any device
=============  ===========================================  ==========================

A call uses, in this order of precedence: the innermost :func:`use_backend`
context, then :func:`set_backend`, then the ``FASTOPS_BACKEND`` environment
variable (read once, at import), then ``"auto"``. ``"auto"`` takes, per
operator and device type, the first backend that can run from the table in
``fastops/auto_backends.json``, which is ordered by measured speed and names the
benchmark results that justify it. Asking for a backend that cannot run the
call raises :class:`BackendUnavailableError` saying why and what can run; a
call never falls back silently.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import torch

from fastops import _library

BACKENDS: tuple[str, ...] = ("cuda", "triton", "cpu", "reference")
AUTO = "auto"

# Operators with backends, by the name of their schema in torch.ops.fastops.
OPERATORS: tuple[str, ...] = (
    "max_unpool",
    "max_pool_with_offsets",
    "nms",
    "batched_nms",
    "nms_padded",
    "soft_nms",
    "box_iou",
    "roi_align",
    "multi_scale_roi_align",
    "roi_pool",
    "conv_transpose",
    "soft_dice_statistics",
    "lovasz_segments",
)

_AUTO_TABLE_PATH = Path(__file__).with_name("auto_backends.json")


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run this operator on this device."""


def _check_name(name: str) -> str:
    if not isinstance(name, str) or name not in (*BACKENDS, AUTO):
        raise ValueError(f"unknown fastops backend {name!r}; choose one of {[*BACKENDS, AUTO]}")
    return name


def _env_backend() -> str | None:
    name = os.environ.get("FASTOPS_BACKEND", "").strip()
    if not name:
        return None
    try:
        return _check_name(name)
    except ValueError as error:
        raise ValueError(f"FASTOPS_BACKEND={name!r}: {error}") from None


_global_backend: str | None = _env_backend()
# Per-thread stack of use_backend() contexts; torch.compile can trace through
# threading.local reads (not through contextvars) and guards on their values.
_context = threading.local()


def set_backend(name: str) -> None:
    """Sets the backend of every later call (outside :func:`use_backend` contexts).

    ``name`` is one of ``"cuda"``, ``"triton"``, ``"cpu"``, ``"reference"`` or ``"auto"``.
    """
    global _global_backend
    _global_backend = _check_name(name)


def get_backend() -> str:
    """The backend name that applies to calls made here and now (possibly ``"auto"``)."""
    stack = getattr(_context, "stack", None)
    if stack:
        return stack[-1]
    return _global_backend or AUTO


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Runs the calls inside the ``with`` block on backend ``name`` (this thread only).

    Example::

        with fastops.use_backend("triton"):
            y = fastops.ops.max_unpool2d(x, indices, 2)
    """
    _check_name(name)
    stack = getattr(_context, "stack", None)
    if stack is None:
        stack = _context.stack = []
    stack.append(name)
    try:
        yield
    finally:
        stack.pop()


def _load_auto_table() -> dict[str, dict[str, list[str]]]:
    table = json.loads(_AUTO_TABLE_PATH.read_text())
    return {
        op: {dev: entry["order"] for dev, entry in devices.items()}
        for op, devices in table["operators"].items()
    }


_AUTO_ORDER = _load_auto_table()
_reason_cache: dict[tuple[str, str, str], str | None] = {}


def _triton_reason(device_type: str) -> str | None:
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (pip install 'fastops[triton]')"
    if device_type == "cuda":
        return None
    if device_type == "cpu":
        if os.environ.get("TRITON_INTERPRET") == "1":
            return None
        return (
            "Triton kernels run on CPU tensors only in Triton's interpreter: set "
            "TRITON_INTERPRET=1 before triton is imported"
        )
    return f"Triton does not run on {device_type} tensors"


def _extension_reason(backend: str, op: str, device_type: str) -> str | None:
    if device_type != backend:
        return f"the {backend} backend runs on {backend} tensors, not {device_type} ones"
    if not _library.extension_loaded():
        return f"the C++ extension fastops._C did not load ({_library.extension_error()}); build it with `make build`"
    if not _library.has_kernel(op, backend.upper()):
        if backend == "cuda":
            return "fastops._C was built without CUDA kernels (rebuild with FORCE_CUDA=1 or on a machine with a GPU)"
        return f"fastops._C has no {backend} kernel for {op}"
    return None


def unavailable_reason(backend: str, op: str, device_type: str) -> str | None:
    """Why ``backend`` cannot run ``op`` on ``device_type`` tensors, or ``None`` if it can."""
    key = (backend, op, device_type)
    if key not in _reason_cache:
        if op not in OPERATORS:
            raise ValueError(f"unknown fastops operator {op!r}; known: {list(OPERATORS)}")
        if backend == "reference":
            reason = None
        elif backend == "triton":
            reason = _triton_reason(device_type)
        else:
            reason = _extension_reason(backend, op, device_type)
        _reason_cache[key] = reason
    return _reason_cache[key]


# Filled for CPU and CUDA at import, so that select() is plain dictionary
# lookups that torch.compile traces without graph breaks.
def _fill_reason_cache() -> None:
    for op in OPERATORS:
        for backend in BACKENDS:
            for device_type in ("cpu", "cuda"):
                unavailable_reason(backend, op, device_type)


_fill_reason_cache()


def _present_device_types() -> list[str]:
    return ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]


def available_backends(
    op: str | None = None, device: str | torch.device | None = None
) -> list[str]:
    """The backends that can run here, in ``auto``'s order of preference.

    ``op``: an operator name (see ``fastops.backends.OPERATORS``); ``None`` means
    every operator (a backend is listed when it runs all of them).
    ``device``: a device or device type; ``None`` means any device present.
    """
    ops = [op] if op is not None else list(OPERATORS)
    device_types = [torch.device(device).type] if device is not None else _present_device_types()
    names = []
    for device_type in device_types:
        for name in _preference_order(ops[0], device_type):
            if name not in names and all(
                unavailable_reason(name, o, device_type) is None for o in ops
            ):
                names.append(name)
    return names


def _preference_order(op: str, device_type: str) -> list[str]:
    order = _AUTO_ORDER.get(op, {}).get(device_type, [])
    return [*order, *(b for b in BACKENDS if b not in order)]


def select(op: str, device: torch.device) -> str:
    """The backend that runs ``op`` on tensors of ``device``, following the rules above."""
    requested = get_backend()
    device_type = device.type
    if requested == AUTO:
        for name in _AUTO_ORDER.get(op, {}).get(device_type, ["reference"]):
            if unavailable_reason(name, op, device_type) is None:
                return name
        return "reference"
    reason = unavailable_reason(requested, op, device_type)
    if reason is not None:
        raise BackendUnavailableError(
            f"fastops backend {requested!r} cannot run {op} on {device_type} tensors: {reason}. "
            f"Backends that can: {available_backends(op, device_type)}"
        )
    return requested
