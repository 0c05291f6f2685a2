"""The benchmark driver's device options and the one-shot GPU check's no-GPU path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
RUN = REPO / "benchmarks" / "run.py"


def _run(args, **kw):
    return subprocess.run(
        [sys.executable, str(RUN), *args], capture_output=True, text=True, timeout=600, **kw
    )


def test_gpu_check_without_a_gpu_says_so_and_installs_nothing(tmp_path):
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    before = sorted(p.name for p in REPO.iterdir())
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device" in proc.stdout
    assert "[1/4]" not in proc.stdout  # stopped before the setup step
    assert sorted(p.name for p in REPO.iterdir()) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_cuda_device_without_a_gpu_is_a_clear_error():
    proc = _run(["--device", "cuda", "--suites", "crf", "--repeats", "1"])
    assert proc.returncode == 2
    assert "--device cuda" in proc.stderr and "no CUDA device" in proc.stderr


def test_numba_backend_on_cuda_is_refused():
    proc = _run(["--device", "cuda", "--backends", "numba", "--suites", "crf"])
    assert proc.returncode == 2
    assert "numba backend is CPU-only" in proc.stderr


def test_step_batch_and_size_reach_the_training_step(tmp_path):
    proc = _run(["--step-batch", "1", "--suites", "step"])
    assert proc.returncode == 2 and "--step-batch" in proc.stderr


@pytest.mark.slow
def test_training_step_suite_runs_with_the_requested_batch_and_crop(tmp_path):
    proc = _run(
        ["--suites", "step", "--backends", "torch", "--step-batch", "2", "--step-size", "64",
         "--repeats", "1", "--out", str(tmp_path)]
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "latest.json").read_text())
    assert [r["spec"]["with_crf"] for r in rows] == [False, True]
    for r in rows:
        assert r["spec"]["step_batch"] == 2 and r["spec"]["step_size"] == 64
        assert len(r["result"]["times_ms"]) == 1, r["result"]
    assert "train step B=2 64²" in (tmp_path / "latest.md").read_text()
