"""Detection reference models built on fastops's RoI and NMS operators.

* :class:`FasterRCNN` (Ren et al., NeurIPS 2015) with a feature pyramid (Lin
  et al., CVPR 2017);
* :class:`MaskRCNN` (He et al., ICCV 2017);
* :class:`SingleShotDetector`, a grid detector in the line of YOLO (Redmon et
  al., CVPR 2016) and SSD (Liu et al., ECCV 2016).

Every model takes ``operators="fastops"`` or ``"torch"`` (see
:mod:`fastops.models.operators`), accepts a ``[B, 3, H, W]`` tensor or a list
of ``[3, H, W]`` images, returns a dict of losses in training mode and
torchvision's list of detection dicts in eval mode. The building blocks
(anchors, box coding, matching, the RPN and RoI heads) are exported for reuse.
"""

from fastops.models.detection.anchors import AnchorGenerator
from fastops.models.detection.box_coding import (
    BoxCoder,
    box_area,
    boxes_at_least,
    clip_boxes_to_image,
    pairwise_iou,
)
from fastops.models.detection.faster_rcnn import FasterRCNN
from fastops.models.detection.images import ImageBatcher
from fastops.models.detection.mask_rcnn import MaskRCNN
from fastops.models.detection.masks import (
    MaskBranch,
    MaskHead,
    MaskPredictor,
    crop_mask_targets,
    paste_masks_in_image,
)
from fastops.models.detection.matching import BalancedPositiveNegativeSampler, Matcher
from fastops.models.detection.roi_heads import (
    BoxPredictor,
    MultiLevelRoIPool,
    RoIHeads,
    TwoLayerBoxHead,
    fast_rcnn_loss,
    pyramid_levels,
)
from fastops.models.detection.rpn import RegionProposalNetwork, RPNHead
from fastops.models.detection.ssd import SingleShotDetector, SingleShotHead, TopDownFeature

__all__ = [
    "AnchorGenerator",
    "BalancedPositiveNegativeSampler",
    "BoxCoder",
    "BoxPredictor",
    "FasterRCNN",
    "ImageBatcher",
    "MaskBranch",
    "MaskHead",
    "MaskPredictor",
    "MaskRCNN",
    "Matcher",
    "MultiLevelRoIPool",
    "RPNHead",
    "RegionProposalNetwork",
    "RoIHeads",
    "SingleShotDetector",
    "SingleShotHead",
    "TopDownFeature",
    "TwoLayerBoxHead",
    "box_area",
    "boxes_at_least",
    "clip_boxes_to_image",
    "crop_mask_targets",
    "fast_rcnn_loss",
    "pairwise_iou",
    "paste_masks_in_image",
    "pyramid_levels",
]
