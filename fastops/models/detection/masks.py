"""The mask branch of He, Gkioxari, Dollár and Girshick, "Mask R-CNN" (ICCV
2017), with the FPN head of its figure 4 (right): 14x14 RoIAlign features, four
3x3 convolutions with ReLU, a 2x2 stride-2 transposed convolution with ReLU
(``operators.ConvTranspose2d(..., activation="relu")``: the ReLU fused into
fastops's kernel) and a 1x1 convolution giving one 28x28 mask logit map per
class. The loss is the per-pixel binary cross entropy of the true class's map
only (section 3, "L_mask"), so classes do not compete."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fastops.models.detection.images import ImageSizes
from fastops.models.operators import get_operators

MASK_FEATURE_MAPS = ["0", "1", "2", "3"]


class MaskHead(nn.Sequential):
    """Four 3x3 convolutions with ReLU: ``[K, in_channels, 14, 14] -> [K, channels, 14, 14]``."""

    def __init__(self, in_channels: int, channels: int, num_layers: int = 4) -> None:
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers += [nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1)]
            layers += [nn.ReLU(inplace=True)]
        super().__init__(*layers)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)


class MaskPredictor(nn.Module):
    """2x upsampling by a 2x2 stride-2 transposed convolution with ReLU, then a
    1x1 convolution: ``[K, in_channels, 14, 14] -> [K, num_classes, 28, 28]``
    mask logits."""

    def __init__(self, in_channels: int, channels: int, num_classes: int, operators="fastops"):
        super().__init__()
        self.upsample = get_operators(operators).ConvTranspose2d(
            in_channels, channels, 2, 2, activation="relu"
        )
        self.mask_logits = nn.Conv2d(channels, num_classes, 1)
        for layer in (self.upsample, self.mask_logits):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(layer.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mask_logits(self.upsample(x))


def crop_mask_targets(
    gt_masks: torch.Tensor,
    boxes: torch.Tensor,
    matched_idxs: torch.Tensor,
    size: int,
    roi_align,
) -> torch.Tensor:
    """The ``[K, size, size]`` training targets of ``K`` RoIs: ground-truth mask
    ``matched_idxs[k]`` of ``gt_masks [G, H, W]`` resampled inside ``boxes[k]``
    with ``roi_align`` (each mask is one "image" of the batch), values in [0, 1].

    Pixel ``(y, x)`` of a mask covers ``[x, x + 1) x [y, y + 1)``, hence
    ``aligned=True`` (Detectron2's choice): with ``aligned=False`` (torchvision's
    Mask R-CNN) the targets are shifted by half a pixel against the boxes, and
    against :func:`paste_masks_in_image`."""
    rois = torch.cat([matched_idxs[:, None].to(boxes.dtype), boxes], dim=1)
    masks = gt_masks[:, None].to(boxes.dtype)
    return roi_align(masks, rois, (size, size), 1.0, 2, True)[:, 0]


def paste_masks_in_image(
    masks: torch.Tensor, boxes: torch.Tensor, image_size: tuple[int, int]
) -> torch.Tensor:
    """Pastes box-relative masks ``[N, 1, M, M]`` into an image: ``[N, 1, H, W]``.

    Mask cell ``(i, j)`` covers the ``M x M`` grid cell of its box; every image
    pixel samples the mask bilinearly at its centre, and is 0 outside the box
    (a half-cell zero border blends the edge, as the one-cell zero padding of
    Detectron and torchvision does). All boxes in one ``grid_sample`` call.
    """
    height, width = image_size
    count = masks.shape[0]
    if count == 0:
        return masks.new_zeros((0, 1, height, width))
    boxes = boxes.to(masks.dtype)
    x1, y1, x2, y2 = boxes.unbind(dim=1)
    xs = torch.arange(width, dtype=masks.dtype, device=masks.device) + 0.5
    ys = torch.arange(height, dtype=masks.dtype, device=masks.device) + 0.5
    # grid_sample's [-1, 1] spans the mask's outer edges (align_corners=False).
    grid_x = (xs[None, :] - x1[:, None]) / (x2 - x1).clamp(min=1e-6)[:, None] * 2 - 1
    grid_y = (ys[None, :] - y1[:, None]) / (y2 - y1).clamp(min=1e-6)[:, None] * 2 - 1
    grid = torch.stack(
        (
            grid_x[:, None, :].expand(count, height, width),
            grid_y[:, :, None].expand(count, height, width),
        ),
        dim=-1,
    )
    return F.grid_sample(masks, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


class MaskBranch(nn.Module):
    """Mask R-CNN's mask branch on an FPN (module docstring).

    * ``forward(features, boxes: list of [K_i, 4], image_sizes) -> logits
      [sum K_i, num_classes, 28, 28]``.
    * ``loss(features, boxes, matched_idxs, labels, gt_masks, image_sizes)``:
      on the positive RoIs of each image (``boxes``), the targets are the
      matched ground-truth masks (``gt_masks[i]``, uint8 ``[G_i, H_i, W_i]``)
      cropped to each box and resampled to 28x28 with ``operators.roi_align``;
      the loss is the mean binary cross entropy of the logits of each RoI's
      class (``labels``). Without positives it is a zero that still reaches
      every parameter of the branch.
    * ``predict(features, boxes, labels, image_sizes) -> list of [N_i, 1, H_i, W_i]``:
      the sigmoid of each detection's class map, pasted into its image
      (:func:`paste_masks_in_image`).
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        channels: int = 256,
        *,
        pooled_size: int = 14,
        sampling_ratio: int = 2,
        operators="fastops",
    ) -> None:
        super().__init__()
        self.operators = get_operators(operators)
        self.pooler = self.operators.MultiScaleRoIAlign(
            MASK_FEATURE_MAPS, pooled_size, sampling_ratio
        )
        self.head = MaskHead(in_channels, channels)
        self.predictor = MaskPredictor(channels, channels, num_classes, self.operators)
        self.mask_size = 2 * pooled_size

    def forward(
        self, features: dict[str, torch.Tensor], boxes: list[torch.Tensor], image_sizes: ImageSizes
    ) -> torch.Tensor:
        return self.predictor(self.head(self.pooler(features, boxes, image_sizes)))

    def loss(
        self,
        features: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        matched_idxs: list[torch.Tensor],
        labels: list[torch.Tensor],
        gt_masks: list[torch.Tensor],
        image_sizes: ImageSizes,
    ) -> torch.Tensor:
        if sum(b.shape[0] for b in boxes) == 0:
            # A zero that reaches every parameter, so each has a (zero) gradient;
            # abs() turns the -0.0 of a negative sum into 0.0.
            return (sum(p.sum() for p in self.parameters()) * 0.0).abs()
        logits = self(features, boxes, image_sizes)
        targets = torch.cat(
            [
                crop_mask_targets(masks, b, m, self.mask_size, self.operators.roi_align)
                for masks, b, m in zip(gt_masks, boxes, matched_idxs, strict=True)
                if b.shape[0] > 0
            ]
        )
        labels = torch.cat(labels)
        class_logits = logits[torch.arange(labels.shape[0], device=labels.device), labels]
        return F.binary_cross_entropy_with_logits(class_logits, targets)

    def predict(
        self,
        features: dict[str, torch.Tensor],
        boxes: list[torch.Tensor],
        labels: list[torch.Tensor],
        image_sizes: ImageSizes,
    ) -> list[torch.Tensor]:
        counts = [b.shape[0] for b in boxes]
        if sum(counts) == 0:
            dtype, device = features["0"].dtype, features["0"].device
            return [torch.zeros((0, 1, h, w), dtype=dtype, device=device) for h, w in image_sizes]
        logits = self(features, boxes, image_sizes)
        labels = torch.cat(labels)
        probabilities = logits[torch.arange(labels.shape[0], device=labels.device), labels]
        probabilities = probabilities.sigmoid()[:, None]
        return [
            paste_masks_in_image(image_probabilities, image_boxes, image_size)
            for image_probabilities, image_boxes, image_size in zip(
                probabilities.split(counts), boxes, image_sizes, strict=True
            )
        ]
