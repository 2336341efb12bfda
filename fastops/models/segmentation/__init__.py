"""Segmentation reference models built on the fastops operators.

Each takes ``operators="fastops"`` (the default) or ``"torch"`` (see
:mod:`fastops.models.operators`) and maps ``x [B, in_channels, H, W]`` to
logits ``[B, num_classes, H, W]``, ``num_classes`` counting the background;
``H`` and ``W`` must be multiples of the model's ``size_divisor``.

* :class:`FCN8s`: Long, Shelhamer and Darrell, CVPR 2015 (conv_transpose2d);
* :class:`SegNet`: Badrinarayanan, Kendall and Cipolla, TPAMI 2017
  (max_pool2d_with_offsets, max_unpool2d);
* :class:`UNet`: Ronneberger, Fischer and Brox, MICCAI 2015 (conv_transpose2d);
* :class:`TernausNet11`: Iglovikov and Shvets, arXiv:1801.05746, 2018
  (conv_transpose2d with the fused ReLU);
* :class:`FPNSegmentation`: Lin et al., CVPR 2017, with Kirillov et al.'s
  Panoptic FPN semantic head, CVPR 2019 (conv_transpose2d).

The fastops operator each model exercises is in parentheses.
"""

from fastops.models.segmentation.fcn import FCN8s
from fastops.models.segmentation.fpn import FPNSegmentation
from fastops.models.segmentation.segnet import SegNet
from fastops.models.segmentation.ternausnet import TernausNet11
from fastops.models.segmentation.unet import UNet

__all__ = ["FCN8s", "FPNSegmentation", "SegNet", "TernausNet11", "UNet"]
