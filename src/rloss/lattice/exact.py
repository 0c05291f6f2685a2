"""Deprecated module name: the brute-force filter now lives in ``rloss.lattice._exact``.

``from rloss.lattice import exact_filter`` is the public import; this module
keeps ``from rloss.lattice.exact import exact_filter`` working.
"""

from __future__ import annotations

import warnings

from rloss.lattice._exact import ExactLattice, build, exact_filter

__all__ = ["ExactLattice", "build", "exact_filter"]

warnings.warn(
    "rloss.lattice.exact is deprecated; use `from rloss.lattice import exact_filter`",
    DeprecationWarning,
    stacklevel=2,
)
