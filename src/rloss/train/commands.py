"""Deprecated alias of :mod:`rloss.commands.train` (every CLI command now lives in
:mod:`rloss.commands`); importing it gives that module itself."""

import sys
import warnings

from rloss.commands import train as _module

warnings.warn(
    "rloss.train.commands is deprecated; the command code is in rloss.commands.train",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _module
