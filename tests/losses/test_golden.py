"""Parity with the rloss C++ reference vectors (../shared/reference/densecrf_golden.npz).

The reference reports ``L_ref = −(1/N) Σ_k S̃_kᵀ W S̃_k``; we report
``E = (1/N) Σ_k S̃_kᵀ W (roi − S̃_k)``, so ``E − (1/N) Σ_k S̃_kᵀ W roi = L_ref``.
Gradients differ by ``roi · W roi / N``, the same for every class, so they are
compared after removing the per-pixel mean over classes. Tolerances are those
of the README (A): loss within 1e-5 relative, gradient within 1e-4 · max.
"""

from __future__ import annotations

import pytest
import torch

from rloss.lattice import Lattice, bilateral_features
from rloss.losses import DenseCRFLoss, densecrf_loss

LATTICE_BACKENDS = ["torch", "numba"]


def _centred(g: torch.Tensor) -> torch.Tensor:
    return g - g.mean(1, keepdim=True)


def _constant(image, seg, roi, sigma_rgb, sigma_xy, backend, dtype):
    """(1/N) Σ_k S̃_kᵀ W roi: the documented difference between our energy and −L_ref."""
    lat = Lattice(bilateral_features(image, sigma_rgb, sigma_xy), backend=backend)
    wr = lat.filter(roi[:, None].to(dtype))
    return (seg.to(dtype) * roi[:, None] * wr).sum() / image.shape[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["case1", "case2", "case3"])
@pytest.mark.parametrize("backend", LATTICE_BACKENDS)
def test_loss_and_gradient_match_reference(golden, case, backend, dtype):
    image = torch.from_numpy(golden[f"{case}_image"])
    roi = torch.from_numpy(golden[f"{case}_roi"])
    sigma_rgb = float(golden[f"{case}_sigma_rgb"])
    sigma_xy = float(golden[f"{case}_sigma_xy"])
    seg = torch.from_numpy(golden[f"{case}_seg"]).to(dtype).requires_grad_()
    energy = densecrf_loss(
        image, seg, roi, weight=1.0, sigma_rgb=sigma_rgb, sigma_xy=sigma_xy, backend=backend
    )
    energy.backward()
    assert float(energy.detach()) >= 0
    const = _constant(image, seg.detach(), roi, sigma_rgb, sigma_xy, backend, dtype)
    ref_loss = float(golden[f"{case}_loss"])
    assert float(energy.detach() - const) == pytest.approx(ref_loss, rel=1e-5)
    ref_grad = torch.from_numpy(golden[f"{case}_grad"]).to(dtype)
    want = _centred(ref_grad)
    err = float((_centred(seg.grad) - want).abs().max())
    assert err <= 1e-4 * float(want.abs().max())


@pytest.mark.parametrize("backend", LATTICE_BACKENDS)
def test_case4_full_module_with_downscaling(golden, backend):
    image = torch.from_numpy(golden["case4_image"])
    roi = torch.from_numpy(golden["case4_roi"])
    weight = float(golden["case4_weight"])
    scale = float(golden["case4_scale_factor"])
    sigma_rgb = float(golden["case4_sigma_rgb"])
    sigma_xy = float(golden["case4_sigma_xy"])
    assert (weight, scale, sigma_rgb, sigma_xy) == (1e-3, 0.5, 15.0, 100.0)
    seg = torch.from_numpy(golden["case4_seg"]).clone().requires_grad_()
    module = DenseCRFLoss(
        weight=weight, sigma_rgb=sigma_rgb, sigma_xy=sigma_xy, scale_factor=scale, backend=backend
    )
    loss = module(image, seg, roi)
    loss.backward()
    small_image = torch.from_numpy(golden["case4_scaled_image"])
    small_seg = torch.from_numpy(golden["case4_scaled_seg"])
    small_roi = torch.from_numpy(golden["case4_scaled_roi"])
    const = weight * _constant(
        small_image, small_seg, small_roi, sigma_rgb, sigma_xy * scale, backend, torch.float32
    )
    ref_loss = float(golden["case4_loss"])
    assert float(loss.detach() - const) == pytest.approx(ref_loss, rel=1e-5)
    want = _centred(torch.from_numpy(golden["case4_grad_seg"]))
    err = float((_centred(seg.grad) - want).abs().max())
    assert err <= 1e-4 * float(want.abs().max())


def test_exact_backend_matches_reference_exact_column(golden):
    """Without a lattice: our exact-filter energy relates to the README's exact loss column."""
    case = "case1"
    keep = slice(0, 1)  # one image of the batch keeps the quadratic exact filter quick
    image = torch.from_numpy(golden[f"{case}_image"])[keep]
    roi = torch.from_numpy(golden[f"{case}_roi"])[keep]
    seg = torch.from_numpy(golden[f"{case}_seg"]).double()[keep]
    sigma_rgb = float(golden[f"{case}_sigma_rgb"])
    sigma_xy = float(golden[f"{case}_sigma_xy"])
    energy = densecrf_loss(
        image, seg, roi, weight=1.0, sigma_rgb=sigma_rgb, sigma_xy=sigma_xy, backend="exact"
    )
    s = seg * roi[:, None]
    exact_ref = -(s * torch.from_numpy(golden[f"{case}_exact"])[keep]).sum() / image.shape[0]
    const = _constant(image, seg, roi, sigma_rgb, sigma_xy, "exact", torch.float64)
    torch.testing.assert_close(energy - const, exact_ref, rtol=1e-6, atol=0)
