"""Backend selection: use_backend, set_backend, FASTOPS_BACKEND, auto, and the
errors for backends that cannot run."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
import torch
import torch.nn.functional as F

import fastops
from fastops import backends


@pytest.fixture(autouse=True)
def restore_global_backend():
    previous = backends._global_backend
    yield
    backends._global_backend = previous


def test_precedence_context_then_global_then_auto():
    fastops.set_backend("auto")
    assert fastops.get_backend() == "auto"
    fastops.set_backend("reference")
    assert fastops.get_backend() == "reference"
    with fastops.use_backend("cpu"):
        assert fastops.get_backend() == "cpu"
        with fastops.use_backend("triton"):
            assert fastops.get_backend() == "triton"
        assert fastops.get_backend() == "cpu"
    assert fastops.get_backend() == "reference"


def test_use_backend_is_per_thread():
    seen = []
    with fastops.use_backend("reference"):
        thread = threading.Thread(target=lambda: seen.append(fastops.get_backend()))
        thread.start()
        thread.join()
    assert seen == [backends._global_backend or "auto"]


def test_unknown_names_are_rejected():
    with pytest.raises(ValueError, match="unknown fastops backend 'gpu'"):
        fastops.set_backend("gpu")
    with pytest.raises(ValueError, match="unknown fastops backend"), fastops.use_backend("fast"):
        pass
    with pytest.raises(ValueError, match="unknown fastops operator"):
        backends.unavailable_reason("cpu", "conv9d", "cpu")


def test_auto_picks_the_compiled_cpu_kernels_on_cpu():
    assert backends.select("max_unpool", torch.device("cpu")) == "cpu"


def test_impossible_backend_raises_with_reason_and_alternatives():
    v, i = F.max_pool2d(torch.randn(1, 2, 4, 4), 2, return_indices=True)
    with fastops.use_backend("cuda"), pytest.raises(fastops.BackendUnavailableError) as error:
        fastops.ops.max_unpool2d(v, i, 2)
    message = str(error.value)
    assert "'cuda' cannot run max_unpool on cpu tensors" in message
    assert "Backends that can: ['cpu', 'reference', 'triton']" in message


def test_available_backends():
    assert fastops.available_backends("max_unpool", "cpu") == ["cpu", "reference", "triton"]
    assert "reference" in fastops.available_backends()
    assert set(fastops.available_backends(device="cpu")) <= set(backends.BACKENDS)


def test_triton_on_cpu_needs_the_interpreter():
    script = (
        "import fastops;print(fastops.backends.unavailable_reason('triton', 'max_unpool', 'cpu'))"
    )
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert "TRITON_INTERPRET=1" in out.stdout


@pytest.mark.parametrize(("value", "expected"), [("reference", "reference"), ("", "auto")])
def test_environment_variable(value, expected):
    script = "import fastops; print(fastops.get_backend())"
    env = dict(os.environ, FASTOPS_BACKEND=value)
    out = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == expected


def test_bad_environment_variable_names_it():
    env = dict(os.environ, FASTOPS_BACKEND="quantum")
    out = subprocess.run(
        [sys.executable, "-c", "import fastops"], env=env, capture_output=True, text=True
    )
    assert out.returncode != 0
    assert "FASTOPS_BACKEND='quantum'" in out.stderr


def test_backend_choice_is_traced_by_torch_compile():
    """Dynamo guards on the backend choice: switching it recompiles, not reuses."""
    torch._dynamo.reset()
    calls = []

    def fn(x):
        calls.append(backends.select("max_unpool", x.device))
        return x + 1

    compiled = torch.compile(fn, fullgraph=True, backend="eager")
    x = torch.randn(3)
    compiled(x)
    with fastops.use_backend("reference"):
        compiled(x)
    assert calls == ["cpu", "reference"]
