"""max_unpool1d/2d/3d, max_pool2d_with_offsets and the MaxUnpool modules, on
every backend, against torch.nn.functional (bit for bit) and fastops.reference."""

from __future__ import annotations

import contextlib
import random

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKEND_CASES

import fastops
from fastops._pooling import pooling_memory_format
from fastops.ops import max_pool2d_with_offsets, max_unpool1d, max_unpool2d, max_unpool3d
from fastops.reference.max_unpool import offsets_to_positions

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def random_pool_geometry(rng: random.Random, dims: int):
    """kernel, stride, padding as max_pool accepts them (padding <= kernel // 2)."""
    kernel = [rng.randint(1, 4) for _ in range(dims)]
    stride = [rng.randint(1, 4) for _ in range(dims)]
    padding = [rng.randint(0, k // 2) for k in kernel]
    return kernel, stride, padding


def pooled_input(shape, dtype, device, channels_last=False):
    """Random values with no ties inside a window (a permutation), so every
    backend and PyTorch must pick the same maxima."""
    x = torch.randperm(torch.Size(shape).numel(), dtype=torch.float64).reshape(shape)
    x = (x / x.numel() * 8 - 4).to(dtype=dtype, device=device)
    if channels_last:
        x = x.contiguous(
            memory_format=torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        )
    return x


def torch_pool(x, kernel, stride, padding, ceil_mode):
    pool = (F.max_pool1d, F.max_pool2d, F.max_pool3d)[len(kernel) - 1]
    return pool(x, kernel, stride, padding, ceil_mode=ceil_mode, return_indices=True)


def torch_unpool(v, i, kernel, stride, padding, output_size):
    unpool = (F.max_unpool1d, F.max_unpool2d, F.max_unpool3d)[len(kernel) - 1]
    return unpool(v.cpu(), i.cpu(), kernel, stride, padding, output_size)


def fastops_unpool(v, i, kernel, stride, padding, output_size):
    unpool = (max_unpool1d, max_unpool2d, max_unpool3d)[len(kernel) - 1]
    return unpool(v, i, kernel, stride, padding, output_size)


# --- forward against PyTorch ------------------------------------------------


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_max_unpool2d_matches_torch_bit_for_bit(device, backend, dtype, channels_last):
    rng = random.Random(torch.initial_seed())
    for _ in range(4):
        kernel, stride, padding = random_pool_geometry(rng, 2)
        ceil_mode = rng.random() < 0.5
        shape = (
            rng.randint(1, 3),
            rng.randint(1, 5),
            rng.randint(kernel[0], 17),
            rng.randint(kernel[1], 17),
        )
        x = pooled_input(shape, dtype, device, channels_last)
        v, i = torch_pool(x, kernel, stride, padding, ceil_mode)
        with fastops.use_backend(backend):
            out = max_unpool2d(v, i, kernel, stride, padding, output_size=x.shape[-2:])
        expected = torch_unpool(v, i, kernel, stride, padding, x.shape[-2:])
        assert out.device.type == device
        assert out.dtype == dtype
        assert torch.equal(out.cpu(), expected), (kernel, stride, padding, ceil_mode, shape)
        assert out.is_contiguous(memory_format=pooling_memory_format(v))


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("dims", [1, 3])
def test_max_unpool1d_and_3d_match_torch(device, backend, dims):
    rng = random.Random(torch.initial_seed())
    for channels_last in [False, True] if dims == 3 else [False]:
        kernel, stride, padding = random_pool_geometry(rng, dims)
        spatial = [rng.randint(k, 9) for k in kernel]
        x = pooled_input((2, 3, *spatial), torch.float32, device, channels_last)
        v, i = torch_pool(x, kernel, stride, padding, ceil_mode=True)
        with fastops.use_backend(backend):
            out = fastops_unpool(v, i, kernel, stride, padding, spatial)
        assert torch.equal(out.cpu(), torch_unpool(v, i, kernel, stride, padding, spatial))


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_segnet_ceil_mode_odd_sizes(device, backend):
    """SegNet's 2x2/2 ceil-mode pools over a 360x480 input: 45x60 -> 23x30 needs
    output_size to come back to 45x60."""
    channels = 1 if backend == "triton" else 4
    for size in [(45, 60), (23, 30), (12, 15)]:
        x = pooled_input((2, channels, *size), torch.float32, device)
        v, i = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
        with fastops.use_backend(backend):
            out = max_unpool2d(v, i, 2, 2, output_size=size)
        assert out.shape[-2:] == size
        assert torch.equal(out.cpu(), F.max_unpool2d(v.cpu(), i.cpu(), 2, 2, output_size=size))


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_segnet_full_resolution_cpu(channels_last):
    x = pooled_input((1, 3, 360, 480), torch.float32, "cpu", channels_last)
    v, i = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
    with fastops.use_backend("cpu"):
        out = max_unpool2d(v, i, 2)
    assert torch.equal(out, F.max_unpool2d(v, i, 2))


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_unbatched_and_output_size_forms(device, backend):
    x = pooled_input((3, 9, 11), torch.float32, device)
    v, i = F.max_pool2d(x, 2, return_indices=True)
    expected = F.max_unpool2d(v.cpu(), i.cpu(), 2, output_size=(9, 11))
    with fastops.use_backend(backend):
        for output_size in [(9, 11), [9, 11], torch.Size([9, 11]), (1, 3, 9, 11)]:
            out = max_unpool2d(v, i, 2, output_size=output_size)
            assert out.shape == (3, 9, 11)
            assert torch.equal(out.cpu(), expected)
        v, i = F.max_pool2d(x[:, :8, :10], 2, return_indices=True)
        assert torch.equal(max_unpool2d(v, i, 2).cpu(), F.max_unpool2d(v.cpu(), i.cpu(), 2))


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_empty_batch(device, backend):
    v = torch.randn(0, 3, 4, 5, device=device)
    i = torch.zeros(0, 3, 4, 5, dtype=torch.int64, device=device)
    with fastops.use_backend(backend):
        out = max_unpool2d(v, i, 2)
        assert out.shape == (0, 3, 8, 10)
        grad_v = v.clone().requires_grad_()
        max_unpool2d(grad_v, i, 2).sum().backward()
        assert grad_v.grad.shape == v.shape


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_overlapping_windows(device, backend):
    """kernel 3, stride 2: a maximum shared by two windows is named twice, with equal values."""
    x = torch.randn(2, 3, 13, 12, device=device).round(decimals=1)  # ties on purpose
    v, i = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    with fastops.use_backend(backend):
        out = max_unpool2d(v, i, 3, 2, 1, output_size=x.shape[-2:])
    assert torch.equal(
        out.cpu(), F.max_unpool2d(v.cpu(), i.cpu(), 3, 2, 1, output_size=x.shape[-2:])
    )


def last_writer_unpool(v, i, plane):
    """out[n, c, i] = v, in raster order of the input: PyTorch CPU's rule."""
    n, c = v.shape[:2]
    out = torch.zeros(n, c, plane, dtype=v.dtype)
    for b in range(n):
        for ch in range(c):
            for value, index in zip(
                v[b, ch].flatten().tolist(), i[b, ch].flatten().tolist(), strict=True
            ):
                out[b, ch, index] = value
    return out


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
def test_stray_and_duplicate_indices_take_the_exact_scatter(device, backend, channels_last):
    """Arbitrary in-plane indices (outside their windows, colliding): the last
    writer in raster order wins, in either layout."""
    v = torch.randn(2, 3, 4, 5)
    i = torch.randint(0, 8 * 10, v.shape)
    expected = last_writer_unpool(v, i, 80).view(2, 3, 8, 10)
    assert torch.equal(expected, F.max_unpool2d(v, i, 2))
    if channels_last:
        v, i = v.to(memory_format=torch.channels_last), i.to(memory_format=torch.channels_last)
    with fastops.use_backend(backend):
        out = max_unpool2d(v.to(device), i.to(device), 2)
    assert torch.equal(out.cpu(), expected)


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_windows_outside_the_plane_take_the_scatter(device, backend):
    """padding > kernel // 2 puts whole windows outside the plane: the gather
    could not check their indices, so the scatter runs."""
    v = torch.randn(1, 2, 4, 4)
    i = torch.randint(0, 4 * 4, v.shape)
    expected = F.max_unpool2d(v, i, 2, 2, 2, output_size=(4, 4))
    with fastops.use_backend(backend):
        out = max_unpool2d(v.to(device), i.to(device), 2, 2, 2, output_size=(4, 4))
    assert torch.equal(out.cpu(), expected)


# --- int8 window offsets ------------------------------------------------------


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_max_pool2d_with_offsets_matches_torch(device, backend, dtype):
    rng = random.Random(torch.initial_seed())
    for channels_last in (False, True):
        kernel, stride, padding = random_pool_geometry(rng, 2)
        ceil_mode = rng.random() < 0.5
        x = torch.randn(
            2, 3, rng.randint(kernel[0], 15), rng.randint(kernel[1], 15), dtype=dtype, device=device
        )
        # NaN, -inf and ties: PyTorch's rules (the last NaN, the first of equal maxima).
        flat = x.view(-1)
        flat[torch.randint(0, flat.numel(), (3,))] = float("nan")
        flat[torch.randint(0, flat.numel(), (3,))] = float("-inf")
        x = x.round(decimals=1)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with fastops.use_backend(backend):
            values, offsets = max_pool2d_with_offsets(x, kernel, stride, padding, ceil_mode)
        expected_values, expected_positions = F.max_pool2d(
            x.cpu(), kernel, stride, padding, ceil_mode=ceil_mode, return_indices=True
        )
        assert offsets.dtype == torch.int8
        assert torch.equal(values.cpu(), expected_values) or torch.allclose(
            values.cpu(), expected_values, equal_nan=True, rtol=0, atol=0
        )
        positions = offsets_to_positions(offsets.cpu(), list(x.shape[-2:]), kernel, stride, padding)
        assert torch.equal(positions, expected_positions)
        assert values.is_contiguous(memory_format=pooling_memory_format(x))


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
def test_unpool_with_offsets_equals_unpool_with_positions(device, backend, dtype):
    x = pooled_input((2, 4, 45, 60), dtype, device)
    for kernel, stride, padding in [(2, 2, 0), (3, 2, 1), ((2, 3), (2, 3), (1, 0))]:
        with fastops.use_backend(backend):
            values, offsets = max_pool2d_with_offsets(x, kernel, stride, padding, ceil_mode=True)
            out = max_unpool2d(values, offsets, kernel, stride, padding, output_size=x.shape[-2:])
        v, i = F.max_pool2d(x.cpu(), kernel, stride, padding, ceil_mode=True, return_indices=True)
        assert torch.equal(
            out.cpu(), F.max_unpool2d(v, i, kernel, stride, padding, output_size=x.shape[-2:])
        )


# --- bad indices ----------------------------------------------------------------


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("bad", [-1, 80, 2**31 + 5, 2**32 + 3, -(2**40)])
def test_index_outside_the_plane_raises(device, backend, bad):
    """Including 2**32 + 3, which PyTorch's 2-D CUDA kernel truncates to 3."""
    v = torch.randn(2, 3, 4, 5, device=device)
    _, i = F.max_pool2d(torch.randn(2, 3, 8, 10, device=device), 2, return_indices=True)
    i = i.clone()
    i[1, 2, 3, 1] = bad
    with fastops.use_backend(backend), pytest.raises(RuntimeError, match=r"indices.*" + str(bad)):
        max_unpool2d(v, i, 2)


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("bad", [-3, 4, 100])
def test_bad_window_offset_raises(device, backend, bad):
    x = torch.randn(1, 2, 7, 7, device=device)
    with fastops.use_backend(backend):
        values, offsets = max_pool2d_with_offsets(x, 2, 2, ceil_mode=True)
        offsets = offsets.clone()
        offsets[0, 1, 2, 2] = bad
        with pytest.raises(RuntimeError, match=r"indices.*offset " + str(bad)):
            max_unpool2d(values, offsets, 2, 2, output_size=(7, 7))


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_offset_pointing_outside_a_smaller_output_raises(device, backend):
    """ceil mode pooled 7 -> 4 windows; an offset into the missing 8th row is
    outside an output of 7 rows."""
    x = torch.randn(1, 1, 8, 8, device=device)
    with fastops.use_backend(backend):
        values, offsets = max_pool2d_with_offsets(x, 2, 2)
        offsets = offsets.clone()
        offsets[0, 0, 3, 0] = 2  # row 7 of its window
        with pytest.raises(RuntimeError, match="indices"):
            max_unpool2d(values, offsets, 2, 2, output_size=(7, 8))


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_offset_past_the_right_edge_raises(device, backend):
    """An offset into the missing 8th column of a ceil-mode window must not wrap
    into the next row of the plane."""
    x = torch.randn(1, 1, 7, 7, device=device)
    with fastops.use_backend(backend):
        values, offsets = max_pool2d_with_offsets(x, 2, 2, ceil_mode=True)
        offsets = offsets.clone()
        offsets[0, 0, 1, 3] = 1  # row 2, column 7 of a 7-wide plane
        with pytest.raises(RuntimeError, match="indices"):
            max_unpool2d(values, offsets, 2, 2, output_size=(7, 7))


# --- gradients --------------------------------------------------------------------


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("index_kind", ["positions", "offsets"])
def test_gradcheck_max_unpool2d(device, backend, index_kind):
    x = pooled_input((2, 3, 7, 6), torch.float64, device)
    if index_kind == "offsets":
        with fastops.use_backend(backend):
            v, i = max_pool2d_with_offsets(x, 2, 2, ceil_mode=True)
    else:
        v, i = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
    v = v.detach().requires_grad_()
    with fastops.use_backend(backend):

        def unpool(values):
            return max_unpool2d(values, i, 2, 2, output_size=(7, 6))

        assert torch.autograd.gradcheck(unpool, (v,))
        assert torch.autograd.gradgradcheck(unpool, (v,))


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize(("kernel", "stride", "padding"), [(2, 2, 0), (3, 2, 1), (3, 1, 1)])
def test_gradcheck_max_pool2d_with_offsets(device, backend, kernel, stride, padding):
    x = pooled_input((1, 2, 7, 6), torch.float64, device).requires_grad_()
    with fastops.use_backend(backend):

        def pool(values):
            return max_pool2d_with_offsets(values, kernel, stride, padding, ceil_mode=True)[0]

        assert torch.autograd.gradcheck(pool, (x,))
        assert torch.autograd.gradgradcheck(pool, (x,))


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("dims", [1, 2, 3])
def test_backward_matches_torch(device, backend, dtype, dims):
    kernel = [2] * dims
    spatial = [7, 9, 6][-dims:] if dims < 3 else [5, 7, 6]
    x = pooled_input((2, 3, *spatial), dtype, device)
    v, i = torch_pool(x, kernel, kernel, [0] * dims, ceil_mode=True)
    grad_out = torch.randn(2, 3, *spatial, dtype=dtype, device=device)

    expected_v = v.detach().cpu().requires_grad_()
    torch_unpool(expected_v, i, kernel, kernel, [0] * dims, spatial).backward(grad_out.cpu())
    ours_v = v.detach().requires_grad_()
    with fastops.use_backend(backend):
        fastops_unpool(ours_v, i, kernel, kernel, [0] * dims, spatial).backward(grad_out)
    assert torch.equal(ours_v.grad.cpu(), expected_v.grad)


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_max_pool_backward_matches_torch(device, backend, dtype):
    for kernel, stride, padding in [(2, 2, 0), (3, 2, 1)]:
        x = pooled_input((2, 3, 9, 8), dtype, device)
        expected_x = x.detach().cpu().requires_grad_()
        expected = F.max_pool2d(expected_x, kernel, stride, padding, ceil_mode=True)
        grad = torch.randn(expected.shape, dtype=dtype, device=device)
        expected.backward(grad.cpu())
        ours_x = x.detach().requires_grad_()
        with fastops.use_backend(backend):
            max_pool2d_with_offsets(ours_x, kernel, stride, padding, ceil_mode=True)[0].backward(
                grad
            )
        torch.testing.assert_close(ours_x.grad.cpu(), expected_x.grad, rtol=1e-6, atol=1e-6)


# --- determinism, compile, opcheck --------------------------------------------------


@contextlib.contextmanager
def deterministic_algorithms():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_deterministic_mode_and_repeatability(device, backend):
    x = pooled_input((2, 4, 12, 10), torch.float32, device)
    v, i = F.max_pool2d(x, 3, 2, 1, return_indices=True)
    grad = torch.randn(2, 4, 12, 10, device=device)
    with deterministic_algorithms():
        with pytest.raises(RuntimeError, match="deterministic"):
            F.max_unpool2d(v, i, 3, 2, 1, output_size=(12, 10))  # PyTorch's refuses
        results = []
        for _ in range(2):
            values = v.detach().requires_grad_()
            with fastops.use_backend(backend):
                out = max_unpool2d(values, i, 3, 2, 1, output_size=(12, 10))
                out.backward(grad)
            results.append((out, values.grad))
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.slow
@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_torch_compile_fullgraph(device, backend):
    torch._dynamo.reset()
    x = pooled_input((2, 3, 9, 10), torch.float32, device)

    def segnet_stage(x):
        values, offsets = max_pool2d_with_offsets(x, 2, ceil_mode=True)
        v, i = F.max_pool2d(x, 2, ceil_mode=True, return_indices=True)
        return (
            max_unpool2d(values.relu(), offsets, 2, output_size=x.shape[-2:]),
            max_unpool2d(v.relu(), i, 2, output_size=x.shape[-2:]),
        )

    with fastops.use_backend(backend):
        eager = segnet_stage(x)
        compiled = torch.compile(segnet_stage, fullgraph=True, backend="aot_eager")(x)
    for a, b in zip(eager, compiled, strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_torch_compile_inductor_cpu():
    """The default inductor backend around the ops (the ops stay opaque calls)."""
    torch._dynamo.reset()
    x = pooled_input((2, 3, 9, 10), torch.float32, "cpu").requires_grad_()

    def stage(x):
        values, offsets = max_pool2d_with_offsets(x * 2, 2, ceil_mode=True)
        return max_unpool2d(values.relu(), offsets, 2, output_size=x.shape[-2:]).sum()

    with fastops.use_backend("cpu"):
        eager = stage(x)
        (eager_grad,) = torch.autograd.grad(eager, x)
        compiled = torch.compile(stage, fullgraph=True)(x)
        (compiled_grad,) = torch.autograd.grad(compiled, x)
    torch.testing.assert_close(compiled, eager)
    torch.testing.assert_close(compiled_grad, eager_grad)


def _sample_unpool_args(device, dtype, channels_last, index_kind):
    x = pooled_input((2, 3, 7, 8), dtype, device, channels_last)
    if index_kind == "offsets":
        with fastops.use_backend("reference"):
            v, i = max_pool2d_with_offsets(x, 2, 2, ceil_mode=True)
    else:
        v, i = F.max_pool2d(x, 2, 2, ceil_mode=True, return_indices=True)
    return v, i


@pytest.mark.parametrize(
    ("device", "backend"), [c for c in BACKEND_CASES if c.values[1] != "reference"]
)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("index_kind", ["positions", "offsets"])
def test_opcheck(device, backend, channels_last, index_kind):
    suffix = "_triton" if backend == "triton" else ""
    ops = torch.ops.fastops
    unpool = getattr(ops, f"max_unpool{suffix}")
    unpool_backward = getattr(ops, f"_max_unpool_backward{suffix}")
    pool = getattr(ops, f"max_pool_with_offsets{suffix}")
    pool_backward = getattr(ops, f"_max_pool_with_offsets_backward{suffix}")
    geometry = ([2, 2], [2, 2], [0, 0])
    for dtype in (torch.float32, torch.float64):
        v, i = _sample_unpool_args(device, dtype, channels_last, index_kind)
        for requires_grad in (False, True):
            values = v.detach().requires_grad_(requires_grad)
            torch.library.opcheck(unpool, (values, i, [7, 8], *geometry))
        grad = torch.randn(2, 3, 7, 8, dtype=dtype, device=device)
        torch.library.opcheck(unpool_backward, (grad, i, *geometry))
        x = pooled_input((2, 3, 7, 8), dtype, device, channels_last).requires_grad_()
        torch.library.opcheck(pool, (x, *geometry, True))
        _, offsets = pool(x, *geometry, True)
        torch.library.opcheck(pool_backward, (torch.randn_like(v), offsets, [7, 8], *geometry))
    empty = torch.empty(0, 3, 4, 4, device=device)
    torch.library.opcheck(unpool, (empty, empty.long(), [8, 8], *geometry))


# --- modules -------------------------------------------------------------------------


def test_modules_are_torch_modules_with_torch_arguments():
    for ours, theirs, args in [
        (fastops.nn.MaxUnpool1d, torch.nn.MaxUnpool1d, (3, 2, 1)),
        (fastops.nn.MaxUnpool2d, torch.nn.MaxUnpool2d, ((2, 3), None, 0)),
        (fastops.nn.MaxUnpool3d, torch.nn.MaxUnpool3d, (2,)),
    ]:
        module = ours(*args)
        reference = theirs(*args)
        assert isinstance(module, theirs)
        assert repr(module) == repr(reference)
        assert module.state_dict().keys() == reference.state_dict().keys()


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_max_unpool2d_module(device, backend):
    pool = torch.nn.MaxPool2d(2, 2, ceil_mode=True, return_indices=True)
    x = pooled_input((2, 3, 9, 7), torch.float32, device)
    v, i = pool(x)
    with fastops.use_backend(backend):
        out = fastops.nn.MaxUnpool2d(2, 2)(v, i, output_size=x.shape)
    assert torch.equal(out.cpu(), torch.nn.MaxUnpool2d(2, 2)(v.cpu(), i.cpu(), output_size=x.shape))


# --- argument errors --------------------------------------------------------------------


def test_bad_arguments_raise_clear_errors():
    v = torch.randn(2, 3, 4, 5)
    i = torch.zeros(2, 3, 4, 5, dtype=torch.int64)
    cases = [
        (TypeError, "input must be a torch.Tensor", lambda: max_unpool2d(v.numpy(), i, 2)),
        (TypeError, "indices must be a torch.Tensor", lambda: max_unpool2d(v, [0], 2)),
        (ValueError, "indices must have the shape", lambda: max_unpool2d(v, i[:, :2], 2)),
        (ValueError, "input must be 3-D", lambda: max_unpool2d(v[0, 0], i[0, 0], 2)),
        (ValueError, "input must be 2-D", lambda: max_unpool1d(v, i, 2)),
        (
            TypeError,
            "input must be float16, bfloat16, float32 or float64",
            lambda: max_unpool2d(v.int(), i, 2),
        ),
        (TypeError, "indices must be int64", lambda: max_unpool2d(v, i.int(), 2)),
        (
            TypeError,
            "indices must be int64",
            lambda: max_unpool3d(v[None], i[None].to(torch.int8), 2),
        ),
        (ValueError, "kernel_size must be positive", lambda: max_unpool2d(v, i, 0)),
        (ValueError, "stride must be positive", lambda: max_unpool2d(v, i, 2, stride=-1)),
        (ValueError, "padding must be non-negative", lambda: max_unpool2d(v, i, 2, padding=-1)),
        (TypeError, "kernel_size must be an int or a sequence", lambda: max_unpool2d(v, i, 2.5)),
        (
            TypeError,
            "kernel_size must be an int or a sequence",
            lambda: max_unpool2d(v, i, (2, 2, 2)),
        ),
        (ValueError, "invalid output_size", lambda: max_unpool2d(v, i, 2, output_size=(20, 10))),
        (
            ValueError,
            "output_size should be a sequence containing 2 or 4",
            lambda: max_unpool2d(v, i, 2, output_size=(8,)),
        ),
        (
            RuntimeError,
            "indices must be on the device of input",
            lambda: max_unpool2d(v, i.to("meta"), 2),
        ),
        (
            ValueError,
            "int8 window offsets need windows of at most 128",
            lambda: max_unpool2d(v, i.to(torch.int8), 12),
        ),
        (
            ValueError,
            "pad should be at most half",
            lambda: max_pool2d_with_offsets(v, 2, padding=2),
        ),
        (
            ValueError,
            "at most 128 elements",
            lambda: max_pool2d_with_offsets(torch.randn(1, 1, 40, 40), 12),
        ),
        (ValueError, "too small", lambda: max_pool2d_with_offsets(torch.randn(1, 1, 2, 2), 3)),
        (TypeError, "input must be float16", lambda: max_pool2d_with_offsets(v.long(), 2)),
        (ValueError, "input must be 3-D", lambda: max_pool2d_with_offsets(v[0, 0], 2)),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_registered_ops_check_their_arguments(backend):
    """The ops under torch.ops.fastops check too, for callers that skip fastops.ops."""
    suffix = "_triton" if backend == "triton" else ""
    unpool = getattr(torch.ops.fastops, f"max_unpool{suffix}")
    v = torch.randn(2, 3, 4, 5)
    with pytest.raises(RuntimeError, match="indices"):
        unpool(v, torch.zeros(2, 3, 4, 4, dtype=torch.int64), [8, 10], [2, 2], [2, 2], [0, 0])
    with pytest.raises(RuntimeError, match="indices"):
        unpool(v, torch.zeros(2, 3, 4, 5, dtype=torch.int32), [8, 10], [2, 2], [2, 2], [0, 0])
