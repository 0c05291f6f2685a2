"""The ``rloss`` command's quick exit (:func:`rloss.cli.quick_exit`): it skips the
interpreter's teardown but keeps what a shutdown owes the user (atexit handlers, flushed
streams, the exit status, waiting for non-daemon threads). Each case runs in a child
process, since the call ends the process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
# without PYTHONUNBUFFERED (set on some CI machines): a piped stdout is then block-buffered,
# so a missing flush before os._exit would lose the output and fail these tests
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"},
       "PYTHONPATH": str(REPO / "src")}


def _run(code: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=ENV, timeout=120)


def test_quick_exit_runs_atexit_flushes_and_keeps_the_status(tmp_path):
    marker = tmp_path / "atexit.txt"
    code = (
        "import atexit, sys\n"
        "from rloss.cli import quick_exit\n"
        "atexit.register(lambda: open(sys.argv[1], 'w').write('ran'))\n"
        "sys.stdout.write('buffered out')\n"  # a pipe: block-buffered, not yet written
        "sys.stderr.write('buffered err')\n"
        "quick_exit(3)\n"
        "print('not reached')\n"
    )
    res = _run(code, str(marker))
    assert res.returncode == 3, res.stderr
    assert res.stdout == "buffered out"
    assert res.stderr == "buffered err"
    assert marker.read_text() == "ran"


def test_quick_exit_waits_for_a_non_daemon_thread(tmp_path):
    marker = tmp_path / "thread.txt"
    code = (
        "import sys, threading, time\n"
        "from rloss.cli import quick_exit\n"
        "def late():\n"
        "    time.sleep(0.5)\n"
        "    open(sys.argv[1], 'w').write('done')\n"
        "threading.Thread(target=late).start()\n"
        "quick_exit(0)\n"
    )
    res = _run(code, str(marker))
    assert res.returncode == 0, res.stderr
    assert marker.read_text() == "done"  # os._exit would have killed the thread


def test_console_main_segment_writes_the_mask_and_reports_it(tmp_path):
    """``python -m rloss.cli segment`` (the installed command's path) with piped stdout:
    status 0, the report line arrives, the mask is complete and no temporary file is left."""
    rgb = np.full((24, 32, 3), 220, np.uint8)
    rgb[:, 16:] = 30
    Image.fromarray(rgb).save(tmp_path / "img.png")
    (tmp_path / "scr.txt").write_text("0,2,12,8,12\n1,24,12,30,12\n")
    out = tmp_path / "mask.png"
    res = subprocess.run(
        [sys.executable, "-m", "rloss.cli", "segment", str(tmp_path / "img.png"),
         "--scribbles", str(tmp_path / "scr.txt"), "--out", str(out), "--steps", "5"],
        capture_output=True, text=True, env=ENV, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"mask: {out}" in res.stdout
    with Image.open(out) as im:
        mask = np.asarray(im)
    assert mask.shape == (24, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["img.png", "mask.png", "scr.txt"]


def test_console_main_keeps_the_error_status(tmp_path):
    res = subprocess.run(
        [sys.executable, "-m", "rloss.cli", "segment", str(tmp_path / "missing.png"),
         "--scribbles", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "m.png")],
        capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == 2
    assert res.stderr.startswith("rloss segment: error:"), res.stderr
