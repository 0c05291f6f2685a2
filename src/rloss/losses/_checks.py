"""Former home of the input checks: now :mod:`rloss.checks` (public, shared by the
lattice, the losses, mean-field refinement and segment). Kept as a re-export so
that ``from rloss.losses import _checks`` keeps working."""

from __future__ import annotations

from rloss.checks import *  # noqa: F403
from rloss.checks import _FLOAT_DTYPES, _HALF_DTYPES, _WARNED, __all__  # noqa: F401
