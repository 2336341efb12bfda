"""Registrations of conv_transpose: the C++ op (``fastops::conv_transpose``,
kernels in ``fastops._C``) and the Triton op with the same schema
(``fastops::conv_transpose_triton``, launchers in
``fastops.triton_kernels.conv_transpose``) get their fake kernels and autograd
formula here.

The backward is the private ``_conv_transpose_backward``: one call computes
the gradients autograd asks for (input, weight, bias). When the forward fused
a ReLU its output is saved and the gradient passes where it is positive.
First-order gradients only (as torchvision's ops).
"""

from __future__ import annotations

import torch

from fastops import _library
from fastops._conv_transpose import conv_memory_format, output_length

_SCHEMAS = {
    "conv_transpose": (
        "(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] output_padding, int groups, int[2] dilation, bool relu) -> Tensor"
    ),
    "_conv_transpose_backward": (
        "(Tensor grad_output, Tensor input, Tensor weight, Tensor? output, int[2] stride, "
        "int[2] padding, int groups, int[2] dilation, bool[3] output_mask) -> (Tensor, Tensor, Tensor)"
    ),
}


def _conv_transpose_fake(
    input, weight, bias, stride, padding, output_padding, groups, dilation, relu
):
    torch._check(
        input.dim() == 4 and weight.dim() == 4, lambda: "conv_transpose: 4-D input and weight"
    )
    shape = (
        input.shape[0],
        weight.shape[1] * groups,
        output_length(
            input.shape[2], weight.shape[2], stride[0], padding[0], dilation[0], output_padding[0]
        ),
        output_length(
            input.shape[3], weight.shape[3], stride[1], padding[1], dilation[1], output_padding[1]
        ),
    )
    return input.new_empty(shape).contiguous(memory_format=conv_memory_format(input))


def _conv_transpose_backward_fake(
    grad_output, input, weight, output, stride, padding, groups, dilation, output_mask
):
    grad_input = (
        torch.empty_like(input, memory_format=conv_memory_format(input))
        if output_mask[0]
        else input.new_empty(0)
    )
    grad_weight = weight.new_empty(weight.shape) if output_mask[1] else weight.new_empty(0)
    grad_bias = input.new_empty(grad_output.shape[1]) if output_mask[2] else input.new_empty(0)
    return grad_input, grad_weight, grad_bias


def _register(suffix: str) -> None:
    backward_op = getattr(torch.ops.fastops, "_conv_transpose_backward" + suffix)

    def setup_context(ctx, inputs, output):
        input, weight, _bias, stride, padding, _output_padding, groups, dilation, relu = inputs
        ctx.save_for_backward(input, weight, output if relu else None)
        ctx.params = (stride, padding, groups, dilation)

    def backward(ctx, grad):
        input, weight, relu_output = ctx.saved_tensors
        stride, padding, groups, dilation = ctx.params
        mask = [bool(m) for m in ctx.needs_input_grad[:3]]
        grad_input, grad_weight, grad_bias = backward_op(
            grad, input, weight, relu_output, stride, padding, groups, dilation, mask
        )
        return (
            grad_input if mask[0] else None,
            grad_weight if mask[1] else None,
            grad_bias if mask[2] else None,
            None,
            None,
            None,
            None,
            None,
            None,
        )

    torch.library.register_fake(f"fastops::conv_transpose{suffix}")(_conv_transpose_fake)
    torch.library.register_fake(f"fastops::_conv_transpose_backward{suffix}")(
        _conv_transpose_backward_fake
    )
    torch.library.register_autograd(
        f"fastops::conv_transpose{suffix}", backward, setup_context=setup_context
    )


def _define_triton_ops() -> None:
    """The Triton ops; their kernel module is imported on first call."""

    def kernels():
        from fastops.triton_kernels import conv_transpose

        return conv_transpose

    impls = {
        "conv_transpose": lambda *args: kernels().conv_transpose(*args),
        "_conv_transpose_backward": lambda *args: kernels().conv_transpose_backward(*args),
    }
    for name, schema in _SCHEMAS.items():
        torch.library.define(f"fastops::{name}_triton", schema)
        torch.library.impl(f"fastops::{name}_triton", ("cpu", "cuda"))(impls[name])


_define_triton_ops()
_register("_triton")
if _library.extension_loaded():
    _register("")
