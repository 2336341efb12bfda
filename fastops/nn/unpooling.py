"""MaxUnpool1d/2d/3d: subclasses of the torch.nn modules (so ``isinstance``
checks and ``repr`` are unchanged) whose forward runs fastops."""

from __future__ import annotations

import torch

from fastops.ops import unpooling


class MaxUnpool1d(torch.nn.MaxUnpool1d):
    """:class:`torch.nn.MaxUnpool1d` computed by :func:`fastops.ops.max_unpool1d`."""

    def forward(
        self, input: torch.Tensor, indices: torch.Tensor, output_size: list[int] | None = None
    ) -> torch.Tensor:
        return unpooling.max_unpool1d(
            input, indices, self.kernel_size, self.stride, self.padding, output_size
        )


class MaxUnpool2d(torch.nn.MaxUnpool2d):
    """:class:`torch.nn.MaxUnpool2d` computed by :func:`fastops.ops.max_unpool2d`
    (which also accepts int8 window offsets as ``indices``)."""

    def forward(
        self, input: torch.Tensor, indices: torch.Tensor, output_size: list[int] | None = None
    ) -> torch.Tensor:
        return unpooling.max_unpool2d(
            input, indices, self.kernel_size, self.stride, self.padding, output_size
        )


class MaxUnpool3d(torch.nn.MaxUnpool3d):
    """:class:`torch.nn.MaxUnpool3d` computed by :func:`fastops.ops.max_unpool3d`."""

    def forward(
        self, input: torch.Tensor, indices: torch.Tensor, output_size: list[int] | None = None
    ) -> torch.Tensor:
        return unpooling.max_unpool3d(
            input, indices, self.kernel_size, self.stride, self.padding, output_size
        )
