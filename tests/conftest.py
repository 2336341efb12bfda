"""Test set-up shared by every test module.

* ``TRITON_INTERPRET=1`` before anything imports triton, so the Triton backend
  runs on CPU tensors (Triton's interpreter; slow, so grids stay small).
* ``FASTOPS_POISON_OUTPUTS=1`` before fastops is imported: every output the
  kernels allocate starts as NaN, so an element a kernel forgets to write fails.
* A fresh random seed per test (or ``FASTOPS_TEST_SEED``), shown in the report
  of a failing test so it can be replayed.
* ``cuda``-marked tests are skipped without a GPU.
"""

from __future__ import annotations

import os
import secrets

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("FASTOPS_POISON_OUTPUTS", "1")

import pytest
import torch

HAS_CUDA = torch.cuda.is_available()

# (device, backend) pairs every operator test runs on.
BACKEND_CASES = [
    pytest.param("cpu", "cpu", id="cpu-cpu"),
    pytest.param("cpu", "triton", id="cpu-triton"),
    pytest.param("cpu", "reference", id="cpu-reference"),
    pytest.param("cuda", "cuda", id="cuda-cuda", marks=pytest.mark.cuda),
    pytest.param("cuda", "triton", id="cuda-triton", marks=pytest.mark.cuda),
    pytest.param("cuda", "reference", id="cuda-reference", marks=pytest.mark.cuda),
]


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_seed(request):
    """Seeds torch with a new random seed for every test (FASTOPS_TEST_SEED replays one)."""
    seed = int(os.environ.get("FASTOPS_TEST_SEED") or secrets.randbelow(2**31))
    request.node.fastops_seed = seed
    torch.manual_seed(seed)
    yield seed


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    seed = getattr(item, "fastops_seed", None)
    if report.failed and seed is not None:
        report.sections.append(("fastops seed", f"replay with FASTOPS_TEST_SEED={seed}"))
    return report
