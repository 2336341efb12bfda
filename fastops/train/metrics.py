"""Evaluation metrics of the training script: mean IoU for segmentation and
mean average precision at an IoU threshold for detection (PASCAL VOC's
definitions)."""

from __future__ import annotations

import torch

from fastops.reference.nms import box_iou


class ConfusionMatrix:
    """Accumulates a ``[num_classes, num_classes]`` confusion matrix (rows: the
    target class, columns: the predicted class) over batches of label maps.

    ``iou()`` is per-class ``TP / (TP + FP + FN)``; ``mean_iou()`` averages it
    over the classes that occur in the targets or the predictions, background
    included (PASCAL VOC's mIoU). Pixels labelled ``ignore_index`` are skipped.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = None) -> None:
        if num_classes < 1:
            raise ValueError(f"ConfusionMatrix: num_classes must be >= 1, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, prediction: torch.Tensor, target: torch.Tensor) -> None:
        """``prediction`` and ``target``: int label maps of the same shape."""
        if prediction.shape != target.shape:
            raise ValueError(
                f"ConfusionMatrix.update: prediction {tuple(prediction.shape)} and target "
                f"{tuple(target.shape)} differ in shape"
            )
        prediction = prediction.flatten().long().cpu()
        target = target.flatten().long().cpu()
        keep = (target >= 0) & (target < self.num_classes)
        if self.ignore_index is not None:
            keep &= target != self.ignore_index
        pairs = target[keep] * self.num_classes + prediction[keep].clamp(0, self.num_classes - 1)
        self.matrix += torch.bincount(pairs, minlength=self.num_classes**2).view(
            self.num_classes, self.num_classes
        )

    def iou(self) -> torch.Tensor:
        """Per-class IoU (float64), NaN for a class absent from targets and predictions."""
        m = self.matrix.double()
        true_positive = m.diag()
        union = m.sum(0) + m.sum(1) - true_positive
        return torch.where(union > 0, true_positive / union.clamp_min(1), float("nan"))

    def mean_iou(self) -> float:
        return float(self.iou().nanmean())

    def pixel_accuracy(self) -> float:
        return float(self.matrix.diag().sum() / self.matrix.sum().clamp_min(1))


def average_precision(
    detections: list[dict[str, torch.Tensor]],
    targets: list[dict[str, torch.Tensor]],
    label: int,
    iou_threshold: float = 0.5,
) -> float:
    """AP of one class over a set of images: detections ranked by score over all
    images, each matched greedily to the unmatched ground-truth box of that
    class with the highest IoU ≥ ``iou_threshold`` in its image, precision made
    monotone and integrated over every recall step (VOC 2010+, "all points").
    NaN when the class has no ground-truth box."""
    scores, matched = [], []
    total_truths = 0
    for found, truth in zip(detections, targets, strict=True):
        truth_boxes = truth["boxes"][truth["labels"] == label].double().cpu()
        total_truths += len(truth_boxes)
        keep = found["labels"] == label
        boxes = found["boxes"][keep].double().cpu()
        box_scores = found["scores"][keep].double().cpu()
        order = torch.argsort(box_scores, descending=True, stable=True)
        boxes, box_scores = boxes[order], box_scores[order]
        taken = torch.zeros(len(truth_boxes), dtype=torch.bool)
        hits = torch.zeros(len(boxes), dtype=torch.bool)
        if len(boxes) and len(truth_boxes):
            overlaps = box_iou(boxes, truth_boxes)
            for i in range(len(boxes)):  # greedy in score order, as VOC's evaluation
                candidates = torch.where(taken, -1.0, overlaps[i])
                best = int(candidates.argmax())
                if candidates[best] >= iou_threshold:
                    taken[best] = True
                    hits[i] = True
        scores.append(box_scores)
        matched.append(hits)
    if total_truths == 0:
        return float("nan")
    scores_all = torch.cat(scores)
    hits_all = torch.cat(matched)[torch.argsort(scores_all, descending=True, stable=True)]
    true_positives = hits_all.double().cumsum(0)
    precision = true_positives / torch.arange(1, len(hits_all) + 1, dtype=torch.float64)
    recall = true_positives / total_truths
    # Monotone precision envelope, then the area under the recall steps.
    precision = torch.cat([precision, torch.zeros(1, dtype=torch.float64)])
    recall = torch.cat([torch.zeros(1, dtype=torch.float64), recall])
    envelope = precision.flip(0).cummax(0).values.flip(0)
    return float(((recall[1:] - recall[:-1]) * envelope[:-1]).sum())


def mean_average_precision(
    detections: list[dict[str, torch.Tensor]],
    targets: list[dict[str, torch.Tensor]],
    num_classes: int,
    iou_threshold: float = 0.5,
) -> tuple[float, list[float]]:
    """``(mAP, per-class AP)`` over foreground classes ``1..num_classes - 1``;
    the mean skips classes without ground truth."""
    if len(detections) != len(targets):
        raise ValueError(
            f"mean_average_precision: {len(detections)} detections for {len(targets)} targets"
        )
    per_class = [
        average_precision(detections, targets, label, iou_threshold)
        for label in range(1, num_classes)
    ]
    present = [ap for ap in per_class if ap == ap]
    return (sum(present) / len(present) if present else float("nan")), per_class
