"""roi_align, roi_pool, multi-level roi_align and the RoIAlign / RoIPool /
MultiScaleRoIAlign modules on every backend, against torchvision.ops (float64
as the oracle), fastops.reference and gradcheck."""

from __future__ import annotations

import pytest
import torch
import torchvision
from conftest import BACKEND_CASES

import fastops
from fastops.nn import MultiScaleRoIAlign, RoIAlign, RoIPool
from fastops.ops import multi_scale_roi_align, roi_align, roi_pool

# The Triton interpreter pays per program: its cases stay small.
SMALL = {"triton": True}


def on(backend, fn, *args, **kwargs):
    with fastops.use_backend(backend):
        return fn(*args, **kwargs)


def random_rois(
    k: int, batch: int, height: int, width: int, scale: float = 1.0, dtype=torch.float64
):
    """RoIs in image coordinates (feature size / scale): inside, partly and wholly
    outside the map, tiny and zero-size ones, and some with x2 < x1."""
    h, w = height / scale, width / scale
    x1 = torch.rand(k, dtype=torch.float64) * w * 1.3 - 0.15 * w
    y1 = torch.rand(k, dtype=torch.float64) * h * 1.3 - 0.15 * h
    size = torch.rand(k, 2, dtype=torch.float64) * torch.tensor([w, h], dtype=torch.float64) * 0.8
    size[::7] = 0.0  # zero-size
    size[3::11] *= 0.05  # tiny
    x2, y2 = x1 + size[:, 0], y1 + size[:, 1]
    x2[5::13] = x1[5::13] - 2.0  # x2 < x1
    image = torch.randint(0, batch, (k,)).double()
    return torch.stack([image, x1, y1, x2, y2], dim=1).to(dtype)


def feature_map(n, c, h, w, dtype=torch.float64, device="cpu", channels_last=False):
    x = torch.randn(n, c, h, w, dtype=dtype, device=device)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


ALIGN_SETTINGS = [
    # (output_size, spatial_scale, sampling_ratio, aligned)
    ((3, 4), 1.0, -1, False),
    ((2, 2), 0.5, 2, False),
    ((3, 2), 0.25, 0, True),
    ((1, 3), 0.5, 1, True),
]


