"""DenseCRF and NCut losses on volumes (N, C, D, H, W) with voxel spacing.

References: an independent brute-force energy from physical voxel positions
(``exp(-|p_i - p_j|² / 2σ_xy² - |I_i - I_j|² / 2σ_rgb²)``, built here from the spacing, not
from :func:`rloss.lattice.bilateral_features`), the exact backend, float64 gradcheck, and
the 2-D loss of a one-slice volume's slice.
"""

from __future__ import annotations

import math

import pytest
import torch

from rloss.lattice import Lattice, bilateral_features, position_sigmas
from rloss.losses import DenseCRFLoss, NormalizedCutLoss, densecrf_loss, ncut_loss

BACKENDS = ("exact", "numba", "torch")


def _volume(n=1, c=1, d=3, h=6, w=5, k=3, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    image = (torch.rand(n, c, d, h, w, generator=g) * 255).to(dtype)
    probs = torch.randn(n, k, d, h, w, generator=g).to(dtype).softmax(1)
    return image, probs


def _positions(d, h, w, spacing):
    sd, sh, sw = spacing
    z, y, x = torch.meshgrid(torch.arange(d), torch.arange(h), torch.arange(w), indexing="ij")
    return torch.stack([z * sd, y * sh, x * sw], -1).reshape(-1, 3).double()


def _brute_potts(image, probs, roi, sigma_rgb, sigma_xy, spacing):
    """(1/N) Σ_n Σ_ij W_ij roi_i roi_j (1 - S_i·S_j), W from physical positions."""
    n, c, d, h, w = image.shape
    pos = _positions(d, h, w, spacing)
    total = 0.0
    for b in range(n):
        inten = image[b].reshape(c, -1).T.double()
        d2 = torch.cdist(pos, pos) ** 2 / sigma_xy**2
        d2 = d2 + torch.cdist(inten, inten) ** 2 / sigma_rgb**2
        wmat = torch.exp(-0.5 * d2)
        s = probs[b].reshape(probs.shape[1], -1).T.double()
        r = roi[b].reshape(-1).double()
        total += float((wmat * r[:, None] * r[None, :] * (1.0 - s @ s.T)).sum())
    return total / n


# ----------------------------------------------------------------------------- features


def test_bilateral_features_of_a_volume_are_physical_positions():
    image, _ = _volume(c=2, d=3, h=4, w=5)
    f = bilateral_features(image, 10.0, 3.0, spacing=(6.0, 1.5, 0.75))
    assert f.shape == (1, 5, 3, 4, 5)
    z, y, x = 2, 3, 4
    assert f[0, 0, z, y, x].item() == pytest.approx(x * 0.75 / 3.0)
    assert f[0, 1, z, y, x].item() == pytest.approx(y * 1.5 / 3.0)
    assert f[0, 2, z, y, x].item() == pytest.approx(z * 6.0 / 3.0)
    assert torch.allclose(f[0, 3:], image[0] / 10.0)
    # without spacing: voxel units, and the 2-D features of an image are unchanged
    f1 = bilateral_features(image, 10.0, 3.0)
    assert f1[0, 2, 2, 0, 0].item() == pytest.approx(2 / 3.0)
    img2 = image[:, :, 0]
    f2 = bilateral_features(img2, 10.0, 3.0)
    assert torch.equal(f2[:, :2], f1[:, :2, 0])
    assert torch.equal(f2[:, 2:], img2 / 10.0)


def test_position_sigmas_follow_spacing_and_scale():
    assert position_sigmas(10.0, 2) == (10.0, 10.0)
    assert position_sigmas(10.0, 3, spacing=(5.0, 2.0, 1.0), scale=(1.0, 0.5, 0.5)) == (
        2.0, 2.5, 5.0)  # fmt: skip


# ----------------------------------------------------------------------------- vs references


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 1.5, 1.0)])
def test_exact_backend_matches_brute_force_energy(channels, spacing):
    image, probs = _volume(n=2, c=channels, d=3, h=5, w=4, k=3, dtype=torch.float64)
    roi = (torch.rand(2, 3, 5, 4, generator=torch.Generator().manual_seed(3)) > 0.2).double()
    got = densecrf_loss(image, probs, roi, weight=1.0, sigma_rgb=40.0, sigma_xy=2.5,
                        spacing=spacing, backend="exact")
    want = _brute_potts(image, probs, roi, 40.0, 2.5, spacing)
    assert float(got) == pytest.approx(want, rel=1e-6)  # features are float32


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("spacing", [None, (3.0, 1.0, 1.0)])
def test_lattice_normalized_loss_close_to_exact(backend, channels, spacing):
    """Normalised energy: the lattice's global gain cancels; 3-D error as measured in 2-D
    (benchmarks/volume_lattice_accuracy.py: ≤ 1% loss, gradient cosine ≥ 0.99)."""
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, channels, 4, 10, 10, generator=g) * 255
    image[..., 5:] *= 0.2  # an edge, so that the kernel has structure
    probs = (3 * torch.randn(1, 4, 4, 10, 10, generator=g)).softmax(1)
    vals, grads = [], []
    for b, dt in ((backend, torch.float32), ("exact", torch.float64)):
        p = probs.to(dt).clone().requires_grad_(True)
        loss = densecrf_loss(image, p, weight=1.0, sigma_rgb=30.0, sigma_xy=3.0,
                             normalize=True, spacing=spacing, backend=b)
        loss.backward()
        vals.append(float(loss.detach()))
        grads.append(p.grad.double().flatten())
    assert vals[0] == pytest.approx(vals[1], rel=0.03)
    assert float(torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0)) > 0.98


