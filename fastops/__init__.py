"""fastops: hand-tuned CUDA C++ and Triton kernels for the operators of
segmentation and detection networks, as autograd-capable PyTorch operators.

    import fastops
    y = fastops.ops.max_unpool2d(x, indices, kernel_size=2)
    with fastops.use_backend("triton"):
        ...

See README.md for the operators, their backends and measured speed.
"""

from fastops import (
    _library,  # noqa: F401  (loads fastops._C and registers the ops)
    losses,
    nn,
    ops,
    reference,
)
from fastops.backends import (
    BackendUnavailableError,
    available_backends,
    get_backend,
    set_backend,
    use_backend,
)
from fastops.compat.torchvision import patch_torchvision

__version__ = "0.1.0"

__all__ = [
    "BackendUnavailableError",
    "__version__",
    "available_backends",
    "get_backend",
    "losses",
    "nn",
    "ops",
    "patch_torchvision",
    "reference",
    "set_backend",
    "use_backend",
]
