"""The installed package: the extension loads, its ops are registered for the
dispatch keys the build promises, and the Triton kernels are packaged as
fastops.triton_kernels."""

from __future__ import annotations

import importlib
import os

import pytest
import torch

import fastops
from fastops import _library


def test_extension_loaded():
    assert _library.extension_loaded(), _library.extension_error()


@pytest.mark.parametrize(
    "op",
    [
        "max_unpool",
        "_max_unpool_backward",
        "max_pool_with_offsets",
        "_max_pool_with_offsets_backward",
    ],
)
def test_ops_registered(op):
    assert _library.has_kernel(op, "CPU")
    assert _library.has_kernel(f"{op}_triton", "CPU")
    if os.environ.get("FASTOPS_EXPECT_CUDA_KERNELS") == "1" or torch.cuda.is_available():
        assert _library.has_kernel(op, "CUDA"), (
            "built with FORCE_CUDA=1 but no CUDA kernel is registered"
        )


def test_triton_kernels_are_packaged_under_fastops():
    module = importlib.import_module("fastops.triton_kernels.max_unpool")
    assert module.__name__ == "fastops.triton_kernels.max_unpool"
    assert callable(module.max_unpool_forward)


def test_public_surface():
    for name in [
        "ops",
        "nn",
        "reference",
        "use_backend",
        "set_backend",
        "available_backends",
        "__version__",
    ]:
        assert hasattr(fastops, name)
    for name in ["max_unpool1d", "max_unpool2d", "max_unpool3d", "max_pool2d_with_offsets"]:
        assert callable(getattr(fastops.ops, name))
