"""The detection reference models (FasterRCNN, MaskRCNN, SingleShotDetector) and
their building blocks: box coding, matching, sampling and anchors against
torchvision's definitions; every model in training and eval mode on every
backend, the same detections on each backend and with operators="torch";
a few optimisation steps; empty images, lists of images of different sizes,
the RoI max-pool variant and bad input.

The networks are tiny (8 to 16 channels, 64x64 images, a handful of
proposals, one intra-op thread) so that the whole file runs in about half a
minute on two cores; the Triton interpreter takes a fraction of a second per
RoI and per NMS call, so every RoI and NMS count stays in single digits."""

from __future__ import annotations

import copy

import pytest
import torch
import torchvision
from conftest import BACKEND_CASES
from torch import nn
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator as TorchvisionAnchors
from torchvision.models.detection.image_list import ImageList

import fastops
from fastops.data.shapes import SyntheticShapes, detection_collate
from fastops.models.detection import (
    AnchorGenerator,
    BalancedPositiveNegativeSampler,
    BoxCoder,
    FasterRCNN,
    MaskRCNN,
    Matcher,
    MultiLevelRoIPool,
    RegionProposalNetwork,
    RoIHeads,
    RPNHead,
    SingleShotDetector,
    crop_mask_targets,
    pairwise_iou,
    paste_masks_in_image,
    pyramid_levels,
)

NUM_CLASSES = 4  # background + the three shapes of SyntheticShapes(num_classes=3)
TINY_BACKBONE = dict(backbone_widths=(8, 8, 16, 16), fpn_channels=8)
# Few boxes everywhere: the Triton interpreter takes a fraction of a second per
# RoI and per NMS call. At most 6 anchors per level (27 boxes) reach the RPN's NMS.
TINY_RCNN = dict(
    **TINY_BACKBONE,
    box_representation_size=32,
    rpn_pre_nms_top_n_train=6,
    rpn_pre_nms_top_n_test=6,
    rpn_post_nms_top_n_train=4,
    rpn_post_nms_top_n_test=4,
    rpn_batch_size_per_image=64,
    box_batch_size_per_image=4,
    box_score_thresh=0.0,  # every proposal survives: the eval checks are never vacuous
    box_detections_per_img=3,
)
TINY_SSD = dict(**TINY_BACKBONE, score_thresh=0.0, topk_candidates=24, detections_per_img=6)
MODELS = {
    "faster_rcnn": (FasterRCNN, TINY_RCNN),
    "mask_rcnn": (MaskRCNN, TINY_RCNN),
    "ssd": (SingleShotDetector, TINY_SSD),
    "faster_rcnn_roi_pool": (FasterRCNN, {**TINY_RCNN, "box_pooler": "pool"}),
}
LOSS_NAMES = {
    FasterRCNN: {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg"},
    MaskRCNN: {
        "loss_objectness",
        "loss_rpn_box_reg",
        "loss_classifier",
        "loss_box_reg",
        "loss_mask",
    },
    SingleShotDetector: {"loss_box", "loss_objectness", "loss_classifier"},
}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These networks are a few thousand multiply-adds per pixel: a second
    intra-op thread only adds synchronisation, and on a busy machine its spin
    waits cost ten times the work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def build(name: str, seed: int, **overrides):
    cls, settings = MODELS[name]
    torch.manual_seed(seed)
    return cls(NUM_CLASSES, **{**settings, **overrides})


def shapes_batch(count: int = 2, size: int = 64, seed: int = 0):
    dataset = SyntheticShapes(count, size, num_classes=NUM_CLASSES - 1, seed=seed)
    return detection_collate([dataset[i] for i in range(count)])


def train_step(model, images, targets, seed: int):
    """Losses and the gradients of a few parameters after one backward pass,
    with the samplers' random draws fixed by ``seed``."""
    model.train()
    model.zero_grad()
    torch.manual_seed(seed)
    losses = model(images, targets)
    sum(losses.values()).backward()
    return {k: v.detach() for k, v in losses.items()}, {
        name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None
    }


@torch.no_grad()
def detect(model, images):
    model.eval()
    return model(images)


def check_losses(losses, names):
    assert set(losses) == names
    for name, value in losses.items():
        assert value.dim() == 0 and value.dtype == torch.float32, name
        assert torch.isfinite(value), (name, value)
        assert value >= 0, (name, value)


def check_detections(detections, image_sizes, with_masks=False, expect_some=True):
    assert isinstance(detections, list) and len(detections) == len(image_sizes)
    for detection, (height, width) in zip(detections, image_sizes, strict=True):
        keys = {"boxes", "labels", "scores"} | ({"masks"} if with_masks else set())
        assert set(detection) == keys
        boxes, labels, scores = detection["boxes"], detection["labels"], detection["scores"]
        n = boxes.shape[0]
        if expect_some:
            assert n > 0
        assert boxes.dtype == torch.float32 and boxes.shape == (n, 4)
        assert labels.dtype == torch.int64 and labels.shape == (n,)
        assert scores.dtype == torch.float32 and scores.shape == (n,)
        assert ((labels >= 1) & (labels < NUM_CLASSES)).all()
        assert ((scores >= 0) & (scores <= 1)).all()
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= width).all() and (boxes[:, 3] <= height).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert (scores[:-1] >= scores[1:]).all()  # by decreasing score, hence per class too
        for label in labels.unique():
            class_scores = scores[labels == label]
            assert (class_scores[:-1] >= class_scores[1:]).all()
        if with_masks:
            masks = detection["masks"]
            assert masks.dtype == torch.float32 and masks.shape == (n, 1, height, width)
            assert ((masks >= 0) & (masks <= 1)).all()


