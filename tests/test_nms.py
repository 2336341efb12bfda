"""nms, batched_nms, nms_padded, batched_nms_padded, soft_nms and box_iou on
every backend, against torchvision.ops (exact kept indices), fastops.reference
and a plain-Python soft-NMS."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from conftest import BACKEND_CASES

import fastops
from fastops.ops import batched_nms, batched_nms_padded, box_iou, nms, nms_padded, soft_nms

THRESHOLDS = [0.0, 0.2, 0.5, 0.8, 1.0]


def proposals(
    n: int, device="cpu", dtype=torch.float32, objects: int | None = None
) -> torch.Tensor:
    """Boxes like a detector's proposals: jittered copies of a few objects plus
    clutter, so that suppression has work to do."""
    objects = objects or max(1, n // 10)
    centre = torch.rand(objects, 2) * 400
    size = torch.exp(torch.rand(objects, 2) * 3) * 8
    which = torch.randint(0, objects, (n,))
    c = centre[which] + torch.randn(n, 2) * size[which] * 0.15
    s = size[which] * torch.exp(torch.randn(n, 2) * 0.15)
    boxes = torch.cat([c - s / 2, c + s / 2], dim=1)
    return boxes.to(device=device, dtype=dtype)


def distinct_scores(n: int, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Scores without ties (also after rounding to float16: n <= 1000)."""
    return ((torch.randperm(n).double() + 1) / (n + 1)).to(device=device, dtype=dtype)


def on(backend, fn, *args, **kwargs):
    with fastops.use_backend(backend):
        return fn(*args, **kwargs)


# --- nms / batched_nms against torchvision -----------------------------------


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("n", [1, 2, 37, 700])
def test_nms_matches_torchvision(device, backend, n):
    boxes, scores = proposals(n), distinct_scores(n)
    for threshold in THRESHOLDS:
        expected = torchvision.ops.nms(boxes, scores, threshold)
        kept = on(backend, nms, boxes.to(device), scores.to(device), threshold)
        assert kept.dtype == torch.int64 and kept.device.type == device
        assert torch.equal(kept.cpu(), expected), threshold


