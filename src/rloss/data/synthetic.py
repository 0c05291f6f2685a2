"""Deprecated alias of :mod:`rloss.data.demo_scenes` (the generated demo dataset).

``import rloss.data.synthetic`` gives the module :mod:`rloss.data.demo_scenes` itself (same
objects, so patching either name patches both) and warns once.
"""

import sys
import warnings

from rloss.data import demo_scenes as _module

warnings.warn(
    "rloss.data.synthetic is deprecated; import rloss.data.demo_scenes instead",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _module
