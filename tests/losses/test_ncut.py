"""Normalized Cut loss: direct float64 values, gradients, absent classes, roi, backends."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rloss.lattice import bilateral_features
from rloss.losses import NormalizedCutLoss, ncut_loss

LATTICE_BACKENDS = ["torch", "numba"]


def _image(n, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, h // 4 + 1, w // 4 + 1, generator=g) * 255
    return F.interpolate(base, size=(h, w), mode="bilinear", align_corners=False).clamp(0, 255)


def _logits(n, k, h, w, seed=1, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, h // 3 + 1, w // 3 + 1, generator=g, dtype=torch.float64) * 3
    return F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False).to(dtype)


def _roi(n, h, w):
    roi = torch.ones(n, h, w)
    roi[0, -2:] = 0
    return roi


def direct_ncut(image, probs, roi, sigma_rgb, sigma_xy):
    """mean_n Σ_k cut(S̃_k) / vol(S̃_k) with a dense float64 kernel matrix."""
    f = bilateral_features(image.float(), sigma_rgb, sigma_xy).double().flatten(2).transpose(1, 2)
    s = probs.double().flatten(2) * roi.double().flatten(1)[:, None]
    r = roi.double().flatten(1)
    per = []
    for b in range(len(f)):
        kmat = torch.exp(-0.5 * torch.cdist(f[b], f[b]).square())
        d = kmat @ r[b]
        assoc = torch.einsum("kp,pq,kq->k", s[b], kmat, s[b])
        vol = s[b] @ d
        per.append(((vol - assoc) / vol).sum())
    return torch.stack(per).mean()


@pytest.mark.parametrize("shape", [(1, 2, 6, 7), (2, 4, 8, 9)])
def test_value_matches_direct_float64(shape):
    n, k, h, w = shape
    image, roi = _image(n, h, w), _roi(n, h, w)
    probs = _logits(n, k, h, w).softmax(1)
    got = ncut_loss(image, probs, roi, sigma_rgb=20.0, sigma_xy=4.0, weight=1.0, backend="exact")
    torch.testing.assert_close(got, direct_ncut(image, probs, roi, 20.0, 4.0), rtol=1e-6, atol=0)
    assert 0.0 <= float(got) <= k


def test_constant_onehot_is_zero_and_two_regions():
    h, w = 10, 12
    image = torch.zeros(1, 3, h, w)
    image[..., w // 2 :] = 200.0
    probs = torch.zeros(1, 2, h, w)
    probs[:, 0] = 1.0
    kw = dict(sigma_rgb=15.0, sigma_xy=6.0, backend="exact")
    assert float(ncut_loss(image, probs, **kw)) == pytest.approx(0.0, abs=1e-9)
    right = torch.zeros(h, w, dtype=torch.bool)
    right[:, w // 2 :] = True
    bottom = torch.zeros(h, w, dtype=torch.bool)
    bottom[h // 2 :] = True
    lab = {
        m: torch.stack([~x, x]).float()[None] * 0.8 + 0.1 for m, x in (("r", right), ("b", bottom))
    }
    assert float(ncut_loss(image, lab["r"], **kw)) < 0.5 * float(ncut_loss(image, lab["b"], **kw))


def test_gradcheck_wrt_logits():
    n, k, h, w = 2, 3, 5, 6
    image, roi = _image(n, h, w), _roi(n, h, w)
    logits = _logits(n, k, h, w).requires_grad_()

    def fn(z):
        return ncut_loss(
            image,
            z.softmax(1),
            roi,
            sigma_rgb=20.0,
            sigma_xy=4.0,
            scale_factor=0.5,
            backend="exact",
        )

    assert torch.autograd.gradcheck(fn, (logits,))


@pytest.mark.parametrize("backend", ["exact", *LATTICE_BACKENDS])
def test_absent_class_gives_no_nan(backend):
    n, k, h, w = 1, 3, 8, 10
    probs = _logits(n, k, h, w, dtype=torch.float32).softmax(1)
    probs = torch.cat(
        [probs[:, :2] / probs[:, :2].sum(1, keepdim=True), torch.zeros(n, 1, h, w)], 1
    )
    probs.requires_grad_()
    loss = ncut_loss(_image(n, h, w), probs, sigma_rgb=15.0, sigma_xy=5.0, backend=backend)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(probs.grad).all()
    # logits driving one class to ~0 probability: finite loss and gradients
    z = _logits(n, k, h, w, dtype=torch.float32)
    z[:, 2] = -80.0
    z.requires_grad_()
    loss = ncut_loss(_image(n, h, w), z.softmax(1), sigma_rgb=15.0, sigma_xy=5.0, backend=backend)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.mark.parametrize("backend", ["exact", *LATTICE_BACKENDS])
def test_probs_outside_roi_do_not_matter(backend):
    n, k, h, w = 2, 3, 8, 10
    image, roi = _image(n, h, w), _roi(n, h, w)
    logits = _logits(n, k, h, w, dtype=torch.float32)
    logits2 = torch.where((roi == 0)[:, None], torch.randn(logits.shape), logits)
    out = []
    for z in (logits, logits2):
        z = z.clone().requires_grad_()
        loss = ncut_loss(image, z.softmax(1), roi, sigma_rgb=15.0, sigma_xy=5.0, backend=backend)
        loss.backward()
        out.append((loss.detach(), z.grad))
    torch.testing.assert_close(out[0][0], out[1][0])
    torch.testing.assert_close(out[0][1], out[1][1])


@pytest.mark.parametrize("backend", LATTICE_BACKENDS)
def test_lattice_backend_close_to_exact(backend):
    n, k, h, w = 1, 3, 20, 24
    image, roi = _image(n, h, w, seed=5), _roi(n, h, w)
    logits = _logits(n, k, h, w, dtype=torch.float32)
    res = {}
    for b in ("exact", backend):
        z = logits.clone().requires_grad_()
        loss = ncut_loss(image, z.softmax(1), roi, sigma_rgb=15.0, sigma_xy=8.0, backend=b)
        loss.backward()
        res[b] = (float(loss.detach()), z.grad.double().flatten())
    # the lattice gain cancels in cut / volume: values agree up to the kernel-shape error
    assert res[backend][0] == pytest.approx(res["exact"][0], rel=0.15)
    ge, gl = res["exact"][1], res[backend][1]
    assert float(gl @ ge / (gl.norm() * ge.norm())) > 0.95


def test_module_equals_function():
    image, roi = _image(1, 8, 8), _roi(1, 8, 8)
    probs = _logits(1, 3, 8, 8).softmax(1)
    module = NormalizedCutLoss(0.5, 12.0, 6.0, scale_factor=0.5, backend="exact")
    want = ncut_loss(
        image,
        probs,
        roi,
        sigma_rgb=12.0,
        sigma_xy=6.0,
        weight=0.5,
        scale_factor=0.5,
        backend="exact",
    )
    torch.testing.assert_close(module(image, probs, roi), want)
    assert "weight=0.5" in repr(module)


def test_autocast_bf16_runs():
    image = _image(1, 10, 12)
    logits = _logits(1, 3, 10, 12, dtype=torch.float32)
    want = ncut_loss(image, logits.softmax(1), sigma_rgb=15.0, sigma_xy=5.0, backend="exact")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = ncut_loss(
            image, logits.bfloat16().softmax(1), sigma_rgb=15.0, sigma_xy=5.0, backend="exact"
        )
    torch.testing.assert_close(got, want, rtol=3e-2, atol=0)
