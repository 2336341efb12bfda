"""The region proposal network of Ren, He, Girshick and Sun, "Faster R-CNN:
Towards Real-Time Object Detection with Region Proposal Networks" (NeurIPS
2015), run on every level of a feature pyramid as in Lin et al., "Feature
Pyramid Networks for Object Detection" (CVPR 2017, section 4.1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastops.models.detection.anchors import AnchorGenerator
from fastops.models.detection.box_coding import (
    BoxCoder,
    boxes_at_least,
    clip_boxes_to_image,
    pairwise_iou,
)
from fastops.models.detection.images import ImageSizes
from fastops.models.detection.matching import BalancedPositiveNegativeSampler, Matcher
from fastops.models.operators import get_operators


class RPNHead(nn.Module):
    """The RPN's sliding-window head, shared by every pyramid level: a 3x3
    convolution and ReLU, then two sibling 1x1 convolutions giving, per
    location, ``A`` objectness logits and ``4 A`` box deltas.

    ``forward(features: list of [B, C, H_l, W_l]) -> (objectness: list of
    [B, A, H_l, W_l], deltas: list of [B, 4 A, H_l, W_l])``, where the deltas
    of anchor ``a`` are channels ``4a .. 4a + 3``.
    """

    def __init__(self, in_channels: int, num_anchors: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, in_channels, 3, padding=1)
        self.objectness = nn.Conv2d(in_channels, num_anchors, 1)
        self.box_deltas = nn.Conv2d(in_channels, 4 * num_anchors, 1)
        for layer in (self.conv, self.objectness, self.box_deltas):
            nn.init.normal_(layer.weight, std=0.01)
            nn.init.zeros_(layer.bias)

    def forward(
        self, features: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        objectness, deltas = [], []
        for feature in features:
            hidden = F.relu(self.conv(feature))
            objectness.append(self.objectness(hidden))
            deltas.append(self.box_deltas(hidden))
        return objectness, deltas


def flatten_anchor_outputs(
    objectness: list[torch.Tensor], deltas: list[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-level head outputs to ``(objectness [B, total], deltas [B, total, 4])``
    in the anchors' order (level, row, column, anchor)."""
    flat_objectness, flat_deltas = [], []
    for level_objectness, level_deltas in zip(objectness, deltas, strict=True):
        batch, anchors, height, width = level_objectness.shape
        flat_objectness.append(level_objectness.permute(0, 2, 3, 1).reshape(batch, -1))
        flat_deltas.append(
            level_deltas.view(batch, anchors, 4, height, width)
            .permute(0, 3, 4, 1, 2)
            .reshape(batch, -1, 4)
        )
    return torch.cat(flat_objectness, dim=1), torch.cat(flat_deltas, dim=1)


