"""ConvTranspose1d/2d: subclasses of the torch.nn modules (same constructor,
parameters, initialisation and ``state_dict``, so weights move between them
unchanged, and ``isinstance`` checks hold) whose forward runs fastops. One
keyword-only addition: ``activation="relu"`` fuses the ReLU that usually
follows (U-Net decoders) into the same kernel."""

from __future__ import annotations

import torch

from fastops._conv_transpose import output_padding_for_size
from fastops.ops import conv_transpose as functional


def _check_activation(activation) -> str | None:
    if activation not in (None, "relu"):
        raise ValueError(f"activation must be None or 'relu', got {activation!r}")
    return activation


def _output_padding(module, input: torch.Tensor, output_size, dims: int) -> list[int]:
    if output_size is None:
        return list(module.output_padding)
    return output_padding_for_size(
        input.shape, output_size, module.kernel_size, module.stride, module.padding, module.dilation
    )


class ConvTranspose2d(torch.nn.ConvTranspose2d):
    """:class:`torch.nn.ConvTranspose2d` computed by :func:`fastops.ops.conv_transpose2d`.

    ``forward(input, output_size=None)``: ``output_size`` picks among the output
    sizes the stride allows, as in torch. Only ``padding_mode="zeros"`` exists for
    transposed convolutions (torch raises for the others, as here).
    """

    def __init__(self, *args, activation: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.activation = _check_activation(activation)

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only 'zeros' padding mode is supported for ConvTranspose2d")
        return functional.conv_transpose2d(
            input,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            _output_padding(self, input, output_size, 2),
            self.groups,
            self.dilation,
            activation=self.activation,
        )

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        return extra + (f", activation={self.activation!r}" if self.activation else "")


class ConvTranspose1d(torch.nn.ConvTranspose1d):
    """:class:`torch.nn.ConvTranspose1d` computed by :func:`fastops.ops.conv_transpose1d`."""

    def __init__(self, *args, activation: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.activation = _check_activation(activation)

    def forward(self, input: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        if self.padding_mode != "zeros":
            raise ValueError("Only 'zeros' padding mode is supported for ConvTranspose1d")
        return functional.conv_transpose1d(
            input,
            self.weight,
            self.bias,
            self.stride,
            self.padding,
            _output_padding(self, input, output_size, 1),
            self.groups,
            self.dilation,
            activation=self.activation,
        )

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        return extra + (f", activation={self.activation!r}" if self.activation else "")
