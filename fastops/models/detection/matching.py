"""Assigning ground-truth boxes to anchors or proposals, and sampling a
balanced minibatch of them, as in Faster R-CNN (Ren et al., NeurIPS 2015,
section 3.1.2) and Fast R-CNN (Girshick, ICCV 2015, section 2.3).
"""

from __future__ import annotations

import torch


class Matcher:
    """Matches every prediction (anchor or proposal) to the ground-truth box it
    overlaps most.

    ``matcher(quality [G, P]) -> matches int64 [P]``, where ``quality[g, p]`` is
    the IoU of ground truth ``g`` and prediction ``p``. A prediction whose best
    IoU is ``>= high_threshold`` gets that box's index; below ``low_threshold``
    it gets :attr:`BELOW_LOW_THRESHOLD` (a negative); in between,
    :attr:`BETWEEN_THRESHOLDS` (ignored by the losses).

    ``allow_low_quality_matches`` (the RPN's rule, Ren et al. section 3.1.2,
    condition (i)): each ground-truth box also claims the predictions it
    overlaps most, even below ``high_threshold``, so that no box is left
    without a positive. Such a prediction gets its own best match (which is the
    claiming box unless two boxes tie on it). A box that overlaps no prediction
    at all claims nothing (zero IoU is not a match). With no ground truth every
    prediction is :attr:`BELOW_LOW_THRESHOLD`.
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(
        self, high_threshold: float, low_threshold: float, allow_low_quality_matches: bool = False
    ) -> None:
        if not 0.0 <= low_threshold <= high_threshold <= 1.0:
            raise ValueError(
                "Matcher: need 0 <= low_threshold <= high_threshold <= 1, got "
                f"low_threshold={low_threshold}, high_threshold={high_threshold}"
            )
        self.high_threshold = float(high_threshold)
        self.low_threshold = float(low_threshold)
        self.allow_low_quality_matches = bool(allow_low_quality_matches)

    def __repr__(self) -> str:
        return (
            f"Matcher(high_threshold={self.high_threshold}, low_threshold={self.low_threshold}, "
            f"allow_low_quality_matches={self.allow_low_quality_matches})"
        )

    def __call__(self, quality: torch.Tensor) -> torch.Tensor:
        num_gt, num_predictions = quality.shape
        if num_gt == 0 or num_predictions == 0:
            return torch.full(
                (num_predictions,),
                self.BELOW_LOW_THRESHOLD,
                dtype=torch.int64,
                device=quality.device,
            )
        best_quality, best_gt = quality.max(dim=0)
        matches = torch.where(
            best_quality < self.low_threshold,
            self.BELOW_LOW_THRESHOLD,
            torch.where(best_quality < self.high_threshold, self.BETWEEN_THRESHOLDS, best_gt),
        )
        if self.allow_low_quality_matches:
            best_per_gt = quality.max(dim=1, keepdim=True).values
            claimed = ((quality == best_per_gt) & (best_per_gt > 0)).any(dim=0)
            matches = torch.where(claimed, best_gt, matches)
        return matches


class BalancedPositiveNegativeSampler:
    """Draws, per image, up to ``batch_size_per_image`` labelled predictions of
    which at most ``positive_fraction`` are positives; negatives fill the rest
    (Faster R-CNN: 256 anchors, half positive; Fast R-CNN: 512 RoIs, a quarter
    positive).

    ``sampler(labels: list of int64 [P_i]) -> (positive masks, negative masks)``,
    two lists of bool ``[P_i]``; labels ``>= 1`` are positives, ``0``
    negatives, ``-1`` ignored. The draw uses torch's global generator on the
    labels' device, so it is reproducible under ``torch.manual_seed``.
    """

    def __init__(self, batch_size_per_image: int, positive_fraction: float) -> None:
        if isinstance(batch_size_per_image, bool) or not isinstance(batch_size_per_image, int):
            raise ValueError(
                f"BalancedPositiveNegativeSampler: batch_size_per_image must be an int, "
                f"got {batch_size_per_image!r}"
            )
        if batch_size_per_image < 1:
            raise ValueError(
                "BalancedPositiveNegativeSampler: batch_size_per_image must be >= 1, "
                f"got {batch_size_per_image}"
            )
        if not 0.0 < positive_fraction <= 1.0:
            raise ValueError(
                "BalancedPositiveNegativeSampler: positive_fraction must be in (0, 1], "
                f"got {positive_fraction}"
            )
        self.batch_size_per_image = batch_size_per_image
        self.positive_fraction = float(positive_fraction)

    def __repr__(self) -> str:
        return (
            f"BalancedPositiveNegativeSampler(batch_size_per_image={self.batch_size_per_image}, "
            f"positive_fraction={self.positive_fraction})"
        )

    def __call__(self, labels: list[torch.Tensor]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        positive_masks, negative_masks = [], []
        for image_labels in labels:
            positive = torch.nonzero(image_labels >= 1).flatten()
            negative = torch.nonzero(image_labels == 0).flatten()
            num_positive = min(
                int(self.batch_size_per_image * self.positive_fraction), positive.numel()
            )
            num_negative = min(self.batch_size_per_image - num_positive, negative.numel())
            device = image_labels.device
            chosen_positive = positive[
                torch.randperm(positive.numel(), device=device)[:num_positive]
            ]
            chosen_negative = negative[
                torch.randperm(negative.numel(), device=device)[:num_negative]
            ]
            positive_mask = torch.zeros_like(image_labels, dtype=torch.bool)
            negative_mask = torch.zeros_like(image_labels, dtype=torch.bool)
            positive_mask[chosen_positive] = True
            negative_mask[chosen_negative] = True
            positive_masks.append(positive_mask)
            negative_masks.append(negative_mask)
        return positive_masks, negative_masks