# --- values against torchvision -----------------------------------------------------------


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_roi_align_matches_torchvision(device, backend, channels_last, dtype):
    n, c, h, w = 2, 3, 9, 11
    k = 6 if backend == "triton" else 40
    for output_size, scale, ratio, aligned in ALIGN_SETTINGS:
        x = feature_map(n, c, h, w, torch.float64, channels_last=channels_last)
        rois = random_rois(k, n, h, w, scale)
        expected = torchvision.ops.roi_align(x, rois, output_size, scale, ratio, aligned)
        out = on(
            backend,
            roi_align,
            x.to(device, dtype),
            rois.to(device, dtype),
            output_size,
            scale,
            ratio,
            aligned,
        )
        assert out.dtype == dtype and out.shape == expected.shape
        assert out.is_contiguous(
            memory_format=torch.channels_last if channels_last else torch.contiguous_format
        )
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        torch.testing.assert_close(out.cpu().double(), expected, rtol=tol, atol=tol)


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_roi_pool_matches_torchvision_with_argmax(device, backend, channels_last):
    n, c, h, w = 2, 3, 10, 9
    k = 6 if backend == "triton" else 40
    for output_size, scale in (((3, 4), 1.0), ((2, 2), 0.5), ((4, 3), 0.25)):
        x = feature_map(n, c, h, w, channels_last=channels_last)
        rois = random_rois(k, n, h, w, scale)
        expected, expected_arg = torch.ops.torchvision.roi_pool(x, rois, scale, *output_size)
        name = "roi_pool_triton" if backend == "triton" else "roi_pool"
        if backend == "reference":
            out, arg = fastops.reference.roi_pool(
                x.to(device), rois.to(device), scale, *output_size
            )
        else:
            out, arg = getattr(torch.ops.fastops, name)(
                x.to(device), rois.to(device), scale, *output_size
            )
        assert arg.dtype == torch.int32
        torch.testing.assert_close(out.cpu(), expected, rtol=0, atol=0)
        assert torch.equal(arg.cpu(), expected_arg)
        public = on(backend, roi_pool, x.to(device), rois.to(device), output_size, scale)
        assert torch.equal(public.cpu(), expected)


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_list_of_boxes_is_the_tensor_form(device, backend):
    x = feature_map(3, 2, 8, 8, device=device)
    boxes = [random_rois(3, 1, 8, 8)[:, 1:].to(device), random_rois(2, 1, 8, 8)[:, 1:].to(device)]
    rois = torch.cat(
        [
            torch.cat([torch.full((len(b), 1), i, dtype=b.dtype, device=device), b], 1)
            for i, b in enumerate(boxes)
        ]
    )
    for fn in (roi_align, roi_pool):
        assert torch.equal(on(backend, fn, x, boxes, 2), on(backend, fn, x, rois, 2))
        torch.testing.assert_close(
            on(backend, fn, x, boxes, 2).cpu(),
            getattr(torchvision.ops, fn.__name__)(x.cpu(), [b.cpu() for b in boxes], 2),
            rtol=1e-12,
            atol=1e-12,
        )


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_within_the_error_of_the_dtype(device, backend, dtype):
    """16-bit inputs accumulate in float32: the error against the float32 result
    is that of rounding the inputs and the output, not of the sums."""
    n, c, h, w = 2, 4, 12, 10
    x = feature_map(n, c, h, w, torch.float32)
    rois = random_rois(5 if backend == "triton" else 30, n, h, w, 0.5, torch.float32)
    x16, rois16 = x.to(dtype), rois.to(dtype)
    expected = torchvision.ops.roi_align(x16.float(), rois16.float(), (3, 3), 0.5, 2, True)
    out = on(backend, roi_align, x16.to(device), rois16.to(device), (3, 3), 0.5, 2, True)
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(out.cpu().float(), expected, rtol=2 * eps, atol=2 * eps)
    pooled = on(backend, roi_pool, x16.to(device), rois16.to(device), (3, 3), 0.5)
    assert torch.equal(
        pooled.cpu().float(), torchvision.ops.roi_pool(x16.float(), rois16.float(), 3, 0.5)
    )


