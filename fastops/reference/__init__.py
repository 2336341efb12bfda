"""Plain-PyTorch oracles: written for clarity, never for speed.

They define what every other backend must compute (the tests compare against
them) and are the ``reference`` backend, which runs wherever PyTorch runs.
"""

from fastops.reference.conv_transpose import conv_transpose
from fastops.reference.lovasz import lovasz_hinge, lovasz_softmax
from fastops.reference.max_unpool import max_pool_with_offsets, max_unpool
from fastops.reference.nms import batched_nms, box_iou, nms, nms_padded, soft_nms
from fastops.reference.roi import multi_scale_roi_align, roi_align, roi_pool
from fastops.reference.soft_dice import bce_dice_loss, soft_dice_loss

__all__ = [
    "batched_nms",
    "bce_dice_loss",
    "box_iou",
    "conv_transpose",
    "lovasz_hinge",
    "lovasz_softmax",
    "max_pool_with_offsets",
    "max_unpool",
    "multi_scale_roi_align",
    "nms",
    "nms_padded",
    "roi_align",
    "roi_pool",
    "soft_dice_loss",
    "soft_nms",
]
