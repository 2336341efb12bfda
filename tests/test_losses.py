"""Tests of fastops.losses: soft Dice, BCE − ln(Dice), Lovász-softmax and
Lovász-hinge, on every backend, against the plain-PyTorch references (written
from the paper, float64), segmentation_models_pytorch's DiceLoss and its port
of Berman's Lovász functions, and hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import BACKEND_CASES

import fastops
from fastops import losses, reference


@pytest.fixture
def smp():
    """segmentation_models_pytorch's losses module (a test reference; the GPU machine may lack it)."""
    return pytest.importorskip("segmentation_models_pytorch.losses")


def berman_lovasz_softmax(*args, **kwargs):
    from segmentation_models_pytorch.losses.lovasz import _lovasz_softmax

    return _lovasz_softmax(*args, **kwargs)


def berman_lovasz_hinge(*args, **kwargs):
    from segmentation_models_pytorch.losses.lovasz import _lovasz_hinge

    return _lovasz_hinge(*args, **kwargs)


COMPILED_BACKENDS = [c for c in BACKEND_CASES if c.values[1] != "reference"]
DTYPES_HALF = [torch.float16, torch.bfloat16]


def on(backend, fn, *args, **kwargs):
    with fastops.use_backend(backend):
        return fn(*args, **kwargs)


def value_and_grad(backend, fn, x, *args, **kwargs):
    x = x.detach().clone().requires_grad_()
    with fastops.use_backend(backend):
        loss = fn(x, *args, **kwargs)
    (grad,) = torch.autograd.grad(loss, x)
    return loss.detach(), grad


def small_shape(backend):
    """Triton runs in its interpreter on CPU: keep the grids tiny there."""
    return (2, 4, 5, 7) if backend == "triton" else (3, 5, 9, 11)


def labels_for(shape, classes, device, ignore=None, ignore_share=0.15):
    n, _, *spatial = shape
    y = torch.randint(0, classes, (n, *spatial), device=device)
    if ignore is not None:
        y[torch.rand(y.shape, device=device) < ignore_share] = ignore
    return y


# --- Lovász-softmax ---------------------------------------------------------------------------


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("classes", ["present", "all", [3, 1, 1]])
@pytest.mark.parametrize("from_logits", [False, True])
def test_lovasz_softmax_matches_reference(device, backend, per_image, classes, from_logits):
    shape = small_shape(backend)
    x = torch.randn(shape, dtype=torch.float64, device=device) * 2
    y = labels_for(shape, shape[1] - 1, device, ignore=255)  # the last class is absent
    inputs = x if from_logits else x.softmax(1)
    args = (y, classes, per_image, 255)
    value, grad = value_and_grad(
        backend, losses.lovasz_softmax, inputs, *args, from_logits=from_logits
    )
    expected, expected_grad = value_and_grad(
        "reference", reference.lovasz_softmax, inputs, *args, from_logits=from_logits
    )
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)
    assert grad.shape == inputs.shape


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("classes", ["present", "all", [0, 2]])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_lovasz_softmax_matches_berman(per_image, classes, backend, smp):
    """Berman's code (segmentation_models_pytorch's copy) in float32, where it works."""
    x = torch.randn(3, 4, 13, 17)
    y = labels_for(x.shape, 4, "cpu", ignore=255)
    y[1] = torch.where(y[1] == 2, 0, y[1])  # class 2 absent from image 1
    probas = x.softmax(1)
    value, grad = value_and_grad(backend, losses.lovasz_softmax, probas, y, classes, per_image, 255)
    expected, expected_grad = value_and_grad(
        "reference", berman_lovasz_softmax, probas, y, classes, per_image, 255
    )
    torch.testing.assert_close(value, expected, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=2e-6)


def test_lovasz_softmax_kornia_discrepancy_is_not_reproduced():
    """With C > 2 the foreground of class c is 1[y = c], not the label value."""
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    probas, y = x.softmax(1), labels_for(x.shape, 4, "cpu")
    expected = 0.0
    for c in range(4):
        fg = (y == c).flatten().double()
        errors = (fg - probas[:, c].flatten()).abs()
        order = errors.argsort(descending=True)
        expected += float(
            errors[order] @ reference.lovasz.lovasz_grad(fg[order] > 0, torch.float64)
        )
    got = on("cpu", losses.lovasz_softmax, probas, y, "all")
    assert float(got) == pytest.approx(expected / 4, rel=1e-12)


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("from_logits", [False, True])
def test_lovasz_sigmoid_form(device, backend, from_logits):
    """Berman's one-channel form: probas [B, H, W], classes=[k] names the foreground label."""
    x = torch.randn(2, 6, 7, dtype=torch.float64, device=device)
    y = torch.randint(0, 3, (2, 6, 7), device=device)
    inputs = x if from_logits else x.sigmoid()
    for per_image in (False, True):
        args = (y, [2], per_image, 0)
        value, grad = value_and_grad(
            backend, losses.lovasz_softmax, inputs, *args, from_logits=from_logits
        )
        fg = (y == 2).double().unsqueeze(1)
        p = x.sigmoid().unsqueeze(1)
        # Equivalent two-class problem: foreground against everything else.
        two = torch.cat([1 - p, p], 1)
        expected = reference.lovasz_softmax(two, (y == 2).long(), [1], per_image, None)
        del fg
        if per_image:
            # ignore=0 drops label-0 pixels from each unit: compare with the reference itself.
            expected = reference.lovasz_softmax(
                inputs.unsqueeze(1), y, [2], per_image, 0, from_logits=from_logits
            )
        else:
            expected = reference.lovasz_softmax(
                inputs.unsqueeze(1), y, [2], per_image, 0, from_logits=from_logits
            )
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
        assert grad.shape == inputs.shape
    with pytest.raises(ValueError, match="classes=\\[k\\]"):
        losses.lovasz_softmax(x.sigmoid(), y, "present")


