"""The second stage of Faster R-CNN (Ren et al., NeurIPS 2015), which is Fast
R-CNN (Girshick, ICCV 2015) on the RPN's proposals, over a feature pyramid
(Lin et al., CVPR 2017, section 4.2): RoI pooling from the pyramid level that
suits each box, a two-layer MLP, a classifier over ``num_classes`` (background
included) and class-specific box regression. The optional mask branch of
Mask R-CNN (He et al., ICCV 2017) is :class:`~fastops.models.detection.masks.MaskBranch`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fastops.models.detection.box_coding import (
    BoxCoder,
    boxes_at_least,
    clip_boxes_to_image,
    pairwise_iou,
)
from fastops.models.detection.images import ImageSizes
from fastops.models.detection.masks import MaskBranch
from fastops.models.detection.matching import BalancedPositiveNegativeSampler, Matcher
from fastops.models.operators import get_operators


def pyramid_levels(
    boxes: torch.Tensor,
    num_levels: int,
    finest_level: int,
    canonical_scale: float = 224.0,
    canonical_level: int = 4,
) -> torch.Tensor:
    """FPN eq. 1: ``floor(canonical_level + log2(sqrt(area) / canonical_scale))``
    clamped to the pyramid ``finest_level .. finest_level + num_levels - 1`` and
    returned as ``0 .. num_levels - 1`` (int64 ``[K]``); the rule (with its
    ``1e-6``) of :class:`fastops.nn.MultiScaleRoIAlign` and torchvision's."""
    sizes = torch.sqrt((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))
    levels = torch.floor(canonical_level + torch.log2(sizes / canonical_scale) + 1e-6)
    levels = levels.clamp(min=finest_level, max=finest_level + num_levels - 1)
    return levels.to(torch.int64) - finest_level


class MultiLevelRoIPool(nn.Module):
    """RoI max pooling (Girshick, "Fast R-CNN", ICCV 2015) over a feature
    pyramid: each box is pooled with ``operators.roi_pool`` from the level that
    :class:`MultiScaleRoIAlign` would choose (:func:`pyramid_levels`). The
    quantising alternative to RoIAlign's ``box_pooler="align"``.

    ``forward(x: dict of [B, C, H_l, W_l], boxes: list of [K_i, 4],
    image_sizes [(H_i, W_i)]) -> [sum K_i, C, h, w]``. Level scales are
    the powers of two nearest to feature size / largest image size.
    """

    def __init__(
        self,
        featmap_names: Sequence[str],
        output_size: int | tuple[int, int],
        *,
        canonical_scale: float = 224.0,
        canonical_level: int = 4,
        operators="fastops",
    ) -> None:
        super().__init__()
        if not featmap_names:
            raise ValueError("MultiLevelRoIPool: featmap_names is empty")
        self.featmap_names = list(featmap_names)
        self.output_size = (
            (output_size, output_size) if isinstance(output_size, int) else output_size
        )
        self.canonical_scale = canonical_scale
        self.canonical_level = canonical_level
        self.operators = get_operators(operators)

    def forward(
        self,
        x: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        image_sizes: ImageSizes,
    ) -> torch.Tensor:
        missing = [name for name in self.featmap_names if name not in x]
        if missing:
            raise ValueError(f"MultiLevelRoIPool: feature maps {missing} are not in x")
        features = [x[name] for name in self.featmap_names]
        largest_height = max(h for h, _ in image_sizes)
        scales = [2.0 ** round(math.log2(f.shape[-2] / largest_height)) for f in features]
        rois = torch.cat(
            [torch.cat([torch.full_like(b[:, :1], i), b], dim=1) for i, b in enumerate(boxes)]
        )
        levels = pyramid_levels(
            rois[:, 1:],
            len(features),
            round(-math.log2(scales[0])),
            self.canonical_scale,
            self.canonical_level,
        )
        first = features[0]
        pooled = first.new_zeros((rois.shape[0], first.shape[1], *self.output_size))
        for level, (feature, scale) in enumerate(zip(features, scales, strict=True)):
            chosen = torch.nonzero(levels == level).flatten()
            if chosen.numel():
                level_pooled = self.operators.roi_pool(
                    feature, rois[chosen], self.output_size, scale
                )
                pooled = pooled.index_copy(0, chosen, level_pooled)
        return pooled

    def extra_repr(self) -> str:
        return f"featmap_names={self.featmap_names}, output_size={self.output_size}"


class TwoLayerBoxHead(nn.Module):
    """Flatten, then two fully connected layers with ReLU (FPN's "2fc" head):
    ``[K, C, h, w] -> [K, representation_size]``."""

    def __init__(self, in_features: int, representation_size: int) -> None:
        super().__init__()
        self.fc6 = nn.Linear(in_features, representation_size)
        self.fc7 = nn.Linear(representation_size, representation_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc7(F.relu(self.fc6(x.flatten(start_dim=1)))))


