"""Thread control for torch and numba: one place, scoped, restored afterwards.

Two runtimes compute on the CPU here: torch's intra-op pool and numba's (the
CPU lattice, :mod:`rloss.lattice._numba`). Both are set with
:func:`threads`, a context manager that restores the previous counts on exit,
so a library call never leaves the process configured differently.

Numba's count (``numba.set_num_threads``) is *thread-local*: it applies to
the calling thread's parallel regions only and never to other threads; it is
capped at the pool size ``NUMBA_NUM_THREADS`` fixed at start-up. The lattice
backend uses :func:`numba_threads` to run small problems on one thread (waking
the pool costs more than the work below about 32k pixels, see
:class:`rloss.lattice.BuildOptions`); results never depend on the count.

Example:
    >>> import torch
    >>> from rloss._threads import threads
    >>> before = torch.get_num_threads()
    >>> with threads(1):
    ...     torch.get_num_threads()
    1
    >>> torch.get_num_threads() == before
    True
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["get_numba_threads", "numba_threads", "set_threads", "threads"]


def _numba():  # numba is a core dependency; tolerate its absence (torch-only installs)
    try:
        import numba
    except ImportError:  # pragma: no cover
        return None
    return numba


def get_numba_threads() -> int | None:
    """Numba's thread count for the calling thread (``None`` without numba)."""
    nb = _numba()
    return None if nb is None else int(nb.get_num_threads())


def _set_numba(n: int) -> None:
    nb = _numba()
    if nb is not None:
        nb.set_num_threads(max(1, min(int(n), nb.config.NUMBA_NUM_THREADS)))


@contextlib.contextmanager
def numba_threads(n: int | None) -> Iterator[None]:
    """Run the block with numba on ``n`` threads (capped at the pool size); ``None``: unchanged.

    Restores the calling thread's previous count on exit. Cheap (no pool
    restart): the lattice enters it around every kernel call of a small problem.
    """
    nb = _numba()
    if n is None or nb is None:
        yield
        return
    before = nb.get_num_threads()
    want = max(1, min(int(n), nb.config.NUMBA_NUM_THREADS))
    if want == before:
        yield
        return
    nb.set_num_threads(want)
    try:
        yield
    finally:
        nb.set_num_threads(before)


def set_threads(n: int) -> None:
    """Set torch's and numba's thread counts to ``n`` (numba capped at its pool size), for good.

    For process set-up (the trainer, the CLI); library calls use :func:`threads`.
    """
    if int(n) < 1:
        raise ValueError(f"threads: want an integer >= 1, got {n}")
    torch.set_num_threads(int(n))
    _set_numba(int(n))


@contextlib.contextmanager
def threads(n: int | None) -> Iterator[None]:
    """Run the block with torch and numba on ``n`` threads, then restore both (None: as is)."""
    if n is None:
        yield
        return
    if int(n) < 1:
        raise ValueError(f"threads: want an integer >= 1 or None, got {n}")
    # numba first: launching its thread pool (on first use) can reset the OpenMP
    # thread count torch reads, so torch's count is set after, and restored first
    with numba_threads(int(n)):
        saved = torch.get_num_threads()
        torch.set_num_threads(int(n))
        try:
            yield
        finally:
            torch.set_num_threads(saved)
