"""Loads the C++/CUDA extension ``fastops._C`` and the Python-side registrations
(fake kernels, autograd, Triton ops) of every fastops operator.

Importing ``_C`` runs its static ``TORCH_LIBRARY`` registrations, which define
the ``torch.ops.fastops.*`` schemas and their CPU/CUDA kernels. When the
extension is missing (not built) or fails to load (built against another
torch), fastops still imports: the ``reference`` and ``triton`` backends work,
and :func:`fastops.available_backends` says why ``cpu``/``cuda`` do not.
"""

from __future__ import annotations

import torch

try:
    from fastops import _C  # noqa: F401  (imported for its registrations)
except ImportError as error:  # pragma: no cover - depends on the build
    _EXTENSION_ERROR: str | None = f"{type(error).__name__}: {error}"
else:
    _EXTENSION_ERROR = None


def extension_loaded() -> bool:
    """Whether the C++ extension ``fastops._C`` was imported."""
    return _EXTENSION_ERROR is None


def extension_error() -> str | None:
    """Why ``fastops._C`` could not be imported, or ``None``."""
    return _EXTENSION_ERROR


def has_kernel(op: str, dispatch_key: str) -> bool:
    """Whether ``fastops::<op>`` has a kernel for ``dispatch_key`` ("CPU", "CUDA")."""
    qualified = f"fastops::{op}"
    if not torch._C._dispatch_has_kernel(qualified):
        return False
    return torch._C._dispatch_has_kernel_for_dispatch_key(qualified, dispatch_key)


# Fake kernels, autograd formulas and the Triton ops, one module per op family.
from fastops._registrations import conv_transpose as _conv_transpose_registrations  # noqa: E402, F401
from fastops._registrations import nms as _nms_registrations  # noqa: E402, F401
from fastops._registrations import roi as _roi_registrations  # noqa: E402, F401
from fastops._registrations import (  # noqa: E402, F401
    segmentation_losses as _segmentation_loss_registrations,
)
from fastops._registrations import unpooling as _unpooling_registrations  # noqa: E402, F401