class RegionProposalNetwork(nn.Module):
    """Proposes object boxes from anchors, and trains on them.

    ``forward(features: list of [B, C, H_l, W_l], padded_size (H, W),
    image_sizes [(H_i, W_i)], targets=None) -> (proposals: list of [P_i, 4],
    losses)``.

    Proposals (no gradient flows through them): on each level the
    ``pre_nms_top_n`` anchors of highest objectness are decoded, clipped to
    their image, boxes smaller than ``min_size`` and scores (probabilities)
    below ``score_thresh`` are removed, non-maximum suppression at
    ``nms_thresh`` runs on every level separately (``operators.batched_nms``
    with the level as the category), and the ``post_nms_top_n`` best remain,
    by decreasing objectness. The two limits have a training and a testing
    value, chosen by ``self.training``.

    Losses (training mode; ``targets`` a list of dicts with ``boxes``): anchors
    are matched to the ground truth with IoU >= ``fg_iou_thresh`` positive,
    < ``bg_iou_thresh`` negative, and every box's best anchors positive too;
    ``batch_size_per_image`` of them are sampled with at most
    ``positive_fraction`` positives. ``loss_objectness`` is the binary cross
    entropy over the sampled anchors, ``loss_rpn_box_reg`` the smooth L1
    (beta 1/9) of the positives' deltas (weights 1, 1, 1, 1), summed and divided
    by the number of sampled anchors. An image without boxes has only
    negatives.
    """

    def __init__(
        self,
        anchor_generator: AnchorGenerator,
        head: RPNHead,
        *,
        fg_iou_thresh: float = 0.7,
        bg_iou_thresh: float = 0.3,
        batch_size_per_image: int = 256,
        positive_fraction: float = 0.5,
        pre_nms_top_n_train: int = 2000,
        pre_nms_top_n_test: int = 1000,
        post_nms_top_n_train: int = 2000,
        post_nms_top_n_test: int = 1000,
        nms_thresh: float = 0.7,
        score_thresh: float = 0.0,
        min_size: float = 1e-3,
        operators="fastops",
    ) -> None:
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.box_coder = BoxCoder((1.0, 1.0, 1.0, 1.0))
        self.matcher = Matcher(fg_iou_thresh, bg_iou_thresh, allow_low_quality_matches=True)
        self.sampler = BalancedPositiveNegativeSampler(batch_size_per_image, positive_fraction)
        self.pre_nms_top_n = {"training": pre_nms_top_n_train, "testing": pre_nms_top_n_test}
        self.post_nms_top_n = {"training": post_nms_top_n_train, "testing": post_nms_top_n_test}
        self.nms_thresh = nms_thresh
        self.score_thresh = score_thresh
        self.min_size = min_size
        self.operators = get_operators(operators)

    def _mode(self) -> str:
        return "training" if self.training else "testing"

    def forward(
        self,
        features: list[torch.Tensor],
        padded_size: tuple[int, int],
        image_sizes: ImageSizes,
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
        objectness_maps, delta_maps = self.head(features)
        anchors, counts = self.anchor_generator(
            tuple(padded_size),
            [tuple(f.shape[-2:]) for f in features],
            features[0].dtype,
            features[0].device,
        )
        objectness, deltas = flatten_anchor_outputs(objectness_maps, delta_maps)
        proposals = self.select_proposals(
            objectness.detach(), deltas.detach(), anchors, counts, image_sizes
        )
        losses: dict[str, torch.Tensor] = {}
        if self.training:
            if targets is None:
                raise ValueError("RegionProposalNetwork: targets are required in training mode")
            labels, regression_targets = self.anchor_targets(anchors, targets)
            losses = self.loss(objectness, deltas, labels, regression_targets)
        return proposals, losses

    def select_proposals(
        self,
        objectness: torch.Tensor,
        deltas: torch.Tensor,
        anchors: torch.Tensor,
        counts: list[int],
        image_sizes: ImageSizes,
    ) -> list[torch.Tensor]:
        """``objectness [B, total]``, ``deltas [B, total, 4]``, ``anchors
        [total, 4]`` -> per-image proposals ``[P_i, 4]`` (see the class docstring)."""
        pre_nms_top_n = self.pre_nms_top_n[self._mode()]
        post_nms_top_n = self.post_nms_top_n[self._mode()]
        chosen, levels = [], []
        start = 0
        for level, count in enumerate(counts):
            k = min(pre_nms_top_n, count)
            top = objectness[:, start : start + count].topk(k, dim=1).indices
            chosen.append(top + start)
            levels.append(torch.full((k,), level, dtype=torch.int64, device=objectness.device))
            start += count
        chosen = torch.cat(chosen, dim=1)
        levels = torch.cat(levels)
        scores = objectness.gather(1, chosen).sigmoid()
        batch_index = torch.arange(objectness.shape[0], device=objectness.device)[:, None]
        boxes = self.box_coder.decode(deltas[batch_index, chosen], anchors[chosen])

        proposals = []
        for image_boxes, image_scores, image_size in zip(boxes, scores, image_sizes, strict=True):
            image_boxes = clip_boxes_to_image(image_boxes, image_size)
            keep = boxes_at_least(image_boxes, self.min_size) & (image_scores >= self.score_thresh)
            image_boxes, image_scores, image_levels = (
                image_boxes[keep],
                image_scores[keep],
                levels[keep],
            )
            kept = self.operators.batched_nms(
                image_boxes, image_scores, image_levels, self.nms_thresh
            )
            proposals.append(image_boxes[kept[:post_nms_top_n]])
        return proposals

    def anchor_targets(
        self, anchors: torch.Tensor, targets: list[dict[str, torch.Tensor]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(labels int64 [B, total]`` (1 object, 0 background, -1 ignored),
        ``regression targets [B, total, 4])``."""
        all_labels, all_targets = [], []
        for target in targets:
            gt_boxes = target["boxes"]
            if gt_boxes.shape[0] == 0:
                labels = torch.zeros(anchors.shape[0], dtype=torch.int64, device=anchors.device)
                matched_boxes = anchors  # no positives: the deltas are never used
            else:
                matches = self.matcher(pairwise_iou(gt_boxes, anchors))
                labels = torch.where(
                    matches >= 0, 1, torch.where(matches == Matcher.BETWEEN_THRESHOLDS, -1, 0)
                )
                matched_boxes = gt_boxes[matches.clamp(min=0)]
            all_labels.append(labels)
            all_targets.append(self.box_coder.encode(matched_boxes, anchors))
        return torch.stack(all_labels), torch.stack(all_targets)

    def loss(
        self,
        objectness: torch.Tensor,
        deltas: torch.Tensor,
        labels: torch.Tensor,
        regression_targets: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        positive_masks, negative_masks = self.sampler(list(labels))
        positive = torch.stack(positive_masks)
        sampled = positive | torch.stack(negative_masks)
        num_sampled = max(int(sampled.sum()), 1)
        loss_objectness = F.binary_cross_entropy_with_logits(
            objectness[sampled], labels[sampled].to(objectness.dtype), reduction="sum"
        )
        loss_box = F.smooth_l1_loss(
            deltas[positive], regression_targets[positive], beta=1 / 9, reduction="sum"
        )
        return {
            "loss_objectness": loss_objectness / num_sampled,
            "loss_rpn_box_reg": loss_box / num_sampled,
        }
