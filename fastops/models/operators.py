"""The operators a reference model is built on: fastops's, or the PyTorch and
torchvision implementations they replace.

Every model takes ``operators="fastops"`` (the default) or ``"torch"``; the two
sets have the same call signatures and the same parameters, so one model
definition serves both, a state_dict moves between them unchanged, and the
benchmarks time the same network on either. Which fastops *backend* runs
(cpu, cuda, triton, reference) is chosen as everywhere by
:func:`fastops.use_backend`.

======================  ==============================================  ===========================================
operation               ``"fastops"``                                   ``"torch"``
======================  ==============================================  ===========================================
``max_pool``            :func:`fastops.ops.max_pool2d_with_offsets`     ``F.max_pool2d(return_indices=True)``
                        (int8 window offsets)                           (int64 plane positions)
``max_unpool``          :func:`fastops.ops.max_unpool2d`                ``F.max_unpool2d``
``ConvTranspose2d``     :class:`fastops.nn.ConvTranspose2d`             ``torch.nn.ConvTranspose2d`` (+ ReLU module)
                        (ReLU fused with ``activation="relu"``)
``roi_align``           :func:`fastops.ops.roi_align`                   ``torchvision.ops.roi_align``
``roi_pool``            :func:`fastops.ops.roi_pool`                    ``torchvision.ops.roi_pool``
``MultiScaleRoIAlign``  :class:`fastops.nn.MultiScaleRoIAlign`          ``torchvision.ops.MultiScaleRoIAlign``
``nms``                 :func:`fastops.ops.nms`                         ``torchvision.ops.nms``
``batched_nms``         :func:`fastops.ops.batched_nms`                 ``torchvision.ops.batched_nms``
======================  ==============================================  ===========================================

The ``"torch"`` set needs torchvision only for the RoI and NMS operations; the
segmentation models run on it without torchvision.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import fastops.nn
import fastops.ops

OPERATOR_SETS: tuple[str, ...] = ("fastops", "torch")


class ConvTranspose2dReLU(torch.nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` followed by a ReLU, with the parameters (and
    the state_dict keys) of ``torch.nn.ConvTranspose2d``: the ``"torch"`` twin of
    ``fastops.nn.ConvTranspose2d(..., activation="relu")``."""

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        return F.relu(super().forward(input, output_size))


def _torch_conv_transpose2d(*args, activation: str | None = None, **kwargs) -> torch.nn.Module:
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    cls = ConvTranspose2dReLU if activation == "relu" else torch.nn.ConvTranspose2d
    return cls(*args, **kwargs)


def _torch_max_pool(
    input: torch.Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    return F.max_pool2d(
        input, kernel_size, stride, padding, ceil_mode=ceil_mode, return_indices=True
    )


def _torchvision_ops():
    try:
        import torchvision.ops
    except ImportError as error:  # torchvision is an optional extra
        raise ImportError(
            'operators="torch" needs torchvision for the RoI and NMS operations '
            "(pip install torchvision); the fastops operators do not"
        ) from error
    return torchvision.ops


def _from_torchvision(name: str) -> Callable:
    def call(*args, **kwargs):
        return getattr(_torchvision_ops(), name)(*args, **kwargs)

    call.__name__ = name
    call.__qualname__ = f"torchvision.ops.{name}"
    return call


@dataclass(frozen=True)
class Operators:
    """One set of operators; see the module docstring.

    * ``max_pool(input, kernel_size, stride=None, padding=0, ceil_mode=False)
      -> (values, indices)``: indices in the set's own encoding, accepted by
      ``max_unpool`` of the same set;
    * ``max_unpool(input, indices, kernel_size, stride=None, padding=0, output_size=None)``;
    * ``ConvTranspose2d(in_channels, out_channels, kernel_size, stride=1, padding=0,
      output_padding=0, groups=1, bias=True, dilation=1, *, activation=None)``:
      a module class (factory), ``activation="relu"`` appends a ReLU;
    * ``roi_align``, ``roi_pool``, ``MultiScaleRoIAlign``, ``nms``, ``batched_nms``:
      torchvision's signatures.
    """

    name: str
    max_pool: Callable
    max_unpool: Callable
    ConvTranspose2d: Callable[..., torch.nn.Module]
    roi_align: Callable
    roi_pool: Callable
    MultiScaleRoIAlign: Callable[..., torch.nn.Module]
    nms: Callable
    batched_nms: Callable


FASTOPS = Operators(
    name="fastops",
    max_pool=fastops.ops.max_pool2d_with_offsets,
    max_unpool=fastops.ops.max_unpool2d,
    ConvTranspose2d=fastops.nn.ConvTranspose2d,
    roi_align=fastops.ops.roi_align,
    roi_pool=fastops.ops.roi_pool,
    MultiScaleRoIAlign=fastops.nn.MultiScaleRoIAlign,
    nms=fastops.ops.nms,
    batched_nms=fastops.ops.batched_nms,
)


def _torchvision_multi_scale_roi_align(*args, **kwargs) -> torch.nn.Module:
    return _torchvision_ops().MultiScaleRoIAlign(*args, **kwargs)


TORCH = Operators(
    name="torch",
    max_pool=_torch_max_pool,
    max_unpool=F.max_unpool2d,
    ConvTranspose2d=_torch_conv_transpose2d,
    roi_align=_from_torchvision("roi_align"),
    roi_pool=_from_torchvision("roi_pool"),
    MultiScaleRoIAlign=_torchvision_multi_scale_roi_align,
    nms=_from_torchvision("nms"),
    batched_nms=_from_torchvision("batched_nms"),
)


def get_operators(operators: str | Operators = "fastops") -> Operators:
    """The :class:`Operators` named ``operators`` ("fastops" or "torch"); an
    :class:`Operators` instance is returned as is."""
    if isinstance(operators, Operators):
        return operators
    if operators == "fastops":
        return FASTOPS
    if operators == "torch":
        return TORCH
    raise ValueError(f"operators must be one of {list(OPERATOR_SETS)}, got {operators!r}")
