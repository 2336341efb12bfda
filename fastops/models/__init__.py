"""Reference models that use the fastops operators end to end.

Segmentation (:mod:`fastops.models.segmentation`): FCN8s, SegNet, UNet,
TernausNet11, FPNSegmentation. Detection (:mod:`fastops.models.detection`):
FasterRCNN, MaskRCNN, SingleShotDetector. Every model takes ``operators="fastops"``
(default) or ``"torch"`` (:mod:`fastops.models.operators`), and which fastops
backend runs is chosen by :func:`fastops.use_backend`.
"""

from fastops.models.detection import FasterRCNN, MaskRCNN, SingleShotDetector
from fastops.models.operators import OPERATOR_SETS, Operators, get_operators
from fastops.models.segmentation import FCN8s, FPNSegmentation, SegNet, TernausNet11, UNet

__all__ = [
    "OPERATOR_SETS",
    "FCN8s",
    "FPNSegmentation",
    "FasterRCNN",
    "MaskRCNN",
    "Operators",
    "SegNet",
    "SingleShotDetector",
    "TernausNet11",
    "UNet",
    "get_operators",
]
