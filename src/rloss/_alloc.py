"""glibc malloc tuning, once per process, so that large tensors freed each step are reused.

glibc serves every block above its mmap threshold (at most 32 MiB, its dynamic
ceiling) with a fresh ``mmap`` and unmaps it again on ``free``. A DenseCRF loss
step on the CPU allocates and frees several such blocks (a 12 x 21 x 256 x 256
float32 batch is 66 MB: the caller's probabilities, the gradient, torch's
temporaries), so every step faults in 16k fresh 4 KiB pages per block, each
zeroed by the kernel: on a 2-core AMD EPYC (KVM) about 24 ms of a 93 ms step
(issue 14). Raising the mmap threshold to :data:`MMAP_THRESHOLD` and the trim
threshold to :data:`TRIM_THRESHOLD` keeps such blocks in the heap, where the
next step's blocks of the same size reuse pages that are already mapped.

:func:`ensure` does this once, the first time a CPU lattice is built (not at
import), through ``mallopt`` (``M_MMAP_THRESHOLD``, ``M_TRIM_THRESHOLD``):

* only on glibc (elsewhere, e.g. musl or macOS, nothing happens);
* never when the user has chosen a value: if any of ``MALLOC_MMAP_THRESHOLD_``,
  ``MALLOC_TRIM_THRESHOLD_`` or a ``glibc.malloc.mmap_threshold`` /
  ``glibc.malloc.trim_threshold`` entry in ``GLIBC_TUNABLES`` is set, nothing
  is changed;
* not at all with ``RLOSS_MALLOC_TUNING=0`` (an opt-out; speed needs no
  environment variable).

The cost: up to :data:`TRIM_THRESHOLD` of freed memory at the top of the heap
may stay with the process instead of going back to the system, and blocks up to
:data:`MMAP_THRESHOLD` come from the heap. What was done is logged at debug
level on the ``rloss`` logger; :func:`state` says it too.

Example:
    >>> from rloss import _alloc
    >>> _alloc.state() in ("pending", "applied", "skipped: opt-out", "skipped: user env",
    ...                    "skipped: not glibc", "skipped: mallopt refused")
    True
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping

__all__ = ["ENV_OPT_OUT", "MMAP_THRESHOLD", "TRIM_THRESHOLD", "ensure", "state"]

#: Blocks up to this size come from the heap (glibc's own dynamic ceiling: 32 MiB).
MMAP_THRESHOLD: int = 256 << 20
#: Free memory at the heap top kept by the process up to this size (default 128 KiB,
#: dynamically twice the mmap threshold).
TRIM_THRESHOLD: int = 1 << 30
#: ``RLOSS_MALLOC_TUNING=0`` leaves malloc alone.
ENV_OPT_OUT: str = "RLOSS_MALLOC_TUNING"
#: glibc's environment tunables for the two values (their presence means: the user chose).
USER_ENV: tuple[str, ...] = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_USER_TUNABLES: tuple[str, ...] = ("glibc.malloc.mmap_threshold", "glibc.malloc.trim_threshold")

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

_log = logging.getLogger("rloss")
_lock = threading.Lock()
_state = "pending"


def _glibc_mallopt() -> Callable[[int, int], int] | None:
    """glibc's ``mallopt``, or ``None`` when the C library is not glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only (musl has mallopt too)
        fn = libc.mallopt
    except (OSError, AttributeError):
        return None
    fn.argtypes = (ctypes.c_int, ctypes.c_int)
    fn.restype = ctypes.c_int
    return fn


def _decide(env: Mapping[str, str]) -> str | None:
    """Why the tuning is skipped in environment ``env``, or ``None`` to apply it."""
    if env.get(ENV_OPT_OUT, "").strip().lower() in ("0", "false", "no", "off"):
        return "skipped: opt-out"
    tunables = env.get("GLIBC_TUNABLES", "")
    if any(k in env for k in USER_ENV) or any(t in tunables for t in _USER_TUNABLES):
        return "skipped: user env"
    return None


def ensure(
    env: Mapping[str, str] | None = None,
    mallopt: Callable[[int, int], int] | None = None,
) -> str:
    """Apply the tuning of the module docstring if not done yet; returns :func:`state`.

    Cheap after the first call (a string compare). ``env`` (default ``os.environ``)
    and ``mallopt`` (default glibc's, ``None`` off glibc) are for tests; they are
    read on the first call only.
    """
    global _state
    if _state != "pending":
        return _state
    with _lock:
        if _state != "pending":
            return _state
        why = _decide(os.environ if env is None else env)
        fn = mallopt if mallopt is not None else (None if why else _glibc_mallopt())
        if why is None and fn is None:
            why = "skipped: not glibc"
        if why is None:
            # both: with the mmap threshold alone, glibc's trim threshold (128 KiB, or
            # twice the last dynamic mmap threshold) would still return freed blocks at
            # the heap top to the system
            ok = fn(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
            ok = fn(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and ok
            why = None if ok else "skipped: mallopt refused"
        _state = "applied" if why is None else why
        _log.debug(
            "rloss: malloc tuning %s (M_MMAP_THRESHOLD=%d, M_TRIM_THRESHOLD=%d; "
            "%s=0 turns it off)",
            _state, MMAP_THRESHOLD, TRIM_THRESHOLD, ENV_OPT_OUT,
        )
        return _state


def state() -> str:
    """``"pending"`` (not tried yet), ``"applied"``, or ``"skipped: <why>"``."""
    return _state