@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
def test_mixed_dtypes_under_autocast_as_torchvision(backend):
    """Under torch.autocast, bfloat16 boxes with float32 scores (a detector's
    head) are suppressed in float32, as torchvision's autocast kernel does;
    outside autocast the dtypes must agree."""
    boxes, scores = proposals(300, dtype=torch.bfloat16), distinct_scores(300)
    labels = torch.randint(0, 3, (300,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = torchvision.ops.nms(boxes, scores, 0.5)
        # torchvision's coordinate-offset trick rounds in bfloat16 here; per category
        # in float32 is the right answer.
        expected_batched = torchvision.ops.batched_nms(boxes.float(), scores, labels, 0.5)
        assert torch.equal(on(backend, nms, boxes, scores, 0.5), expected)
        assert torch.equal(on(backend, batched_nms, boxes, scores, labels, 0.5), expected_batched)
    with pytest.raises(TypeError, match="must have the dtype of boxes"):
        nms(boxes, scores, 0.5)


def pair_at_iou(iou: float) -> torch.Tensor:
    """Two boxes 100 wide, shifted along x so that their IoU is `iou`."""
    shift = 100 * (1 - iou) / (1 + iou)
    return torch.tensor([[0.0, 0.0, 100.0, 100.0], [shift, 0.0, 100.0 + shift, 100.0]])


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("threshold", [0.2, 0.5, 0.8])
def test_pairs_just_above_and_below_the_threshold(device, backend, threshold):
    for offset in (1e-5, -1e-5):
        boxes = torch.cat(
            [pair_at_iou(threshold + offset) + 300 * k for k in range(3)] + [proposals(20)]
        )
        scores = distinct_scores(boxes.shape[0])
        expected = torchvision.ops.nms(boxes, scores, threshold)
        assert torch.equal(
            on(backend, nms, boxes.to(device), scores.to(device), threshold).cpu(), expected
        )
        assert (offset > 0) == bool(box_iou(boxes[:1], boxes[1:2]) > threshold)


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("classes", [1, 3, 80])
def test_batched_nms_matches_torchvision(device, backend, classes):
    n = 600
    boxes, scores = proposals(n), distinct_scores(n)
    idxs = torch.randint(0, classes, (n,))
    for threshold in (0.3, 0.7):
        expected = torchvision.ops.batched_nms(boxes, scores, idxs, threshold)
        kept = on(
            backend, batched_nms, boxes.to(device), scores.to(device), idxs.to(device), threshold
        )
        assert torch.equal(kept.cpu(), expected)


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_batched_nms_is_not_fooled_by_negative_or_float16_coordinates(device, backend):
    """torchvision's coordinate-offset trick breaks here; categories compared in
    the kernel do not."""
    boxes = proposals(300) - 1000  # negative coordinates
    scores = distinct_scores(300)
    idxs = torch.randint(-5, 5, (300,))  # negative categories too
    expected = fastops.reference.batched_nms(boxes, scores, idxs, 0.5)
    for dtype in (torch.float32, torch.float16):
        kept = on(
            backend,
            batched_nms,
            boxes.to(device, dtype),
            scores.to(device, dtype),
            idxs.to(device),
            0.5,
        )
        reference = fastops.reference.batched_nms(boxes.to(dtype), scores.to(dtype), idxs, 0.5)
        assert torch.equal(kept.cpu(), reference)
    # Per category, it is plain nms.
    for category in idxs.unique():
        members = (idxs == category).nonzero().squeeze(1)
        inside = members[torchvision.ops.nms(boxes[members], scores[members], 0.5)]
        assert set(inside.tolist()) == set(expected[idxs[expected] == category].tolist())


def test_large_input_on_cpu():
    boxes, scores = proposals(20000, objects=500), distinct_scores(20000)
    assert torch.equal(on("cpu", nms, boxes, scores, 0.6), torchvision.ops.nms(boxes, scores, 0.6))
    idxs = torch.randint(0, 80, (20000,))
    assert torch.equal(
        on("cpu", batched_nms, boxes, scores, idxs, 0.6),
        torchvision.ops.batched_nms(boxes, scores, idxs, 0.6),
    )


# --- order, dtypes, edge cases -------------------------------------------------


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_equal_scores_keep_the_lower_index_first(device, backend):
    boxes = torch.tensor(
        [[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [50, 50, 60, 60], [0, 0, 10, 10.5]]
    )
    scores = torch.tensor([0.5, 0.5, 0.5, 0.9, 0.5])
    kept = on(backend, nms, boxes.to(device), scores.to(device), 0.5).cpu()
    assert kept.tolist() == [3, 0]
    # Random ties: every backend equals the reference, which sorts stably.
    boxes, scores = proposals(500), (torch.randint(0, 8, (500,)) / 8.0)
    idxs = torch.randint(0, 3, (500,))
    assert torch.equal(
        on(backend, nms, boxes.to(device), scores.to(device), 0.5).cpu(),
        fastops.reference.nms(boxes, scores, 0.5),
    )
    assert torch.equal(
        on(backend, batched_nms, boxes.to(device), scores.to(device), idxs.to(device), 0.5).cpu(),
        fastops.reference.batched_nms(boxes, scores, idxs, 0.5),
    )


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64], ids=str)
def test_dtypes(device, backend, dtype):
    """Coordinates are converted exactly and compared in float32 (float64 for
    float64), so torchvision on the upcast boxes decides the same."""
    boxes = proposals(100).to(dtype)
    scores = distinct_scores(100, dtype=torch.float64).to(dtype)
    assert scores.unique().numel() == 100
    upcast = torch.float64 if dtype == torch.float64 else torch.float32
    expected = torchvision.ops.nms(boxes.to(upcast), scores.to(upcast), 0.5)
    assert torch.equal(on(backend, nms, boxes.to(device), scores.to(device), 0.5).cpu(), expected)


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_empty_input(device, backend):
    boxes = torch.empty(0, 4, device=device)
    scores = torch.empty(0, device=device)
    idxs = torch.empty(0, dtype=torch.int64, device=device)
    with fastops.use_backend(backend):
        for kept in (nms(boxes, scores, 0.5), batched_nms(boxes, scores, idxs, 0.5)):
            assert kept.shape == (0,) and kept.dtype == torch.int64
        padded, count = nms_padded(boxes, scores, 0.5, 4)
        assert padded.tolist() == [-1] * 4 and int(count) == 0
        kept, kept_scores = soft_nms(boxes, scores, 0.5)
        assert kept.shape == (0,) and kept_scores.shape == (0,)
        assert box_iou(boxes, torch.rand(3, 4, device=device)).shape == (0, 3)


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_degenerate_boxes_and_non_finite_values(device, backend):
    """Defined by the IoU formula: zero-area twins give 0/0 = NaN and never
    suppress; a NaN coordinate makes every IoU with that box NaN; x2 < x1 gives
    a negative area; NaN scores sort first. Every backend agrees with the
    reference, and with torchvision where torchvision's arithmetic is the same."""
    base = proposals(60)
    special = torch.tensor(
        [
            [5.0, 5.0, 5.0, 5.0],  # zero area
            [5.0, 5.0, 5.0, 5.0],  # its twin
            [20.0, 20.0, 10.0, 10.0],  # x2 < x1, y2 < y1
            [float("nan"), 0.0, 10.0, 10.0],
            [0.0, 0.0, float("inf"), 10.0],
            [-float("inf"), 0.0, 10.0, 10.0],
        ]
    )
    boxes = torch.cat([special, base])
    scores = distinct_scores(boxes.shape[0])
    scores[7] = float("nan")
    expected = fastops.reference.nms(boxes, scores, 0.5)
    assert 0 in expected.tolist() and 1 in expected.tolist()  # zero-area twins both kept
    assert 3 in expected.tolist()  # the NaN box is kept and suppresses nothing
    assert expected[0] == 7  # NaN score first
    assert torch.equal(on(backend, nms, boxes.to(device), scores.to(device), 0.5).cpu(), expected)
    finite = torch.cat([special[:3], base])
    finite_scores = distinct_scores(finite.shape[0])
    assert torch.equal(
        on(backend, nms, finite.to(device), finite_scores.to(device), 0.5).cpu(),
        torchvision.ops.nms(finite, finite_scores, 0.5),
    )


# --- padded ---------------------------------------------------------------------


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_nms_padded_equals_nms_up_to_max_output(device, backend):
    boxes, scores = proposals(400), distinct_scores(400)
    idxs = torch.randint(0, 4, (400,))
    full = torchvision.ops.nms(boxes, scores, 0.5)
    full_batched = torchvision.ops.batched_nms(boxes, scores, idxs, 0.5)
    with fastops.use_backend(backend):
        for max_output in (0, 1, 17, full.numel(), full.numel() + 50):
            padded, count = nms_padded(boxes.to(device), scores.to(device), 0.5, max_output)
            k = min(max_output, full.numel())
            assert padded.shape == (max_output,) and count.shape == () and int(count) == k
            assert torch.equal(padded[:k].cpu(), full[:k])
            assert (padded[k:] == -1).all()
            padded, count = batched_nms_padded(
                boxes.to(device), scores.to(device), idxs.to(device), 0.5, max_output
            )
            k = min(max_output, full_batched.numel())
            assert int(count) == k and torch.equal(padded[:k].cpu(), full_batched[:k])
            assert (padded[k:] == -1).all()


@pytest.mark.cuda
def test_nms_padded_captures_in_a_cuda_graph():
    """No host synchronisation: capture succeeds and replays give fresh results."""
    boxes, scores = proposals(3000, "cuda"), distinct_scores(3000, "cuda")
    with fastops.use_backend("cuda"):
        nms_padded(boxes, scores, 0.5, 300)  # warm-up outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            padded, count = nms_padded(boxes, scores, 0.5, 300)
        boxes.copy_(proposals(3000, "cuda"))
        scores.copy_(distinct_scores(3000, "cuda"))
        graph.replay()
        expected = torchvision.ops.nms(boxes, scores, 0.5)[:300]
    assert int(count) == expected.numel() and torch.equal(padded[: expected.numel()], expected)


@pytest.mark.cuda
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_200k_boxes_on_gpu(backend):
    boxes, scores = proposals(200_000, "cuda", objects=20_000), torch.rand(200_000, device="cuda")
    kept = on(backend, nms, boxes, scores, 0.7)
    assert torch.equal(kept, torchvision.ops.nms(boxes, scores, 0.7))


# --- soft-NMS -----------------------------------------------------------------------


def python_soft_nms(boxes, scores, iou_threshold, sigma, score_threshold, method):
    """The paper's algorithm, in Python floats (double precision)."""
    boxes = boxes.tolist()
    scores = scores.tolist()
    alive = list(range(len(boxes)))
    kept, kept_scores = [], []

    def iou(a, b):
        w = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
        h = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
        inter = w * h
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    while alive:
        best = max(alive, key=lambda k: (scores[k], -k))
        if scores[best] < score_threshold:
            break
        kept.append(best)
        kept_scores.append(scores[best])
        alive.remove(best)
        for k in alive:
            overlap = iou(boxes[best], boxes[k])
            if method == "linear":
                scores[k] *= 1 - overlap if overlap > iou_threshold else 1.0
            else:
                scores[k] *= math.exp(-overlap * overlap / sigma)
    return kept, kept_scores


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("method", ["gaussian", "linear"])
def test_soft_nms_matches_the_paper(device, backend, method):
    boxes = proposals(80, dtype=torch.float64)
    scores = distinct_scores(80, dtype=torch.float64)
    expected, expected_scores = python_soft_nms(boxes, scores, 0.3, 0.5, 0.05, method)
    kept, kept_scores = on(
        backend, soft_nms, boxes.to(device), scores.to(device), 0.3, 0.5, 0.05, method
    )
    assert kept.cpu().tolist() == expected
    torch.testing.assert_close(
        kept_scores.cpu(), torch.tensor(expected_scores, dtype=torch.float64)
    )
    # float32: the same boxes kept, scores to float32 precision.
    kept32, scores32 = on(
        backend,
        soft_nms,
        boxes.float().to(device),
        scores.float().to(device),
        0.3,
        0.5,
        0.05,
        method,
    )
    assert kept32.cpu().tolist() == expected
    torch.testing.assert_close(
        scores32.cpu(), torch.tensor(expected_scores, dtype=torch.float32), rtol=1e-5, atol=1e-6
    )


# --- box_iou --------------------------------------------------------------------------


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_box_iou_matches_torchvision_and_has_gradients(device, backend):
    a, b = proposals(70), proposals(45)
    iou = on(backend, box_iou, a.to(device), b.to(device))
    assert torch.equal(iou.cpu(), torchvision.ops.box_iou(a, b))
    a64 = proposals(6, dtype=torch.float64).to(device).requires_grad_()
    b64 = (proposals(5, dtype=torch.float64) * 0.3).to(device).requires_grad_()
    with fastops.use_backend(backend):
        assert torch.autograd.gradcheck(box_iou, (a64, b64))


# --- compile, opcheck, errors ------------------------------------------------------------


def _op(name, backend):
    return getattr(torch.ops.fastops, name + ("_triton" if backend == "triton" else ""))


@pytest.mark.parametrize(
    ("device", "backend"), [c for c in BACKEND_CASES if c.values[1] != "reference"]
)
def test_opcheck(device, backend):
    boxes, scores = proposals(90, device), distinct_scores(90, device)
    idxs = torch.randint(0, 3, (90,), device=device)
    torch.library.opcheck(_op("nms", backend), (boxes, scores, 0.5))
    torch.library.opcheck(_op("batched_nms", backend), (boxes, scores, idxs, 0.5))
    torch.library.opcheck(_op("nms_padded", backend), (boxes, scores, None, 0.5, 20))
    torch.library.opcheck(_op("nms_padded", backend), (boxes, scores, idxs, 0.5, 20))
    torch.library.opcheck(_op("soft_nms", backend), (boxes[:20], scores[:20], 0.5, 0.5, 0.01, 0))
    for requires_grad in (False, True):
        a = proposals(7, device, torch.float64).requires_grad_(requires_grad)
        torch.library.opcheck(_op("box_iou", backend), (a, proposals(5, device, torch.float64)))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("device", "backend"), [c for c in BACKEND_CASES if c.values[1] != "reference"]
)
def test_torch_compile_fullgraph(device, backend):
    torch._dynamo.reset()
    boxes, scores = proposals(200, device), distinct_scores(200, device)
    idxs = torch.randint(0, 3, (200,), device=device)

    def detect(boxes, scores, idxs):
        padded, count = batched_nms_padded(boxes, scores, idxs, 0.5, 50)
        iou = box_iou(boxes[:10], boxes)
        return padded, count, iou.sum(), nms(boxes, scores * 2, 0.5)

    with fastops.use_backend(backend):
        eager = detect(boxes, scores, idxs)
        compiled = torch.compile(detect, fullgraph=True, backend="aot_eager")(boxes, scores, idxs)
    for a, b in zip(eager, compiled, strict=True):
        assert torch.equal(a, b)


