"""What ``python -m fastops.train MODEL`` trains: for each model its
constructor arguments, data, optimiser settings and number of steps, sized so
that a 2-core CPU finishes a run (training and evaluation) within 10 minutes.
The numbers were measured with this script; see README.md "Training"."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

SEGMENTATION = "segmentation"
DETECTION = "detection"


@dataclass(frozen=True)
class Recipe:
    """A model's training set-up. ``build(num_classes, operators)`` makes the model."""

    name: str
    task: str
    build: Callable[[int, str], torch.nn.Module]
    image_size: int = 64
    batch_size: int = 16
    steps: int = 1000
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    max_objects: int = 4
    # Segmentation only: the last fraction of the steps fine-tunes on the
    # Lovász-softmax loss (Berman et al. 2018) at a tenth of the learning rate.
    lovasz_fraction: float = 0.2
    notes: str = ""


def _segnet(num_classes: int, operators: str) -> torch.nn.Module:
    from fastops.models.segmentation import SegNet

    return SegNet(num_classes, base_channels=16, num_stages=4, operators=operators)


def _unet(num_classes: int, operators: str) -> torch.nn.Module:
    from fastops.models.segmentation import UNet

    return UNet(num_classes, base_channels=16, depth=4, operators=operators)


def _fcn8s(num_classes: int, operators: str) -> torch.nn.Module:
    from fastops.models.segmentation import FCN8s

    return FCN8s(num_classes, base_channels=16, operators=operators)


def _ternausnet11(num_classes: int, operators: str) -> torch.nn.Module:
    from fastops.models.segmentation import TernausNet11

    return TernausNet11(num_classes, num_filters=16, operators=operators)


def _fpn(num_classes: int, operators: str) -> torch.nn.Module:
    from fastops.models.segmentation import FPNSegmentation

    return FPNSegmentation(
        num_classes,
        backbone_widths=(16, 32, 64, 128),
        backbone_blocks=(1, 1, 1, 1),
        fpn_channels=32,
        head_channels=32,
        operators=operators,
    )


def _fasterrcnn(num_classes: int, operators: str) -> torch.nn.Module:
    from fastops.models.detection import FasterRCNN

    return FasterRCNN(num_classes, operators=operators)


def _maskrcnn(num_classes: int, operators: str) -> torch.nn.Module:
    from fastops.models.detection import MaskRCNN

    return MaskRCNN(num_classes, operators=operators)


def _ssd(num_classes: int, operators: str) -> torch.nn.Module:
    from fastops.models.detection import SingleShotDetector

    return SingleShotDetector(num_classes, operators=operators)


RECIPES: dict[str, Recipe] = {
    recipe.name: recipe
    for recipe in (
        Recipe("segnet", SEGMENTATION, _segnet, steps=1500),
        Recipe("unet", SEGMENTATION, _unet, steps=1200),
        Recipe("fcn8s", SEGMENTATION, _fcn8s, steps=800),
        Recipe("ternausnet11", SEGMENTATION, _ternausnet11, steps=300),
        Recipe("fpn", SEGMENTATION, _fpn, steps=1500),
        Recipe(
            "fasterrcnn",
            DETECTION,
            _fasterrcnn,
            image_size=96,
            batch_size=8,
            steps=1200,
            learning_rate=1e-3,
        ),
        Recipe(
            "maskrcnn",
            DETECTION,
            _maskrcnn,
            image_size=96,
            batch_size=8,
            steps=800,
            learning_rate=1e-3,
        ),
        Recipe(
            "ssd", DETECTION, _ssd, image_size=96, batch_size=16, steps=1500, learning_rate=1e-3
        ),
    )
}
