"""Plain-PyTorch oracles: written for clarity, never for speed.

They define what every other backend must compute (the tests compare against
them) and are the ``reference`` backend, which runs wherever PyTorch runs.
"""

from fastops.reference.max_unpool import max_pool_with_offsets, max_unpool

__all__ = ["max_pool_with_offsets", "max_unpool"]