def test_bad_arguments_raise_clear_errors():
    boxes, scores = proposals(10), distinct_scores(10)
    idxs = torch.zeros(10, dtype=torch.int64)
    cases = [
        (ValueError, "boxes must be \\[N, 4\\]", lambda: nms(boxes[:, :3], scores, 0.5)),
        (TypeError, "boxes must be a torch.Tensor", lambda: nms(boxes.tolist(), scores, 0.5)),
        (TypeError, "boxes must be float16", lambda: nms(boxes.long(), scores, 0.5)),
        (ValueError, "scores must be \\[N\\]", lambda: nms(boxes, scores[:9], 0.5)),
        (
            TypeError,
            "scores .* must have the dtype of boxes",
            lambda: nms(boxes, scores.double(), 0.5),
        ),
        (
            ValueError,
            "iou_threshold must be a number in \\[0.0, 1.0\\]",
            lambda: nms(boxes, scores, float("nan")),
        ),
        (ValueError, "iou_threshold must be a number in", lambda: nms(boxes, scores, 1.5)),
        (ValueError, "iou_threshold must be a number in", lambda: nms(boxes, scores, -0.1)),
        (TypeError, "iou_threshold must be a number", lambda: nms(boxes, scores, "0.5")),
        (
            TypeError,
            "idxs must have an integer dtype",
            lambda: batched_nms(boxes, scores, idxs.float(), 0.5),
        ),
        (ValueError, "idxs must be \\[N\\]", lambda: batched_nms(boxes, scores, idxs[:4], 0.5)),
        (
            RuntimeError,
            "idxs must be on the device of boxes",
            lambda: batched_nms(boxes, scores, idxs.to("meta"), 0.5),
        ),
        (
            ValueError,
            "max_output must be a non-negative int",
            lambda: nms_padded(boxes, scores, 0.5, -1),
        ),
        (ValueError, "sigma must be positive", lambda: soft_nms(boxes, scores, 0.5, sigma=0.0)),
        (
            ValueError,
            "method must be 'gaussian' or 'linear'",
            lambda: soft_nms(boxes, scores, 0.5, method="hard"),
        ),
        (
            TypeError,
            "boxes1 .* and boxes2 .* must have one dtype",
            lambda: box_iou(boxes, boxes.double()),
        ),
    ]
    for error, message, call in cases:
        with pytest.raises(error, match=message):
            call()


def test_registered_ops_check_their_arguments():
    """The C++ ops under torch.ops.fastops check too, for callers that skip fastops.ops."""
    boxes, scores = proposals(10), distinct_scores(10)
    with pytest.raises(RuntimeError, match="iou_threshold must be a number in \\[0, 1\\]"):
        torch.ops.fastops.nms(boxes, scores, 2.0)
    with pytest.raises(RuntimeError, match="idxs must have an integer dtype"):
        torch.ops.fastops.batched_nms(boxes, scores, scores, 0.5)
    with pytest.raises(RuntimeError, match="boxes1 must be \\[N, 4\\]"):
        torch.ops.fastops.box_iou(boxes[:, :2], boxes)
