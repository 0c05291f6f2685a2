"""Run a per-file task over many files, in worker processes, with a progress bar.

Worker processes exit with the parent: when the parent is killed (even by ``SIGKILL``, which
it cannot handle) they are not left running. On Linux the kernel signals them
(``prctl(PR_SET_PDEATHSIG)``); everywhere a watchdog thread in each worker also exits when
the worker's parent process changes.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")

#: Seconds between two checks of the worker's parent by the watchdog thread.
_WATCH_INTERVAL = 0.5


def _alive(pid: int) -> bool:
    if os.name != "posix":  # os.kill would terminate the process on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # pragma: no cover - exists, owned by someone else
        return True
    return True


def _exit_with_parent(parent: int) -> None:
    """Make this (worker) process end when process ``parent`` (the pool's owner) ends."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            pr_set_pdeathsig = 1
            libc.prctl(pr_set_pdeathsig, int(signal.SIGTERM), 0, 0, 0)
        except (OSError, AttributeError):  # pragma: no cover - no prctl: the watchdog remains
            pass
    first = os.getppid()  # the owner, or a fork server started by it

    def watch() -> None:
        while os.getppid() == first and _alive(parent):
            time.sleep(_WATCH_INTERVAL)
        os._exit(1)

    if not _alive(parent):  # the owner died before we got here
        os._exit(1)
    threading.Thread(target=watch, name="rloss-parent-watchdog", daemon=True).start()


def map_files(
    fn: Callable[[Any], T],
    tasks: Sequence[Any],
    *,
    workers: int | None,
    desc: str,
    progress: bool,
) -> list[T]:
    """``[fn(t) for t in tasks]`` in task order, in a process pool when it pays off.

    Args:
        fn: a picklable module-level function taking one task.
        tasks: picklable task descriptions.
        workers: processes; ``None`` means ``min(8, cpu_count)``; ``<= 1`` runs in-process
            (as does a batch smaller than twice the worker count).
        desc: progress-bar label.
        progress: show a tqdm progress bar.
    """
    from tqdm.auto import tqdm

    if workers is None:
        workers = min(8, os.cpu_count() or 1)
    results: list[T] = []
    with tqdm(total=len(tasks), desc=desc, unit="file", disable=not progress) as bar:
        if workers <= 1 or len(tasks) < 2 * workers:
            for task in tasks:
                results.append(fn(task))
                bar.update()
        else:
            from concurrent.futures import ProcessPoolExecutor

            with ProcessPoolExecutor(
                max_workers=workers, initializer=_exit_with_parent, initargs=(os.getpid(),)
            ) as pool:
                chunk = max(1, min(64, len(tasks) // (4 * workers)))
                for res in pool.map(fn, tasks, chunksize=chunk):
                    results.append(res)
                    bar.update()
    return results
