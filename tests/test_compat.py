"""fastops.patch_torchvision(): which names it replaces and restores (context
manager, plain call with undo, exceptions, nesting), and torchvision's Faster
R-CNN and Mask R-CNN giving the same detections and training losses with and
without it."""

from __future__ import annotations

import collections
import contextlib
import copy
import importlib
import sys
import types

import pytest
import torch
import torchvision
from torchvision.models.detection import fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn

import fastops
import fastops.compat.torchvision as compat

# name -> (torchvision's original, the fastops counterpart)
EXPECTED = {
    "nms": (importlib.import_module("torchvision.ops.boxes").nms, fastops.ops.nms),
    "batched_nms": (
        importlib.import_module("torchvision.ops.boxes").batched_nms,
        fastops.ops.batched_nms,
    ),
    "roi_align": (
        importlib.import_module("torchvision.ops.roi_align").roi_align,
        fastops.ops.roi_align,
    ),
    "roi_pool": (
        importlib.import_module("torchvision.ops.roi_pool").roi_pool,
        fastops.ops.roi_pool,
    ),
    "RoIAlign": (
        importlib.import_module("torchvision.ops.roi_align").RoIAlign,
        fastops.nn.RoIAlign,
    ),
    "RoIPool": (importlib.import_module("torchvision.ops.roi_pool").RoIPool, fastops.nn.RoIPool),
    "MultiScaleRoIAlign": (
        importlib.import_module("torchvision.ops.poolers").MultiScaleRoIAlign,
        fastops.nn.MultiScaleRoIAlign,
    ),
}

# Every binding of the originals in torchvision 0.28 once torchvision.models.detection
# is imported: (module, attribute, which original).
BINDINGS = [
    ("torchvision.ops", "nms", "nms"),
    ("torchvision.ops", "batched_nms", "batched_nms"),
    ("torchvision.ops", "roi_align", "roi_align"),
    ("torchvision.ops", "roi_pool", "roi_pool"),
    ("torchvision.ops", "RoIAlign", "RoIAlign"),
    ("torchvision.ops", "RoIPool", "RoIPool"),
    ("torchvision.ops", "MultiScaleRoIAlign", "MultiScaleRoIAlign"),
    ("torchvision.ops.boxes", "nms", "nms"),
    ("torchvision.ops.boxes", "batched_nms", "batched_nms"),
    ("torchvision.ops.roi_align", "roi_align", "roi_align"),
    ("torchvision.ops.roi_align", "RoIAlign", "RoIAlign"),
    ("torchvision.ops.roi_pool", "roi_pool", "roi_pool"),
    ("torchvision.ops.roi_pool", "RoIPool", "RoIPool"),
    ("torchvision.ops.poolers", "roi_align", "roi_align"),
    ("torchvision.ops.poolers", "MultiScaleRoIAlign", "MultiScaleRoIAlign"),
    ("torchvision.models.detection.roi_heads", "roi_align", "roi_align"),
    ("torchvision.models.detection.faster_rcnn", "MultiScaleRoIAlign", "MultiScaleRoIAlign"),
    ("torchvision.models.detection.mask_rcnn", "MultiScaleRoIAlign", "MultiScaleRoIAlign"),
    ("torchvision.models.detection.keypoint_rcnn", "MultiScaleRoIAlign", "MultiScaleRoIAlign"),
]
BINDING_IDS = [f"{m}.{a}" for m, a, _ in BINDINGS]


def binding(module: str, attribute: str):
    return vars(sys.modules[module])[attribute]


def assert_original() -> None:
    for module, attribute, name in BINDINGS:
        assert binding(module, attribute) is EXPECTED[name][0], f"{module}.{attribute}"


def assert_patched() -> None:
    for module, attribute, name in BINDINGS:
        assert binding(module, attribute) is EXPECTED[name][1], f"{module}.{attribute}"


def torchvision_namespace() -> dict[str, dict[str, object]]:
    """A shallow copy of every loaded torchvision module's namespace."""
    return {
        name: dict(vars(module))
        for name, module in sys.modules.copy().items()
        if name.split(".")[0] == "torchvision" and isinstance(module, types.ModuleType)
    }


def changed_since(before: dict[str, dict[str, object]]) -> set[tuple[str, str]]:
    return {
        (name, attribute)
        for name, namespace in before.items()
        for attribute, value in namespace.items()
        if vars(sys.modules[name]).get(attribute) is not value
    }


