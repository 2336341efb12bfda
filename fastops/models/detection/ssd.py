"""A single-shot grid detector in the line of Redmon, Divvala, Girshick and
Farhadi, "You Only Look Once: Unified, Real-Time Object Detection" (CVPR
2016), with the base boxes ("anchors", "priors") and offset parametrisation of
its successor YOLOv2 (Redmon and Farhadi, "YOLO9000", CVPR 2017) and of Liu et
al., "SSD: Single Shot MultiBox Detector" (ECCV 2016): one dense prediction per
grid cell, no proposals and no RoI pooling; only the final suppression is an
operator (``operators.batched_nms``)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastops.models.backbones import ResNetBackbone
from fastops.models.detection import _checks
from fastops.models.detection.box_coding import (
    DEFAULT_LOG_SCALE_CLIP,
    boxes_at_least,
    clip_boxes_to_image,
    pairwise_iou,
)
from fastops.models.detection.faster_rcnn import BACKBONE_STRIDE, IMAGENET_MEAN, IMAGENET_STD
from fastops.models.detection.images import (
    ImageBatcher,
    ImageSizes,
    check_inputs,
)
from fastops.models.operators import get_operators

# The backbone stage (C3, C4, C5) whose stride is the grid's.
_STAGE_OF_STRIDE = {8: 1, 16: 2, 32: 3}
_OBJECTNESS_PRIOR = 0.01


class TopDownFeature(nn.Module):
    """The finest level of a feature pyramid (Lin et al., "Feature Pyramid
    Networks for Object Detection", CVPR 2017) and only that level: 1x1 lateral
    convolutions of the given backbone stages, the nearest-neighbour 2x
    top-down pathway and one 3x3 output convolution.

    ``forward(maps: list of [N, in_channels[i], H_i, W_i], finest first) ->
    [N, out_channels, H_0, W_0]``.
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)
        self.output = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_uniform_(module.weight, a=1)
                nn.init.zeros_(module.bias)

    def forward(self, maps: list[torch.Tensor]) -> torch.Tensor:
        top = self.lateral[-1](maps[-1])
        for i in range(len(maps) - 2, -1, -1):
            lateral = self.lateral[i](maps[i])
            top = lateral + F.interpolate(top, size=lateral.shape[-2:], mode="nearest")
        return self.output(top)


