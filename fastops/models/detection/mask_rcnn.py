"""Mask R-CNN: He, Gkioxari, Dollár and Girshick, "Mask R-CNN" (ICCV 2017),
on the ResNet + FPN Faster R-CNN of :mod:`fastops.models.detection.faster_rcnn`."""

from __future__ import annotations

from fastops.models.detection import _checks
from fastops.models.detection.faster_rcnn import FasterRCNN
from fastops.models.detection.masks import MaskBranch


class MaskRCNN(FasterRCNN):
    """:class:`FasterRCNN` plus the mask branch
    (:class:`~fastops.models.detection.masks.MaskBranch`): 14x14 features from
    ``operators.MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2)``, four 3x3
    convolutions of ``mask_head_channels`` with ReLU, then
    ``operators.ConvTranspose2d(dim, dim, 2, 2, activation="relu")`` (fastops
    fuses the ReLU) and a 1x1 convolution to ``num_classes`` 28x28 mask
    logits. ``mask_head_channels`` is 32 by default: the paper's 256 is far
    more than simple shapes need, and the mask head is the costliest part of a
    CPU training step.

    Arguments: those of :class:`FasterRCNN` (keyword-only) and
    ``mask_head_channels``.

    ``forward(images, targets=None)`` as :class:`FasterRCNN`, and:

    * Training mode: every target also needs ``masks``, uint8 (or bool) ``[N,
      H_i, W_i]``, one per box, of its image's size. The losses add
      ``loss_mask``: the binary cross entropy of the true class's 28x28 logits
      on the positive RoIs, against the ground-truth mask cropped to the RoI
      with ``operators.roi_align``.
    * Eval mode: every detection dict adds ``masks``, float ``[N, 1, H_i,
      W_i]``, the mask probabilities pasted into the image (threshold them at
      0.5 for binary masks).
    """

    _api = "MaskRCNN"
    _needs_masks = True

    def __init__(self, num_classes: int, *, mask_head_channels: int = 32, **kwargs) -> None:
        _checks.positive_int(mask_head_channels, "mask_head_channels", self._api)
        super().__init__(num_classes, **kwargs)
        self.roi_heads.mask_branch = MaskBranch(
            self.fpn.out_channels, num_classes, mask_head_channels, operators=self.operators
        )