@pytest.mark.parametrize("loss_name", ["densecrf", "ncut"])
def test_gradcheck_float64_exact(loss_name):
    image, probs = _volume(n=2, c=1, d=2, h=3, w=3, k=3, dtype=torch.float64)
    roi = torch.ones(2, 2, 3, 3, dtype=torch.float64)
    roi[0, 1, 0] = 0.0
    roi[1, 0, :, 2] = 0.5
    logits = probs.log().detach().requires_grad_(True)

    def f(z):
        p = z.softmax(1)
        if loss_name == "densecrf":
            return densecrf_loss(image, p, roi, weight=1.0, sigma_rgb=60.0, sigma_xy=2.0,
                                 spacing=(2.0, 1.0, 1.5), backend="exact")
        return ncut_loss(image, p, roi, sigma_rgb=60.0, sigma_xy=2.0, spacing=(2.0, 1.0, 1.5),
                         backend="exact")

    assert torch.autograd.gradcheck(f, (logits,), eps=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------- 2-D equivalence


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("channels", [1, 3])
def test_one_slice_volume_equals_the_2d_loss_of_its_slice(backend, channels):
    g = torch.Generator().manual_seed(5)
    img2 = torch.rand(2, channels, 12, 10, generator=g) * 255
    p2 = torch.randn(2, 4, 12, 10, generator=g).softmax(1)
    roi2 = (torch.rand(2, 12, 10, generator=g) > 0.1).float()
    kw = dict(weight=1.0, sigma_rgb=20.0, sigma_xy=3.0, backend=backend)
    for sf2, sf3 in ((1.0, 1.0), (0.5, (1.0, 0.5, 0.5))):
        for normalize in (False, True):
            a = p2.clone().requires_grad_(True)
            b = p2[:, :, None].clone().requires_grad_(True)
            e2 = densecrf_loss(img2, a, roi2, scale_factor=sf2, normalize=normalize, **kw)
            e3 = densecrf_loss(img2[:, :, None], b, roi2[:, None], scale_factor=sf3,
                               normalize=normalize, spacing=(7.0, 1.0, 1.0), **kw)
            e2.backward()
            e3.backward()
            assert torch.equal(e2.detach(), e3.detach())
            assert torch.equal(a.grad, b.grad[:, :, 0])
    n2 = ncut_loss(img2, p2, roi2, sigma_rgb=20.0, sigma_xy=3.0, backend=backend)
    n3 = ncut_loss(img2[:, :, None], p2[:, :, None], roi2[:, None], sigma_rgb=20.0,
                   sigma_xy=3.0, backend=backend)
    assert torch.equal(n2, n3)


def test_spacing_in_2d_and_in_3d_agree():
    """In-plane spacing (sh, sw) means the same in an image and in a one-slice volume."""
    g = torch.Generator().manual_seed(6)
    img = torch.rand(1, 1, 8, 9, generator=g) * 255
    p = torch.randn(1, 3, 8, 9, generator=g).softmax(1)
    e2 = densecrf_loss(img, p, weight=1.0, sigma_xy=4.0, spacing=(1.5, 0.5))
    e3 = densecrf_loss(img[:, :, None], p[:, :, None], weight=1.0, sigma_xy=4.0,
                       spacing=(10.0, 1.5, 0.5))
    assert torch.equal(e2, e3)
    # and (1.5, 0.5) with sigma 4 is (1, 1/3) with sigma 8/3
    e_vox = densecrf_loss(img, p, weight=1.0, sigma_xy=8.0 / 3.0, spacing=(1.0, 1.0 / 3.0))
    assert float(e2) == pytest.approx(float(e_vox), rel=1e-5)


def test_isotropic_scale_factor_equals_per_axis_tuple():
    image, probs = _volume(d=4, h=8, w=8, k=3)
    kw = dict(weight=1.0, sigma_xy=3.0)
    a = densecrf_loss(image, probs, scale_factor=0.5, **kw)
    b = densecrf_loss(image, probs, scale_factor=(0.5, 0.5, 0.5), **kw)
    assert torch.equal(a, b)
    img2, p2 = image[:, :, 0], probs[:, :, 0]
    assert torch.equal(densecrf_loss(img2, p2, scale_factor=0.5, **kw),
                       densecrf_loss(img2, p2, scale_factor=(0.5, 0.5), **kw))
    # in-plane-only resize of a volume: slices resized with the 2-D kernels, z untouched
    c = densecrf_loss(image, probs, scale_factor=(1.0, 0.5, 0.5), **kw)
    assert float(c) != float(a)


def test_sigma_stays_physical_under_scale_factor():
    """Downscaling by 0.5 along an axis doubles the voxel size there: with a piecewise
    constant volume (nearest-resize exact) the exact energy per voxel pair stays close."""
    image = torch.zeros(1, 1, 4, 8, 8)
    image[..., 4:] = 200.0
    probs = torch.zeros(1, 2, 4, 8, 8)
    probs[:, 0, ..., :4] = 1.0
    probs[:, 1, ..., 4:] = 1.0
    full = densecrf_loss(image, probs, weight=1.0, sigma_xy=3.0, sigma_rgb=1e3, normalize=True,
                         backend="exact", spacing=(2.0, 1.0, 1.0))
    half = densecrf_loss(image, probs, weight=1.0, sigma_xy=3.0, sigma_rgb=1e3, normalize=True,
                         backend="exact", spacing=(2.0, 1.0, 1.0), scale_factor=(1.0, 0.5, 0.5))
    assert float(half) == pytest.approx(float(full), rel=0.25)
    # a sigma not following the scale would make the boundary twice as wide: far off
    wrong = densecrf_loss(image, probs, weight=1.0, sigma_xy=6.0, sigma_rgb=1e3,
                          normalize=True, backend="exact", spacing=(2.0, 1.0, 1.0))
    assert abs(float(wrong) - float(full)) > abs(float(half) - float(full))


def test_normalize_makes_the_weight_independent_of_the_number_of_slices():
    """Slices far apart (no kernel mass between them): D copies of a slice have the
    normalised energy of the slice for any D, the unnormalised one grows as D."""
    g = torch.Generator().manual_seed(7)
    img = torch.rand(1, 1, 6, 6, generator=g, dtype=torch.float64) * 255
    p = torch.randn(1, 3, 6, 6, generator=g, dtype=torch.float64).softmax(1)
    kw = dict(weight=1.0, sigma_rgb=30.0, sigma_xy=2.0, backend="exact")
    one = densecrf_loss(img, p, normalize=True, **kw)
    raw1 = densecrf_loss(img, p, **kw)
    for d in (2, 5):
        vol, pv = img[:, :, None].repeat(1, 1, d, 1, 1), p[:, :, None].repeat(1, 1, d, 1, 1)
        far = (1e3, 1.0, 1.0)
        assert float(densecrf_loss(vol, pv, normalize=True, spacing=far, **kw)) == \
            pytest.approx(float(one), rel=1e-12)
        assert float(densecrf_loss(vol, pv, spacing=far, **kw)) == pytest.approx(
            d * float(raw1), rel=1e-12)


# ----------------------------------------------------------------------------- roi


@pytest.mark.parametrize("backend", BACKENDS)
def test_roi_masks_voxels(backend):
    image, probs = _volume(d=3, h=6, w=6, k=3, seed=2)
    roi = torch.ones(1, 3, 6, 6)
    roi[:, 1, :, :3] = 0.0
    other = probs.clone()
    other[:, :, 1, :, :3] = torch.randn(1, 3, 6, 3).softmax(1)  # differs only outside roi
    x = probs.clone().requires_grad_(True)
    a = densecrf_loss(image, x, roi, weight=1.0, sigma_xy=2.0, backend=backend)
    b = densecrf_loss(image, other, roi, weight=1.0, sigma_xy=2.0, backend=backend)
    assert torch.equal(a.detach(), b)
    a.backward()
    assert torch.count_nonzero(x.grad[:, :, 1, :, :3]) == 0
    assert torch.count_nonzero(x.grad[:, :, 0]) > 0
    nc = ncut_loss(image, probs, roi, sigma_rgb=15.0, sigma_xy=2.0, backend=backend)
    assert torch.equal(nc, ncut_loss(image, other, roi, sigma_rgb=15.0, sigma_xy=2.0,
                                     backend=backend))


# ----------------------------------------------------------------------------- bad inputs


def test_bad_volume_inputs_name_the_argument():
    image, probs = _volume(d=2, h=4, w=4)
    with pytest.raises(ValueError, match=r"probs is 4-D .* but image is 5-D"):
        densecrf_loss(image, probs[:, :, 0])
    with pytest.raises(ValueError, match=r"probs is 5-D .* but image is 4-D"):
        ncut_loss(image[:, :, 0], probs, sigma_rgb=15.0, sigma_xy=2.0)
    with pytest.raises(ValueError, match=r"spacing must have 3 values \(sd, sh, sw\)"):
        densecrf_loss(image, probs, spacing=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"spacing must have 2 values \(sh, sw\)"):
        densecrf_loss(image[:, :, 0], probs[:, :, 0], spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"spacing\[0\] must be a finite positive number"):
        densecrf_loss(image, probs, spacing=(0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"spacing\[2\] must be a finite positive number"):
        ncut_loss(image, probs, sigma_rgb=15.0, sigma_xy=2.0, spacing=(1.0, 1.0, -2.0))
    with pytest.raises(ValueError, match=r"spacing\[1\] must be a finite positive number"):
        densecrf_loss(image, probs, spacing=(1.0, math.nan, 1.0))
    with pytest.raises(ValueError, match="spacing must be a sequence"):
        densecrf_loss(image, probs, spacing=2.0)
    with pytest.raises(ValueError, match=r"roi must have shape \(N, D, H, W\)"):
        densecrf_loss(image, probs, torch.ones(1, 4, 4))
    with pytest.raises(ValueError, match=r"image must have shape \(N, C, D, H, W\)"):
        densecrf_loss(image[:, :, :1], probs)
    with pytest.raises(ValueError, match=r"scale_factor must be a number or 3 values"):
        densecrf_loss(image, probs, scale_factor=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"scale_factor\[1\] must be a finite positive"):
        densecrf_loss(image, probs, scale_factor=(1.0, 0.0, 0.5))
    with pytest.raises(ValueError, match=r"scale_factor=0.4 shrinks .* scale_factor=\(1, 0.4"):
        densecrf_loss(image, probs, scale_factor=0.4)
    bad = image.clone()
    bad[0, 0, 1, 2, 2] = math.nan
    with pytest.raises(ValueError, match="image contains NaN"):
        densecrf_loss(bad, probs)
    badp = probs.clone()
    badp[0, 0, 1, 0, 0] = math.nan
    with pytest.raises(ValueError, match="probs contains NaN"):
        densecrf_loss(image, badp)
    with pytest.raises(ValueError, match="probs contains NaN"):
        ncut_loss(image, badp, sigma_rgb=15.0, sigma_xy=2.0)
    with pytest.raises(ValueError, match="spacing must be None with a prebuilt lattice"):
        densecrf_loss(None, probs, lattice=Lattice(bilateral_features(image, 15.0, 2.0)),
                      spacing=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"spacing\[0\]"):
        DenseCRFLoss(spacing=(0.0, 1.0, 1.0))
    with pytest.raises(ValueError, match=r"scale_factor"):
        NormalizedCutLoss(1.0, 15.0, 2.0, scale_factor=(0.5, -1.0))


# ----------------------------------------------------------------------------- modules


def test_modules_on_volumes_match_the_functions():
    image, probs = _volume(d=3, h=8, w=8, k=3)
    crf = DenseCRFLoss(weight=1.0, sigma_xy=4.0, scale_factor=(1, 0.5, 0.5), normalize=True,
                       spacing=(5.0, 1.0, 1.0))
    assert "spacing=(5.0, 1.0, 1.0)" in repr(crf) and "scale_factor=(1, 0.5, 0.5)" in repr(crf)
    assert torch.equal(crf(image, probs), densecrf_loss(
        image, probs, weight=1.0, sigma_xy=4.0, scale_factor=(1, 0.5, 0.5), normalize=True,
        spacing=(5.0, 1.0, 1.0)))
    nc = NormalizedCutLoss(0.5, 15.0, 4.0, spacing=(5.0, 1.0, 1.0))
    assert torch.equal(nc(image, probs), ncut_loss(image, probs, weight=0.5, sigma_rgb=15.0,
                                                   sigma_xy=4.0, spacing=(5.0, 1.0, 1.0)))
    lat = Lattice(bilateral_features(image, 15.0, 4.0, spacing=(5.0, 1.0, 1.0)))
    assert torch.equal(densecrf_loss(None, probs, weight=1.0, lattice=lat),
                       densecrf_loss(image, probs, weight=1.0, sigma_xy=4.0,
                                     spacing=(5.0, 1.0, 1.0)))
