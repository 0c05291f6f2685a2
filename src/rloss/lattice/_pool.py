"""Reuse of large scratch arrays across calls of the numba backend.

A DenseCRF loss step on a CPU allocates some 200 MB of short-lived arrays
(per-pixel simplex entries, hash tables, lattice rows, the gradient, the
pixel-major features). Fresh
memory is not free: the kernel maps and zeroes every page on first touch, and
on virtual machines the host may have to back it too. Measured on a 2-core VM
(N=12, K=21, 256²), those page faults were a quarter of the step. This pool
keeps the memory of large arrays after their last user has dropped them and
hands it out again for the next request of the same size class.

Safety: :func:`empty` returns a fresh array object that wraps pooled memory
through a ``memoryview``, so every NumPy view (and every tensor made with
``torch.from_numpy``) keeps that object alive; its memory goes back to the
pool only when the object is collected, i.e. when nothing can reach the data
any more. Memory is never shared between two live arrays.

At most :data:`LIMIT_BYTES` of idle memory is kept (oldest dropped first);
:func:`clear` releases all of it.
"""

from __future__ import annotations

import math
import threading
import weakref

import numpy as np

__all__ = ["LIMIT_BYTES", "MIN_BYTES", "clear", "empty", "idle_bytes"]

#: Pooled arrays start at a multiple of this many bytes (a cache line; the numba kernels'
#: streaming stores need their vectors aligned).
ALIGN = 64
#: Arrays smaller than this come from ``np.empty`` directly.
MIN_BYTES = 1 << 20
#: Most idle bytes kept for reuse.
LIMIT_BYTES = 1 << 30

_lock = threading.RLock()
_idle: dict[int, list[np.ndarray]] = {}  # size class -> idle owner buffers (uint8)
_order: list[tuple[int, int]] = []  # (size class, id(buffer)) oldest first


def _size_class(nbytes: int) -> int:
    """Round up to 8 steps per power of two (at most 12.5% unused), so that
    requests that vary a little from call to call share buffers."""
    step = 1 << max(0, nbytes.bit_length() - 4)
    return -(-nbytes // step) * step


def _give(owner: np.ndarray) -> None:
    with _lock:
        size = owner.nbytes - ALIGN  # its size class
        _idle.setdefault(size, []).append(owner)
        _order.append((size, id(owner)))
        total = sum(s * len(v) for s, v in _idle.items())
        while total > LIMIT_BYTES and _order:
            s, key = _order.pop(0)
            bucket = _idle.get(s, [])
            for i, buf in enumerate(bucket):
                if id(buf) == key:
                    del bucket[i]
                    total -= s
                    break


def empty(shape: tuple[int, ...] | int, dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised C-contiguous array, its memory taken from the pool when possible.

    Args:
        shape: array shape.
        dtype: NumPy dtype.

    Returns:
        A writable array; its memory returns to the pool once the array and
        everything viewing it are gone.
    """
    dtype = np.dtype(dtype)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    count = math.prod(shape)
    nbytes = count * dtype.itemsize
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype)
    size = _size_class(nbytes)
    owner = None
    with _lock:
        bucket = _idle.get(size)
        if bucket:
            owner = bucket.pop()
            _order.remove((size, id(owner)))
    if owner is None:
        owner = np.empty(size + ALIGN, np.uint8)
    # ``flat``'s base is a memoryview, not an array, so NumPy stops collapsing view
    # chains at ``flat``: every view of the result (and every tensor over it) keeps
    # ``flat`` alive, and ``flat`` going away means nothing can reach the memory.
    start = -owner.ctypes.data % ALIGN
    flat = np.frombuffer(memoryview(owner)[start:], dtype=dtype, count=count)
    weakref.finalize(flat, _give, owner)
    return flat.reshape(shape)


def idle_bytes() -> int:
    """Bytes held for reuse (not in use by any array)."""
    with _lock:
        return sum(s * len(v) for s, v in _idle.items())


def clear() -> None:
    """Release every idle buffer to the system."""
    with _lock:
        _idle.clear()
        _order.clear()
