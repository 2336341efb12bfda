"""What every detector does with its input before the network runs: checks the
images and targets (raising ``ValueError`` / ``TypeError`` that name the
argument, before any kernel runs), normalises the images and pads them into
one batch whose size is a multiple of the backbone's stride.

Unlike torchvision's ``GeneralizedRCNNTransform`` the images are not resized:
the detectors are meant for the sizes they are given, so detections come back
in the input's own pixel coordinates.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

ImageSizes = list[tuple[int, int]]


def check_images(images, api: str) -> list[torch.Tensor]:
    """``images``: a float tensor ``[B, 3, H, W]`` or a non-empty list of float
    ``[3, H_i, W_i]`` tensors on one device. Returns the list of images."""
    if isinstance(images, torch.Tensor):
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(
                f"{api}: images must be a [B, 3, H, W] tensor or a list of [3, H, W] tensors, "
                f"got a tensor of shape {tuple(images.shape)}"
            )
        if images.shape[0] == 0:
            raise ValueError(f"{api}: images is an empty batch")
        image_list = list(images.unbind(0))
    elif isinstance(images, list | tuple):
        if not images:
            raise ValueError(f"{api}: images is an empty list")
        for i, image in enumerate(images):
            if not isinstance(image, torch.Tensor):
                raise TypeError(f"{api}: images[{i}] must be a tensor, got {type(image).__name__}")
            if image.dim() != 3 or image.shape[0] != 3:
                raise ValueError(
                    f"{api}: images[{i}] must be [3, H, W], got shape {tuple(image.shape)}"
                )
        image_list = list(images)
    else:
        raise TypeError(
            f"{api}: images must be a tensor [B, 3, H, W] or a list of [3, H, W] tensors, "
            f"got {type(images).__name__}"
        )
    first = image_list[0]
    for i, image in enumerate(image_list):
        if not image.dtype.is_floating_point:
            raise TypeError(f"{api}: images must be floating point, got {image.dtype}")
        if image.dtype != first.dtype or image.device != first.device:
            raise ValueError(
                f"{api}: images[{i}] is {image.dtype} on {image.device}, images[0] is "
                f"{first.dtype} on {first.device}: all images need one dtype and device"
            )
        if image.shape[1] < 1 or image.shape[2] < 1:
            raise ValueError(f"{api}: images[{i}] is empty, shape {tuple(image.shape)}")
    return image_list


def check_targets(
    targets,
    image_sizes: ImageSizes,
    num_classes: int,
    api: str,
    *,
    require_masks: bool = False,
    device: torch.device | None = None,
) -> list[dict[str, torch.Tensor]]:
    """Checks the training targets, one dict per image (raising ``ValueError``
    for anything malformed), and returns copies with
    ``boxes`` float32 ``[N, 4]``, ``labels`` int64 ``[N]`` in
    ``1..num_classes - 1`` and (``require_masks``) ``masks`` uint8 ``[N, H, W]``
    of the image's size, on ``device``. Boxes must be finite with ``x2 > x1``
    and ``y2 > y1``."""
    if targets is None:
        raise ValueError(f"{api}: targets are required in training mode (call .eval() to detect)")
    if not isinstance(targets, list | tuple):
        raise ValueError(f"{api}: targets must be a list of dicts, got {type(targets).__name__}")
    if len(targets) != len(image_sizes):
        raise ValueError(f"{api}: targets has {len(targets)} entries for {len(image_sizes)} images")
    required = ("boxes", "labels", "masks") if require_masks else ("boxes", "labels")
    checked = []
    for i, target in enumerate(targets):
        where = f"{api}: targets[{i}]"
        if not isinstance(target, dict):
            raise ValueError(f"{where} must be a dict, got {type(target).__name__}")
        missing = [key for key in required if key not in target]
        if missing:
            raise ValueError(f"{where} is missing {missing} (needs {list(required)})")
        boxes, labels = target["boxes"], target["labels"]
        if not isinstance(boxes, torch.Tensor) or not boxes.dtype.is_floating_point:
            raise ValueError(f"{where}['boxes'] must be a floating-point tensor")
        if boxes.dim() != 2 or boxes.shape[1] != 4:
            raise ValueError(f"{where}['boxes'] must be [N, 4], got shape {tuple(boxes.shape)}")
        if (
            not isinstance(labels, torch.Tensor)
            or labels.dtype.is_floating_point
            or labels.dtype == torch.bool
        ):
            raise ValueError(f"{where}['labels'] must be an integer tensor")
        if labels.shape != (boxes.shape[0],):
            raise ValueError(
                f"{where}['labels'] must be [N] for boxes [N, 4], got {tuple(labels.shape)} for "
                f"{tuple(boxes.shape)}"
            )
        if labels.numel():
            lowest, highest = int(labels.min()), int(labels.max())
            if lowest < 1 or highest >= num_classes:
                raise ValueError(
                    f"{where}['labels'] must be in 1..{num_classes - 1} (0 is the background; "
                    f"num_classes={num_classes}), got values in {lowest}..{highest}"
                )
        if boxes.numel():
            if not bool(torch.isfinite(boxes).all()):
                raise ValueError(f"{where}['boxes'] has non-finite coordinates")
            degenerate = (boxes[:, 2] <= boxes[:, 0]) | (boxes[:, 3] <= boxes[:, 1])
            if bool(degenerate.any()):
                k = int(degenerate.nonzero()[0, 0])
                raise ValueError(
                    f"{where}['boxes'][{k}] = {boxes[k].tolist()} needs x2 > x1 and y2 > y1"
                )
        result = {
            "boxes": boxes.to(device=device, dtype=torch.float32),
            "labels": labels.to(device=device, dtype=torch.int64),
        }
        if require_masks:
            masks = target["masks"]
            expected = (boxes.shape[0], *image_sizes[i])
            if not isinstance(masks, torch.Tensor) or masks.is_complex():
                raise ValueError(f"{where}['masks'] must be a tensor")
            if tuple(masks.shape) != expected:
                raise ValueError(
                    f"{where}['masks'] must be [N, H, W] = {list(expected)} (one mask per box, "
                    f"the image's size), got {tuple(masks.shape)}"
                )
            result["masks"] = (masks > 0).to(device=device, dtype=torch.uint8)
        checked.append(result)
    return checked


def check_inputs(
    images,
    targets,
    training: bool,
    num_classes: int,
    api: str,
    *,
    require_masks: bool = False,
) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]] | None]:
    """A detector's ``forward`` arguments checked: the list of images and, in
    training, the checked targets (``None`` in eval, where targets are ignored)."""
    image_list = check_images(images, api)
    if not training:
        return image_list, None
    checked = check_targets(
        targets,
        [(int(i.shape[1]), int(i.shape[2])) for i in image_list],
        num_classes,
        api,
        require_masks=require_masks,
        device=image_list[0].device,
    )
    return image_list, checked


class ImageBatcher(nn.Module):
    """Normalises images with ``(image - mean) / std`` per channel and pads
    them with zeros (after normalisation) at the bottom and right into one
    ``[B, 3, H, W]`` batch, ``H`` and ``W`` multiples of ``size_divisible``.

    ``forward(images: list of [3, H_i, W_i]) -> (batch, image_sizes [(H_i, W_i)])``.
    """

    def __init__(
        self,
        image_mean: Sequence[float],
        image_std: Sequence[float],
        size_divisible: int = 32,
        api: str = "ImageBatcher",
    ) -> None:
        super().__init__()
        mean, std = tuple(image_mean), tuple(image_std)
        if len(mean) != 3 or not all(math.isfinite(float(m)) for m in mean):
            raise ValueError(f"{api}: image_mean must be 3 finite numbers, got {image_mean!r}")
        if len(std) != 3 or not all(math.isfinite(float(s)) and float(s) > 0 for s in std):
            raise ValueError(f"{api}: image_std must be 3 positive numbers, got {image_std!r}")
        self.size_divisible = size_divisible
        self.image_mean = tuple(float(m) for m in mean)
        self.image_std = tuple(float(s) for s in std)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(3, 1, 1), False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(3, 1, 1), False)

    def forward(self, images: list[torch.Tensor]) -> tuple[torch.Tensor, ImageSizes]:
        image_sizes = [(int(image.shape[1]), int(image.shape[2])) for image in images]
        step = self.size_divisible
        height = math.ceil(max(h for h, _ in image_sizes) / step) * step
        width = math.ceil(max(w for _, w in image_sizes) / step) * step
        mean = self.mean.to(images[0].dtype)
        std = self.std.to(images[0].dtype)
        batch = [
            F.pad((image - mean) / std, (0, width - image.shape[2], 0, height - image.shape[1]))
            for image in images
        ]
        return torch.stack(batch), image_sizes

    def extra_repr(self) -> str:
        return (
            f"image_mean={self.image_mean}, image_std={self.image_std}, "
            f"size_divisible={self.size_divisible}"
        )
