"""The PNG the training script writes: validation images, their ground truth
and the model's predictions, side by side."""

from __future__ import annotations

from pathlib import Path

import torch

# Background black, then one distinct colour per class.
_PALETTE = (
    torch.tensor(
        [
            [0, 0, 0],
            [230, 25, 75],
            [60, 180, 75],
            [255, 225, 25],
            [0, 130, 200],
            [245, 130, 48],
            [145, 30, 180],
            [70, 240, 240],
        ],
        dtype=torch.float32,
    )
    / 255.0
)


def _colour(labels: torch.Tensor) -> torch.Tensor:
    """``[H, W]`` class map to an ``[H, W, 3]`` image."""
    return _PALETTE[labels.long().cpu() % len(_PALETTE)]


def save_segmentation_figure(
    path: Path,
    images: torch.Tensor,
    truths: torch.Tensor,
    predictions: torch.Tensor,
    class_names: tuple[str, ...],
) -> None:
    """Three rows (image, ground truth, prediction), one column per image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(images)
    figure, axes = plt.subplots(3, count, figsize=(1.8 * count, 5.6), squeeze=False)
    for i in range(count):
        axes[0, i].imshow(images[i].permute(1, 2, 0).clamp(0, 1).cpu())
        axes[1, i].imshow(_colour(truths[i]))
        axes[2, i].imshow(_colour(predictions[i]))
    for row, title in enumerate(("image", "ground truth", "prediction")):
        axes[row, 0].set_ylabel(title)
    for axis in axes.flat:
        axis.set_xticks([])
        axis.set_yticks([])
    legend = ", ".join(f"{name}" for name in class_names)
    figure.suptitle(f"classes: {legend}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def save_detection_figure(
    path: Path,
    images: torch.Tensor,
    truths: list[dict[str, torch.Tensor]],
    predictions: list[dict[str, torch.Tensor]],
    class_names: tuple[str, ...],
    score_threshold: float = 0.5,
) -> None:
    """Two rows (ground truth, prediction), boxes drawn in the class colour with
    their labels (and score); instance masks, when predicted, tinted over the
    image."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    count = len(images)
    figure, axes = plt.subplots(2, count, figsize=(2.2 * count, 4.8), squeeze=False)
    for i in range(count):
        image = images[i].permute(1, 2, 0).clamp(0, 1).cpu()
        for row, (result, title) in enumerate(
            ((truths[i], "ground truth"), (predictions[i], "prediction"))
        ):
            axis = axes[row, i]
            shown = image.clone()
            scores = result.get("scores")
            keep = (
                torch.ones(len(result["labels"]), dtype=torch.bool)
                if scores is None
                else scores.cpu() >= score_threshold
            )
            if "masks" in result and row == 1:
                masks = result["masks"].cpu()[keep]
                labels = result["labels"].cpu()[keep]
                for mask, label in zip(masks, labels, strict=True):
                    mask = mask.squeeze(0) >= 0.5
                    shown[mask] = 0.5 * shown[mask] + 0.5 * _PALETTE[int(label) % len(_PALETTE)]
            axis.imshow(shown)
            boxes = result["boxes"].cpu()[keep]
            labels = result["labels"].cpu()[keep]
            shown_scores = None if scores is None else scores.cpu()[keep]
            for k, (box, label) in enumerate(zip(boxes, labels, strict=True)):
                x1, y1, x2, y2 = (float(v) for v in box)
                colour = _PALETTE[int(label) % len(_PALETTE)].tolist()
                axis.add_patch(
                    plt.Rectangle((x1 - 0.5, y1 - 0.5), x2 - x1, y2 - y1, fill=False, color=colour)
                )
                text = class_names[int(label)] if int(label) < len(class_names) else str(int(label))
                if shown_scores is not None:
                    text += f" {float(shown_scores[k]):.2f}"
                axis.text(x1, y1 - 1, text, color=colour, fontsize=6, va="bottom")
            axis.set_xticks([])
            axis.set_yticks([])
            if i == 0:
                axis.set_ylabel(title)
    figure.suptitle(f"predictions with score >= {score_threshold}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
