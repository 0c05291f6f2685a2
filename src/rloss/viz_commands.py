"""Deprecated alias of :mod:`rloss.commands.viz` (every CLI command now lives in
:mod:`rloss.commands`); importing it gives that module itself."""

import sys
import warnings

from rloss.commands import viz as _module

warnings.warn(
    "rloss.viz_commands is deprecated; the command code is in rloss.commands.viz",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _module
