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
Above that size the CPU lattice (either backend) runs on :func:`lattice_threads`:
torch's count as the caller set it, capped by numba's. So ``torch.set_num_threads``
(or ``OMP_NUM_THREADS``) limits the loss as it limits torch.

:func:`run_tasks` runs independent tasks (the torch backend's image groups, and
the numba lattice's ``nogil`` kernels where torch's OpenMP team is not available,
see :mod:`rloss.lattice._numba._team`) on that many threads of a small pool of
its own, the calling thread included. Its idle threads sleep on a condition variable:
unlike an OpenMP team, which spins for milliseconds after every parallel
region (libgomp's default ``OMP_WAIT_POLICY``), they take no CPU from torch's
threads or anyone else between calls, and a thread that the OS preempts
delays only its own task (tasks are taken one at a time, not split in fixed
shares), without any environment variable.

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
import itertools
import os
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = [
    "caller_torch_threads", "get_numba_threads", "lattice_threads", "numba_threads", "run_tasks",
    "set_threads", "threads", "torch_threads",
]

#: Per calling thread: torch's count outside the innermost ``torch_threads(...,
#: remember_caller=True)`` block (see :func:`caller_torch_threads`).
_local = threading.local()


def _numba():  # numba is a core dependency; tolerate its absence (torch-only installs)
    try:
        import numba
    except ImportError:  # pragma: no cover
        return None
    return numba


def get_numba_threads(*, if_loaded: bool = False) -> int | None:
    """Numba's thread count for the calling thread (``None`` without numba).

    ``if_loaded``: ``None`` unless numba is already imported (asking would import
    numba and start its thread pool, ~1 s, in a process that never uses it).
    """
    if if_loaded and "numba" not in sys.modules:
        return None
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


@contextlib.contextmanager
def torch_threads(n: int | None, *, remember_caller: bool = False) -> Iterator[None]:
    """Run the block with torch on ``n`` threads, then restore the count (``None``: as is).

    The CPU losses run their small elementwise preparation (checks, features)
    under ``torch_threads(1, remember_caller=True)``: measured on a busy 2-core AMD
    EPYC, each 2-thread torch op there could wait milliseconds for its OpenMP worker
    (N=1 loss 115 ms, 34 ms with the preparation on one thread). ``remember_caller``
    keeps the count the block replaced for :func:`caller_torch_threads`, so that the
    lattice's own tasks inside the block still run on the caller's threads.
    """
    if n is None or int(n) == torch.get_num_threads():
        yield
        return
    saved = torch.get_num_threads()
    previous = getattr(_local, "caller", None) if remember_caller else None
    if remember_caller:
        _local.caller = saved
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(saved)
        if remember_caller:
            _local.caller = previous


def caller_torch_threads() -> int:
    """Torch's thread count as the caller of the innermost
    ``torch_threads(..., remember_caller=True)`` block set it (the current count outside
    such a block).

    :func:`lattice_threads` uses it: the lattice's tasks run inside the DenseCRF loss,
    whose preparation holds torch at one thread, and would otherwise all run on the
    calling thread (issue 14: the N=12 CPU loss at 1.0x the reference's speed
    instead of 1.6x on a 2-core machine).

    Example:
        >>> import torch
        >>> from rloss._threads import caller_torch_threads, torch_threads
        >>> with torch_threads(2):
        ...     with torch_threads(1, remember_caller=True):
        ...         (torch.get_num_threads(), caller_torch_threads())
        (1, 2)
    """
    caller = getattr(_local, "caller", None)
    return torch.get_num_threads() if caller is None else int(caller)


def lattice_threads() -> int:
    """Threads for the CPU lattice's parallel work (both backends): the smaller of torch's
    count as the caller set it (:func:`caller_torch_threads`) and numba's count of the
    calling thread, when numba is imported (the torch backend never imports it).

    Either limit applies, so a process that gives torch one thread (``torch.set_num_threads(1)``,
    or ``OMP_NUM_THREADS=1`` as ``torchrun`` sets for several processes on one machine) runs
    the loss on one thread too, instead of on numba's default of every CPU. Results never
    depend on the count.

    Example:
        >>> from rloss._threads import lattice_threads, threads
        >>> with threads(1):
        ...     lattice_threads()
        1
    """
    torch_n = caller_torch_threads()
    numba_n = get_numba_threads(if_loaded=True)
    return max(1, torch_n if numba_n is None else min(numba_n, torch_n))


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


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_pool_pid = 0


def _executor(workers: int) -> ThreadPoolExecutor:
    """The process's task pool with at least ``workers`` threads (grown, never shrunk).

    A forked child (e.g. a data-loader worker) gets a pool of its own: the parent's
    threads do not exist there.
    """
    global _pool, _pool_size, _pool_pid
    with _pool_lock:
        forked = _pool_pid != os.getpid()
        if _pool is None or _pool_size < workers or forked:
            old = None if forked else _pool
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="rloss-task")
            _pool_size, _pool_pid = workers, os.getpid()
            if old is not None:
                old.shutdown(wait=False)
        return _pool


def run_tasks(fn: Callable[[int, int], None], ntasks: int, nthreads: int | None = None) -> None:
    """Call ``fn(task, slot)`` for every ``task`` in ``0 .. ntasks`` on up to ``nthreads`` threads.

    ``slot`` (``0 .. nthreads``) identifies the thread running the task, for
    per-thread scratch; the calling thread is slot 0 and works too. Tasks are
    handed out one at a time in order. ``nthreads=None``: numba's thread count
    of the calling thread (:func:`get_numba_threads`). The first exception a
    task raises is re-raised here once every thread has stopped taking tasks.
    ``fn`` should release the GIL (a numba kernel compiled with ``nogil=True``)
    for the threads to run at the same time.

    Example:
        >>> out = [0] * 5
        >>> def square(t, slot):
        ...     out[t] = t * t
        >>> run_tasks(square, 5, 2)
        >>> out
        [0, 1, 4, 9, 16]
    """
    if nthreads is None:
        nthreads = get_numba_threads() or 1
    nthreads = max(1, min(int(nthreads), int(ntasks)))
    if nthreads == 1:
        for t in range(ntasks):
            fn(t, 0)
        return
    counter = itertools.count()  # next() is atomic under the GIL
    failed: list[BaseException] = []

    def worker(slot: int) -> None:
        while not failed:
            t = next(counter)
            if t >= ntasks:
                return
            try:
                fn(t, slot)
            except BaseException as exc:  # re-raised by the caller
                failed.append(exc)
                return

    futures = [_executor(nthreads - 1).submit(worker, s) for s in range(1, nthreads)]
    worker(0)
    for f in futures:
        f.result()
    if failed:
        raise failed[0]