def assert_same_detections(actual, expected, exact=False, atol=1e-4, except_keys=()):
    """The same detections; ``exact``: bit for bit, except ``except_keys`` (close)."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        assert set(a) == set(e)
        for key in e:
            if exact and key not in except_keys:
                assert torch.equal(a[key], e[key]), key
            elif key == "labels":
                assert torch.equal(a[key], e[key])
            else:
                torch.testing.assert_close(a[key], e[key], rtol=1e-4, atol=atol)


def assert_close_dicts(actual, expected, exact=False, rtol=1e-4, atol=1e-5, except_keys=()):
    """Equal tensors; ``exact``: bit for bit, except ``except_keys`` (close)."""
    assert set(actual) == set(expected)
    for key in expected:
        if exact and key not in except_keys:
            assert torch.equal(actual[key], expected[key]), key
        else:
            torch.testing.assert_close(actual[key], expected[key], rtol=rtol, atol=atol, msg=key)


def available(backend: str, device: str) -> bool:
    return backend in fastops.available_backends(device=device)


# --- box coding, matching, sampling, anchors -------------------------------------------


def random_boxes(n: int, scale: float = 100.0, dtype=torch.float32) -> torch.Tensor:
    corner = torch.rand(n, 2, dtype=dtype) * scale
    size = torch.rand(n, 2, dtype=dtype) * scale * 0.5 + 1.0
    return torch.cat([corner, corner + size], dim=1)


@pytest.mark.parametrize("weights", [(1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)])
def test_box_coder_decode_inverts_encode(weights):
    coder = BoxCoder(weights)
    boxes, references = (
        random_boxes(200, dtype=torch.float64),
        random_boxes(200, dtype=torch.float64),
    )
    deltas = coder.encode(boxes, references)
    torch.testing.assert_close(coder.decode(deltas, references), boxes)
    # Broadcasting: per-class deltas [N, C, 4] against references [N, 1, 4].
    per_class = torch.stack([deltas, deltas], dim=1)
    decoded = coder.decode(per_class, references[:, None, :])
    torch.testing.assert_close(decoded, torch.stack([boxes, boxes], dim=1))


def test_box_coder_matches_torchvision_and_clamps():
    weights = (10.0, 10.0, 5.0, 5.0)
    ours, theirs = BoxCoder(weights), tv_utils.BoxCoder(weights)
    boxes, references = random_boxes(50), random_boxes(50)
    torch.testing.assert_close(
        ours.encode(boxes, references), theirs.encode_single(boxes, references)
    )
    deltas = torch.randn(50, 4) * 3
    torch.testing.assert_close(
        ours.decode(deltas, references), theirs.decode_single(deltas, references)
    )
    # A huge size delta is clamped at log(1000 / 16): at most 62.5 times the reference.
    huge = torch.tensor([[0.0, 0.0, 1e4, 1e4]])
    box = ours.decode(huge, torch.tensor([[0.0, 0.0, 16.0, 16.0]]))
    width = box[0, 2] - box[0, 0]
    torch.testing.assert_close(width, torch.tensor(1000.0))


def test_pairwise_iou_matches_torchvision():
    a, b = random_boxes(30), random_boxes(20)
    torch.testing.assert_close(pairwise_iou(a, b), torchvision.ops.box_iou(a, b))
    zero = torch.zeros(1, 4)
    assert pairwise_iou(zero, zero).item() == 0.0  # empty union: no match, not NaN


@pytest.mark.parametrize("low_quality", [False, True])
def test_matcher_matches_torchvision(low_quality):
    for _ in range(20):
        gt = random_boxes(5)
        # Every box overlaps some anchor (torchvision also matches a box that
        # overlaps nothing, to every anchor of IoU 0: see test_matcher_rules).
        copies = gt.repeat(2, 1)
        shift = torch.randn(10, 2) * 0.1 * (copies[:, 2:] - copies[:, :2])
        jittered = copies + shift.repeat(1, 2)
        anchors = torch.cat([random_boxes(50), jittered])[torch.randperm(60)]
        quality = pairwise_iou(gt, anchors)
        expected = tv_utils.Matcher(0.7, 0.3, low_quality)(quality)
        assert torch.equal(Matcher(0.7, 0.3, low_quality)(quality), expected)


def test_matcher_rules():
    quality = torch.tensor(
        [
            [0.9, 0.5, 0.1, 0.0],
            [0.2, 0.6, 0.25, 0.0],
        ]
    )
    plain = Matcher(0.7, 0.3)(quality)
    assert plain.tolist() == [0, Matcher.BETWEEN_THRESHOLDS, Matcher.BELOW_LOW_THRESHOLD, -1]
    # Box 1's best prediction (column 1, IoU 0.6) becomes positive.
    assert Matcher(0.7, 0.3, True)(quality).tolist() == [0, 1, -1, -1]
    # A box overlapping nothing claims nothing.
    lonely = torch.tensor([[0.8, 0.0], [0.0, 0.0]])
    assert Matcher(0.7, 0.3, True)(lonely).tolist() == [0, -1]
    assert Matcher(0.5, 0.5)(torch.zeros(0, 3)).tolist() == [-1, -1, -1]


def test_sampler_balances_and_is_seeded():
    labels = torch.tensor([1] * 10 + [0] * 50 + [-1] * 5)
    sampler = BalancedPositiveNegativeSampler(16, 0.25)
    torch.manual_seed(3)
    positive, negative = sampler([labels, torch.tensor([0, 0, 2, -1])])
    assert positive[0].sum() == 4 and negative[0].sum() == 12
    assert (labels[positive[0]] == 1).all() and (labels[negative[0]] == 0).all()
    assert positive[1].tolist() == [False, False, True, False]
    assert negative[1].tolist() == [True, True, False, False]
    torch.manual_seed(3)
    again, _ = sampler([labels, torch.tensor([0, 0, 2, -1])])
    assert torch.equal(again[0], positive[0])


def test_anchors_match_torchvision():
    sizes, ratios = ((16,), (32,), (64,)), (0.5, 1.0, 2.0)
    feature_sizes = [(16, 24), (8, 12), (4, 6)]
    anchors, counts = AnchorGenerator(sizes, ratios)((64, 96), feature_sizes)
    expected = TorchvisionAnchors(sizes, (ratios,) * 3)(
        ImageList(torch.zeros(1, 3, 64, 96), [(64, 96)]),
        [torch.zeros(1, 1, h, w) for h, w in feature_sizes],
    )[0]
    assert counts == [h * w * 3 for h, w in feature_sizes]
    assert torch.equal(anchors, expected)
    # Level 1, row 2, column 5, ratio 1: a 32 x 32 square centred on (5 * 8, 2 * 8).
    index = counts[0] + (2 * 12 + 5) * 3 + 1
    assert anchors[index].tolist() == [24.0, 0.0, 56.0, 32.0]


# --- building blocks of the heads --------------------------------------------------------


def test_pyramid_levels_follow_fpn_equation_one():
    sides = torch.tensor([20.0, 56.0, 111.0, 112.0, 224.0, 447.0, 448.0, 2000.0])
    boxes = torch.stack([torch.zeros_like(sides)] * 2 + [sides] * 2, dim=1)
    # floor(4 + log2(side / 224)), clamped to P2..P5, counted from P2.
    assert pyramid_levels(boxes, 4, 2).tolist() == [0, 0, 0, 1, 2, 2, 3, 3]


@pytest.mark.parametrize("operators", ["fastops", "torch"])
def test_multi_level_roi_pool_pools_each_box_from_its_level(operators):
    features = {str(i): torch.randn(2, 3, 64 >> i, 64 >> i) for i in range(4)}
    boxes = [torch.tensor([[0.0, 0.0, 200.0, 200.0], [4.0, 4.0, 30.0, 40.0]]), random_boxes(3)]
    pooler = MultiLevelRoIPool(["0", "1", "2", "3"], 3, operators=operators)
    pooled = pooler(features, boxes, [(256, 256), (256, 256)])
    rois = torch.cat(
        [torch.cat([torch.full((len(b), 1), float(i)), b], 1) for i, b in enumerate(boxes)]
    )
    levels = pyramid_levels(rois[:, 1:], 4, 2)
    assert levels[0] == 1 and levels[1] == 0  # the test sees two levels at least
    for k in range(rois.shape[0]):
        level = int(levels[k])
        expected = torchvision.ops.roi_pool(
            features[str(level)], rois[k : k + 1], 3, 0.25 / 2**level
        )
        torch.testing.assert_close(pooled[k : k + 1], expected)


@pytest.mark.parametrize("operators", ["fastops", "torch"])
def test_rpn_suppresses_within_each_level_only(operators):
    rpn = RegionProposalNetwork(
        AnchorGenerator(((16,), (32,)), (1.0,)),
        RPNHead(4, 1),
        pre_nms_top_n_test=10,
        post_nms_top_n_test=10,
        operators=operators,
    ).eval()
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],  # level 0, best
            [0.0, 0.0, 10.0, 10.2],  # level 0, suppressed by the first
            [30.0, 30.0, 30.0005, 40.0],  # level 0, thinner than min_size
            [0.0, 0.0, 10.0, 10.0],  # level 1: the first box again, kept
            [-5.0, 20.0, 15.0, 70.0],  # level 1, clipped to the 40 x 50 image
        ]
    )
    objectness = torch.tensor([[4.0, 3.0, 5.0, 1.0, 2.0]])
    proposals = rpn.select_proposals(objectness, torch.zeros(1, 5, 4), anchors, [3, 2], [(40, 50)])
    expected = torch.tensor(
        [[0.0, 0.0, 10.0, 10.0], [0.0, 20.0, 15.0, 40.0], [0.0, 0.0, 10.0, 10.0]]
    )
    torch.testing.assert_close(proposals[0], expected)


def test_roi_sampling_adds_the_ground_truth():
    heads = RoIHeads(
        nn.Identity(), nn.Identity(), nn.Identity(), batch_size_per_image=8, positive_fraction=1.0
    )
    gt = torch.tensor([[2.0, 2.0, 20.0, 30.0], [30.0, 5.0, 60.0, 25.0]])
    proposals = [
        torch.tensor([[3.0, 2.0, 21.0, 30.0], [40.0, 40.0, 60.0, 60.0]]),
        torch.zeros(0, 4),
    ]
    targets = [
        {"boxes": gt, "labels": torch.tensor([2, 3])},
        {"boxes": gt[:1], "labels": torch.tensor([1])},
    ]
    rois, matched, labels, regression = heads.sample_rois(proposals, targets)
    torch.testing.assert_close(rois[0], torch.cat([proposals[0], gt]))
    assert matched[0].tolist() == [0, 0, 0, 1] and labels[0].tolist() == [2, 0, 2, 3]
    torch.testing.assert_close(regression[0][2:], torch.zeros(2, 4))
    torch.testing.assert_close(
        regression[0][0], BoxCoder((10, 10, 5, 5)).encode(gt[0], proposals[0][0])
    )
    torch.testing.assert_close(rois[1], gt[:1])  # no proposals: the ground truth alone
    assert labels[1].tolist() == [1]


def test_mask_targets_and_pasting():
    masks = torch.zeros(2, 32, 32, dtype=torch.uint8)
    masks[0, 8:24, 4:20] = 1
    masks[1, 0:16, 16:32] = 1
    boxes = torch.tensor([[4.0, 8.0, 20.0, 24.0], [16.0, 0.0, 32.0, 16.0], [4.0, 8.0, 20.0, 24.0]])
    targets = crop_mask_targets(masks, boxes, torch.tensor([0, 1, 1]), 8, torchvision.ops.roi_align)
    assert targets.shape == (3, 8, 8)
    # Each box is its own mask's extent exactly: all ones, no half-pixel shift.
    torch.testing.assert_close(targets[0], torch.ones(8, 8))
    torch.testing.assert_close(targets[1], torch.ones(8, 8))
    # Mask 1 in the first box: columns 16.. of 4..20, rows ..16 of 8..24.
    expected = torch.zeros(8, 8)
    expected[:4, 6:] = 1
    torch.testing.assert_close(targets[2], expected)

    box = torch.tensor([[4.0, 8.0, 20.0, 24.0]])
    pasted = paste_masks_in_image(torch.ones(1, 1, 28, 28), box, (32, 40))
    expected = torch.zeros(1, 1, 32, 40)
    expected[..., 8:24, 4:20] = 1  # the pixels whose centres lie in the box
    torch.testing.assert_close(pasted, expected)
    # A mask cropped to its box and pasted back is the mask again (bilinear at the edges).
    crop = crop_mask_targets(masks[:1], box, torch.tensor([0]), 28, torchvision.ops.roi_align)
    pasted = paste_masks_in_image(crop[:, None], box, (32, 32))[0, 0]
    assert torch.equal(pasted > 0.5, masks[0].bool())
    assert paste_masks_in_image(torch.ones(0, 1, 28, 28), torch.zeros(0, 4), (5, 6)).shape == (
        0,
        1,
        5,
        6,
    )


def test_single_shot_assignment_rule():
    model = SingleShotDetector(NUM_CLASSES, **TINY_BACKBONE, base_box_sizes=(16, 32, 64))
    targets = [
        {  # centre (40, 24): row 1, col 2; sizes 30 and 28 fit the 32 box; the better wins
            "boxes": torch.tensor([[25.0, 9.0, 55.0, 39.0], [26.0, 10.0, 54.0, 38.0]]),
            "labels": torch.tensor([1, 2]),
        },
        {  # centre (8, 56) in image 1: row 3, col 0; 16 x 12 fits the 16 box best
            "boxes": torch.tensor([[0.0, 50.0, 16.0, 62.0]]),
            "labels": torch.tensor([3]),
        },
    ]
    assignment = model.assign(targets, (4, 4))
    cell_a = (0 * 4 + 1) * 4 + 2
    cell_b = (1 * 4 + 3) * 4 + 0
    assert assignment["slot"].tolist() == [cell_a * 3 + 1, cell_b * 3 + 0]
    assert assignment["cell"].tolist() == [cell_a, cell_b]
    assert assignment["label"].tolist() == [0, 2]
    expected_first = torch.tensor([40 / 16 - 2, 24 / 16 - 1, 0.0, 0.0])
    expected_first[2:] = torch.log(torch.tensor([30 / 32, 30 / 32]))
    torch.testing.assert_close(assignment["offsets"][0], expected_first)


# --- the models on every backend --------------------------------------------------------


@pytest.mark.parametrize(("device", "backend"), BACKEND_CASES)
@pytest.mark.parametrize("name", ["faster_rcnn", "mask_rcnn", "ssd", "faster_rcnn_roi_pool"])
def test_model_on_backend(name, device, backend, fresh_seed):
    """Training losses and gradients, and eval detections, on one backend; the
    same as the reference backend's within float32 rounding, and (Triton) the
    same bits as the CPU kernels'."""
    model = build(name, fresh_seed).to(device)
    images, targets = shapes_batch()
    images = images.to(device)
    targets = [{k: v.to(device) for k, v in t.items()} for t in targets]
    sizes = [(64, 64)] * 2

    def run(on):
        with fastops.use_backend(on):
            copied = copy.deepcopy(model)  # batch norm statistics move in training
            losses, grads = train_step(copied, images, targets, fresh_seed)
            return losses, grads, detect(copied, images)

    losses, grads, detections = run(backend)
    check_losses(losses, LOSS_NAMES[type(model)])
    assert set(grads) == {n for n, _ in model.named_parameters()}  # every parameter learns
    assert all(torch.isfinite(g).all() for g in grads.values())
    check_detections(detections, sizes, with_masks=name == "mask_rcnn")

    if backend != "reference":
        ref_losses, ref_grads, ref_detections = run("reference")
        assert_close_dicts(losses, ref_losses)
        assert_close_dicts(grads, ref_grads, atol=1e-4)
        assert_same_detections(detections, ref_detections)
    if backend == "triton" and available("cpu", device):
        cpu_losses, cpu_grads, cpu_detections = run("cpu")
        # The RoI operators and NMS agree bit for bit; the transposed convolution
        # of the mask head and the backward passes sum in other orders.
        assert_close_dicts(losses, cpu_losses, exact=True, except_keys={"loss_mask"})
        assert_close_dicts(grads, cpu_grads, atol=1e-5)
        assert_same_detections(detections, cpu_detections, exact=True, except_keys={"masks"})