@pytest.fixture(autouse=True)
def unpatched():
    """Each test starts and must end with torchvision unpatched."""
    assert compat._depth == 0
    assert_original()
    yield
    assert compat._depth == 0, "a test left a patch active"
    assert_original()


# --- which names, and their restoration ---------------------------------------------------


def test_originals_are_torchvisions_own():
    assert torchvision.ops.roi_align is EXPECTED["roi_align"][0]
    assert isinstance(sys.modules["torchvision.ops.roi_align"], types.ModuleType)
    for original, counterpart in EXPECTED.values():
        assert original.__module__.startswith("torchvision.")
        assert counterpart.__module__.startswith("fastops.")


def test_context_manager_replaces_every_binding_and_nothing_else():
    before = torchvision_namespace()
    with fastops.patch_torchvision() as patch:
        assert patch.active
        assert_patched()
        assert torchvision.ops.nms is fastops.ops.nms
        assert torchvision.ops.MultiScaleRoIAlign is fastops.nn.MultiScaleRoIAlign
        # The submodule stays in sys.modules; only its function attribute changed.
        assert isinstance(sys.modules["torchvision.ops.roi_align"], types.ModuleType)
        assert changed_since(before) == {(m, a) for m, a, _ in BINDINGS}
    assert not patch.active
    assert_original()
    assert changed_since(before) == set()


def test_untouched_helpers():
    keep = {
        "torchvision.ops.box_iou": torchvision.ops.box_iou,
        "torchvision.ops.boxes.box_area": torchvision.ops.boxes.box_area,
        "torchvision.ops.ps_roi_align": torchvision.ops.ps_roi_align,
        "torchvision.ops.misc.FrozenBatchNorm2d": torchvision.ops.misc.FrozenBatchNorm2d,
        "torchvision.ops.boxes._assert_has_ops": torchvision.ops.boxes._assert_has_ops,
        "torchvision.ops.roi_align._assert_has_ops": sys.modules[
            "torchvision.ops.roi_align"
        ]._assert_has_ops,
        "torchvision.ops._utils.convert_boxes_to_roi_format": (
            torchvision.ops._utils.convert_boxes_to_roi_format
        ),
    }
    with fastops.patch_torchvision():
        for qualified, value in keep.items():
            module, _, attribute = qualified.rpartition(".")
            assert binding(module, attribute) is value, qualified


def test_plain_call_and_idempotent_undo():
    patch = fastops.patch_torchvision()
    try:
        assert patch.active
        assert_patched()
    finally:
        patch.undo()
    assert not patch.active
    assert_original()
    patch.undo()  # a second undo changes nothing
    assert_original()
    with pytest.raises(RuntimeError, match="undone"), patch:
        pass
    assert_original()


def test_restored_when_the_block_raises():
    class Boom(Exception):
        pass

    with pytest.raises(Boom), fastops.patch_torchvision():
        assert_patched()
        raise Boom
    assert_original()


def test_nested_patches_restore_in_lifo_order():
    with fastops.patch_torchvision() as outer:
        assert_patched()
        with fastops.patch_torchvision() as inner:
            assert_patched()
        assert not inner.active
        assert_patched()  # the outer patch still holds
        inner.undo()  # undoing the inner one again must not end the outer one
        assert_patched()
    assert not outer.active
    assert_original()


def test_patches_undone_out_of_order():
    first = fastops.patch_torchvision()
    second = fastops.patch_torchvision()
    first.undo()
    assert_patched()  # torchvision stays patched while any patch is active
    second.undo()
    assert_original()


def test_module_imported_while_patched_is_restored():
    """A torchvision module first imported inside the patch binds the fastops
    objects; undo gives it torchvision's."""
    name = "torchvision._fastops_test_late_import"
    with fastops.patch_torchvision():
        late = types.ModuleType(name)
        late.nms = torchvision.ops.nms  # what `from torchvision.ops import nms` would bind
        late.Pool = torchvision.ops.MultiScaleRoIAlign
        sys.modules[name] = late
    try:
        assert late.nms is EXPECTED["nms"][0]
        assert late.Pool is EXPECTED["MultiScaleRoIAlign"][0]
    finally:
        del sys.modules[name]


def test_a_name_reassigned_while_patched_keeps_its_new_value():
    def mine(boxes, scores, iou_threshold):
        raise AssertionError("not called")

    try:
        with fastops.patch_torchvision():
            torchvision.ops.nms = mine
        assert torchvision.ops.nms is mine
        assert binding("torchvision.ops.boxes", "nms") is EXPECTED["nms"][0]
    finally:
        torchvision.ops.nms = EXPECTED["nms"][0]


