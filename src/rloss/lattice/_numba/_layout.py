"""How the batch's pixels are cut into tasks, and the sizes of the compiled loops.

The task split depends on the shapes only (never on the thread count), so the
numerical result of every kernel is thread-count independent.
"""

from __future__ import annotations

from numba import njit

#: A task (pixel block) never has fewer pixels than this, unless the image does.
MIN_BLOCK = 4096
#: Split images into blocks until the batch has at least this many tasks.
MIN_TASKS = 8
#: Rows processed per parallel chunk in vertex loops (amortises scratch allocation).
CHUNK = 2048
#: Pixels embedded together, coordinate-major, so that the inner loops vectorise.
EMBED = 64
#: Pixels per tile in splat and slice (transposes (C, tile) <-> (tile, C) in cache).
TILE = 64


def blocks_per_image(n: int, p: int) -> int:
    """Pixel blocks per image: a function of the shapes only (thread-count independent)."""
    if n >= MIN_TASKS:
        return 1
    want = -(-MIN_TASKS // n)
    return max(1, min(want, p // MIN_BLOCK))


@njit(cache=True)
def task_pixels(t, nblk, npix):
    """Image ``n`` and pixel range ``p0 .. p1`` of task ``t`` (``nblk`` blocks per image)."""
    blk = (npix + nblk - 1) // nblk
    n = t // nblk
    p0 = (t % nblk) * blk
    return n, p0, min(npix, p0 + blk)