@pytest.mark.parametrize("name", ["faster_rcnn", "mask_rcnn", "ssd", "faster_rcnn_roi_pool"])
def test_torch_operators_give_the_same_model(name, fresh_seed):
    """operators="torch" (torchvision's RoI ops and NMS, torch's ConvTranspose2d):
    the same state_dict keys, losses and detections."""
    ours = build(name, fresh_seed)
    theirs = build(name, fresh_seed + 1, operators="torch")
    assert ours.state_dict().keys() == theirs.state_dict().keys()
    theirs.load_state_dict(ours.state_dict())
    images, targets = shapes_batch(seed=1)
    our_losses, our_grads = train_step(copy.deepcopy(ours), images, targets, fresh_seed)
    their_losses, their_grads = train_step(copy.deepcopy(theirs), images, targets, fresh_seed)
    assert_close_dicts(our_losses, their_losses)
    assert_close_dicts(our_grads, their_grads, atol=1e-4)
    assert_same_detections(detect(ours, images), detect(theirs, images))


# Enough proposals and sampled RoIs that the box head's losses average over several boxes.
OPTIMISATION_RCNN = dict(
    rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=32, box_batch_size_per_image=32
)


@pytest.mark.parametrize("name", ["faster_rcnn", "mask_rcnn", "ssd"])
def test_optimisation_decreases_the_loss(name, fresh_seed):
    """16 Adam steps on one batch. The total loss falls; not by a fixed factor
    for the R-CNNs, whose ``loss_box_reg`` rises at first: as the RPN learns,
    more proposals overlap the objects and become positives with non-zero
    regression targets (at the start almost every positive is a ground-truth
    box itself). The losses on fixed anchors and cells fall by a margin."""
    model = build(name, fresh_seed, **({} if name == "ssd" else OPTIMISATION_RCNN))
    images, targets = shapes_batch(seed=2)
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)

    def losses_now():
        torch.manual_seed(fresh_seed)
        with torch.no_grad():
            return model(images, targets)

    model.train()
    before = losses_now()
    for step in range(16):
        torch.manual_seed(fresh_seed + step)
        optimiser.zero_grad()
        sum(model(images, targets).values()).backward()
        optimiser.step()
    after = losses_now()
    assert sum(after.values()) < sum(before.values()), (before, after)
    # Objectness, over every anchor or base box, falls slowest.
    falling = {"loss_objectness": 0.9, "loss_classifier": 0.8}
    if name == "ssd":
        falling["loss_box"] = 0.8
    for key, factor in falling.items():
        assert after[key] < factor * before[key], (key, before, after)