def test_lovasz_sigmoid_form_matches_berman(smp):
    p = torch.rand(2, 9, 10)
    y = torch.randint(0, 2, (2, 9, 10))
    for per_image in (False, True):
        got = on("cpu", losses.lovasz_softmax, p, y, [1], per_image)
        expected = berman_lovasz_softmax(p, y, [1], per_image)
        torch.testing.assert_close(got, expected, rtol=2e-6, atol=2e-6)


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_lovasz_all_ignored_and_one_valid_pixel(device, backend):
    probas = torch.rand(2, 3, 4, 5, dtype=torch.float64, device=device).softmax(1)
    y = torch.full((2, 4, 5), 255, device=device)
    for per_image in (False, True):
        for classes in ("present", "all", [1]):
            value, grad = value_and_grad(
                backend, losses.lovasz_softmax, probas, y, classes, per_image, 255
            )
            assert value.shape == () and float(value) == 0.0
            assert torch.count_nonzero(grad) == 0
    # One valid pixel, of class 1: e = |1 − p1| with g = 1 for class 1 ('present').
    y[1, 2, 3] = 1
    value, grad = value_and_grad(backend, losses.lovasz_softmax, probas, y, "present", False, 255)
    assert float(value) == pytest.approx(1 - float(probas[1, 1, 2, 3]), rel=1e-12)
    expected_grad = torch.zeros_like(probas)
    expected_grad[1, 1, 2, 3] = -1
    torch.testing.assert_close(grad, expected_grad)
    # per_image: image 0 is all ignored and still counts, as 0.
    value = on(backend, losses.lovasz_softmax, probas, y, "present", True, 255)
    assert float(value) == pytest.approx((1 - float(probas[1, 1, 2, 3])) / 2, rel=1e-12)


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_lovasz_absent_class(device, backend):
    """'present' skips a class with no foreground; 'all' counts it as max p."""
    probas = torch.rand(1, 3, 4, 4, dtype=torch.float64, device=device).softmax(1)
    y = torch.randint(0, 2, (1, 4, 4), device=device)  # class 2 absent
    present = on(backend, losses.lovasz_softmax, probas, y, "present")
    everything = on(backend, losses.lovasz_softmax, probas, y, "all")
    only_absent = on(backend, losses.lovasz_softmax, probas, y, [2])
    assert float(only_absent) == pytest.approx(float(probas[:, 2].max()), rel=1e-12)
    assert float(everything) == pytest.approx(
        (2 * float(present) + float(only_absent)) / 3, rel=1e-12
    )


def test_lovasz_counts_exact_beyond_float32():
    """2^24 + 2^20 foreground pixels of distinct errors: the loss is their mean
    error exactly (a float32 cumsum of the counts stalls at 2^24)."""
    pixels = 2**24 + 2**20
    logits = torch.linspace(-0.5, 0.5, pixels, dtype=torch.float64).view(1, 1, pixels)
    labels = torch.ones(1, 1, pixels, dtype=torch.long)
    value = on("cpu", losses.lovasz_hinge, logits, labels)
    expected = float((1 - logits).mean())
    assert float(value) == pytest.approx(expected, rel=1e-9)


def test_lovasz_nan_propagates():
    probas = torch.rand(1, 3, 4, 4).softmax(1)
    probas[0, 1, 2, 2] = float("nan")
    y = torch.randint(0, 3, (1, 4, 4))
    assert torch.isnan(on("cpu", losses.lovasz_softmax, probas, y, "all"))
    logits = torch.randn(2, 4, 4)
    logits[1, 0, 0] = float("nan")
    assert torch.isnan(on("cpu", losses.lovasz_hinge, logits, torch.randint(0, 2, (2, 4, 4))))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_lovasz_nan_sorts_first_whatever_its_sign(backend):
    """A NaN error ranks first on every backend, as torch.sort ranks it in the
    reference, also a NaN with its sign bit set: the other pixels' ranks, hence
    their gradients, agree."""
    logits = torch.randn(1, 5, 5, dtype=torch.float64)
    logits[0, 1, 3] = -float("nan")
    assert math.copysign(1.0, float(logits[0, 1, 3])) < 0
    labels = torch.randint(0, 2, (1, 5, 5))
    grads = []
    for chosen in (backend, "reference"):
        x = logits.clone().requires_grad_()
        loss = on(chosen, losses.lovasz_hinge, x, labels)
        assert torch.isnan(loss)
        loss.backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1], equal_nan=True)


