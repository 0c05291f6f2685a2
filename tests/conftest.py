"""Shared fixtures: the ../shared folder (CI has it, a user's clone does not) and devices."""

from __future__ import annotations

import os
import signal
import warnings
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = (REPO / ".." / "shared").resolve()

#: ``--doctest-modules`` (pyproject.toml) would also import this file as a doctest
#: module named ``conftest``, which clashes with ``src/conftest.py`` (the doctest
#: namespace of the package's examples); it has no examples.
collect_ignore = ["conftest.py"]

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist every worker gets one core: one intra-op thread each.

    Two workers with two OpenMP (torch) and two numba threads each on a 2-core
    machine oversubscribe it, which makes small torch ops orders of magnitude
    slower. Tests that need more threads set them explicitly.
    """
    if os.environ.get("PYTEST_XDIST_WORKER"):
        torch.set_num_threads(1)
        try:
            import numba
        except ImportError:  # pragma: no cover - numba is a core dependency
            return
        numba.set_num_threads(1)


@pytest.fixture(autouse=True)
def _sigint_handler_is_restored(request: pytest.FixtureRequest):
    """A test that leaves Ctrl-C handling changed (Lightning sets SIG_IGN while it shuts
    down after a KeyboardInterrupt) would break the next Ctrl-C test in the same worker:
    restore the handler and name the test in a warning."""
    before = signal.getsignal(signal.SIGINT)
    yield
    after = signal.getsignal(signal.SIGINT)
    if after is not before:
        signal.signal(signal.SIGINT, before)
        warnings.warn(f"{request.node.nodeid} left the SIGINT handler as {after!r}", stacklevel=1)


@pytest.fixture
def ctrl_c_ready():
    """Ctrl-C tests need SIGINT deliverable to the main thread with Python's handler.

    Under pytest-xdist something in the worker process (not pinned down: no test
    changes the handler, see the fixture above) intermittently leaves SIGINT blocked
    in the main thread, so that ``signal.raise_signal`` stays pending. Unblock it for
    the test, and report what was found.
    """
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGINT])
    handler = signal.getsignal(signal.SIGINT)
    if handler is not signal.default_int_handler:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        warnings.warn(f"the SIGINT handler was {handler!r} before this test", stacklevel=1)
    if blocked:
        warnings.warn("SIGINT was blocked in the main thread before this test", stacklevel=1)
    yield
    if handler is not signal.default_int_handler:
        signal.signal(signal.SIGINT, handler)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """Path of ../shared; skips the test where it is absent (a user's clone)."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is absent: reference vectors and test photographs ship only with CI")
    return SHARED


@pytest.fixture(scope="session")
def golden(shared_dir: Path):
    """The rloss C++ reference vectors (``densecrf_golden.npz``) as a dict of numpy arrays."""
    import numpy as np

    path = shared_dir / "reference" / "densecrf_golden.npz"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Every available device: CPU always, CUDA where present."""
    return torch.device(request.param)