class SingleShotHead(nn.Module):
    """Two 3x3 convolutions with ReLU, then a 1x1 convolution to ``5 B + C``
    values per cell: ``[N, in_channels, h, w] -> [N, 5 B + C, h, w]``.

    Channel ``5 b + k`` is, for base box ``b``, its offset ``t_x, t_y, t_w,
    t_h`` (``k = 0..3``) or its objectness logit (``k = 4``); channels ``5 B ..
    5 B + C - 1`` are the cell's class logits. The objectness bias starts at the
    logit of 0.01 (Lin et al., "Focal Loss", ICCV 2017, section 3.3), so that
    the many empty cells do not dominate the first steps.
    """

    def __init__(
        self, in_channels: int, channels: int, num_base_boxes: int, num_classes: int
    ) -> None:
        super().__init__()
        self.num_base_boxes = num_base_boxes
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.predict = nn.Conv2d(channels, 5 * num_base_boxes + num_classes, 1)
        for conv in (self.conv1, self.conv2):
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.predict.weight, std=0.01)
        nn.init.zeros_(self.predict.bias)
        with torch.no_grad():
            objectness_bias = self.predict.bias[: 5 * num_base_boxes].view(num_base_boxes, 5)[:, 4]
            objectness_bias.fill_(math.log(_OBJECTNESS_PRIOR / (1 - _OBJECTNESS_PRIOR)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(F.relu(self.conv2(F.relu(self.conv1(x)))))


class SingleShotDetector(nn.Module):
    """A grid of ``num_base_boxes`` (B) base boxes per cell on one pyramid
    level, predicting ``5 B + C`` values per cell (:class:`SingleShotHead`),
    ``C = num_classes - 1`` foreground classes.

    Network: :class:`~fastops.models.backbones.ResNetBackbone`, and the
    feature pyramid level of stride ``grid_stride`` (8, 16 or 32) built from
    the backbone stages of that stride and coarser (:class:`TopDownFeature`,
    ``fpn_channels``); the head runs on it, so the grid of an ``H x W``
    (padded) image is ``H / grid_stride x W / grid_stride`` cells, each seeing
    the coarser context through the top-down pathway.

    Boxes (YOLOv2's parametrisation): base box ``b`` of size ``(p_w, p_h)`` in
    cell ``(row, col)`` decodes to centre ``((col + sigmoid(t_x)) s, (row +
    sigmoid(t_y)) s)`` and size ``(p_w e^{t_w}, p_h e^{t_h})``, ``s`` the stride
    (``t_w``, ``t_h`` clamped at ``log(1000 / 16)``). ``base_box_sizes``: B
    sizes, each a number (a square) or a ``(width, height)`` pair; by default
    ``s, 2 s, 4 s, ...`` squares.

    Training (``targets`` as :class:`FasterRCNN`'s): each ground-truth box is
    assigned to the cell containing its centre and to the base box whose shape
    overlaps its own best (IoU of the two sizes centred on one point, YOLOv2).
    Two boxes claiming the same cell and base box: the better-fitting one (the
    higher shape IoU; on a tie the later box of the image) is assigned and the
    other is not trained on. Losses, each summed and divided by the number of
    assigned boxes (at least 1), as SSD normalises:

    * ``loss_box``: smooth L1 (beta 1/9) between ``(sigmoid(t_x), sigmoid(t_y),
      t_w, t_h)`` and the assigned box's ``(c_x / s - col, c_y / s - row,
      log(w / p_w), log(h / p_h))``;
    * ``loss_objectness``: binary cross entropy, target 1 for the assigned base
      boxes and 0 for the others, except that an unassigned base box whose
      decoded box overlaps a ground-truth box with IoU > ``ignore_thresh`` is
      left out (YOLOv3's rule: it is not wrong to find an object there);
    * ``loss_classifier``: cross entropy of the cell's class logits against each
      assigned box's class.

    Eval: the score of class ``c`` for a base box is ``sigmoid(objectness) *
    softmax(class logits)[c]``; per image the ``topk_candidates`` best (base
    box, class) pairs scoring ``> score_thresh`` are decoded and clipped to the
    image, boxes under 0.01 pixel removed, non-maximum suppression at
    ``nms_thresh`` runs per class (``operators.batched_nms``), and the
    ``detections_per_img`` best remain: dicts with ``boxes`` float ``[N, 4]``,
    ``labels`` int64 ``[N]`` in 1..num_classes - 1 and ``scores`` ``[N]``.

    ``forward(images, targets=None)`` otherwise as :class:`FasterRCNN`; training
    returns ``loss_box``, ``loss_objectness`` and ``loss_classifier``.
    """

    _api = "SingleShotDetector"

    def __init__(
        self,
        num_classes: int,
        *,
        backbone_widths: Sequence[int] = (32, 64, 128, 256),
        backbone_blocks: Sequence[int] = (1, 1, 1, 1),
        fpn_channels: int = 64,
        grid_stride: int = 16,
        num_base_boxes: int = 3,
        base_box_sizes: Sequence[float] | Sequence[Sequence[float]] | None = None,
        head_channels: int | None = None,
        ignore_thresh: float = 0.5,
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        topk_candidates: int = 1000,
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        operators="fastops",
    ) -> None:
        super().__init__()
        api = self._api
        _checks.positive_int(num_classes, "num_classes", api, minimum=2)
        backbone_widths = _checks.int_sequence(backbone_widths, "backbone_widths", api, 4)
        backbone_blocks = _checks.int_sequence(backbone_blocks, "backbone_blocks", api, 4)
        _checks.positive_int(fpn_channels, "fpn_channels", api)
        if grid_stride not in _STAGE_OF_STRIDE:
            raise ValueError(
                f"{api}: grid_stride must be one of {list(_STAGE_OF_STRIDE)}, got {grid_stride!r}"
            )
        _checks.positive_int(num_base_boxes, "num_base_boxes", api)
        head_channels = fpn_channels if head_channels is None else head_channels
        _checks.positive_int(head_channels, "head_channels", api)
        _checks.number_in(ignore_thresh, "ignore_thresh", api, 0.0, 1.0)
        _checks.number_in(score_thresh, "score_thresh", api, 0.0, 1.0)
        _checks.number_in(nms_thresh, "nms_thresh", api, 0.0, 1.0)
        _checks.positive_int(detections_per_img, "detections_per_img", api, minimum=0)
        _checks.positive_int(topk_candidates, "topk_candidates", api)
        self.operators = get_operators(operators)

        self.num_classes = num_classes
        self.grid_stride = grid_stride
        self.ignore_thresh = float(ignore_thresh)
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.detections_per_img = detections_per_img
        self.topk_candidates = topk_candidates
        self.register_buffer(
            "base_box_sizes",
            _base_box_sizes(base_box_sizes, num_base_boxes, grid_stride, api),
            persistent=False,
        )
        self.transform = ImageBatcher(image_mean, image_std, BACKBONE_STRIDE, api)
        self.backbone = ResNetBackbone(backbone_widths, backbone_blocks)
        self.first_stage = _STAGE_OF_STRIDE[grid_stride]
        self.fpn = TopDownFeature(backbone_widths[self.first_stage :], fpn_channels)
        self.head = SingleShotHead(fpn_channels, head_channels, num_base_boxes, num_classes - 1)

    @property
    def num_base_boxes(self) -> int:
        return self.base_box_sizes.shape[0]

    def forward(
        self,
        images: torch.Tensor | list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        image_list, targets = check_inputs(
            images, targets, self.training, self.num_classes, self._api
        )
        batch, image_sizes = self.transform(image_list)
        feature = self.fpn(list(self.backbone(batch).values())[self.first_stage :])
        raw = self.head(feature).permute(0, 2, 3, 1)  # [N, h, w, 5 B + C]
        num_images, rows, cols, _ = raw.shape
        base = raw[..., : 5 * self.num_base_boxes].reshape(
            num_images, rows, cols, self.num_base_boxes, 5
        )
        offsets, objectness = base[..., :4], base[..., 4]
        class_logits = raw[..., 5 * self.num_base_boxes :]
        if self.training:
            return self._losses(offsets, objectness, class_logits, targets)
        return self._detect(offsets, objectness, class_logits, image_sizes)

    def decode(self, offsets: torch.Tensor) -> torch.Tensor:
        """``offsets [N, h, w, B, 4] -> boxes [N, h, w, B, 4]`` in pixels."""
        _, rows, cols, _, _ = offsets.shape
        stride = self.grid_stride
        row = torch.arange(rows, dtype=offsets.dtype, device=offsets.device).view(rows, 1, 1)
        col = torch.arange(cols, dtype=offsets.dtype, device=offsets.device).view(1, cols, 1)
        centre_x = (col + offsets[..., 0].sigmoid()) * stride
        centre_y = (row + offsets[..., 1].sigmoid()) * stride
        sizes = self.base_box_sizes.to(offsets.dtype)
        half_w = 0.5 * sizes[:, 0] * offsets[..., 2].clamp(max=DEFAULT_LOG_SCALE_CLIP).exp()
        half_h = 0.5 * sizes[:, 1] * offsets[..., 3].clamp(max=DEFAULT_LOG_SCALE_CLIP).exp()
        return torch.stack(
            (centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h), dim=-1
        )

    def assign(
        self, targets: list[dict[str, torch.Tensor]], grid: tuple[int, int]
    ) -> dict[str, torch.Tensor]:
        """The assignment rule of the class docstring, for all images at once.

        Returns, for the ``P`` assigned boxes: ``slot`` int64 ``[P]`` (the flat
        index of (image, row, col, base box) in ``[N, h, w, B]``), ``cell``
        (of (image, row, col)), ``label`` (0-based class) and ``offsets``
        ``[P, 4]`` (the regression targets).
        """
        rows, cols = grid
        sizes = self.base_box_sizes
        device = sizes.device
        boxes = torch.cat([t["boxes"] for t in targets]).to(sizes.dtype)
        labels = torch.cat([t["labels"] for t in targets])
        image = torch.cat(
            [
                torch.full((t["boxes"].shape[0],), i, dtype=torch.int64, device=device)
                for i, t in enumerate(targets)
            ]
        )
        widths, heights = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        centre_x, centre_y = boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights
        col = (centre_x / self.grid_stride).floor().clamp(0, cols - 1).to(torch.int64)
        row = (centre_y / self.grid_stride).floor().clamp(0, rows - 1).to(torch.int64)

        overlap = torch.minimum(widths[:, None], sizes[None, :, 0]) * torch.minimum(
            heights[:, None], sizes[None, :, 1]
        )
        shape_iou = overlap / (
            (widths * heights)[:, None] + (sizes[:, 0] * sizes[:, 1])[None, :] - overlap
        )
        best_iou, base = shape_iou.max(dim=1)
        cell = (image * rows + row) * cols + col
        slot = cell * self.num_base_boxes + base

        # Rank by fit (ties: later box ranks higher), so each slot keeps its best.
        rank = torch.empty_like(slot)
        rank[torch.sort(best_iou, stable=True).indices] = torch.arange(slot.shape[0], device=device)
        num_slots = len(targets) * rows * cols * self.num_base_boxes
        winner = torch.full((num_slots,), -1, dtype=torch.int64, device=device).scatter_reduce(
            0, slot, rank, reduce="amax"
        )
        assigned = winner[slot] == rank

        base_sizes = sizes[base]
        offsets = torch.stack(
            (
                centre_x / self.grid_stride - col,
                centre_y / self.grid_stride - row,
                torch.log(widths / base_sizes[:, 0]),
                torch.log(heights / base_sizes[:, 1]),
            ),
            dim=1,
        )
        return {
            "slot": slot[assigned],
            "cell": cell[assigned],
            "label": labels[assigned] - 1,
            "offsets": offsets[assigned],
        }

    def _losses(
        self,
        offsets: torch.Tensor,
        objectness: torch.Tensor,
        class_logits: torch.Tensor,
        targets: list[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        num_images, rows, cols = offsets.shape[:3]
        assignment = self.assign(targets, (rows, cols))
        slot = assignment["slot"]
        num_assigned = max(slot.shape[0], 1)

        flat_offsets = offsets.reshape(-1, 4)[slot]
        predicted = torch.cat((flat_offsets[:, :2].sigmoid(), flat_offsets[:, 2:]), dim=1)
        loss_box = F.smooth_l1_loss(predicted, assignment["offsets"], beta=1 / 9, reduction="sum")

        objectness_target = torch.zeros_like(objectness).flatten()
        objectness_target[slot] = 1.0
        with torch.no_grad():
            decoded = self.decode(offsets.detach()).reshape(num_images, -1, 4)
            ignored = torch.zeros(
                num_images, decoded.shape[1], dtype=torch.bool, device=decoded.device
            )
            for i, target in enumerate(targets):
                if target["boxes"].shape[0]:
                    best = pairwise_iou(decoded[i], target["boxes"]).max(dim=1).values
                    ignored[i] = best > self.ignore_thresh
            counted = ~ignored.flatten()
            counted[slot] = True
        loss_objectness = F.binary_cross_entropy_with_logits(
            objectness.flatten()[counted], objectness_target[counted], reduction="sum"
        )

        cell_logits = class_logits.reshape(num_images * rows * cols, -1)[assignment["cell"]]
        loss_classifier = F.cross_entropy(cell_logits, assignment["label"], reduction="sum")
        return {
            "loss_box": loss_box / num_assigned,
            "loss_objectness": loss_objectness / num_assigned,
            "loss_classifier": loss_classifier / num_assigned,
        }

    def _detect(
        self,
        offsets: torch.Tensor,
        objectness: torch.Tensor,
        class_logits: torch.Tensor,
        image_sizes: ImageSizes,
    ) -> list[dict[str, torch.Tensor]]:
        num_images = offsets.shape[0]
        num_foreground = class_logits.shape[-1]
        # [N, h, w, B, C] -> [N, h * w * B * C], class fastest.
        scores = objectness.sigmoid()[..., None] * class_logits.softmax(dim=-1)[..., None, :]
        scores = scores.reshape(num_images, -1)
        boxes = self.decode(offsets).reshape(num_images, -1, 4)
        detections = []
        for i, image_size in enumerate(image_sizes):
            image_scores = scores[i]
            candidates = torch.nonzero(image_scores > self.score_thresh).flatten()
            if candidates.numel() > self.topk_candidates:
                top = image_scores[candidates].topk(self.topk_candidates).indices
                candidates = candidates[top]
            image_scores = image_scores[candidates]
            labels = candidates % num_foreground + 1
            image_boxes = clip_boxes_to_image(boxes[i][candidates // num_foreground], image_size)
            keep = boxes_at_least(image_boxes, 1e-2)
            image_boxes, image_scores, labels = image_boxes[keep], image_scores[keep], labels[keep]
            kept = self.operators.batched_nms(image_boxes, image_scores, labels, self.nms_thresh)
            kept = kept[: self.detections_per_img]
            detections.append(
                {"boxes": image_boxes[kept], "labels": labels[kept], "scores": image_scores[kept]}
            )
        return detections

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, grid_stride={self.grid_stride}, "
            f"base_box_sizes={self.base_box_sizes.tolist()}, operators={self.operators.name!r}"
        )


def _base_box_sizes(sizes, count: int, stride: int, api: str) -> torch.Tensor:
    """``[B, 2]`` (width, height) float32."""
    if sizes is None:
        return torch.tensor([[stride * 2.0**b] * 2 for b in range(count)], dtype=torch.float32)
    if isinstance(sizes, str) or not isinstance(sizes, Sequence) or len(sizes) != count:
        raise ValueError(
            f"{api}: base_box_sizes must be num_base_boxes ({count}) sizes, got {sizes!r}"
        )
    pairs = []
    for size in sizes:
        pair = (size, size) if isinstance(size, int | float) else tuple(size)
        if len(pair) != 2 or not all(
            isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in pair
        ):
            raise ValueError(
                f"{api}: base_box_sizes entries must be positive numbers or (width, height) "
                f"pairs, got {size!r}"
            )
        pairs.append([float(v) for v in pair])
    return torch.tensor(pairs, dtype=torch.float32)
