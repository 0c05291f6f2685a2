"""Run a per-file task over many files, in worker processes, with a progress bar."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

T = TypeVar("T")


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

            with ProcessPoolExecutor(max_workers=workers) as pool:
                chunk = max(1, min(64, len(tasks) // (4 * workers)))
                for res in pool.map(fn, tasks, chunksize=chunk):
                    results.append(res)
                    bar.update()
    return results