# --- Lovász hinge ----------------------------------------------------------------------------


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore", [None, 255])
def test_lovasz_hinge_matches_reference(device, backend, per_image, ignore):
    n, h, w = (2, 5, 7) if backend == "triton" else (4, 11, 13)
    x = torch.randn(n, h, w, dtype=torch.float64, device=device) * 2
    y = torch.randint(0, 2, (n, h, w), device=device)
    if ignore is not None:
        y[torch.rand(y.shape, device=device) < 0.2] = ignore
        y[0] = ignore  # one image entirely ignored
    value, grad = value_and_grad(backend, losses.lovasz_hinge, x, y, per_image, ignore)
    expected, expected_grad = value_and_grad(
        "reference", reference.lovasz_hinge, x, y, per_image, ignore
    )
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_hinge_matches_berman(per_image, smp):
    x = torch.randn(3, 12, 10)
    y = torch.randint(0, 2, (3, 12, 10))
    y[2] = 0  # an image with no foreground
    value, grad = value_and_grad("cpu", losses.lovasz_hinge, x, y, per_image)
    expected, expected_grad = value_and_grad("reference", berman_lovasz_hinge, x, y, per_image)
    torch.testing.assert_close(value, expected, rtol=2e-6, atol=2e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=2e-6)


# --- half precision ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES_HALF)
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_lovasz_half_precision(dtype, backend):
    """Errors are computed in float32 from the half input, ties in pixel order, so the
    result matches the reference run on the same (upcast) values."""
    shape = (2, 3, 5, 6)
    x = torch.randn(shape).to(dtype)
    y = labels_for(shape, 3, "cpu", ignore=255)
    value, grad = value_and_grad(
        backend, losses.lovasz_softmax, x, y, "present", True, 255, from_logits=True
    )
    expected, expected_grad = value_and_grad(
        "reference", reference.lovasz_softmax, x.float(), y, "present", True, 255, from_logits=True
    )
    assert value.dtype == dtype and grad.dtype == dtype
    torch.testing.assert_close(value.float(), expected, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(grad.float(), expected_grad, rtol=1e-2, atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES_HALF)
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_soft_dice_half_precision(dtype, backend):
    shape = (2, 3, 5, 6)
    x = torch.randn(shape).to(dtype)
    y = labels_for(shape, 3, "cpu", ignore=255)
    value, grad = value_and_grad(
        backend, losses.soft_dice_loss, x, y, "multiclass", ignore_index=255
    )
    expected, expected_grad = value_and_grad(
        "reference", losses.soft_dice_loss, x.double(), y, "multiclass", ignore_index=255
    )
    assert value.dtype == dtype and grad.dtype == dtype
    torch.testing.assert_close(value.double(), expected, rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(grad.double(), expected_grad, rtol=2e-2, atol=1e-3)


# --- soft Dice ---------------------------------------------------------------------------------


def dice_case(mode, shape, device, ignore_index, soft_targets=False):
    n, c, *spatial = shape
    x = torch.randn(shape, dtype=torch.float64, device=device) * 2
    if mode == "multiclass":
        t = labels_for(shape, c, device, ignore=ignore_index)
        t[t == c - 1] = 0  # the last class is absent: its loss is 0 and still counted
        return x, t
    if mode == "binary":
        x = x[:, :1].contiguous()
        t = torch.randint(0, 2, (n, *spatial), device=device).double()
    else:
        t = torch.randint(0, 2, shape, device=device).double()
        t[:, -1] = 0
    if soft_targets:
        t = torch.rand(t.shape, dtype=torch.float64, device=device)
    if ignore_index is not None:
        t[torch.rand(t.shape, device=device) < 0.15] = ignore_index
    return x, t


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("ignore_index", [None, 255])
@pytest.mark.parametrize("per_image", [False, True])
def test_soft_dice_matches_reference(device, backend, mode, ignore_index, per_image):
    x, t = dice_case(mode, small_shape(backend), device, ignore_index)
    for log_loss, from_logits, smooth in [(False, True, 0.0), (True, False, 0.7)]:
        inputs = x if from_logits else (x.softmax(1) if mode == "multiclass" else x.sigmoid())
        classes = None if mode == "binary" else [0, 2]
        args = (t, mode, classes, log_loss, from_logits, smooth, ignore_index, 1e-7, per_image)
        value, grad = value_and_grad(backend, losses.soft_dice_loss, inputs, *args)
        expected, expected_grad = value_and_grad("reference", losses.soft_dice_loss, inputs, *args)
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
@pytest.mark.parametrize("ignore_index", [None, 255])
@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_soft_dice_matches_smp(mode, ignore_index, backend, smp):
    """segmentation_models_pytorch.losses.DiceLoss: values and gradients, float64."""
    x, t = dice_case(mode, (3, 4, 10, 9), "cpu", ignore_index, soft_targets=mode == "multilabel")
    if mode == "multilabel" and ignore_index is not None:
        t[0, 0, :3] = ignore_index
    configurations = [
        {},
        {"log_loss": True, "smooth": 0.5},
        {"from_logits": False},
        {"classes": [1, 0], "eps": 1e-3},
        {"class_weights": [0.5, 1.0, 2.0, 0.0]},
    ]
    for config in configurations:
        if mode == "binary" and ("classes" in config or "class_weights" in config):
            continue
        inputs = x
        if config.get("from_logits") is False:
            inputs = x.softmax(1) if mode == "multiclass" else x.sigmoid()
        ours = losses.DiceLoss(mode, ignore_index=ignore_index, **config)
        theirs = smp.DiceLoss(mode, ignore_index=ignore_index, **config)
        value, grad = value_and_grad(backend, ours, inputs, t)
        expected, expected_grad = value_and_grad("reference", theirs, inputs, t)
        torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(grad, expected_grad, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("per_image", [False, True])
def test_soft_dice_statistics_float32_cpu(from_logits, per_image):
    """The float32 CPU kernels (own vectorised exp, FMA where the CPU has it, partial
    sums per tile column) against their float64 path, which the tests above hold to
    the reference: pixel counts off the 64-pixel tiles and across a chunk boundary,
    ignored pixels, and a label outside [0, C) (background in every class)."""
    n, c, pixels = 3, 7, 8192 + 99
    x = torch.randn(n, c, pixels) * 4
    if not from_logits:
        x = x.softmax(1)
    y = torch.randint(0, c, (n, pixels))
    y[torch.rand(n, pixels) < 0.1] = 255
    y[0, 5] = c + 3
    args = (True, from_logits, 255, per_image)
    got = torch.ops.fastops.soft_dice_statistics(x, y, *args, False)
    expected = torch.ops.fastops.soft_dice_statistics(x.double(), y, *args, False)
    torch.testing.assert_close(got.double(), expected, rtol=2e-6, atol=1e-3)
    grad = torch.randn_like(expected)
    got = torch.ops.fastops._soft_dice_statistics_backward(grad.float(), x, y, *args)
    expected = torch.ops.fastops._soft_dice_statistics_backward(grad, x.double(), y, *args)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("from_logits", [True, False])
@pytest.mark.parametrize("per_image", [False, True])
def test_soft_dice_statistics_float32_cpu_multilabel(from_logits, per_image):
    """The float32 multilabel CPU kernels (inlined exp and log1p for the sigmoid and the
    BCE) against their float64 path, with soft targets and ignored elements."""
    n, c, pixels = 3, 5, 8192 + 99
    x = torch.randn(n, c, pixels) * 4
    if not from_logits:
        x = x.sigmoid()
    t = torch.rand(n, c, pixels)
    t[torch.rand(n, c, pixels) < 0.1] = 255
    with_bce = from_logits
    args = (False, from_logits, 255, per_image)
    got = torch.ops.fastops.soft_dice_statistics(x, t, *args, with_bce)
    expected = torch.ops.fastops.soft_dice_statistics(x.double(), t.double(), *args, with_bce)
    torch.testing.assert_close(got.double(), expected, rtol=2e-6, atol=1e-3)
    grad = torch.randn_like(expected)
    got = torch.ops.fastops._soft_dice_statistics_backward(grad.float(), x, t, *args)
    expected = torch.ops.fastops._soft_dice_statistics_backward(grad, x.double(), t.double(), *args)
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-5)


def test_soft_dice_float32_sigmoid_and_bce_accuracy():
    """Per-image sums of one-element images are that element's σ(x) and BCE: the CPU
    kernel's float32 exp and log1p keep them within a few ulp of float64, from
    confident (|x| up to 100, where log1p(e^−|x|) ≈ e^−|x| is tiny) to uncertain."""
    n = 4096
    x = (torch.rand(n) * 200 - 100) * torch.rand(n) ** 3
    x = x.view(n, 1, 1)
    t = torch.randint(0, 2, (n, 1, 1)).float()
    sums = torch.ops.fastops.soft_dice_statistics(x, t, False, True, None, True, True)
    xd = x.double()
    tiny = torch.finfo(torch.float32).tiny  # exp below FLT_MIN is flushed to 0
    torch.testing.assert_close(
        sums[:, 0, 0].double(), xd.sigmoid().flatten(), rtol=4 * 2.0**-23, atol=tiny
    )
    # torch's own BCE forms log(1 + e^−|x|) and loses tiny values: written with log1p.
    bce = (xd.clamp_min(0) - xd * t.double() + torch.log1p(torch.exp(-xd.abs()))).flatten()
    torch.testing.assert_close(sums[:, 0, 4].double(), bce, rtol=8 * 2.0**-23, atol=tiny)


def test_soft_dice_float32_softmax_accuracy():
    """Per-image Σp of a one-pixel image is that pixel's softmax probability: the
    CPU kernel's float32 softmax is within a few ulp of float64's, for gaps between
    logits from −100 (probabilities below FLT_MIN: flushed to 0) to +20."""
    n = 4096
    x = torch.stack([torch.zeros(n), torch.rand(n) * 120 - 100, torch.randn(n) * 3], 1)
    x = x.unsqueeze(-1)  # [N, 3, 1]
    y = torch.zeros(n, 1, dtype=torch.long)
    sums = torch.ops.fastops.soft_dice_statistics(x, y, True, True, None, True, False)
    # The float32 subtraction x − max rounds (as in any float32 softmax): take it as given.
    gaps = (x - x.amax(1, keepdim=True)).double()
    expected = gaps.softmax(1)[..., 0]
    tiny = torch.finfo(torch.float32).tiny
    torch.testing.assert_close(sums[..., 0].double(), expected, rtol=4 * 2.0**-23, atol=tiny)


def test_soft_dice_golden_values():
    """segmentation_models_pytorch's own test values for binary Dice on probabilities."""
    dice = losses.DiceLoss("binary", from_logits=False)
    for pred, target, expected in [
        ([1.0, 1.0, 1.0], [0.0, 0.0, 0.0], 0.0),  # absent class: masked to 0
        ([1.0, 0.0, 1.0], [0.0, 1.0, 0.0], 1.0),
        ([1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 0.0, 0.0], 1 - 2 / 3),
    ]:
        p = torch.tensor(pred).view(1, 1, -1)
        y = torch.tensor(target).view(1, 1, -1)
        assert float(on("cpu", dice, p, y)) == pytest.approx(expected, abs=1e-6)


# --- BCE − ln(Dice) ---------------------------------------------------------------------------


def bce_dice_by_hand(x, t, dice_weight, smooth, per_image, ignore_index):
    """The docstring's definition, term by term, in float64."""
    x, t = x.double(), t.double()
    if t.dim() < x.dim():
        t = t.unsqueeze(1)
    valid = torch.ones_like(t, dtype=torch.bool) if ignore_index is None else t != ignore_index
    bce = F.binary_cross_entropy_with_logits(x[valid], t[valid], reduction="sum") / max(
        int(valid.sum()), 1
    )
    p = torch.sigmoid(x) * valid
    t = t * valid
    dims = tuple(range(2, x.dim())) if per_image else (0, *range(2, x.dim()))
    dice = (2 * (p * t).sum(dims) + smooth) / (p.sum(dims) + t.sum(dims) + smooth)
    return bce - dice_weight * torch.log(dice.clamp_min(1e-7)).mean()


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore_index", [None, 255])
def test_bce_dice_matches_definition(device, backend, channels, per_image, ignore_index):
    n, h, w = (2, 5, 6) if backend == "triton" else (3, 9, 10)
    x = torch.randn(n, channels, h, w, dtype=torch.float64, device=device) * 2
    t = torch.rand(n, channels, h, w, dtype=torch.float64, device=device).round()
    if ignore_index is not None:
        t[torch.rand(t.shape, device=device) < 0.2] = ignore_index
    target = t[:, 0] if channels == 1 else t  # binary targets may drop the channel
    args = (target, 0.6, 1.0, per_image, ignore_index)
    value, grad = value_and_grad(backend, losses.bce_dice_loss, x, *args)
    expected = bce_dice_by_hand(x, target, *args[1:])
    torch.testing.assert_close(value, expected, rtol=1e-12, atol=1e-12)
    _, expected_grad = value_and_grad("reference", losses.bce_dice_loss, x, *args)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-10, atol=1e-13)
    module = losses.BCEDiceLoss(0.6, 1.0, per_image, ignore_index)
    torch.testing.assert_close(on(backend, module, x, target), value, rtol=0, atol=0)


def test_bce_dice_empty_classes_and_all_ignored():
    x = torch.randn(2, 2, 4, 4, dtype=torch.float64)
    t = torch.full_like(x, 255.0)
    for backend in ("cpu", "reference"):
        value, grad = value_and_grad(backend, losses.bce_dice_loss, x, t, 1.0, 1.0, False, 255)
        assert float(value) == 0.0 and torch.count_nonzero(grad) == 0
        # smooth = 0 with no prediction and no target mass: D = 1, a zero term.
        value = on(backend, losses.bce_dice_loss, x, t, 1.0, 0.0, False, 255)
        assert float(value) == 0.0


# --- gradcheck, opcheck, compile ----------------------------------------------------------------


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
def test_gradcheck(device, backend):
    """float64 gradcheck of every loss through the backend's kernels (Lovász inputs are
    spread far apart: gradcheck's perturbation must not reorder the errors)."""
    fast = backend == "triton"
    n, c, h, w = 2, 3, 3, 4
    y = labels_for((n, c, h, w), c, device, ignore=255)
    spaced = torch.randperm(n * c * h * w, device=device).double().view(n, c, h, w)
    # Hinge errors 1 ∓ x: the 0.3 offset keeps x_i + x_j from 0 and x from ±1 (no ties, no kinks).
    logits = ((spaced + 0.3) / spaced.numel() * 4 - 2).requires_grad_()
    # Errors are p and 1 − p: the 0.3 offset keeps every p_i + p_j away from 1 (no ties).
    probas = ((spaced + 0.3) / spaced.numel() * 0.9 + 0.05).requires_grad_()
    multilabel = (torch.rand(n, c, h, w, device=device) < 0.4).double()
    # Softmax errors far apart: d spaced over the pixels, p0 > 0.6 > 0.5 > p1, p2, each
    # monotone in d, so no two errors of a class (fg or bg) come within the perturbation.
    d = 0.5 + torch.randperm(n * h * w, device=device).double().view(n, 1, h, w) * 0.125
    separated = torch.cat([d, torch.zeros_like(d), -d / 2 - 1], 1).requires_grad_()
    with fastops.use_backend(backend):
        checks = [
            (lambda p: losses.lovasz_softmax(p, y, "all", True, 255), probas),
            (
                lambda x: losses.lovasz_softmax(x, y, "present", False, 255, from_logits=True),
                separated,
            ),
            (lambda x: losses.lovasz_hinge(x[:, 0], (y == 1).long(), True), logits),
            (
                lambda x: losses.soft_dice_loss(x, y, "multiclass", None, True, True, 0.1, 255),
                logits,
            ),
            (
                lambda x: losses.soft_dice_loss(x, multilabel, "multilabel", per_image=True),
                logits,
            ),
            (lambda x: losses.bce_dice_loss(x, multilabel, 0.5, 1.0, True, None), logits),
        ]
        for index, (fn, inputs) in enumerate(checks):
            try:
                torch.autograd.gradcheck(fn, (inputs,), eps=1e-6, atol=1e-7, fast_mode=fast)
            except RuntimeError as error:  # GradcheckError
                raise AssertionError(f"gradcheck of loss {index}") from error


def _op(name, backend):
    return getattr(torch.ops.fastops, name + ("_triton" if backend == "triton" else ""))


@pytest.mark.parametrize(("device", "backend"), COMPILED_BACKENDS)
def test_opcheck(device, backend):
    x = torch.randn(2, 3, 10, device=device, requires_grad=True)
    labels = torch.randint(0, 3, (2, 10), device=device)
    targets = torch.rand(2, 3, 10, device=device).round()
    for args in [
        (x, labels, True, True, 1, True, False),
        (x, targets, False, True, None, False, True),
    ]:
        torch.library.opcheck(_op("soft_dice_statistics", backend), args)
    grad = torch.randn(2, 3, 6, device=device)
    torch.library.opcheck(
        _op("_soft_dice_statistics_backward", backend),
        (grad, x.detach(), labels, True, True, None, True),
    )
    for kind, inputs in [(0, x.softmax(1).detach().requires_grad_()), (1, x), (2, x[:, :1])]:
        lab = (labels > 0).long() if kind == 2 else labels
        args = (inputs, lab, kind, 2 if kind != 2 else None, True, -1)
        torch.library.opcheck(_op("lovasz_segments", backend), args)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_soft_dice_loss_from_statistics_op(device):
    """The op that forms the loss from the statistics (any backend's): opcheck, gradcheck
    in float64 away from the clamps, and its value against the formula written out."""
    op = torch.ops.fastops._soft_dice_loss_from_statistics
    units, classes = 3, 5
    p_sum = torch.rand(units, classes, dtype=torch.float64, device=device) * 50 + 1
    t_sum = torch.randint(1, 40, (units, classes), device=device).double()
    product = torch.minimum(p_sum, t_sum) * torch.rand_like(p_sum)
    difference = p_sum + t_sum - 2 * product
    sums = torch.stack(
        [p_sum, t_sum, product, difference, torch.rand_like(p_sum), t_sum + 5], -1
    ).requires_grad_()
    coefficients = torch.rand(classes, dtype=torch.float64, device=device)

    def expected(sums, weights, log_loss, smooth):
        p, t, i = sums[..., 0], sums[..., 1], sums[..., 2]
        score = (i + smooth) / ((p + t) / 2 + smooth)  # SMP: I + ½fp + ½fn = ½(Σp + Σt)
        terms = (-torch.log(score) if log_loss else 1 - score) * (t > 0)
        return (terms * (1 if weights is None else weights)).sum() * 0.25

    for weights, log_loss, smooth in [(None, False, 0.0), (coefficients, True, 0.5)]:
        args = (weights, 0.25, smooth, 1e-7, log_loss)
        torch.library.opcheck(op, (sums, *args))
        torch.autograd.gradcheck(lambda s, args=args: op(s, *args), (sums,))
        want = expected(sums, weights, log_loss, smooth)
        torch.testing.assert_close(op(sums, *args), want, rtol=1e-12, atol=1e-12)
        absent = sums.detach().clone()
        absent[0, 1, 1] = 0  # class 1 absent from unit 0: its term is 0
        want = expected(absent, weights, log_loss, smooth)
        torch.testing.assert_close(op(absent, *args), want, rtol=1e-12, atol=1e-12)
    with pytest.raises(RuntimeError, match="statistics must be \\[units, classes, 6\\]"):
        op(sums[..., :5], None, 1.0, 0.0, 1e-7, False)
    with pytest.raises(RuntimeError, match="class_coefficients must be \\[5\\]"):
        op(sums, coefficients[:4], 1.0, 0.0, 1e-7, False)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_bce_dice_loss_from_statistics_op(device):
    """The op that forms BCE − ln(Dice) from the statistics: opcheck, gradcheck in float64
    (the BCE and count columns included), and its value against the definition written out;
    a class with no prediction or target mass (smooth 0) has D = 1 and a zero gradient."""
    op = torch.ops.fastops._bce_dice_loss_from_statistics
    units, classes = 2, 4
    p_sum = torch.rand(units, classes, dtype=torch.float64, device=device) * 50 + 1
    t_sum = torch.rand(units, classes, dtype=torch.float64, device=device) * 40 + 1
    product = torch.minimum(p_sum, t_sum) * torch.rand_like(p_sum)
    bce = torch.rand_like(p_sum) * 30
    count = torch.randint(20, 60, (units, classes), device=device).double()
    sums = torch.stack([p_sum, t_sum, product, p_sum + t_sum - 2 * product, bce, count], -1)
    sums.requires_grad_()
    for dice_weight, smooth in [(1.0, 1.0), (0.5, 0.0)]:
        torch.library.opcheck(op, (sums, dice_weight, smooth))
        torch.autograd.gradcheck(lambda s, a=(dice_weight, smooth): op(s, *a), (sums,))
        dice = (2 * product + smooth) / (p_sum + t_sum + smooth)
        want = bce.sum() / count.sum() - dice_weight * torch.log(dice).mean()
        torch.testing.assert_close(op(sums, dice_weight, smooth), want, rtol=1e-12, atol=1e-12)
    empty = sums.detach().clone()
    empty[1, 2, :4] = 0  # no mass: D = 1, ln D = 0
    empty.requires_grad_()
    dice = (2 * empty[..., 2] + 0.0) / (empty[..., 0] + empty[..., 1])
    dice = torch.where(torch.isnan(dice), 1.0, dice).detach()
    want = bce.sum() / count.sum() - torch.log(dice).mean()
    torch.testing.assert_close(op(empty, 1.0, 0.0), want, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(op(empty, 1.0, 0.0), empty)
    assert torch.isfinite(grad).all() and torch.count_nonzero(grad[1, 2, :4]) == 0


def test_soft_dice_empty_class_list_is_nan():
    """classes=[] averages no terms: NaN, as segmentation_models_pytorch's mean of nothing."""
    x, y = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    for backend in ("cpu", "reference"):
        assert torch.isnan(on(backend, losses.soft_dice_loss, x, y, "multiclass", classes=[]))


@pytest.mark.parametrize(
    ("device", "backend"),
    [c for c in COMPILED_BACKENDS if c.values[1] == "cpu" or c.values[0] == "cuda"],
)
def test_torch_compile_fullgraph(device, backend):
    torch._dynamo.reset()
    x = torch.randn(2, 4, 6, 5, device=device)
    y = labels_for(x.shape, 4, device, ignore=255)

    def loss(x):
        return (
            losses.lovasz_softmax(x, y, "present", True, 255, from_logits=True)
            + losses.lovasz_softmax(x.softmax(1), y, [1, 2], False, 255)
            + losses.lovasz_hinge(x[:, 0], (y == 1).long(), True, None)
            + losses.soft_dice_loss(x, y, "multiclass", ignore_index=255)
            + losses.bce_dice_loss(x, (y == 1).float().unsqueeze(1).expand_as(x))
        )

    with fastops.use_backend(backend):
        compiled = torch.compile(loss, fullgraph=True)
        xg = x.clone().requires_grad_()
        got = compiled(xg)
        got.backward()
        xe = x.clone().requires_grad_()
        expected = loss(xe)
        expected.backward()
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(xg.grad, xe.grad)


# --- modules -----------------------------------------------------------------------------------


@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_module_matches_smp(per_image, smp):
    x = torch.randn(2, 4, 7, 8)
    y = labels_for(x.shape, 4, "cpu", ignore=255)
    got = on("cpu", losses.LovaszLoss("multiclass", per_image, 255), x, y)
    expected = smp.LovaszLoss("multiclass", per_image, 255)(x, y)
    torch.testing.assert_close(got, expected, rtol=2e-6, atol=2e-6)
    xb = torch.randn(2, 1, 7, 8)
    yb = torch.randint(0, 2, (2, 7, 8))
    for mode in ("binary", "multilabel"):
        got = on("cpu", losses.LovaszLoss(mode, per_image), xb, yb)
        expected = smp.LovaszLoss(mode, per_image)(xb, yb)
        torch.testing.assert_close(got, expected, rtol=2e-6, atol=2e-6)


def test_empty_batch():
    x = torch.randn(0, 3, 4, 4, requires_grad=True)
    y = torch.zeros(0, 4, 4, dtype=torch.long)
    for backend in ("cpu", "reference"):
        with fastops.use_backend(backend):
            total = (
                losses.lovasz_softmax(x, y, "all", True, from_logits=True)
                + losses.lovasz_softmax(x, y, "all", False, from_logits=True)
                + losses.lovasz_hinge(x[:, 0], y)
                + losses.bce_dice_loss(x, y.unsqueeze(1).expand(0, 3, 4, 4).float())
            )
        assert float(total) == 0.0
        (grad,) = torch.autograd.grad(total, x)
        assert grad.shape == x.shape


# --- bad input ---------------------------------------------------------------------------------


def test_bad_arguments():
    x = torch.randn(2, 3, 4, 4)
    y = torch.randint(0, 3, (2, 4, 4))
    with pytest.raises(ValueError, match=r"labels must be class labels in \[0, 3\)"):
        losses.lovasz_softmax(x.softmax(1), torch.full_like(y, 3))
    with pytest.raises(
        ValueError, match=r"labels must be class labels .* or the ignore value 255; found 7"
    ):
        losses.lovasz_softmax(x.softmax(1), torch.where(y == 0, 7, y), ignore=255)
    with pytest.raises(ValueError, match="labels must be 0 or 1"):
        losses.lovasz_hinge(x[:, 0], y)
    with pytest.raises(ValueError, match="target must be class labels in"):
        losses.soft_dice_loss(x, torch.full_like(y, -1), "multiclass")
    with pytest.raises(TypeError, match="labels must have an integer"):
        losses.lovasz_softmax(x.softmax(1), y.float())
    with pytest.raises(ValueError, match="probas must be probabilities in \\[0, 1\\]"):
        losses.lovasz_softmax(x, y)
    with pytest.raises(ValueError, match="input must be probabilities"):
        losses.soft_dice_loss(x, y, "multiclass", from_logits=False)
    with pytest.raises(ValueError, match="do not match predictions"):
        losses.lovasz_softmax(x.softmax(1), y[:, :3])
    with pytest.raises(ValueError, match="batch size"):
        losses.lovasz_hinge(x[:, 0], y[:1])
    with pytest.raises(ValueError, match="multiclass target must be labels of shape"):
        losses.soft_dice_loss(x, y[:, :2], "multiclass")
    with pytest.raises(ValueError, match="does not match input"):
        losses.soft_dice_loss(x, torch.rand(2, 2, 4, 4), "multilabel")
    with pytest.raises(ValueError, match="binary mode takes input"):
        losses.soft_dice_loss(x, y.float(), "binary")
    with pytest.raises(ValueError, match="mode must be one of"):
        losses.soft_dice_loss(x, y, "multiclas")
    with pytest.raises(ValueError, match="classes is not supported with mode='binary'"):
        losses.DiceLoss("binary", classes=[0])
    with pytest.raises(ValueError, match="class 5 is out of range"):
        losses.soft_dice_loss(x, y, "multiclass", classes=[5])
    with pytest.raises(ValueError, match="class 3 is out of range"):
        losses.lovasz_softmax(x.softmax(1), y, [3])
    with pytest.raises(ValueError, match="classes must be 'present', 'all' or a list"):
        losses.lovasz_softmax(x.softmax(1), y, "some")
    with pytest.raises(TypeError, match="probas must be float16"):
        losses.lovasz_softmax(y, y)
    with pytest.raises(TypeError, match="ignore must be an int"):
        losses.lovasz_hinge(x[:, 0], (y > 0).long(), ignore=0.5)
    with pytest.raises(ValueError, match="mode must be"):
        losses.LovaszLoss("softmax")
