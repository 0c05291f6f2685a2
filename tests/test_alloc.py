"""rloss._alloc: glibc malloc tuning, once, on the first CPU lattice, never against the user."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from rloss import _alloc


class FakeMallopt:
    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def __call__(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return self.result


@pytest.fixture
def fresh(monkeypatch):
    """A process state in which ensure() has not run yet (restored afterwards)."""
    monkeypatch.setattr(_alloc, "_state", "pending")


def test_applies_once(fresh):
    fake = FakeMallopt()
    assert _alloc.ensure(env={}, mallopt=fake) == "applied"
    assert fake.calls == [
        (_alloc.M_TRIM_THRESHOLD, _alloc.TRIM_THRESHOLD),
        (_alloc.M_MMAP_THRESHOLD, _alloc.MMAP_THRESHOLD),
    ]
    again = FakeMallopt()
    assert _alloc.ensure(env={}, mallopt=again) == "applied"
    assert again.calls == [] and len(fake.calls) == 2
    assert _alloc.state() == "applied"


@pytest.mark.parametrize("value", ["0", "off", "False"])
def test_opt_out_leaves_mallopt_uncalled(fresh, value):
    fake = FakeMallopt()
    assert _alloc.ensure(env={_alloc.ENV_OPT_OUT: value}, mallopt=fake) == "skipped: opt-out"
    assert fake.calls == []


@pytest.mark.parametrize(
    "env",
    [
        {"MALLOC_MMAP_THRESHOLD_": "65536"},
        {"MALLOC_TRIM_THRESHOLD_": "0"},
        {"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=4096"},
        {"GLIBC_TUNABLES": "glibc.pthread.rseq=0:glibc.malloc.trim_threshold=1"},
    ],
)
def test_user_env_leaves_mallopt_uncalled(fresh, env):
    fake = FakeMallopt()
    assert _alloc.ensure(env=env, mallopt=fake) == "skipped: user env"
    assert fake.calls == []


def test_unrelated_env_does_not_block(fresh):
    fake = FakeMallopt()
    env = {_alloc.ENV_OPT_OUT: "1", "GLIBC_TUNABLES": "glibc.pthread.rseq=0"}
    assert _alloc.ensure(env=env, mallopt=fake) == "applied"
    assert len(fake.calls) == 2


def test_not_glibc_is_a_noop(fresh, monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    assert _alloc._glibc_mallopt() is None
    assert _alloc.ensure(env={}) == "skipped: not glibc"


def test_refused_mallopt_is_reported(fresh):
    assert _alloc.ensure(env={}, mallopt=FakeMallopt(result=0)) == "skipped: mallopt refused"


def _glibc_with_mallinfo2() -> bool:
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018
        libc.mallinfo2  # noqa: B018
    except (OSError, AttributeError):
        return False
    return sys.platform.startswith("linux")


# In a fresh process: nothing at import, applied by the first loss call, and then a
# 64 MiB block really comes from the heap (mallinfo2().hblkhd: bytes in mmapped blocks).
_CHILD = r"""
import ctypes, torch
from rloss import _alloc
import rloss.losses as R
print(_alloc.state())
image = torch.rand(1, 3, 16, 16) * 255
R.densecrf_loss(image, torch.rand(1, 2, 16, 16).softmax(1), weight=1.0)
print(_alloc.state())
class MI(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in
                ("arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks "
                 "keepcost").split()]
libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MI
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
before = libc.mallinfo2().hblkhd
ptr = libc.malloc(64 << 20)
print(libc.mallinfo2().hblkhd - before >= 64 << 20)
libc.free(ptr)
"""


@pytest.mark.skipif(not _glibc_with_mallinfo2(), reason="glibc >= 2.33 only")
@pytest.mark.parametrize(
    ("extra", "want"),
    [
        ({}, ["pending", "applied", "False"]),
        ({_alloc.ENV_OPT_OUT: "0"}, ["pending", "skipped: opt-out", "True"]),
        ({"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}, ["pending", "skipped: user env", "True"]),
    ],
)
def test_real_process(extra, want):
    env = {k: v for k, v in os.environ.items() if k not in (_alloc.ENV_OPT_OUT, *_alloc.USER_ENV)}
    env.pop("GLIBC_TUNABLES", None)
    env.update(extra)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split("\n")[:3] == want