class BoxPredictor(nn.Module):
    """Fast R-CNN's sibling outputs: ``[K, D] -> (class logits [K, num_classes],
    box deltas [K, 4 num_classes])``. Initialised as in Detectron (normal with
    standard deviation 0.01 and 0.001, zero bias) so that the untrained head
    predicts uniform classes and near-zero deltas."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        self.cls_score = nn.Linear(in_features, num_classes)
        self.bbox_pred = nn.Linear(in_features, 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.cls_score(x), self.bbox_pred(x)


def fast_rcnn_loss(
    class_logits: torch.Tensor,
    box_deltas: torch.Tensor,
    labels: torch.Tensor,
    regression_targets: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """Fast R-CNN's multi-task loss on ``K`` sampled RoIs: the cross entropy of
    ``class_logits [K, C]`` against ``labels [K]`` (``loss_classifier``), and
    the smooth L1 (beta 1/9) of the deltas of each positive's true class
    against ``regression_targets [K, 4]``, summed and divided by ``K``
    (``loss_box_reg``)."""
    num_rois = labels.shape[0]
    if num_rois == 0:
        zero = (class_logits.sum() * 0.0 + box_deltas.sum() * 0.0).abs()
        return {"loss_classifier": zero, "loss_box_reg": zero}
    loss_classifier = F.cross_entropy(class_logits, labels)
    positive = torch.nonzero(labels > 0).flatten()
    positive_deltas = box_deltas.view(num_rois, -1, 4)[positive, labels[positive]]
    loss_box_reg = F.smooth_l1_loss(
        positive_deltas, regression_targets[positive], beta=1 / 9, reduction="sum"
    )
    return {"loss_classifier": loss_classifier, "loss_box_reg": loss_box_reg / num_rois}


class RoIHeads(nn.Module):
    """Box classification and regression on the proposals (and, with
    :attr:`mask_branch` set, instance masks).

    ``forward(features: dict of [B, C, H_l, W_l], proposals: list of [P_i, 4],
    image_sizes [(H_i, W_i)], targets=None) -> (detections, losses)``.

    Training mode (``targets``: per-image dicts with ``boxes``, ``labels`` and,
    for the mask branch, ``masks``): the ground-truth boxes join the proposals;
    each is labelled with the class of the box it overlaps with IoU >=
    ``fg_iou_thresh``, background below ``bg_iou_thresh``; ``batch_size_per_image``
    RoIs are sampled per image, at most ``positive_fraction`` of them positive;
    returns ``loss_classifier`` and ``loss_box_reg`` (:func:`fast_rcnn_loss`,
    deltas with ``bbox_reg_weights``), plus ``loss_mask``. ``detections`` is
    empty.

    Eval mode: per image, every proposal is decoded once per foreground class
    and clipped to the image; class scores (softmax) ``> score_thresh`` and
    boxes at least 0.01 pixel wide and high remain; non-maximum suppression at
    ``nms_thresh`` runs per class (``operators.batched_nms``); the
    ``detections_per_img`` best remain. ``detections``: one dict per image with
    ``boxes`` float ``[N, 4]``, ``labels`` int64 ``[N]`` (``1..num_classes - 1``)
    and ``scores`` ``[N]``, by decreasing score, plus ``masks`` ``[N, 1, H_i, W_i]``
    with the mask branch. ``losses`` is empty.
    """

    def __init__(
        self,
        box_pooler: nn.Module,
        box_head: nn.Module,
        box_predictor: nn.Module,
        *,
        fg_iou_thresh: float = 0.5,
        bg_iou_thresh: float = 0.5,
        batch_size_per_image: int = 512,
        positive_fraction: float = 0.25,
        bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        score_thresh: float = 0.05,
        nms_thresh: float = 0.5,
        detections_per_img: int = 100,
        operators="fastops",
    ) -> None:
        super().__init__()
        self.box_pooler = box_pooler
        self.box_head = box_head
        self.box_predictor = box_predictor
        self.box_coder = BoxCoder(bbox_reg_weights)
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=False)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.score_thresh = score_thresh
        self.nms_thresh = nms_thresh
        self.detections_per_img = detections_per_img
        self.operators = get_operators(operators)
        self.mask_branch: MaskBranch | None = None

    def forward(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_sizes: ImageSizes,
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[dict[str, torch.Tensor]], dict[str, torch.Tensor]]:
        if self.training:
            if targets is None:
                raise ValueError("RoIHeads: targets are required in training mode")
            return [], self._training_losses(features, proposals, image_sizes, targets)
        return self._detect(features, proposals, image_sizes), {}

    def sample_rois(
        self, proposals: list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
        """Per image: the sampled RoIs ``[K_i, 4]``, the index of the ground truth
        each matches ``[K_i]`` (0 for background), their labels ``[K_i]`` and
        regression targets ``[K_i, 4]``."""
        all_labels, all_candidates, all_matched, all_matched_boxes = [], [], [], []
        for image_proposals, target in zip(proposals, targets, strict=True):
            gt_boxes, gt_labels = target["boxes"], target["labels"]
            candidates = torch.cat([image_proposals, gt_boxes.to(image_proposals.dtype)])
            if gt_boxes.shape[0] == 0:
                matched = torch.zeros(
                    candidates.shape[0], dtype=torch.int64, device=candidates.device
                )
                labels = torch.zeros_like(matched)
                matched_boxes = candidates  # all background: the deltas are never used
            else:
                matches = self.matcher(pairwise_iou(gt_boxes, candidates))
                matched = matches.clamp(min=0)
                labels = torch.where(
                    matches >= 0,
                    gt_labels[matched],
                    torch.where(matches == Matcher.BETWEEN_THRESHOLDS, -1, 0),
                )
                matched_boxes = gt_boxes[matched]
            all_labels.append(labels)
            all_candidates.append(candidates)
            all_matched.append(matched)
            all_matched_boxes.append(matched_boxes)

        positive_masks, negative_masks = self.sampler(all_labels)
        rois, matched_idxs, labels, regression_targets = [], [], [], []
        for i, (positive, negative) in enumerate(zip(positive_masks, negative_masks, strict=True)):
            keep = torch.nonzero(positive | negative).flatten()
            image_rois = all_candidates[i][keep]
            rois.append(image_rois)
            matched_idxs.append(all_matched[i][keep])
            labels.append(all_labels[i][keep])
            regression_targets.append(self.box_coder.encode(all_matched_boxes[i][keep], image_rois))
        return rois, matched_idxs, labels, regression_targets

    def _training_losses(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_sizes: ImageSizes,
        targets: list[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        rois, matched_idxs, labels, regression_targets = self.sample_rois(proposals, targets)
        box_features = self.box_head(self.box_pooler(features, rois, image_sizes))
        class_logits, box_deltas = self.box_predictor(box_features)
        losses = fast_rcnn_loss(
            class_logits, box_deltas, torch.cat(labels), torch.cat(regression_targets)
        )
        if self.mask_branch is not None:
            positives = [torch.nonzero(image_labels > 0).flatten() for image_labels in labels]
            losses["loss_mask"] = self.mask_branch.loss(
                features,
                [r[p] for r, p in zip(rois, positives, strict=True)],
                [m[p] for m, p in zip(matched_idxs, positives, strict=True)],
                [lab[p] for lab, p in zip(labels, positives, strict=True)],
                [t["masks"] for t in targets],
                image_sizes,
            )
        return losses

    def _detect(
        self,
        features: dict[str, torch.Tensor],
        proposals: list[torch.Tensor],
        image_sizes: ImageSizes,
    ) -> list[dict[str, torch.Tensor]]:
        box_features = self.box_head(self.box_pooler(features, proposals, image_sizes))
        class_logits, box_deltas = self.box_predictor(box_features)
        num_classes = class_logits.shape[1]
        all_boxes = self.box_coder.decode(
            box_deltas.view(-1, num_classes, 4), torch.cat(proposals)[:, None, :]
        )
        all_scores = F.softmax(class_logits, dim=-1)
        counts = [p.shape[0] for p in proposals]

        detections = []
        for boxes, scores, image_size in zip(
            all_boxes.split(counts), all_scores.split(counts), image_sizes, strict=True
        ):
            boxes = clip_boxes_to_image(boxes[:, 1:], image_size).reshape(-1, 4)
            labels = torch.arange(1, num_classes, device=scores.device).repeat(scores.shape[0])
            scores = scores[:, 1:].reshape(-1)
            keep = (scores > self.score_thresh) & boxes_at_least(boxes, 1e-2)
            boxes, scores, labels = boxes[keep], scores[keep], labels[keep]
            kept = self.operators.batched_nms(boxes, scores, labels, self.nms_thresh)
            kept = kept[: self.detections_per_img]
            detections.append(
                {"boxes": boxes[kept], "labels": labels[kept], "scores": scores[kept]}
            )

        if self.mask_branch is not None:
            masks = self.mask_branch.predict(
                features,
                [d["boxes"] for d in detections],
                [d["labels"] for d in detections],
                image_sizes,
            )
            for detection, image_masks in zip(detections, masks, strict=True):
                detection["masks"] = image_masks
        return detections