def test_import_error_without_torchvision(monkeypatch):
    monkeypatch.setitem(sys.modules, "torchvision", None)  # `import torchvision` fails
    with pytest.raises(ImportError, match=r"needs torchvision.*fastops\[torchvision\]"):
        fastops.patch_torchvision()
    assert compat._depth == 0


def test_exported():
    assert "patch_torchvision" in fastops.__all__
    assert fastops.patch_torchvision is fastops.compat.patch_torchvision


# --- torchvision's constructors and modules built inside the patch ------------------------


class TinyBackbone(torch.nn.Module):
    out_channels = 8

    def forward(self, x):
        return {"0": x[:, :1].expand(-1, 8, -1, -1)}


def test_constructors_isinstance_check_uses_the_patched_class():
    torchvision_pool = torchvision.ops.MultiScaleRoIAlign(["0"], 7, 2)
    FasterRCNN = torchvision.models.detection.FasterRCNN
    with fastops.patch_torchvision():
        pool = torchvision.ops.MultiScaleRoIAlign(["0"], 7, 2)
        assert type(pool) is fastops.nn.MultiScaleRoIAlign
        model = FasterRCNN(TinyBackbone(), num_classes=3, box_roi_pool=pool)
        assert model.roi_heads.box_roi_pool is pool
        # A torchvision pooler made before the patch fails torchvision's own check.
        with pytest.raises(TypeError, match="box_roi_pool should be of type MultiScaleRoIAlign"):
            FasterRCNN(TinyBackbone(), num_classes=3, box_roi_pool=torchvision_pool)


def test_modules_built_inside_are_fastops_with_torchvisions_attributes():
    with fastops.patch_torchvision():
        align = torchvision.ops.RoIAlign((5, 3), 0.25, 2, aligned=True)
        pool = torchvision.ops.RoIPool(7, 0.5)
        multi = torchvision.ops.MultiScaleRoIAlign(["0", "2"], 7, 2, canonical_scale=112)
    reference = torchvision.ops.MultiScaleRoIAlign(["0", "2"], 7, 2, canonical_scale=112)
    assert type(align) is fastops.nn.RoIAlign and type(pool) is fastops.nn.RoIPool
    assert type(multi) is fastops.nn.MultiScaleRoIAlign  # and stays one after the patch
    assert (align.output_size, align.spatial_scale, align.sampling_ratio, align.aligned) == (
        (5, 3),
        0.25,
        2,
        True,
    )
    assert (pool.output_size, pool.spatial_scale) == (7, 0.5)
    for attribute in (
        "featmap_names",
        "output_size",
        "sampling_ratio",
        "scales",
        "canonical_scale",
        "canonical_level",
    ):
        assert getattr(multi, attribute) == getattr(reference, attribute), attribute
    assert multi.state_dict().keys() == reference.state_dict().keys()
    x = {
        "0": torch.randn(2, 3, 32, 40),
        "1": torch.randn(2, 3, 16, 20),
        "2": torch.randn(2, 3, 8, 10),
    }
    xy = torch.rand(2, 6, 2) * 100
    boxes = [torch.cat([xy[i], xy[i] + 4 + torch.rand(6, 2) * 100], dim=1) for i in range(2)]
    torch.testing.assert_close(
        multi(x, boxes, [(128, 160), (120, 150)]), reference(x, boxes, [(128, 160), (120, 150)])
    )
    assert multi.scales == reference.scales == [0.25, 0.0625]


# --- Faster R-CNN and Mask R-CNN with and without the patch -------------------------------

# Small images, few proposals, few classes: the whole model runs in seconds on a
# 2-core CPU. box_score_thresh=0 and no cap on the detections make an untrained
# model output several hundred detections per image.
MODEL_KWARGS = {
    "weights": None,
    "weights_backbone": None,
    "min_size": 160,
    "max_size": 224,
    "rpn_pre_nms_top_n_train": 300,
    "rpn_post_nms_top_n_train": 150,
    "rpn_pre_nms_top_n_test": 300,
    "rpn_post_nms_top_n_test": 150,
    "box_score_thresh": 0.0,
    "box_detections_per_img": 1000,
    "box_batch_size_per_image": 64,
}
BUILDERS = {"faster_rcnn": fasterrcnn_resnet50_fpn, "mask_rcnn": maskrcnn_resnet50_fpn}
# The mask head costs ~0.1 GFLOP per detection: Mask R-CNN gets fewer.
ARCH_KWARGS = {
    "faster_rcnn": {"num_classes": 5},
    "mask_rcnn": {"num_classes": 3, "rpn_post_nms_top_n_test": 25},
}
MIN_DETECTIONS = {"faster_rcnn": 150, "mask_rcnn": 25}  # per image

