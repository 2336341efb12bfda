"""Synthetic shapes: coloured geometric objects of several classes on textured
backgrounds, with semantic masks, boxes and instance masks, generated on the
fly, seeded and deterministic (sample ``i`` of a split is the same image every
time, in every process, whatever else was drawn before).

The class of an object is its shape (circle, square, triangle, diamond, ring);
its colour is drawn independently of the class, so a network has to learn
shapes, not colours. Objects may overlap: later objects cover earlier ones,
every mask is the visible part, and an object less than half visible is dropped
(its pixels stay with whoever covers them, or the background)."""

from __future__ import annotations

import math
import zlib

import torch

SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "ring")
_SPLIT_SALT = {"train": 0, "val": 1, "test": 2}


class SyntheticShapes(torch.utils.data.Dataset):
    """``num_samples`` images of ``image_size`` with 1 to ``max_objects`` shapes.

    ``dataset[i] -> (image, target)``:

    * ``image``: float32 ``[3, H, W]`` in [0, 1];
    * ``target["semantic"]``: int64 ``[H, W]``, 0 for background, ``1..num_classes``
      for the class whose object is visible at the pixel;
    * ``target["boxes"]``: float32 ``[N, 4]`` ``(x1, y1, x2, y2)`` in pixels,
      the tight box of each visible instance mask (x2, y2 exclusive);
    * ``target["labels"]``: int64 ``[N]`` in ``1..num_classes``;
    * ``target["masks"]``: uint8 ``[N, H, W]``, the visible part of each object.

    ``split`` ("train", "val" or "test") and ``seed`` select disjoint streams of
    images. ``class_names`` lists "background" then the shapes in use.
    """

    def __init__(
        self,
        num_samples: int,
        image_size: int | tuple[int, int] = 64,
        num_classes: int = 3,
        max_objects: int = 4,
        split: str = "train",
        seed: int = 0,
        min_size: float = 0.2,
        max_size: float = 0.45,
    ) -> None:
        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        height, width = (int(v) for v in image_size)
        if num_samples < 0:
            raise ValueError(f"SyntheticShapes: num_samples must be >= 0, got {num_samples}")
        if min(height, width) < 16:
            raise ValueError(f"SyntheticShapes: image_size must be at least 16, got {image_size}")
        if not 1 <= num_classes <= len(SHAPE_NAMES):
            raise ValueError(
                f"SyntheticShapes: num_classes must be in 1..{len(SHAPE_NAMES)}, got {num_classes}"
            )
        if max_objects < 1:
            raise ValueError(f"SyntheticShapes: max_objects must be >= 1, got {max_objects}")
        if split not in _SPLIT_SALT:
            raise ValueError(
                f"SyntheticShapes: split must be one of {list(_SPLIT_SALT)}, got {split!r}"
            )
        if not 0 < min_size <= max_size <= 1:
            raise ValueError(
                f"SyntheticShapes: need 0 < min_size <= max_size <= 1, got {min_size}, {max_size}"
            )
        self.num_samples = num_samples
        self.image_size = (height, width)
        self.num_classes = num_classes
        self.max_objects = max_objects
        self.split = split
        self.seed = seed
        self.min_size = min_size
        self.max_size = max_size
        self.class_names = ("background", *SHAPE_NAMES[:num_classes])

    def __len__(self) -> int:
        return self.num_samples

    def _generator(self, index: int) -> torch.Generator:
        key = f"{self.seed}/{_SPLIT_SALT[self.split]}/{index}".encode()
        return torch.Generator().manual_seed(zlib.crc32(key))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if not -self.num_samples <= index < self.num_samples:
            raise IndexError(f"SyntheticShapes: index {index} out of range({self.num_samples})")
        index %= self.num_samples
        g = self._generator(index)
        height, width = self.image_size
        y = torch.arange(height, dtype=torch.float32).view(-1, 1) + 0.5
        x = torch.arange(width, dtype=torch.float32).view(1, -1) + 0.5

        image = _textured_background(g, y, x)
        owner = torch.full((height, width), -1, dtype=torch.int64)
        classes: list[int] = []
        full_areas: list[int] = []
        count = int(torch.randint(1, self.max_objects + 1, (1,), generator=g))
        for k in range(count):
            label = int(torch.randint(1, self.num_classes + 1, (1,), generator=g))
            mask = _draw_shape(g, SHAPE_NAMES[label - 1], y, x, self.min_size, self.max_size)
            colour = torch.rand(3, 1, 1, generator=g)
            shading = 0.06 * torch.randn(1, height, width, generator=g)
            image = torch.where(mask, (colour + shading).clamp(0, 1), image)
            owner[mask] = k
            classes.append(label)
            full_areas.append(int(mask.sum()))

        masks, labels, boxes = [], [], []
        semantic = torch.zeros(height, width, dtype=torch.int64)
        for k, label in enumerate(classes):
            visible = owner == k
            area = int(visible.sum())
            if area == 0 or area < 0.5 * full_areas[k]:
                continue  # mostly hidden: its visible pixels become background
            semantic[visible] = label
            rows = visible.any(dim=1).nonzero().flatten()
            cols = visible.any(dim=0).nonzero().flatten()
            boxes.append([cols[0].item(), rows[0].item(), cols[-1].item() + 1, rows[-1].item() + 1])
            labels.append(label)
            masks.append(visible)
        target = {
            "semantic": semantic,
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.tensor(labels, dtype=torch.int64),
            "masks": (
                torch.stack(masks).to(torch.uint8)
                if masks
                else torch.zeros(0, height, width, dtype=torch.uint8)
            ),
        }
        return image.clamp(0, 1), target


