"""``torch.nn``-style modules backed by fastops operators, with torch's
constructor arguments, attributes and ``state_dict`` layout."""

from fastops.nn.conv_transpose import ConvTranspose1d, ConvTranspose2d
from fastops.nn.roi import MultiScaleRoIAlign, RoIAlign, RoIPool
from fastops.nn.unpooling import MaxUnpool1d, MaxUnpool2d, MaxUnpool3d

__all__ = [
    "ConvTranspose1d",
    "ConvTranspose2d",
    "MaxUnpool1d",
    "MaxUnpool2d",
    "MaxUnpool3d",
    "MultiScaleRoIAlign",
    "RoIAlign",
    "RoIPool",
]
