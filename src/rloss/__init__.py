"""rloss: regularized losses for weakly-supervised semantic segmentation.

The core (``rloss.lattice``, ``rloss.losses``) needs only torch, numpy and
numba. The training stack (``rloss.train``, ``rloss.data``) needs the
``train`` extra: ``pip install rloss[train]``.
"""

from rloss.constants import IGNORE_INDEX

__version__ = "0.1.0"

__all__ = ["IGNORE_INDEX", "__version__"]