def _textured_background(g: torch.Generator, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A colour gradient, stripes of random frequency and direction, and noise."""
    height, width = y.shape[0], x.shape[1]
    base = torch.rand(3, 1, 1, generator=g) * 0.8 + 0.1
    tilt = (torch.rand(3, 2, generator=g) - 0.5) * 0.4
    gradient = tilt[:, 0].view(3, 1, 1) * (y / height - 0.5) + tilt[:, 1].view(3, 1, 1) * (
        x / width - 0.5
    )
    angle = float(torch.rand((), generator=g)) * math.pi
    period = 4.0 + float(torch.rand((), generator=g)) * 12.0
    phase = (math.cos(angle) * x + math.sin(angle) * y) * (2 * math.pi / period)
    stripes = 0.12 * torch.sin(phase) * (torch.rand(3, 1, 1, generator=g) - 0.5) * 2
    noise = 0.06 * torch.randn(3, height, width, generator=g)
    return (base + gradient + stripes + noise).clamp(0, 1)


def _draw_shape(
    g: torch.Generator,
    shape: str,
    y: torch.Tensor,
    x: torch.Tensor,
    min_size: float,
    max_size: float,
) -> torch.Tensor:
    """The pixels of one shape, of diameter ``min_size..max_size`` of the image's
    shorter side, centred so that it lies inside the image."""
    height, width = y.shape[0], x.shape[1]
    side = min(height, width)
    u = torch.rand(3, generator=g)
    radius = 0.5 * side * (min_size + (max_size - min_size) * float(u[0]))
    cy = radius + float(u[1]) * (height - 2 * radius)
    cx = radius + float(u[2]) * (width - 2 * radius)
    dy, dx = y - cy, x - cx
    if shape == "circle":
        return dy * dy + dx * dx <= radius * radius
    if shape == "square":
        half = radius * 0.85
        return (dy.abs() <= half) & (dx.abs() <= half)
    if shape == "triangle":  # upright, apex on top, base at the bottom of the box
        inside_height = (dy >= -radius) & (dy <= radius)
        half_width = (dy + radius) * 0.5  # widens from the apex: slope 1/2 each side
        return inside_height & (dx.abs() <= half_width)
    if shape == "diamond":
        return dy.abs() + dx.abs() <= radius
    if shape == "ring":
        d2 = dy * dy + dx * dx
        return (d2 <= radius * radius) & (d2 >= (0.5 * radius) ** 2)
    raise ValueError(f"unknown shape {shape!r}")


def segmentation_collate(
    batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [B, 3, H, W], semantic [B, H, W])`` from same-size samples."""
    images = torch.stack([image for image, _ in batch])
    semantic = torch.stack([target["semantic"] for _, target in batch])
    return images, semantic


def detection_collate(
    batch: list[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """``(images [B, 3, H, W], targets)``: the per-image target dicts as a list."""
    images = torch.stack([image for image, _ in batch])
    return images, [target for _, target in batch]