# --- input variants ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["faster_rcnn", "mask_rcnn", "ssd", "faster_rcnn_roi_pool"])
def test_images_without_objects(name, fresh_seed):
    model = build(name, fresh_seed)
    images, targets = shapes_batch()
    empty = {
        "boxes": torch.zeros(0, 4),
        "labels": torch.zeros(0, dtype=torch.int64),
        "masks": torch.zeros(0, 64, 64, dtype=torch.uint8),
    }
    for batch_targets in ([targets[0], empty], [empty, empty]):
        losses, grads = train_step(model, images, batch_targets, fresh_seed)
        check_losses(losses, LOSS_NAMES[type(model)])
        assert all(torch.isfinite(g).all() for g in grads.values())
    # Without objects nothing is regressed, masked or (the SSD) classified.
    unsupervised = {"loss_rpn_box_reg", "loss_box_reg", "loss_mask", "loss_box"}
    if isinstance(model, SingleShotDetector):
        unsupervised.add("loss_classifier")
    for key in unsupervised & set(losses):
        assert losses[key] == 0, key
    assert losses.get("loss_classifier", 0) >= 0 and losses["loss_objectness"] > 0


@pytest.mark.parametrize("name", ["faster_rcnn", "mask_rcnn", "ssd", "faster_rcnn_roi_pool"])
def test_list_of_images_of_different_sizes(name, fresh_seed):
    model = build(name, fresh_seed)
    dataset_a = SyntheticShapes(1, (64, 64), num_classes=3, seed=4)
    dataset_b = SyntheticShapes(1, (48, 80), num_classes=3, seed=5)
    (image_a, target_a), (image_b, target_b) = dataset_a[0], dataset_b[0]
    losses, _ = train_step(model, [image_a, image_b], [target_a, target_b], fresh_seed)
    check_losses(losses, LOSS_NAMES[type(model)])
    detections = detect(model, [image_a, image_b])
    check_detections(detections, [(64, 64), (48, 80)], with_masks=name == "mask_rcnn")
    # A stacked batch and the list of its images are the same input.
    images, _ = shapes_batch()
    assert_same_detections(detect(model, list(images)), detect(model, images), exact=True)


