"""Registrations of max_unpool and max_pool_with_offsets.

Each has a C++ op (``fastops::max_unpool``, kernels for CPU and CUDA in
``fastops._C``, autograd in csrc/ops/pooling_autograd.cpp) and a Triton op
(``fastops::max_unpool_triton``, launchers in ``fastops.triton_kernels``)
with the same schema. Both get the same fake kernels here, the Triton ops also
these autograd formulas (the same as the C++ ones):

* max_unpool backward: ``grad_input = grad_output`` gathered at the indices
  (``_max_unpool_backward``), PyTorch's formula; its own derivative is max_unpool.
* max_pool_with_offsets backward: the output gradient summed into the window
  positions the offsets name (``_max_pool_with_offsets_backward``); its own
  derivative is the gather ``_max_unpool_backward``.
"""

from __future__ import annotations

import torch

from fastops import _library
from fastops._pooling import pool_output_size, pooling_memory_format

_MAX_UNPOOL_SCHEMA = "(Tensor input, Tensor indices, SymInt[] output_size, int[] kernel_size, int[] stride, int[] padding) -> Tensor"
_MAX_UNPOOL_BACKWARD_SCHEMA = (
    "(Tensor grad_output, Tensor indices, int[] kernel_size, int[] stride, int[] padding) -> Tensor"
)
_MAX_POOL_SCHEMA = "(Tensor input, int[] kernel_size, int[] stride, int[] padding, bool ceil_mode) -> (Tensor, Tensor)"
_MAX_POOL_BACKWARD_SCHEMA = (
    "(Tensor grad_output, Tensor offsets, SymInt[] input_size, int[] kernel_size, int[] stride, "
    "int[] padding) -> Tensor"
)