# Measured differences are in the report of each test; these bounds leave a margin.
BOX_ATOL = 1e-3  # pixels, on boxes up to ~220 px
SCORE_ATOL = 1e-5
MASK_ATOL = 1e-3


@pytest.fixture(scope="module")
def models():
    """(torchvision model, model built inside the patch) per architecture, with one
    set of weights."""
    built = {}
    with torch.random.fork_rng():
        for name, builder in BUILDERS.items():
            torch.manual_seed(0)
            kwargs = {**MODEL_KWARGS, **ARCH_KWARGS[name]}
            plain = builder(**kwargs).eval()
            with fastops.patch_torchvision():
                patched = builder(**kwargs).eval()
            patched.load_state_dict(plain.state_dict())  # the same keys: strict
            built[name] = (plain, patched)
    return built


@pytest.fixture
def fastops_calls(monkeypatch):
    """Counts fastops operator calls by operator name (each goes through
    fastops.backends.select once)."""
    calls = collections.Counter()
    select = fastops.backends.select

    def counting_select(op, device):
        calls[op] += 1
        return select(op, device)

    monkeypatch.setattr(fastops.backends, "select", counting_select)
    return calls


def random_images():
    return [torch.rand(3, 150, 210), torch.rand(3, 176, 150)]


def random_targets(images, num_classes: int, with_masks: bool):
    targets = []
    for image in images:
        _, h, w = image.shape
        n = 3
        xy = torch.rand(n, 2) * torch.tensor([w, h]) * 0.5
        size = 24 + torch.rand(n, 2) * torch.tensor([w, h]) * 0.4
        boxes = torch.cat([xy, xy + size], dim=1)
        target = {"boxes": boxes, "labels": torch.randint(1, num_classes, (n,))}
        if with_masks:
            masks = torch.zeros(n, h, w, dtype=torch.uint8)
            for k, (x1, y1, x2, y2) in enumerate(boxes.round().long().tolist()):
                masks[k, y1:y2, x1:x2] = (torch.rand(y2 - y1, x2 - x1) < 0.8).to(torch.uint8)
            target["masks"] = masks
        targets.append(target)
    return targets


def run(model, images, seed, targets=None, patched=False):
    torch.manual_seed(seed)
    with fastops.patch_torchvision() if patched else contextlib.nullcontext():
        if targets is None:
            with torch.no_grad():
                return model(images)
        return model(images, targets)


def assert_same_detections(expected, actual, min_detections):
    """Same number of detections, each with the same label and box (to BOX_ATOL)
    and score (to SCORE_ATOL). Detections are paired by label and box, so two
    whose scores tie to within the tolerance may swap places."""
    assert len(actual) == len(expected)
    for e, a in zip(expected, actual, strict=True):
        n = len(e["boxes"])
        assert n >= min_detections, f"only {n} detections: too few to compare"
        assert len(a["boxes"]) == n
        distance = (e["boxes"][:, None, :] - a["boxes"][None, :, :]).abs().amax(dim=-1)
        distance[e["labels"][:, None] != a["labels"][None, :]] = float("inf")
        match = distance.argmin(dim=1)
        assert torch.equal(match.sort().values, torch.arange(n)), "not one-to-one"
        torch.testing.assert_close(a["boxes"][match], e["boxes"], rtol=0, atol=BOX_ATOL)
        assert torch.equal(a["labels"][match], e["labels"])
        torch.testing.assert_close(a["scores"][match], e["scores"], rtol=0, atol=SCORE_ATOL)
        # By rank: the scores agree even where near-ties swapped.
        torch.testing.assert_close(a["scores"], e["scores"], rtol=0, atol=SCORE_ATOL)
        if "masks" in e:
            torch.testing.assert_close(a["masks"][match], e["masks"], rtol=0, atol=MASK_ATOL)


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(BUILDERS))
def test_detections_equal_with_and_without_patch(arch, models, fastops_calls, fresh_seed):
    plain, patched = models[arch]
    assert type(plain.roi_heads.box_roi_pool) is EXPECTED["MultiScaleRoIAlign"][0]
    assert type(patched.roi_heads.box_roi_pool) is fastops.nn.MultiScaleRoIAlign
    if arch == "mask_rcnn":
        assert type(patched.roi_heads.mask_roi_pool) is fastops.nn.MultiScaleRoIAlign
    images = random_images()

    expected = run(plain, images, fresh_seed)
    assert sum(fastops_calls.values()) == 0
    actual = run(patched, images, fresh_seed, patched=True)
    assert fastops_calls["batched_nms"] >= 2  # RPN and box head
    assert fastops_calls["multi_scale_roi_align"] >= (2 if arch == "mask_rcnn" else 1)
    assert_same_detections(expected, actual, MIN_DETECTIONS[arch])


