"""The numba backend's scratch-memory pool: reuse only once nothing can reach the data."""

from __future__ import annotations

import gc
import itertools

import numpy as np
import pytest
import torch

from rloss.lattice import _pool


@pytest.fixture(autouse=True)
def empty_pool():
    _pool.clear()
    yield
    _pool.clear()


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_small_arrays_are_not_pooled():
    a = _pool.empty(10, np.float32)
    assert a.shape == (10,) and a.dtype == np.float32
    del a
    gc.collect()
    assert _pool.idle_bytes() == 0


def test_memory_is_reused_after_the_array_dies():
    a = _pool.empty((512, 1024), np.float32)
    assert a.shape == (512, 1024) and a.flags.c_contiguous and a.flags.writeable
    addr = _address(a)
    del a
    gc.collect()
    assert _pool.idle_bytes() >= 2 << 20
    b = _pool.empty((512, 1000), np.float32)  # same size class
    assert _address(b) == addr
    assert _pool.idle_bytes() == 0


@pytest.mark.parametrize("keep", ["numpy view", "tensor", "tensor view"])
def test_memory_stays_taken_while_a_view_lives(keep):
    a = _pool.empty((512, 1024), np.float32)
    a[:] = 1.0
    if keep == "numpy view":
        other = a[100:].reshape(-1)
    elif keep == "tensor":
        other = torch.from_numpy(a)
    else:
        other = torch.from_numpy(a)[3:, :5]
    del a
    gc.collect()
    assert _pool.idle_bytes() == 0
    b = _pool.empty((512, 1024), np.float32)
    b[:] = 2.0
    assert float(other.sum()) == float(np.prod(other.shape))  # untouched by b
    del other, b
    gc.collect()
    assert _pool.idle_bytes() > 0


def test_two_live_arrays_never_share_memory():
    arrays = [_pool.empty(1 << 20, np.int32) for _ in range(3)]
    starts = sorted(_address(a) for a in arrays)
    assert all(b - a >= 4 << 20 for a, b in itertools.pairwise(starts))


def test_idle_memory_is_bounded(monkeypatch):
    monkeypatch.setattr(_pool, "LIMIT_BYTES", 5 << 20)
    arrays = [_pool.empty(2 << 20, np.uint8) for _ in range(4)]
    del arrays
    gc.collect()
    assert 0 < _pool.idle_bytes() <= 5 << 20


def test_clear_releases_everything():
    a = _pool.empty(4 << 20, np.uint8)
    del a
    gc.collect()
    assert _pool.idle_bytes() > 0
    _pool.clear()
    assert _pool.idle_bytes() == 0


@pytest.mark.parametrize("nbytes", [1 << 20, (1 << 20) + 1, 3_000_001, 1 << 30])
def test_size_class_wastes_at_most_an_eighth(nbytes):
    size = _pool._size_class(nbytes)
    assert nbytes <= size <= nbytes * 1.125 + 1


def test_release_memory_returns_the_idle_bytes():
    from rloss.lattice import release_memory

    a = _pool.empty(3 << 20, np.uint8)
    del a
    gc.collect()
    idle = _pool.idle_bytes()
    assert idle > 0
    assert release_memory() == idle
    assert _pool.idle_bytes() == 0
