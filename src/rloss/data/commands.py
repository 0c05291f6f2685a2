"""Deprecated alias of :mod:`rloss.commands.data` (every CLI command now lives in
:mod:`rloss.commands`); importing it gives that module itself."""

import sys
import warnings

from rloss.commands import data as _module

warnings.warn(
    "rloss.data.commands is deprecated; the command code is in rloss.commands.data",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _module
