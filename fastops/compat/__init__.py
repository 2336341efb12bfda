"""Integration with other libraries: :func:`patch_torchvision` makes torchvision's
own code (its detection models included) run on fastops."""

from fastops.compat.torchvision import TorchvisionPatch, patch_torchvision

__all__ = ["TorchvisionPatch", "patch_torchvision"]
