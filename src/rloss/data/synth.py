"""Deprecated alias of :mod:`rloss.data.scribble_synthesis` (scribbles and clicks
synthesised from full masks).

``import rloss.data.synth`` gives the module :mod:`rloss.data.scribble_synthesis` itself (same
objects, so patching either name patches both) and warns once.
"""

import sys
import warnings

from rloss.data import scribble_synthesis as _module

warnings.warn(
    "rloss.data.synth is deprecated; import rloss.data.scribble_synthesis instead",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _module
