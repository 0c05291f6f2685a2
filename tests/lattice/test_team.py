"""Lattice tasks on torch's OpenMP team (rloss._omp, rloss.lattice._numba._team).

The team runs the same tasks as rloss._threads.run_tasks: every task once, slots in
range, and the lattice's results bit for bit; errors are raised; a forked child and
RLOSS_TORCH_OPENMP=0 keep to rloss's own threads.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from numba import njit

from rloss import _omp
from rloss._threads import threads, torch_threads
from rloss.lattice import Lattice, bilateral_features
from rloss.lattice._numba import _team

LINUX_OPENMP = sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info()
needs_team = pytest.mark.skipif(
    not (LINUX_OPENMP and _team.uses_openmp()),
    reason="torch runs on no OpenMP runtime rloss can find (not Linux/OpenMP, or opted out)",
)


@njit(cache=True, nogil=True)
def _record(t, slot, out, fail_at):
    if t == fail_at:
        raise ValueError("task failed on purpose")
    out[t, 0] += 1
    out[t, 1] = slot


@njit(cache=True, nogil=True)
def _record_team(nthreads, hdr, args):
    _team.team(_record, nthreads, hdr, args)


@pytest.mark.skipif(not LINUX_OPENMP, reason="torch's CPU threads are not OpenMP on Linux here")
def test_torch_openmp_runtime_is_found_here():
    """On Linux with an OpenMP torch (the official wheels) the runtime must be found
    unless the user opted out."""
    if os.environ.get(_omp.ENV_OPT_OUT) == "0":
        pytest.skip("RLOSS_TORCH_OPENMP=0 is set")
    assert isinstance(_omp.parallel_address(), int)
    assert _omp.state() == "found"


@pytest.mark.skipif(not LINUX_OPENMP, reason="needs torch's OpenMP runtime on Linux")
def test_probe_rejects_a_runtime_torch_does_not_use():
    """A second libgomp (the system's; numba's OpenMP layer links that one) is loaded but
    torch.set_num_threads does not reach it: it must not be taken for torch's."""
    system = "/usr/lib/x86_64-linux-gnu/libgomp.so.1"
    torch_dir = os.path.dirname(torch.__file__)
    ours = [p for p in _omp._loaded_candidates() if p.startswith(torch_dir)]
    if not os.path.exists(system) or not ours:
        pytest.skip("needs torch's bundled libgomp and a separate system libgomp")
    for n in (1, 2):  # the losses probe under torch_threads(1); 2 = the other's default
        with torch_threads(n):
            assert _omp._follows_torch(ctypes.CDLL(ours[0]))
            assert not _omp._follows_torch(ctypes.CDLL(system))


@needs_team
@pytest.mark.parametrize("ntasks,nthreads", [(1, 2), (2, 2), (37, 2), (37, 5)])
def test_team_runs_every_task_once(ntasks, nthreads):
    out = np.zeros((ntasks, 2), np.int64)
    _team.run(_record_team, _record, ntasks, nthreads, (out, -1))
    assert (out[:, 0] == 1).all()
    assert out[:, 1].min() >= 0 and out[:, 1].max() < min(nthreads, ntasks)


@needs_team
def test_team_raises_when_a_task_fails():
    out = np.zeros((16, 2), np.int64)
    with pytest.raises(RuntimeError, match="failed on torch's OpenMP threads"):
        _team.run(_record_team, _record, 16, 2, (out, 5))
    assert out[5, 0] == 0  # the failing task did not finish


def test_without_the_team_tasks_run_on_rloss_threads(monkeypatch):
    monkeypatch.setattr(_team, "uses_openmp", lambda: False)
    out = np.zeros((9, 2), np.int64)
    _team.run(_record_team, _record, 9, 2, (out, -1))
    assert (out[:, 0] == 1).all()
    with pytest.raises(ValueError, match="failed on purpose"):  # the task's own error
        _team.run(_record_team, _record, 9, 2, (np.zeros((9, 2), np.int64), 3))


def _case(n, k, h, w):
    g = torch.Generator().manual_seed(n * 1000 + h)
    image = torch.rand(n, 3, h, w, generator=g) * 255
    probs = torch.randn(n, k, h, w, generator=g).softmax(1)
    roi = (torch.rand(n, h, w, generator=g) > 0.2).float()
    return bilateral_features(image, 15.0, 20.0), probs, roi


@needs_team
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("shape", [(8, 5, 64, 72), (1, 21, 200, 180)])  # fused / split
def test_lattice_on_the_team_is_bitwise_rloss_threads(shape, normalize, dtype, monkeypatch):
    """Above the serial threshold on 2 threads (per-image tasks for 8 images, block
    phases for one): the team and rloss's own pool give the same bits."""
    feats, probs, roi = _case(*shape)
    probs, roi = probs.to(dtype), roi.to(dtype)

    def once():
        with threads(2):  # torch's count caps the lattice's: set both
            lat = Lattice(feats, backend="numba")
            q = lat.quadratic_form(probs, roi, normalize=normalize, grad_scale=0.3, stats=True)
        assert lat._impl.fused_passes >= 1 and not lat._impl.built
        return q

    got = once()
    monkeypatch.setattr(_team, "uses_openmp", lambda: False)
    want = once()
    for a, b in zip(got[:3], want[:3]):
        assert torch.equal(a, b)
    assert got.stats == want.stats


def _child(queue):
    out = np.zeros((12, 2), np.int64)
    _team.run(_record_team, _record, 12, 2, (out, -1))
    queue.put((_omp.state(), int(out[:, 0].sum())))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_keeps_off_the_team():
    """libgomp's threads do not survive fork (a child's first OpenMP region would hang
    after the parent used one): a forked child runs lattice tasks on rloss's threads."""
    out = np.zeros((12, 2), np.int64)
    _team.run(_record_team, _record, 12, 2, (out, -1))  # the parent uses the team first
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue,))
    proc.start()
    proc.join(60)
    if proc.is_alive():
        proc.kill()
        pytest.fail("the forked child hung")
    assert queue.get(timeout=5) == ("skipped: forked child", 12)


def test_opt_out_keeps_lattice_tasks_off_the_team():
    code = (
        "import torch; from rloss import _omp; from rloss.lattice._numba import _team;"
        "print(_team.uses_openmp(), _omp.state())"
    )
    env = dict(os.environ, RLOSS_TORCH_OPENMP="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True, timeout=120)  # fmt: skip
    assert out.stdout.split()[-3:] == ["False", "skipped:", "opt-out"]


def test_probe_restores_torchs_thread_count(monkeypatch):
    monkeypatch.setattr(_omp, "_state", "pending")
    before = torch.get_num_threads()
    _omp.parallel_address()
    assert torch.get_num_threads() == before