# --- gradients ------------------------------------------------------------------------------


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradients_match_torchvision(device, backend, channels_last):
    n, c, h, w = 2, 3, 8, 9
    k = 5 if backend == "triton" else 25
    for output_size, scale, ratio, aligned in ALIGN_SETTINGS:
        x = feature_map(n, c, h, w, channels_last=channels_last).requires_grad_()
        rois = random_rois(k, n, h, w, scale)
        grad = torch.randn(k, c, *output_size, dtype=torch.float64)
        expected = torch.autograd.grad(
            torchvision.ops.roi_align(x, rois, output_size, scale, ratio, aligned), x, grad
        )[0]
        xd = x.detach().to(device).requires_grad_()
        out = on(backend, roi_align, xd, rois.to(device), output_size, scale, ratio, aligned)
        (got,) = torch.autograd.grad(out, xd, grad.to(device))
        if channels_last and backend != "reference":  # the reference's layout is autograd's
            assert got.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-12, atol=1e-12)
    x = feature_map(n, c, h, w, channels_last=channels_last).requires_grad_()
    rois = random_rois(k, n, h, w, 0.5)
    expected = torch.autograd.grad(torchvision.ops.roi_pool(x, rois, 3, 0.5).sum(), x)[0]
    xd = x.detach().to(device).requires_grad_()
    (got,) = torch.autograd.grad(on(backend, roi_pool, xd, rois.to(device), 3, 0.5).sum(), xd)
    torch.testing.assert_close(got.cpu(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("seed_offset", range(3))
def test_gradcheck(device, backend, seed_offset):
    torch.manual_seed(torch.initial_seed() + seed_offset)
    x = feature_map(2, 2, 6, 7, device=device).requires_grad_()
    rois = random_rois(4, 2, 6, 7, 0.5).to(device)
    # The interpreter pays per call: Triton checks random projections of the Jacobian.
    fast = backend == "triton"
    # roi_pool is piecewise linear: finite differences hold only away from ties,
    # so its input is a permutation of values 1e-3 apart (gradcheck's eps is 1e-6).
    tie_free = (torch.randperm(x.numel(), dtype=torch.float64) * 1e-3).view_as(x).to(device)
    with fastops.use_backend(backend):
        for fn, t in (
            (lambda x: roi_align(x, rois, (2, 3), 0.5, 2, True), x),
            (lambda x: roi_align(x, rois, 2, 0.5, -1, False), x),
            (lambda x: roi_pool(x, rois, (2, 3), 0.5), tie_free.requires_grad_()),
        ):
            assert torch.autograd.gradcheck(fn, (t,), fast_mode=fast)


@pytest.mark.parametrize(
    ("device", "backend"), [c for c in BACKEND_CASES if c.values[1] != "reference"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deterministic_backward_is_bitwise_repeatable(device, backend, dtype):
    n, c, h, w = 2, 5 if backend == "triton" else 40, 12, 12
    x = feature_map(n, c, h, w, dtype, device).requires_grad_()
    rois = random_rois(6 if backend == "triton" else 200, n, h, w, 0.5, dtype).to(device)
    grad = torch.randn(rois.shape[0], c, 4, 4, dtype=dtype, device=device)

    def gradients():
        with fastops.use_backend(backend):
            a = torch.autograd.grad(roi_align(x, rois, 4, 0.5, 2, True), x, grad)[0]
            b = torch.autograd.grad(roi_pool(x, rois, 4, 0.5), x, grad)[0]
        return a, b

    torch.use_deterministic_algorithms(True)
    try:
        first = gradients()
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            again = gradients()
        finally:
            torch.set_num_threads(threads)
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(first, again, strict=True):
        assert torch.equal(a, b)
    nondeterministic = gradients()
    for a, b in zip(first, nondeterministic, strict=True):
        torch.testing.assert_close(a.float(), b.float(), rtol=1e-2, atol=1e-2)


def test_cpu_and_triton_forward_and_deterministic_backward_agree_bitwise():
    """The shared math (roi_align_math.h) and a fixed summation order give the
    same bits on both backends."""
    x = feature_map(2, 3, 9, 8, torch.float32).requires_grad_()
    rois = random_rois(5, 2, 9, 8, 0.5, torch.float32)
    grad = torch.randn(5, 3, 2, 3)
    results = []
    torch.use_deterministic_algorithms(True)
    try:
        for backend in ("cpu", "triton"):
            with fastops.use_backend(backend):
                out = roi_align(x, rois, (2, 3), 0.5, 0, True)
                results.append((out, torch.autograd.grad(out, x, grad)[0]))
    finally:
        torch.use_deterministic_algorithms(False)
    assert torch.equal(results[0][0], results[1][0])
    assert torch.equal(results[0][1], results[1][1])


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_gpu_forward_and_deterministic_backward_equal_the_cpu_bitwise(
    backend, channels_last, dtype
):
    """Same sampling math, same summation order: the GPU kernels reproduce the
    CPU's bits, also with more than 64 RoIs over one tile (several rounds of
    the gather's RoI list) and channel counts that fill no vector evenly."""
    x = feature_map(2, 70, 23, 29, dtype, channels_last=channels_last)
    rois = random_rois(300, 2, 23, 29, 0.5, dtype)
    grad = torch.randn(300, 70, 3, 4, dtype=dtype)
    results = {}
    torch.use_deterministic_algorithms(True)
    try:
        for device, name in (("cpu", "cpu"), ("cuda", backend)):
            xd = x.detach().to(device).requires_grad_()
            with fastops.use_backend(name):
                out = roi_align(xd, rois.to(device), (3, 4), 0.5, 0, True)
                (g,) = torch.autograd.grad(out, xd, grad.to(device))
                pooled = roi_pool(xd, rois.to(device), (3, 4), 0.5)
                (gp,) = torch.autograd.grad(pooled, xd, grad.to(device))
            results[device] = [t.cpu() for t in (out, g, pooled, gp)]
    finally:
        torch.use_deterministic_algorithms(False)
    for a, b in zip(results["cpu"], results["cuda"], strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize(
    ("device", "backend"), [c for c in BACKEND_CASES if c.values[1] != "reference"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_deterministic_backward_is_the_same_in_both_layouts(device, backend, dtype):
    """The fixed summation order does not depend on the memory layout."""
    x = feature_map(2, 6 if backend == "triton" else 37, 13, 11, dtype, device)
    rois = random_rois(6 if backend == "triton" else 120, 2, 13, 11, 0.5, dtype).to(device)
    grad = torch.randn(rois.shape[0], x.shape[1], 3, 2, dtype=dtype, device=device)
    grads = []
    torch.use_deterministic_algorithms(True)
    try:
        for memory_format in (torch.contiguous_format, torch.channels_last):
            xd = x.contiguous(memory_format=memory_format).requires_grad_()
            with fastops.use_backend(backend):
                out = roi_align(xd, rois, (3, 2), 0.5, 0, True)
                grads.append(torch.autograd.grad(out, xd, grad)[0])
    finally:
        torch.use_deterministic_algorithms(False)
    assert grads[1].is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(grads[0], grads[1])


# --- edge cases ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_edge_cases(device, backend):
    x = feature_map(2, 3, 6, 6, device=device).requires_grad_()
    # No RoIs.
    none = torch.zeros(0, 5, dtype=torch.float64, device=device)
    out = on(backend, roi_align, x, none, 2)
    assert out.shape == (0, 3, 2, 2)
    (g,) = torch.autograd.grad(out.sum(), x, allow_unused=True, materialize_grads=True)
    assert torch.equal(g, torch.zeros_like(g))
    assert on(backend, roi_pool, x, none, 2).shape == (0, 3, 2, 2)
    # NaN and infinite coordinates: zeros (torchvision: zeros for NaN).
    bad = torch.tensor(
        [[0, float("nan"), 1, 3, 3], [1, 0, 0, float("inf"), 2], [0, -float("inf"), 0, 2, 2]],
        dtype=torch.float64,
        device=device,
    )
    assert torch.equal(
        on(backend, roi_align, x, bad, 2),
        torch.zeros(3, 3, 2, 2, dtype=torch.float64, device=device),
    )
    assert torch.equal(
        on(backend, roi_align, x, bad, 2, 1.0, 0),
        torch.zeros(3, 3, 2, 2, dtype=torch.float64, device=device),
    )
    assert torch.equal(
        on(backend, roi_pool, x, bad, 2),
        torch.zeros(3, 3, 2, 2, dtype=torch.float64, device=device),
    )
    expected = torchvision.ops.roi_align(x.detach().cpu(), bad[:1].cpu(), 2)
    assert torch.equal(on(backend, roi_align, x, bad[:1], 2).cpu(), expected)
    # A RoI wholly outside the map.
    far = torch.tensor([[1, 100.0, 100, 120, 130]], dtype=torch.float64, device=device)
    assert torch.equal(
        on(backend, roi_align, x, far, 2).cpu(),
        torchvision.ops.roi_align(x.detach().cpu(), far.cpu(), 2),
    )
    assert torch.equal(
        on(backend, roi_pool, x, far, 2).cpu(),
        torchvision.ops.roi_pool(x.detach().cpu(), far.cpu(), 2),
    )
    # No channels / empty feature map.
    empty_c = feature_map(2, 0, 6, 6, device=device)
    roi = torch.tensor([[0, 1.0, 1, 4, 4]], dtype=torch.float64, device=device)
    assert on(backend, roi_align, empty_c, roi, 2).shape == (1, 0, 2, 2)
    empty_hw = feature_map(2, 3, 0, 5, device=device)
    assert torch.equal(
        on(backend, roi_align, empty_hw, roi, 2),
        torch.zeros(1, 3, 2, 2, dtype=torch.float64, device=device),
    )


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_nan_in_a_roi_pool_window_is_its_maximum(device, backend):
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    x[0, 0, 1, 2] = float("nan")
    rois = torch.tensor([[0, 0, 0, 3, 3], [1, 0, 0, 3, 3]], dtype=torch.float32)
    if backend == "reference":
        out, arg = fastops.reference.roi_pool(x.to(device), rois.to(device), 1.0, 1, 1)
    else:
        name = "roi_pool_triton" if backend == "triton" else "roi_pool"
        out, arg = getattr(torch.ops.fastops, name)(x.to(device), rois.to(device), 1.0, 1, 1)
    assert torch.isnan(out[0, 0, 0, 0]) and arg[0, 0, 0, 0] == 1 * 4 + 2
    assert out[1, 0, 0, 0] == 31 and arg[1, 0, 0, 0] == 15


# --- MultiScaleRoIAlign -----------------------------------------------------------------------


def pyramid(n=2, c=3, device="cpu", dtype=torch.float64, channels_last=False):
    """Four FPN-like levels for 64 x 96 images (scales 1/4 ... 1/32)."""
    sizes = [(16, 24), (8, 12), (4, 6), (2, 3)]
    return {
        str(i): feature_map(n, c, h, w, dtype, device, channels_last)
        for i, (h, w) in enumerate(sizes)
    }


def pyramid_boxes(counts, device="cpu", dtype=torch.float64):
    boxes = []
    for count in counts:
        x1 = torch.rand(count, dtype=torch.float64) * 80
        y1 = torch.rand(count, dtype=torch.float64) * 50
        size = torch.exp(
            torch.rand(count, 2, dtype=torch.float64) * 4.5
        )  # 1 to 90 pixels: every level
        boxes.append(torch.stack([x1, y1, x1 + size[:, 0], y1 + size[:, 1]], 1).to(device, dtype))
    return boxes


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_multi_scale_roi_align_matches_torchvision(device, backend, channels_last):
    features = pyramid(channels_last=channels_last)
    boxes = pyramid_boxes([4, 3] if backend == "triton" else [30, 20])
    shapes = [(64, 96), (60, 90)]
    expected_module = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], (3, 2), 2)
    module = MultiScaleRoIAlign(["0", "1", "2", "3"], (3, 2), 2)
    leaves = {k: v.clone().requires_grad_() for k, v in features.items()}
    expected = expected_module(leaves, boxes, shapes)
    grad = torch.randn_like(expected)
    expected_grads = torch.autograd.grad(expected, list(leaves.values()), grad)
    inputs = {k: v.detach().to(device).requires_grad_() for k, v in features.items()}
    with fastops.use_backend(backend):
        out = module(inputs, [b.to(device) for b in boxes], shapes)
    assert module.scales == expected_module.scales == [0.25, 0.125, 0.0625, 0.03125]
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-12, atol=1e-12)
    grads = torch.autograd.grad(out, list(inputs.values()), grad.to(device))
    for got, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(got.cpu(), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_multi_scale_with_one_level_and_filtered_names(device, backend):
    features = pyramid(device=device)
    features["pool"] = torch.randn(2, 3, 1, 2, dtype=torch.float64, device=device)
    boxes = pyramid_boxes([3, 2], device)
    for names in (["0"], ["1", "3"]):
        module = MultiScaleRoIAlign(names, 2, -1)
        expected = torchvision.ops.MultiScaleRoIAlign(names, 2, -1)(
            {k: v.cpu() for k, v in features.items()}, [b.cpu() for b in boxes], [(64, 96)]
        )
        with fastops.use_backend(backend):
            out = module(features, boxes, [(64, 96)])
        torch.testing.assert_close(out.cpu(), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_multi_scale_roi_align_captures_in_a_cuda_graph(backend):
    """No host synchronisation: the whole box head replays from a CUDA graph."""
    features = pyramid(device="cuda", dtype=torch.float32)
    boxes = pyramid_boxes([30, 20], "cuda", torch.float32)
    module = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    with fastops.use_backend(backend):
        expected = module(features, boxes, [(64, 96)])  # infers and caches the scales
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            module(features, boxes, [(64, 96)])  # warm-up (Triton compiles) off the capture
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = module(features, boxes, [(64, 96)])
    for f in features.values():
        f.normal_()
    graph.replay()
    with fastops.use_backend(backend):
        fresh = module(features, boxes, [(64, 96)])
    assert not torch.equal(fresh, expected)
    torch.testing.assert_close(captured, fresh, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
def test_mixed_dtypes_under_autocast_compute_in_float32(backend):
    """As torchvision's autocast kernels: boxes and features of different dtypes
    are pooled in float32 and returned in the features' dtype."""
    x = feature_map(2, 3, 9, 9, dtype=torch.bfloat16)
    rois = random_rois(6, 2, 9, 9, 0.5, dtype=torch.float32)
    features = pyramid(dtype=torch.bfloat16)
    boxes = pyramid_boxes([3, 2], dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = torchvision.ops.roi_align(x, rois, 2, 0.5, 2)
        expected_pool = torchvision.ops.roi_pool(x.float(), rois, 2, 0.5).bfloat16()
        expected_multi = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 2, 2)(
            features, boxes, [(64, 96)]
        )
        with fastops.use_backend(backend):
            got = roi_align(x, rois, 2, 0.5, 2)
            got_pool = roi_pool(x, rois, 2, 0.5)
            got_multi = MultiScaleRoIAlign(["0", "1", "2", "3"], 2, 2)(features, boxes, [(64, 96)])
    for value, reference in (
        (got, expected),
        (got_pool, expected_pool),
        (got_multi, expected_multi),
    ):
        assert value.dtype == torch.bfloat16
        torch.testing.assert_close(value, reference, rtol=0, atol=0)
    with pytest.raises(TypeError, match="must have the dtype of input"):
        roi_align(x, rois, 2)  # outside autocast


def test_multi_scale_attributes_as_torchvision():
    """``scales`` and ``map_levels`` as torchvision keeps them: set on the first
    call, and ``scales`` may be set by hand (``map_levels`` follows)."""
    features = pyramid()
    boxes = pyramid_boxes([5, 4])
    module = MultiScaleRoIAlign(["0", "1", "2", "3"], 2, 2)
    expected_module = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 2, 2)
    assert module.scales is None and module.map_levels is None
    expected = expected_module(features, boxes, [(64, 96)])
    torch.testing.assert_close(module(features, boxes, [(64, 96)]), expected)
    assert module.scales == expected_module.scales
    assert torch.equal(module.map_levels(boxes), expected_module.map_levels(boxes))
    by_hand = MultiScaleRoIAlign(["0", "1", "2", "3"], 2, 2)
    by_hand.scales = list(expected_module.scales)
    torch.testing.assert_close(by_hand(features, boxes, [(64, 96)]), expected)
    half = [b.half() for b in boxes]
    assert torch.equal(module.map_levels(half), expected_module.map_levels(half))


def test_modules_match_torchvision_modules():
    x = feature_map(2, 3, 9, 9)
    rois = random_rois(10, 2, 9, 9, 0.5)
    assert torch.equal(
        RoIAlign((2, 3), 0.5, 2, True)(x, rois),
        torchvision.ops.RoIAlign((2, 3), 0.5, 2, True)(x, rois),
    )
    assert torch.equal(RoIPool(3, 0.5)(x, rois), torchvision.ops.RoIPool(3, 0.5)(x, rois))
    assert repr(RoIAlign((2, 3), 0.5, 2, True)) == repr(
        torchvision.ops.RoIAlign((2, 3), 0.5, 2, True)
    )
    assert repr(RoIPool(3, 0.5)) == repr(torchvision.ops.RoIPool(3, 0.5))


# --- opcheck, compile, errors -----------------------------------------------------------------


def _op(name, backend):
    return getattr(torch.ops.fastops, name + ("_triton" if backend == "triton" else ""))


@pytest.mark.parametrize(
    ("device", "backend"), [c for c in BACKEND_CASES if c.values[1] != "reference"]
)
@pytest.mark.parametrize("channels_last", [False, True])
def test_opcheck(device, backend, channels_last):
    x = feature_map(2, 3, 6, 7, device=device, channels_last=channels_last).requires_grad_()
    rois = random_rois(4, 2, 6, 7, 0.5).to(device)
    torch.library.opcheck(_op("roi_align", backend), (x, rois, 0.5, 2, 3, 2, True))
    torch.library.opcheck(_op("roi_pool", backend), (x, rois, 0.5, 2, 3))
    levels = torch.tensor([0, 1, 1, 0], device=device)
    coarse = feature_map(2, 3, 3, 4, device=device, channels_last=channels_last).requires_grad_()
    torch.library.opcheck(
        _op("multi_scale_roi_align", backend),
        ([x, coarse], rois, levels, [0.5, 0.25], 2, 2, -1, False),
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("device", "backend"), [c for c in BACKEND_CASES if c.values[1] != "reference"]
)
def test_torch_compile_fullgraph(device, backend):
    torch._dynamo.reset()
    features = pyramid(device=device, dtype=torch.float32)
    boxes = pyramid_boxes([3, 2], device, torch.float32)
    module = MultiScaleRoIAlign(["0", "1", "2", "3"], 2, 2)

    def head(features, boxes):
        pooled = module(features, boxes, [(64, 96)])
        rois = torch.cat([torch.zeros(5, 1, device=device), torch.cat(boxes)], 1)
        return (
            pooled
            + roi_align(features["0"], rois, 2, 0.25, 2, True)
            + roi_pool(features["1"], rois, 2, 0.125)
        )

    with fastops.use_backend(backend):
        eager = head(features, boxes)
        compiled = torch.compile(head, fullgraph=True, backend="aot_eager")(features, boxes)
    torch.testing.assert_close(compiled, eager, rtol=0, atol=0)


def test_bad_arguments_raise_clear_errors():
    x = feature_map(2, 3, 6, 6)
    rois = random_rois(4, 2, 6, 6)
    with pytest.raises(ValueError, match="boxes must be a \\[K, 5\\]"):
        roi_align(x, rois[:, 1:], 2)
    with pytest.raises(ValueError, match="boxes\\[1\\] must be an \\[L, 4\\]"):
        roi_align(x, [rois[:, 1:], rois], 2)
    with pytest.raises(TypeError, match=r"boxes \(torch.float32\) must have the dtype of input"):
        roi_align(x, rois.float(), 2)
    with pytest.raises(ValueError, match="output_size must be positive"):
        roi_align(x, rois, (0, 2))
    with pytest.raises(ValueError, match="output_size must be positive"):
        roi_pool(x, rois, -1)
    with pytest.raises(ValueError, match="spatial_scale must be finite and positive"):
        roi_align(x, rois, 2, spatial_scale=0.0)
    with pytest.raises(TypeError, match="sampling_ratio must be an int"):
        roi_align(x, rois, 2, sampling_ratio=1.5)
    with pytest.raises(ValueError, match="input must be \\[N, C, H, W\\]"):
        roi_align(x[0], rois, 2)
    with pytest.raises(TypeError, match="input must be float16"):
        roi_pool(x.long(), rois.long(), 2)
    with pytest.raises(IndexError, match="boxes is a list of 3 tensors for a batch of 2"):
        roi_pool(x, [rois[:, 1:]] * 3, 2)
    with pytest.raises(TypeError, match="levels must be an int64 tensor"):
        multi_scale_roi_align([x, x], rois, torch.zeros(4, dtype=torch.int32), [1.0, 0.5], 2, 2)
    for backend in ("cpu", "triton", "reference"):
        for bad_index in (2.0, -1.0, float("nan")):
            bad = rois.clone()
            bad[2, 0] = bad_index
            for fn in (roi_align, roi_pool):
                with pytest.raises(IndexError, match="rois\\[2, 0\\] is not a batch index"):
                    on(backend, fn, x, bad, 2)
    # The ops themselves (no public-API checks in front) raise too.
    bad = rois.clone()
    bad[1, 0] = 5
    for backend in ("cpu", "triton"):
        with pytest.raises(IndexError, match="rois\\[1, 0\\] is not a batch index"):
            _op("roi_align", backend)(x, bad, 1.0, 2, 2, -1, False)
        with pytest.raises(IndexError, match="levels\\[0\\] is not a level in \\[0, 2\\)"):
            _op("multi_scale_roi_align", backend)(
                [x, x], rois, torch.tensor([5, 0, 0, 0]), [1.0, 0.5], 2, 2, -1, False
            )