@pytest.mark.slow
def test_model_built_before_the_patch(models, fastops_calls, fresh_seed):
    """A torchvision model built outside the patch keeps torchvision's
    MultiScaleRoIAlign, whose per-level roi_align calls and the model's NMS go
    through fastops while patched."""
    plain, _ = models["faster_rcnn"]
    images = random_images()
    expected = run(plain, images, fresh_seed)
    actual = run(plain, images, fresh_seed, patched=True)
    assert type(plain.roi_heads.box_roi_pool) is EXPECTED["MultiScaleRoIAlign"][0]
    assert fastops_calls["batched_nms"] >= 2
    assert fastops_calls["roi_align"] >= 1
    assert fastops_calls["multi_scale_roi_align"] == 0
    assert_same_detections(expected, actual, MIN_DETECTIONS["faster_rcnn"])


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(BUILDERS))
def test_training_step_equal_with_and_without_patch(arch, models, fastops_calls, fresh_seed):
    # Copies: a training step updates the BatchNorm statistics. The ResNet body is
    # frozen to keep the step short; the FPN, RPN and heads train.
    plain, patched = (copy.deepcopy(m).train() for m in models[arch])
    for model in (plain, patched):
        model.backbone.body.requires_grad_(False)
    images = random_images()
    targets = random_targets(
        images, ARCH_KWARGS[arch]["num_classes"], with_masks=arch == "mask_rcnn"
    )

    results = []
    for model, is_patched in ((plain, False), (patched, True)):
        losses = run(model, images, fresh_seed, targets, patched=is_patched)
        sum(losses.values()).backward()
        results.append(losses)
    expected, actual = results
    assert fastops_calls["batched_nms"] >= 1
    assert fastops_calls["multi_scale_roi_align"] >= (2 if arch == "mask_rcnn" else 1)
    if arch == "mask_rcnn":
        assert fastops_calls["roi_align"] >= 1  # the mask targets (roi_heads.roi_align)

    assert expected.keys() == actual.keys()
    for key in expected:
        torch.testing.assert_close(
            actual[key], expected[key], rtol=1e-4, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}"
        )
    # The gradients reach back through roi_align's backward into the FPN.
    patched_parameters = dict(patched.named_parameters())
    for name, parameter in plain.named_parameters():
        if name.startswith(("roi_heads", "backbone.fpn")):
            other = patched_parameters[name]
            scale = parameter.grad.abs().max().item()
            torch.testing.assert_close(
                other.grad,
                parameter.grad,
                rtol=1e-3,
                atol=1e-4 * scale,
                msg=lambda m, name=name: f"{name}: {m}",
            )


# --- known gap ----------------------------------------------------------------------------


def test_mixed_dtypes_under_autocast():
    """torchvision's autocast kernels compute mixed box/feature dtypes in
    float32 (roi_align returns the features' dtype); so does fastops."""
    features = torch.randn(1, 4, 16, 16, dtype=torch.bfloat16)
    rois = torch.tensor([[0.0, 1.0, 1.0, 9.0, 9.0], [0.0, 2.5, 0.5, 14.0, 7.0]])
    boxes = torch.tensor([[1.0, 1.0, 9.0, 9.0], [2.0, 2.0, 5.0, 12.0]], dtype=torch.bfloat16)
    scores = torch.tensor([0.9, 0.8])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = torchvision.ops.roi_align(features, rois, 3)
        expected_keep = torchvision.ops.nms(boxes, scores, 0.1)
        with fastops.patch_torchvision():
            actual = torchvision.ops.roi_align(features, rois, 3)
            actual_keep = torchvision.ops.nms(boxes, scores, 0.1)
    assert actual.dtype == torch.bfloat16
    torch.testing.assert_close(actual, expected)
    torch.testing.assert_close(actual_keep, expected_keep)
