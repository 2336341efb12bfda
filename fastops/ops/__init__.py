"""fastops operators, functional form: drop-ins for ``torch.nn.functional`` and
``torchvision.ops``. Arguments are checked here, with errors that name them,
before any kernel runs; the backend is chosen by :mod:`fastops.backends`."""

from fastops.ops.boxes import batched_nms, batched_nms_padded, box_iou, nms, nms_padded, soft_nms
from fastops.ops.conv_transpose import conv_transpose1d, conv_transpose2d
from fastops.ops.roi import multi_scale_roi_align, roi_align, roi_pool
from fastops.ops.unpooling import max_pool2d_with_offsets, max_unpool1d, max_unpool2d, max_unpool3d

__all__ = [
    "batched_nms",
    "batched_nms_padded",
    "box_iou",
    "conv_transpose1d",
    "conv_transpose2d",
    "max_pool2d_with_offsets",
    "max_unpool1d",
    "max_unpool2d",
    "max_unpool3d",
    "multi_scale_roi_align",
    "nms",
    "nms_padded",
    "roi_align",
    "roi_pool",
    "soft_nms",
]
