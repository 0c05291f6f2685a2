"""Fixtures for the lattice tests: backends crossed with devices, test images."""

from __future__ import annotations

import importlib
import importlib.util

import pytest
import torch

#: Lattice backends under test. ``numba`` is skipped until ``rloss.lattice._numba``
#: exists; once it does, its tests run (and fail loudly if it does not import).
LATTICE_BACKENDS = ["torch", "numba"]


def require_backend(name: str, device: torch.device) -> None:
    """Skip unless backend ``name`` exists and runs on ``device``."""
    if name == "numba":
        if importlib.util.find_spec("rloss.lattice._numba") is None:
            pytest.skip("rloss.lattice._numba is not written yet")
        importlib.import_module("rloss.lattice._numba")
        if device.type != "cpu":
            pytest.skip("the numba backend runs on CPU only")


@pytest.fixture(params=LATTICE_BACKENDS)
def backend(request, device: torch.device) -> str:
    """Each lattice backend that runs on ``device``."""
    require_backend(request.param, device)
    return request.param
