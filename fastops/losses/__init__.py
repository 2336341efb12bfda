"""Segmentation losses on fused kernels: soft Dice, BCE − ln(Dice),
Lovász-softmax and Lovász-hinge, as functions and torch.nn modules.

    from fastops.losses import lovasz_softmax, soft_dice_loss, DiceLoss
"""

from fastops.losses.dice import BCEDiceLoss, DiceLoss, bce_dice_loss, soft_dice_loss
from fastops.losses.lovasz import LovaszLoss, lovasz_hinge, lovasz_softmax

__all__ = [
    "BCEDiceLoss",
    "DiceLoss",
    "LovaszLoss",
    "bce_dice_loss",
    "lovasz_hinge",
    "lovasz_softmax",
    "soft_dice_loss",
]