# --- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cls", "kwargs", "argument"),
    [
        (FasterRCNN, {"num_classes": 1}, "num_classes"),
        (FasterRCNN, {"box_pooler": "max"}, "box_pooler"),
        (FasterRCNN, {"anchor_sizes": ((16,), (32,))}, "anchor_sizes"),
        (FasterRCNN, {"anchor_sizes": ((16, 24), (32,), (64,), (128,), (256,))}, "anchor_sizes"),
        (FasterRCNN, {"anchor_sizes": ((0.4,), (32,), (64,), (128,), (256,))}, "under one pixel"),
        (FasterRCNN, {"anchor_sizes": (16, 32, 64, 128, 256)}, "anchor_sizes"),
        (FasterRCNN, {"aspect_ratios": (0.5, -1.0)}, "aspect_ratios"),
        (FasterRCNN, {"aspect_ratios": ((1.0,),) * 4}, "aspect_ratios"),
        (FasterRCNN, {"backbone_widths": (8, 8, 16)}, "backbone_widths"),
        (FasterRCNN, {"fpn_channels": 0}, "fpn_channels"),
        (FasterRCNN, {"rpn_nms_thresh": 1.5}, "rpn_nms_thresh"),
        (FasterRCNN, {"rpn_fg_iou_thresh": 0.2}, "rpn_bg_iou_thresh"),
        (FasterRCNN, {"box_positive_fraction": 0.0}, "box_positive_fraction"),
        (FasterRCNN, {"box_batch_size_per_image": 2.5}, "box_batch_size_per_image"),
        (FasterRCNN, {"bbox_reg_weights": (10.0, 10.0, 5.0)}, "bbox_reg_weights"),
        (FasterRCNN, {"image_std": (0.2, 0.0, 0.2)}, "image_std"),
        (FasterRCNN, {"operators": "numpy"}, "operators"),
        (MaskRCNN, {"mask_head_channels": 0}, "mask_head_channels"),
        (SingleShotDetector, {"grid_stride": 12}, "grid_stride"),
        (SingleShotDetector, {"base_box_sizes": (16, 32)}, "base_box_sizes"),
        (SingleShotDetector, {"base_box_sizes": (16, 32, (8, -1))}, "base_box_sizes"),
        (SingleShotDetector, {"ignore_thresh": -0.1}, "ignore_thresh"),
    ],
)
def test_bad_constructor_arguments(cls, kwargs, argument):
    kwargs = {"num_classes": NUM_CLASSES, **kwargs}
    with pytest.raises(ValueError, match=argument):
        cls(**kwargs)


