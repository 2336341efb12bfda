"""Synthetic datasets for the reference models, the training script and the
demos: :class:`SyntheticShapes` (images, semantic masks, boxes and instance
masks, seeded and deterministic) and the collate functions that batch it for
segmentation and detection."""

from fastops.data.shapes import (
    SHAPE_NAMES,
    SyntheticShapes,
    detection_collate,
    segmentation_collate,
)

__all__ = ["SHAPE_NAMES", "SyntheticShapes", "detection_collate", "segmentation_collate"]
