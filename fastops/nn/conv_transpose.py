"""ConvTranspose1d/2d: subclasses of the torch.nn modules (same constructor,
parameters, initialisation and ``state_dict``, so weights move between them
unchanged, and ``isinstance`` checks hold) whose forward runs fastops. One
keyword-only addition: ``activation="relu"`` fuses the ReLU that usually
follows (U-Net decoders) into the same kernel."""

from __future__ import annotations

import torch

from fastops._conv_transpose import output_padding_for_size
from fastops.ops import conv_transpose as functional


class _FusedConvTranspose:
    """The forward and repr shared by ConvTranspose1d/2d (mixed in before the
    torch class, whose constructor and parameters they keep)."""

    _functional = None  # fastops.ops.conv_transpose1d / conv_transpose2d

    def _init_activation(self, activation) -> None:
        if activation not in (None, "relu"):
            raise ValueError(f"activation must be None or 'relu', got {activation!r}")
        self.activation = activation

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError(f"Only 'zeros' padding mode is supported for {type(self).__name__}")
        output_padding = (
            list(self.output_padding)
            if output_size is None
            else output_padding_for_size(
                input.shape, output_size, self.kernel_size, self.stride, self.padding, self.dilation
            )
        )
        return type(self)._functional(
            input,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            output_padding,
            self.groups,
            self.dilation,
            activation=self.activation,
        )

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        return extra + (f", activation={self.activation!r}" if self.activation else "")


class ConvTranspose2d(_FusedConvTranspose, torch.nn.ConvTranspose2d):
    """:class:`torch.nn.ConvTranspose2d` computed by :func:`fastops.ops.conv_transpose2d`.

    ``forward(input, output_size=None)``: ``output_size`` picks among the output
    sizes the stride allows, as in torch. Only ``padding_mode="zeros"`` exists for
    transposed convolutions (torch raises for the others, as here).
    """

    _functional = staticmethod(functional.conv_transpose2d)

    def __init__(self, *args, activation: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_activation(activation)


class ConvTranspose1d(_FusedConvTranspose, torch.nn.ConvTranspose1d):
    """:class:`torch.nn.ConvTranspose1d` computed by :func:`fastops.ops.conv_transpose1d`."""

    _functional = staticmethod(functional.conv_transpose1d)

    def __init__(self, *args, activation: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._init_activation(activation)
