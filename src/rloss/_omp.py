"""The OpenMP runtime torch's intra-op threads run on, so that the CPU lattice can use them too.

On Linux, torch's CPU operators run on an OpenMP team (GNU libgomp in the
official wheels, a copy of its own). After each parallel operator its worker
threads keep spinning for a few milliseconds (libgomp's default wait policy),
waiting for the next one. Any *other* thread that wants a core in that window
shares it with a spinning worker. Measured on a 2-core AMD EPYC (KVM),
2026-12-02, issue 14: tasks of the CPU lattice on a thread pool of their own
ran one at a time for ~6 ms after every 2-thread torch operator (8 tasks of
0.27 ms: 2.2 ms instead of 1.1), so a one-image DenseCRF loss called right
after a torch operator took 9 ms instead of 5. The lattice therefore runs its
parallel kernels on torch's own team (:mod:`rloss.lattice._numba._team`): the
spinning workers are the ones that pick its tasks up, and afterwards they spin
for torch's next operator as they would anyway. No environment variable
(``OMP_WAIT_POLICY``) is needed, and none is set.

:func:`parallel_address` finds that runtime once per process: among the shared
objects already loaded (``/proc/self/maps``), one that exports
``GOMP_parallel`` and whose ``omp_get_max_threads`` follows
``torch.set_num_threads`` (that is the runtime torch calls). The address is
``None``, and the lattice uses :func:`rloss._threads.run_tasks` instead, when:

* torch does not run on such a runtime (macOS, Windows, a TBB or native build);
* the process is a fork of one that imported this module (libgomp's threads do
  not survive ``fork``: a forked child hangs in its first OpenMP region if the
  parent had used one, torch's own operators included; a data-loader worker
  therefore stays off it);
* ``RLOSS_TORCH_OPENMP=0`` is set (an opt-out, e.g. to compare).

Example:
    >>> from rloss import _omp
    >>> addr = _omp.parallel_address()
    >>> addr is None or isinstance(addr, int)
    True
    >>> _omp.state() in ("found", "not found", "skipped: opt-out", "skipped: forked child")
    True
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading

import torch

__all__ = ["ENV_OPT_OUT", "parallel_address", "state"]

#: ``RLOSS_TORCH_OPENMP=0``: the lattice keeps to its own thread pool.
ENV_OPT_OUT: str = "RLOSS_TORCH_OPENMP"
#: File-name prefixes of OpenMP runtimes that implement libgomp's ABI.
_RUNTIMES: tuple[str, ...] = ("libgomp", "libiomp", "libomp")

_log = logging.getLogger("rloss")
_lock = threading.Lock()
_state: str = "pending"
_address: int | None = None


def _forked() -> None:
    global _state, _address
    _state, _address = "skipped: forked child", None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forked)


def _loaded_candidates() -> list[str]:
    """Paths of loaded shared objects that look like an OpenMP runtime (Linux only)."""
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split(maxsplit=5)[-1].strip() for line in fh if ".so" in line}
    except OSError:
        return []
    found = [p for p in paths if os.path.basename(p).startswith(_RUNTIMES)]
    # torch's own copy first (a wheel bundles the runtime it was linked with)
    torch_dir = os.path.dirname(torch.__file__)
    return sorted(found, key=lambda p: (not p.startswith(torch_dir), p))


def _follows_torch(lib: ctypes.CDLL) -> bool:
    """Whether ``torch.set_num_threads`` sets this runtime's thread count (torch uses it)."""
    get = lib.omp_get_max_threads
    get.restype, get.argtypes = ctypes.c_int, []
    saved = torch.get_num_threads()
    try:
        # two values in a row: another runtime's fixed count can equal one of them
        for probe in (saved + 1, saved + 2):
            torch.set_num_threads(probe)
            if int(get()) != probe:
                return False
        return True
    finally:
        torch.set_num_threads(saved)


def _find() -> tuple[str, int | None]:
    if os.environ.get(ENV_OPT_OUT, "").strip() == "0":
        return "skipped: opt-out", None
    mode = getattr(os, "RTLD_NOLOAD", 0) | os.RTLD_LOCAL
    for path in _loaded_candidates():
        try:
            lib = ctypes.CDLL(path, mode=mode)
            fn = lib.GOMP_parallel
        except (OSError, AttributeError):
            continue
        if _follows_torch(lib):
            _log.debug("rloss: lattice tasks run on torch's OpenMP threads (%s)", path)
            return "found", int(ctypes.cast(fn, ctypes.c_void_p).value)
    return "not found", None


def parallel_address() -> int | None:
    """Address of ``GOMP_parallel`` in torch's OpenMP runtime, or ``None`` (see the module doc).

    Found once per process, on first call (it briefly sets torch's thread count
    to probe the runtime and restores it).
    """
    global _state, _address
    if _state == "pending":
        with _lock:
            if _state == "pending":
                _state, _address = _find()
    return _address


def state() -> str:
    """``"pending"`` (not looked yet), ``"found"``, ``"not found"`` or ``"skipped: <why>"``."""
    return _state