def _empty_like_layout(reference: torch.Tensor, shape, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty(
        shape, dtype=dtype, device=reference.device, memory_format=pooling_memory_format(reference)
    )


def _max_unpool_fake(input, indices, output_size, kernel_size, stride, padding):
    torch._check(
        input.dim() == len(kernel_size) + 2,
        lambda: "max_unpool: input rank does not match kernel_size",
    )
    torch._check(
        indices.shape == input.shape, lambda: "max_unpool: indices must have the shape of input"
    )
    return _empty_like_layout(input, (*input.shape[:2], *output_size), input.dtype)


def _max_unpool_backward_fake(grad_output, indices, kernel_size, stride, padding):
    torch._check(indices.dim() == grad_output.dim(), lambda: "_max_unpool_backward: rank mismatch")
    return _empty_like_layout(indices, indices.shape, grad_output.dtype)


def _max_pool_fake(input, kernel_size, stride, padding, ceil_mode):
    dims = len(kernel_size)
    torch._check(
        input.dim() == dims + 2,
        lambda: "max_pool_with_offsets: input rank does not match kernel_size",
    )
    spatial = [
        pool_output_size(input.shape[2 + d], kernel_size[d], stride[d], padding[d], ceil_mode)
        for d in range(dims)
    ]
    shape = (*input.shape[:2], *spatial)
    return _empty_like_layout(input, shape, input.dtype), _empty_like_layout(
        input, shape, torch.int8
    )


def _max_pool_backward_fake(grad_output, offsets, input_size, kernel_size, stride, padding):
    return _empty_like_layout(offsets, (*offsets.shape[:2], *input_size), grad_output.dtype)


def _register_family(
    max_unpool: str, max_unpool_backward: str, max_pool: str, max_pool_backward: str, autograd: bool
) -> None:
    """Fakes (and, when `autograd`, the autograd formulas) for one
    implementation of the four ops. The C++ ops carry their autograd in C++
    (csrc/ops/pooling_autograd.cpp): Python autograd costs more per call than
    most GPU kernels here take."""
    ops = torch.ops.fastops
    unpool_op = getattr(ops, max_unpool).default
    unpool_backward_op = getattr(ops, max_unpool_backward).default
    pool_backward_op = getattr(ops, max_pool_backward).default

    torch.library.register_fake(f"fastops::{max_unpool}")(_max_unpool_fake)
    torch.library.register_fake(f"fastops::{max_unpool_backward}")(_max_unpool_backward_fake)
    torch.library.register_fake(f"fastops::{max_pool}")(_max_pool_fake)
    torch.library.register_fake(f"fastops::{max_pool_backward}")(_max_pool_backward_fake)

    def unpool_setup(ctx, inputs, output):
        _, indices, _, kernel_size, stride, padding = inputs
        ctx.save_for_backward(indices)
        ctx.geometry = (kernel_size, stride, padding)

    def unpool_backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        return unpool_backward_op(grad, indices, *ctx.geometry), None, None, None, None, None

    def unpool_backward_setup(ctx, inputs, output):
        grad_output, indices, kernel_size, stride, padding = inputs
        ctx.save_for_backward(indices)
        ctx.output_size = list(grad_output.shape[2:])
        ctx.geometry = (kernel_size, stride, padding)

    def unpool_double_backward(ctx, grad):
        (indices,) = ctx.saved_tensors
        return unpool_op(grad, indices, ctx.output_size, *ctx.geometry), None, None, None, None

    def pool_setup(ctx, inputs, output):
        input, kernel_size, stride, padding, _ = inputs
        _, offsets = output
        ctx.save_for_backward(offsets)
        ctx.input_size = list(input.shape[2:])
        ctx.geometry = (kernel_size, stride, padding)

    def pool_backward(ctx, grad_values, grad_offsets):
        (offsets,) = ctx.saved_tensors
        grad_input = pool_backward_op(grad_values, offsets, ctx.input_size, *ctx.geometry)
        return grad_input, None, None, None, None

    def pool_backward_setup(ctx, inputs, output):
        _, offsets, _, kernel_size, stride, padding = inputs
        ctx.save_for_backward(offsets)
        ctx.geometry = (kernel_size, stride, padding)

    def pool_double_backward(ctx, grad):
        (offsets,) = ctx.saved_tensors
        return unpool_backward_op(grad, offsets, *ctx.geometry), None, None, None, None, None

    if not autograd:
        return
    torch.library.register_autograd(
        f"fastops::{max_unpool}", unpool_backward, setup_context=unpool_setup
    )
    torch.library.register_autograd(
        f"fastops::{max_unpool_backward}",
        unpool_double_backward,
        setup_context=unpool_backward_setup,
    )
    torch.library.register_autograd(f"fastops::{max_pool}", pool_backward, setup_context=pool_setup)
    torch.library.register_autograd(
        f"fastops::{max_pool_backward}", pool_double_backward, setup_context=pool_backward_setup
    )


def _define_triton_ops() -> None:
    """The Triton ops: same schemas, implemented by the launchers in
    fastops.triton_kernels (imported on first call, so importing fastops does
    not import triton)."""

    def max_unpool(input, indices, output_size, kernel_size, stride, padding):
        from fastops.triton_kernels import max_unpool as kernels

        return kernels.max_unpool_forward(
            input, indices, list(output_size), kernel_size, stride, padding
        )

    def max_unpool_backward(grad_output, indices, kernel_size, stride, padding):
        from fastops.triton_kernels import max_unpool as kernels

        return kernels.max_unpool_backward(grad_output, indices, kernel_size, stride, padding)

    def max_pool(input, kernel_size, stride, padding, ceil_mode):
        from fastops.triton_kernels import max_pool_with_offsets as kernels

        return kernels.max_pool_with_offsets_forward(input, kernel_size, stride, padding, ceil_mode)

    def max_pool_backward(grad_output, offsets, input_size, kernel_size, stride, padding):
        from fastops.triton_kernels import max_pool_with_offsets as kernels

        return kernels.max_pool_with_offsets_backward(
            grad_output, offsets, list(input_size), kernel_size, stride, padding
        )

    for name, schema, impl in (
        ("max_unpool_triton", _MAX_UNPOOL_SCHEMA, max_unpool),
        ("_max_unpool_backward_triton", _MAX_UNPOOL_BACKWARD_SCHEMA, max_unpool_backward),
        ("max_pool_with_offsets_triton", _MAX_POOL_SCHEMA, max_pool),
        ("_max_pool_with_offsets_backward_triton", _MAX_POOL_BACKWARD_SCHEMA, max_pool_backward),
    ):
        torch.library.define(f"fastops::{name}", schema)
        torch.library.impl(f"fastops::{name}", ("cpu", "cuda"))(impl)


_define_triton_ops()
_register_family(
    "max_unpool_triton",
    "_max_unpool_backward_triton",
    "max_pool_with_offsets_triton",
    "_max_pool_with_offsets_backward_triton",
    autograd=True,
)
if _library.extension_loaded():
    _register_family(
        "max_unpool",
        "_max_unpool_backward",
        "max_pool_with_offsets",
        "_max_pool_with_offsets_backward",
        autograd=False,
    )