def _without(target, key):
    return {k: v for k, v in target.items() if k != key}


@pytest.mark.parametrize("name", ["faster_rcnn", "mask_rcnn", "ssd"])
def test_bad_forward_input(name, fresh_seed):
    model = build(name, fresh_seed)

    def kernels_must_not_run(*args, **kwargs):
        raise AssertionError("the backbone ran before the input was checked")

    model.backbone.forward = kernels_must_not_run
    images, targets = shapes_batch()
    good = targets[0]
    assert good["boxes"].shape[0] > 1
    bad_targets = [
        (None, "targets are required"),
        ([good], "1 entries for 2 images"),
        ([good, _without(good, "labels")], r"targets\[1\] is missing \['labels'\]"),
        ([good, {**good, "boxes": torch.zeros(2, 5)}], r"\['boxes'\] must be \[N, 4\]"),
        ([good, {**good, "labels": good["labels"] + 10}], r"\['labels'\] must be in 1\.\.3"),
        ([good, {**good, "labels": good["labels"] * 0}], r"\['labels'\] must be in 1\.\.3"),
        ([good, {**good, "labels": good["labels"][:-1]}], r"\['labels'\] must be \[N\]"),
        ([good, {**good, "labels": good["labels"].float()}], "integer tensor"),
        ([good, {**good, "boxes": good["boxes"].flip(1)}], "x2 > x1"),
        ([good, {**good, "boxes": good["boxes"] * float("nan")}], "non-finite"),
        ([good, "boxes"], r"targets\[1\] must be a dict"),
    ]
    if name == "mask_rcnn":
        bad_targets += [
            ([good, _without(good, "masks")], r"missing \['masks'\]"),
            ([good, {**good, "masks": good["masks"][:, :32]}], r"\['masks'\] must be \[N, H, W\]"),
        ]
    model.train()
    for bad, message in bad_targets:
        with pytest.raises(ValueError, match=message):
            model(images, bad)
    for bad_images, error in [
        (images[:, :1], ValueError),
        (images[0], ValueError),
        ([], ValueError),
        ([images[0], images[1, :2]], ValueError),
        (images.to(torch.uint8), TypeError),
        ("images", TypeError),
    ]:
        with pytest.raises(error, match="images"):
            model(bad_images, targets)
