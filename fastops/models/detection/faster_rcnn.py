"""Faster R-CNN with a feature pyramid: Ren, He, Girshick and Sun, "Faster
R-CNN: Towards Real-Time Object Detection with Region Proposal Networks"
(NeurIPS 2015), with the FPN of Lin, Dollár, Girshick, He, Hariharan and
Belongie, "Feature Pyramid Networks for Object Detection" (CVPR 2017)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from fastops.models.backbones import FeaturePyramid, ResNetBackbone
from fastops.models.detection import _checks
from fastops.models.detection.anchors import AnchorGenerator, anchor_levels
from fastops.models.detection.images import ImageBatcher, check_inputs
from fastops.models.detection.roi_heads import (
    BoxPredictor,
    MultiLevelRoIPool,
    RoIHeads,
    TwoLayerBoxHead,
)
from fastops.models.detection.rpn import RegionProposalNetwork, RPNHead
from fastops.models.operators import get_operators

BOX_FEATURE_MAPS = ["0", "1", "2", "3"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
BACKBONE_STRIDE = 32


class FasterRCNN(nn.Module):
    """Faster R-CNN on a ResNet + FPN backbone, with every RoI and NMS
    operation taken from ``operators`` ("fastops" or "torch").

    The network: :class:`~fastops.models.backbones.ResNetBackbone` (C2..C5,
    strides 4..32) and :class:`~fastops.models.backbones.FeaturePyramid` (P2..P5
    and P6, ``fpn_channels`` each); a :class:`RegionProposalNetwork` on P2..P6
    with one anchor size per level (``anchor_sizes``, 5 levels) and
    ``aspect_ratios``; :class:`RoIHeads` pooling 7x7 features from P2..P5 with
    ``operators.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)``
    (``box_pooler="align"``) or with :class:`MultiLevelRoIPool`, RoI max pooling
    on ``operators.roi_pool`` with the same level mapping (``box_pooler="pool"``),
    then two fully connected layers of ``box_representation_size`` and the
    class / box predictor.

    ``num_classes`` counts the background: 4 for three object classes, whose
    labels are 1..3.

    ``forward(images, targets=None)``:

    * ``images``: a float tensor ``[B, 3, H, W]`` or a list of float ``[3, H_i,
      W_i]`` tensors, values as the images were (``image_mean`` and
      ``image_std`` normalise them inside the model; ImageNet's by default, for
      images in [0, 1]). Images are padded to a common size that is a multiple
      of 32 and are not resized.
    * Training mode: ``targets`` (required) is a list of one dict per image with
      ``boxes`` float ``[N, 4]`` (x1, y1, x2, y2 in pixels, x2 > x1, y2 > y1) and
      ``labels`` int64 ``[N]`` in 1..num_classes - 1; ``N`` may be 0. Returns the
      dict of scalar losses ``loss_objectness``, ``loss_rpn_box_reg`` (RPN),
      ``loss_classifier``, ``loss_box_reg`` (box head); their sum is the
      training loss.
    * Eval mode (``targets`` ignored): a list of one dict per image with
      ``boxes`` float ``[N, 4]`` in the image's own pixels (clipped to it),
      ``labels`` int64 ``[N]`` and ``scores`` ``[N]`` by decreasing score:
      torchvision's format.

    The defaults suit small images (64 to 128 pixels) on a CPU: a narrow
    backbone, anchors of 16 to 256 pixels, 1000 / 500 pre-NMS and 300 / 150
    post-NMS proposals per image (training / testing), 128 sampled anchors and
    128 sampled RoIs per image. The remaining settings are Faster R-CNN's and
    torchvision's.
    """

    _api = "FasterRCNN"
    _needs_masks = False

    def __init__(
        self,
        num_classes: int,
        *,
        backbone_widths: Sequence[int] = (32, 64, 128, 256),
        backbone_blocks: Sequence[int] = (1, 1, 1, 1),
        fpn_channels: int = 64,
        anchor_sizes: Sequence[Sequence[float]] = ((16,), (32,), (64,), (128,), (256,)),
        aspect_ratios: Sequence[float] | Sequence[Sequence[float]] = (0.5, 1.0, 2.0),
        rpn_pre_nms_top_n_train: int = 1000,
        rpn_pre_nms_top_n_test: int = 500,
        rpn_post_nms_top_n_train: int = 300,
        rpn_post_nms_top_n_test: int = 150,
        rpn_nms_thresh: float = 0.7,
        rpn_fg_iou_thresh: float = 0.7,
        rpn_bg_iou_thresh: float = 0.3,
        rpn_batch_size_per_image: int = 128,
        rpn_positive_fraction: float = 0.5,
        rpn_score_thresh: float = 0.0,
        box_pooler: str = "align",
        box_representation_size: int = 256,
        box_score_thresh: float = 0.05,
        box_nms_thresh: float = 0.5,
        box_detections_per_img: int = 100,
        box_fg_iou_thresh: float = 0.5,
        box_bg_iou_thresh: float = 0.5,
        box_batch_size_per_image: int = 128,
        box_positive_fraction: float = 0.25,
        bbox_reg_weights: Sequence[float] = (10.0, 10.0, 5.0, 5.0),
        image_mean: Sequence[float] = IMAGENET_MEAN,
        image_std: Sequence[float] = IMAGENET_STD,
        operators="fastops",
    ) -> None:
        super().__init__()
        api = self._api
        _checks.positive_int(num_classes, "num_classes", api, minimum=2)
        backbone_widths = _checks.int_sequence(backbone_widths, "backbone_widths", api, 4)
        backbone_blocks = _checks.int_sequence(backbone_blocks, "backbone_blocks", api, 4)
        _checks.positive_int(fpn_channels, "fpn_channels", api)
        for name, value in (
            ("rpn_pre_nms_top_n_train", rpn_pre_nms_top_n_train),
            ("rpn_pre_nms_top_n_test", rpn_pre_nms_top_n_test),
            ("rpn_post_nms_top_n_train", rpn_post_nms_top_n_train),
            ("rpn_post_nms_top_n_test", rpn_post_nms_top_n_test),
            ("rpn_batch_size_per_image", rpn_batch_size_per_image),
            ("box_representation_size", box_representation_size),
            ("box_batch_size_per_image", box_batch_size_per_image),
        ):
            _checks.positive_int(value, name, api)
        _checks.positive_int(box_detections_per_img, "box_detections_per_img", api, minimum=0)
        for name, value in (
            ("rpn_nms_thresh", rpn_nms_thresh),
            ("rpn_fg_iou_thresh", rpn_fg_iou_thresh),
            ("rpn_bg_iou_thresh", rpn_bg_iou_thresh),
            ("rpn_score_thresh", rpn_score_thresh),
            ("box_score_thresh", box_score_thresh),
            ("box_nms_thresh", box_nms_thresh),
            ("box_fg_iou_thresh", box_fg_iou_thresh),
            ("box_bg_iou_thresh", box_bg_iou_thresh),
        ):
            _checks.number_in(value, name, api, 0.0, 1.0)
        _checks.number_in(
            rpn_positive_fraction, "rpn_positive_fraction", api, 0.0, 1.0, low_open=True
        )
        _checks.number_in(
            box_positive_fraction, "box_positive_fraction", api, 0.0, 1.0, low_open=True
        )
        if rpn_bg_iou_thresh > rpn_fg_iou_thresh:
            raise ValueError(
                f"{api}: rpn_bg_iou_thresh ({rpn_bg_iou_thresh}) must not exceed "
                f"rpn_fg_iou_thresh ({rpn_fg_iou_thresh})"
            )
        if box_bg_iou_thresh > box_fg_iou_thresh:
            raise ValueError(
                f"{api}: box_bg_iou_thresh ({box_bg_iou_thresh}) must not exceed "
                f"box_fg_iou_thresh ({box_fg_iou_thresh})"
            )
        _checks.one_of(box_pooler, "box_pooler", api, ("align", "pool"))
        anchor_sizes = anchor_levels(anchor_sizes, "anchor_sizes", None, api)
        if len(anchor_sizes) != 5:
            raise ValueError(
                f"{api}: anchor_sizes needs one entry per RPN level P2..P6 (5), "
                f"got {len(anchor_sizes)}"
            )
        aspect_ratios = anchor_levels(aspect_ratios, "aspect_ratios", 5, api)
        try:
            anchor_generator = AnchorGenerator(anchor_sizes, aspect_ratios)
        except ValueError as error:
            raise ValueError(f"{api}: anchor_sizes and aspect_ratios: {error}") from None
        try:
            box_coder_weights = tuple(float(w) for w in bbox_reg_weights)
        except (TypeError, ValueError):
            raise ValueError(f"{api}: bbox_reg_weights must be 4 positive numbers") from None
        if len(box_coder_weights) != 4 or not all(w > 0 for w in box_coder_weights):
            raise ValueError(
                f"{api}: bbox_reg_weights must be 4 positive numbers, got {bbox_reg_weights!r}"
            )
        self.operators = get_operators(operators)

        self.num_classes = num_classes
        self.box_pooler_kind = box_pooler
        self.transform = ImageBatcher(image_mean, image_std, BACKBONE_STRIDE, api)
        self.backbone = ResNetBackbone(backbone_widths, backbone_blocks)
        self.fpn = FeaturePyramid(backbone_widths, fpn_channels, extra_pool_level=True)
        self.rpn = RegionProposalNetwork(
            anchor_generator,
            RPNHead(fpn_channels, anchor_generator.num_anchors_per_location),
            fg_iou_thresh=rpn_fg_iou_thresh,
            bg_iou_thresh=rpn_bg_iou_thresh,
            batch_size_per_image=rpn_batch_size_per_image,
            positive_fraction=rpn_positive_fraction,
            pre_nms_top_n_train=rpn_pre_nms_top_n_train,
            pre_nms_top_n_test=rpn_pre_nms_top_n_test,
            post_nms_top_n_train=rpn_post_nms_top_n_train,
            post_nms_top_n_test=rpn_post_nms_top_n_test,
            nms_thresh=rpn_nms_thresh,
            score_thresh=rpn_score_thresh,
            operators=self.operators,
        )
        pooled_size = 7
        if box_pooler == "align":
            pooler = self.operators.MultiScaleRoIAlign(BOX_FEATURE_MAPS, pooled_size, 2)
        else:
            pooler = MultiLevelRoIPool(BOX_FEATURE_MAPS, pooled_size, operators=self.operators)
        self.roi_heads = RoIHeads(
            pooler,
            TwoLayerBoxHead(fpn_channels * pooled_size**2, box_representation_size),
            BoxPredictor(box_representation_size, num_classes),
            fg_iou_thresh=box_fg_iou_thresh,
            bg_iou_thresh=box_bg_iou_thresh,
            batch_size_per_image=box_batch_size_per_image,
            positive_fraction=box_positive_fraction,
            bbox_reg_weights=box_coder_weights,
            score_thresh=box_score_thresh,
            nms_thresh=box_nms_thresh,
            detections_per_img=box_detections_per_img,
            operators=self.operators,
        )

    def forward(
        self,
        images: torch.Tensor | list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        image_list, targets = check_inputs(
            images,
            targets,
            self.training,
            self.num_classes,
            self._api,
            require_masks=self._needs_masks,
        )
        batch, image_sizes = self.transform(image_list)
        features = self.fpn(self.backbone(batch))
        proposals, rpn_losses = self.rpn(
            list(features.values()), tuple(batch.shape[-2:]), image_sizes, targets
        )
        detections, roi_losses = self.roi_heads(features, proposals, image_sizes, targets)
        if self.training:
            return {**rpn_losses, **roi_losses}
        return detections

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, box_pooler={self.box_pooler_kind!r}, "
            f"operators={self.operators.name!r}"
        )
