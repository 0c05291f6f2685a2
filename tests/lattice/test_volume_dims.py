"""Both lattice backends on the features of volumes: d = 4 (1 channel + x, y, z) to
d = 6 (3 channels), against the exact backend, on (N, C, D, H, W) values.

Bounds from benchmarks/volume_lattice_accuracy.py (2026-12-02): after the best global
scale the lattice is within about 5% of the exact Gaussian at d = 4 and 11-13% at d = 6,
no worse than the 2-D features (d = 3 and 5) of the same slices.
"""

from __future__ import annotations

import pytest
import torch

from rloss.lattice import Lattice, bilateral_features


def _volume(c: int, seed: int = 0) -> torch.Tensor:
    """(1, c, 4, 12, 12) piecewise smooth intensities with an edge, 0..255."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, c, 2, 3, 3, generator=g) * 255
    img = torch.nn.functional.interpolate(base, size=(4, 12, 12), mode="trilinear")
    img[..., 6:] = 255 - img[..., 6:]
    return (img + 3 * torch.randn(img.shape, generator=g)).clamp(0, 255)


def _rel_error_after_scale(lat: torch.Tensor, ex: torch.Tensor) -> float:
    lat, ex = lat.double(), ex.double()
    alpha = (lat * ex).sum() / (lat * lat).sum()
    return float((alpha * lat - ex).norm() / ex.norm())


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize(("channels", "bound"), [(1, 0.08), (2, 0.13), (3, 0.17)])
@pytest.mark.parametrize("spacing", [None, (3.0, 1.0, 1.0)])
def test_backend_vs_exact_on_volume_features(backend, channels, bound, spacing):
    feats = bilateral_features(_volume(channels), 20.0, 2.5, spacing=spacing)
    assert feats.shape[1] == 3 + channels  # d = 4, 5, 6
    g = torch.Generator().manual_seed(1)
    values = torch.cat([torch.rand(1, 3, 4, 12, 12, generator=g), torch.ones(1, 1, 4, 12, 12)], 1)
    lat = Lattice(feats, backend=backend).filter(values)
    ex = Lattice(feats, backend="exact").filter(values.double())
    assert lat.shape == values.shape
    err = _rel_error_after_scale(lat, ex)
    ratio = float((lat.double() / ex).mean())
    assert err < bound, f"d={3 + channels}: relative error {err:.3f}"
    assert 0.25 < ratio < 0.95  # the lattice's known gain (about 0.45-0.75)


@pytest.mark.parametrize("channels", [1, 3])
def test_numba_and_torch_agree_on_volumes(channels):
    feats = bilateral_features(_volume(channels, seed=2), 15.0, 2.0, spacing=(2.0, 1.0, 1.0))
    values = torch.rand(2, 3, 4, 12, 12, generator=torch.Generator().manual_seed(3))
    feats = torch.cat([feats, feats.flip(-1)])  # a batch of two volumes
    a = Lattice(feats, backend="numba").filter(values)
    b = Lattice(feats, backend="torch").filter(values)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("backend", ["numba", "torch", "exact"])
def test_quadratic_form_on_volume_values(backend):
    """The fused primitive on (N, K, D, H, W) values equals its definition via filter."""
    feats = bilateral_features(_volume(1, seed=4), 15.0, 2.0)
    lat = Lattice(feats, backend=backend)
    g = torch.Generator().manual_seed(5)
    x = torch.rand(1, 3, 4, 12, 12, generator=g, dtype=torch.float64).softmax(1)
    r = (torch.rand(1, 4, 12, 12, generator=g, dtype=torch.float64) > 0.2).double()
    q = lat.quadratic_form(x, r, normalize=True, grad_scale=1.0)
    s = x * r[:, None]
    ws, wr = lat.filter(s), lat.filter(r[:, None])
    volume = (r[:, None] * wr).sum()
    value = (s * (wr - ws)).sum() / volume
    assert torch.allclose(q.value, value.reshape(1), rtol=1e-6)
    assert q.grad.shape == x.shape
    assert torch.allclose(q.grad, r[:, None] * (wr - 2 * ws) / volume, rtol=1e-6, atol=1e-12)
