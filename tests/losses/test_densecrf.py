"""DenseCRF loss: values vs a direct float64 pairwise sum, hand cases, gradients, roi, scale."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rloss.lattice import Lattice, bilateral_features
from rloss.losses import DenseCRFLoss, densecrf_loss

LATTICE_BACKENDS = ["torch", "numba"]


def _image(n: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """Smooth-ish colour image in 0..255 with an edge, so the colour kernel matters."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, h // 4 + 1, w // 4 + 1, generator=g) * 255
    img = F.interpolate(base, size=(h, w), mode="bilinear", align_corners=False)
    img[..., : w // 2] = img[..., : w // 2] * 0.3
    return img.clamp(0, 255)


def _logits(n: int, k: int, h: int, w: int, seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, k, h // 3 + 1, w // 3 + 1, generator=g, dtype=torch.float64) * 3
    return F.interpolate(z, size=(h, w), mode="bilinear", align_corners=False).to(dtype)


def _roi(n: int, h: int, w: int) -> torch.Tensor:
    roi = torch.ones(n, h, w)
    roi[0, -3:] = 0
    if n > 1:
        roi[1, :, :2] = 0
    return roi


def direct_potts(image, probs, roi, sigma_rgb, sigma_xy):
    """(1/N) Σ_ij W_ij r_i r_j (1 − S_i·S_j), dense float64 kernel matrix (tiny inputs only)."""
    n, _k = probs.shape[:2]
    f = bilateral_features(image.float(), sigma_rgb, sigma_xy).double().flatten(2).transpose(1, 2)
    s = probs.double().flatten(2)  # (N, K, P)
    r = roi.double().flatten(1)  # (N, P)
    total = 0.0
    for b in range(n):
        kmat = torch.exp(-0.5 * torch.cdist(f[b], f[b]).square())
        agree = s[b].T @ s[b]  # (P, P)  S_i · S_j
        total = total + (kmat * r[b][:, None] * r[b][None, :] * (1 - agree)).sum()
    return total / n


def direct_volume(image, roi, sigma_rgb, sigma_xy):
    """roiᵀ W roi per image, float64."""
    f = bilateral_features(image.float(), sigma_rgb, sigma_xy).double().flatten(2).transpose(1, 2)
    r = roi.double().flatten(1)
    return torch.stack(
        [r[b] @ torch.exp(-0.5 * torch.cdist(f[b], f[b]).square()) @ r[b] for b in range(len(r))]
    )


@pytest.mark.parametrize("shape", [(1, 2, 6, 7), (2, 3, 8, 10), (2, 5, 9, 6)])
@pytest.mark.parametrize("sigmas", [(15.0, 100.0), (10.0, 3.0)])
def test_value_matches_direct_float64(shape, sigmas):
    n, k, h, w = shape
    image, roi = _image(n, h, w), _roi(n, h, w)
    probs = _logits(n, k, h, w).softmax(1)
    got = densecrf_loss(
        image, probs, roi, weight=1.0, sigma_rgb=sigmas[0], sigma_xy=sigmas[1], backend="exact"
    )
    want = direct_potts(image, probs, roi, *sigmas)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    weighted = densecrf_loss(
        image, probs, roi, weight=2e-3, sigma_rgb=sigmas[0], sigma_xy=sigmas[1], backend="exact"
    )
    torch.testing.assert_close(weighted, 2e-3 * want, rtol=1e-10, atol=1e-12)


def test_normalize_divides_by_roi_volume():
    n, k, h, w = 2, 3, 8, 9
    image, roi = _image(n, h, w), _roi(n, h, w)
    probs = _logits(n, k, h, w).softmax(1)
    got = densecrf_loss(
        image, probs, roi, weight=1.0, sigma_xy=6.0, normalize=True, backend="exact"
    )
    f = bilateral_features(image.float(), 15.0, 6.0).double().flatten(2).transpose(1, 2)
    s, r = probs.double().flatten(2), roi.double().flatten(1)
    per = []
    for b in range(n):
        kmat = torch.exp(-0.5 * torch.cdist(f[b], f[b]).square()) * r[b][:, None] * r[b][None]
        per.append((kmat * (1 - s[b].T @ s[b])).sum() / kmat.sum())
    torch.testing.assert_close(got, torch.stack(per).mean(), rtol=1e-10, atol=1e-12)
    assert 0.0 <= float(got) <= 1.0


@pytest.mark.parametrize("backend", ["exact", *LATTICE_BACKENDS])
def test_constant_onehot_gives_zero(backend):
    image = _image(2, 12, 14)
    probs = torch.zeros(2, 4, 12, 14)
    probs[:, 2] = 1.0
    loss = densecrf_loss(image, probs, weight=1.0, sigma_xy=5.0, backend=backend)
    assert float(loss) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("backend", ["exact", *LATTICE_BACKENDS])
def test_correct_labelling_of_two_colour_regions_scores_lower(backend):
    h, w = 12, 16
    image = torch.zeros(1, 3, h, w)
    image[..., w // 2 :] = 200.0  # left black, right bright: a colour edge at w/2
    right = torch.zeros(h, w, dtype=torch.bool)
    right[:, w // 2 :] = True
    bottom = torch.zeros(h, w, dtype=torch.bool)
    bottom[h // 2 :] = True

    def soft(mask):
        p = torch.full((1, 2, h, w), 0.1)
        p[0, 1][mask] = 0.9
        p[0, 0][~mask] = 0.9
        return p

    kw = dict(weight=1.0, sigma_rgb=15.0, sigma_xy=8.0, backend=backend)
    correct = densecrf_loss(image, soft(right), **kw)
    across = densecrf_loss(image, soft(bottom), **kw)
    assert float(correct) < 0.6 * float(across)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("scale_factor", [1.0, 0.5])
def test_gradcheck_wrt_logits(normalize, scale_factor):
    n, k, h, w = 2, 3, 4, 6
    image, roi = _image(n, h, w), _roi(n, h, w)
    logits = _logits(n, k, h, w).requires_grad_()

    def fn(z):
        return densecrf_loss(
            image,
            z.softmax(1),
            roi,
            weight=1e-2,
            sigma_xy=4.0,
            scale_factor=scale_factor,
            normalize=normalize,
            backend="exact",
        )

    # fast mode (random projections) keeps the suite quick; the exact formula of the
    # gradient is checked elementwise in test_gradient_wrt_probs_is_analytic_formula
    assert torch.autograd.gradcheck(fn, (logits,), fast_mode=True)


def test_gradient_wrt_probs_is_analytic_formula():
    """dE/dS = roi (W roi − 2 W S̃) / N: the reference's gradient plus a class-constant term."""
    n, k, h, w = 2, 3, 7, 8
    image, roi = _image(n, h, w), _roi(n, h, w)
    probs = _logits(n, k, h, w).softmax(1).requires_grad_()
    densecrf_loss(image, probs, roi, weight=1.0, sigma_xy=5.0, backend="exact").backward()
    lat = Lattice(bilateral_features(image, 15.0, 5.0), backend="exact")
    s = probs.detach() * roi[:, None]
    ws = lat.filter(s)
    wr = lat.filter(roi[:, None].double())
    reference = -2 * ws / n * roi[:, None]
    torch.testing.assert_close(probs.grad, reference + wr / n * roi[:, None])
    centred = probs.grad - probs.grad.mean(1, keepdim=True)
    torch.testing.assert_close(centred, reference - reference.mean(1, keepdim=True))


@pytest.mark.parametrize(
    ("backend", "impl", "method"),
    [("exact", "rloss.lattice._exact.ExactLattice", "apply"),
     ("numba", "rloss.lattice._numba.lattice.NumbaLattice", "apply|quadratic_form"),
     ("torch", "rloss.lattice._torch.TorchLattice", "apply|quadratic_form")],
)  # fmt: skip
def test_one_lattice_build_and_one_filter_per_forward_backward(monkeypatch, backend, impl, method):
    """One build and one filtering pass (K + 1 channels) serve forward and backward."""
    import importlib

    import rloss.losses.densecrf as mod

    module_name, cls_name = impl.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), cls_name)
    builds, passes = [], []
    real_init = Lattice.__init__

    def counting_init(self, *a, **kw):
        builds.append(1)
        real_init(self, *a, **kw)

    def counting(real):
        def counted(self, *a, **kw):
            passes.append(1)
            return real(self, *a, **kw)

        return counted

    monkeypatch.setattr(mod.Lattice, "__init__", counting_init)
    for name in method.split("|"):  # any of these is one filtering pass
        monkeypatch.setattr(cls, name, counting(getattr(cls, name)))
    logits = _logits(1, 4, 8, 8, dtype=torch.float32).requires_grad_()
    loss = densecrf_loss(_image(1, 8, 8), logits.softmax(1), weight=1.0, backend=backend)
    loss.backward()
    assert len(builds) == 1 and len(passes) == 1
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("backend", LATTICE_BACKENDS)
def test_lattice_backend_close_to_exact(backend):
    """The lattice is ≈ c·exact with c in 0.5–0.7 and a shape error of 5–10% (README B)."""
    n, k, h, w = 1, 3, 24, 32
    image, roi = _image(n, h, w, seed=3), _roi(n, h, w)
    logits = _logits(n, k, h, w, seed=4, dtype=torch.float32)
    grads, values = {}, {}
    for b in ("exact", backend):
        z = logits.clone().requires_grad_()
        loss = densecrf_loss(image, z.softmax(1), roi, weight=1.0, sigma_xy=10.0, backend=b)
        loss.backward()
        grads[b], values[b] = z.grad.double(), float(loss.detach())
    ratio = values[backend] / values["exact"]
    assert 0.45 < ratio < 0.8
    ge, gl = grads["exact"].flatten(), grads[backend].flatten()
    c = float(gl @ ge / (ge @ ge))
    assert 0.45 < c < 0.8
    assert float((gl - c * ge).norm() / gl.norm()) < 0.2
    cosine = float(gl @ ge / (gl.norm() * ge.norm()))
    assert cosine > 0.98


@pytest.mark.parametrize("backend", ["exact", *LATTICE_BACKENDS])
def test_pixels_outside_roi_change_neither_value_nor_gradient(backend):
    """Probabilities outside roi never matter; the image outside roi matters only to the
    lattice's approximation (its pixels still create lattice vertices, as in the reference),
    so the image is varied for the exact filter only."""
    n, k, h, w = 2, 3, 10, 12
    image, roi = _image(n, h, w), _roi(n, h, w)
    logits = _logits(n, k, h, w, dtype=torch.float32)
    outside = (roi == 0).unsqueeze(1)
    image2 = image
    if backend == "exact":
        image2 = torch.where(outside, torch.rand(image.shape) * 255, image)
    logits2 = torch.where(outside, torch.randn(logits.shape) * 5, logits)
    results = []
    for img, z in ((image, logits), (image2, logits2)):
        z = z.clone().requires_grad_()
        loss = densecrf_loss(img, z.softmax(1), roi, weight=1.0, sigma_xy=6.0, backend=backend)
        loss.backward()
        results.append((loss.detach(), z.grad))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-4, atol=1e-6)
    assert float(results[0][1].masked_select(outside).abs().max()) == 0.0


@pytest.mark.parametrize("backend", ["exact", *LATTICE_BACKENDS])
def test_scale_factor_equals_explicit_downscale(backend):
    n, k, h, w = 2, 3, 12, 16
    image, roi = _image(n, h, w), _roi(n, h, w)
    logits = _logits(n, k, h, w, dtype=torch.float32)
    z1 = logits.clone().requires_grad_()
    scaled = densecrf_loss(
        image, z1.softmax(1), roi, weight=1.0, sigma_xy=8.0, scale_factor=0.5, backend=backend
    )
    scaled.backward()
    z2 = logits.clone().requires_grad_()
    small_image = F.interpolate(image, scale_factor=0.5, mode="nearest")
    small_probs = F.interpolate(
        z2.softmax(1), scale_factor=0.5, mode="bilinear", align_corners=False
    )
    small_roi = F.interpolate(roi[:, None], scale_factor=0.5, mode="nearest")[:, 0]
    explicit = densecrf_loss(
        small_image, small_probs, small_roi, weight=1.0, sigma_xy=4.0, backend=backend
    )
    explicit.backward()
    torch.testing.assert_close(scaled, explicit, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(z1.grad, z2.grad, rtol=1e-5, atol=1e-7)


def test_autocast_bf16_on_cpu_matches_float32():
    n, k, h, w = 1, 4, 10, 12
    image = _image(n, h, w)
    logits = _logits(n, k, h, w, dtype=torch.float32)
    probs32 = logits.softmax(1)
    want = densecrf_loss(image, probs32, weight=1.0, sigma_xy=6.0, backend="exact")
    z = logits.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        probs16 = z.bfloat16().softmax(1).bfloat16()
        got = densecrf_loss(image.bfloat16(), probs16, weight=1.0, sigma_xy=6.0, backend="exact")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=3e-2, atol=0)
    got.backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()
    # The same bf16-rounded probabilities in float32 give the identical result: we upcast.
    same = densecrf_loss(
        image.bfloat16().float(),
        probs16.detach().float(),
        weight=1.0,
        sigma_xy=6.0,
        backend="exact",
    )
    torch.testing.assert_close(got.detach(), same, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", LATTICE_BACKENDS)
def test_autocast_bf16_lattice_backend(backend):
    image = _image(2, 16, 20)
    logits = _logits(2, 5, 16, 20, dtype=torch.float32)
    want = densecrf_loss(image, logits.softmax(1), weight=1.0, sigma_xy=6.0, backend=backend)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = densecrf_loss(
            image, logits.bfloat16().softmax(1), weight=1.0, sigma_xy=6.0, backend=backend
        )
    torch.testing.assert_close(got, want, rtol=3e-2, atol=0)


def test_device_matches_cpu(device):
    image, roi = _image(2, 16, 20), _roi(2, 16, 20)
    logits = _logits(2, 4, 16, 20, dtype=torch.float32)
    out = {}
    for dev in (torch.device("cpu"), device):
        z = logits.to(dev).requires_grad_()
        loss = densecrf_loss(
            image.to(dev), z.softmax(1), roi.to(dev), weight=1.0, sigma_xy=6.0, backend="torch"
        )
        loss.backward()
        out[dev.type] = (loss.detach().cpu(), z.grad.cpu())
    torch.testing.assert_close(out["cpu"][0], out[device.type][0], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out["cpu"][1], out[device.type][1], rtol=1e-3, atol=1e-6)


def test_module_equals_function_and_repr():
    image, roi = _image(2, 8, 10), _roi(2, 8, 10)
    probs = _logits(2, 3, 8, 10).softmax(1)
    kw = dict(weight=1e-3, sigma_rgb=12.0, sigma_xy=7.0, scale_factor=0.5, normalize=True)
    module = DenseCRFLoss(**kw, backend="exact")
    torch.testing.assert_close(
        module(image, probs, roi), densecrf_loss(image, probs, roi, **kw, backend="exact")
    )
    assert "sigma_xy=7" in repr(module)
    default = DenseCRFLoss()
    assert (default.weight, default.sigma_rgb, default.sigma_xy) == (2e-9, 15.0, 100.0)


def test_non_contiguous_inputs():
    n, k, h, w = 2, 3, 8, 10
    image, roi = _image(n, h, w), _roi(n, h, w)
    probs = _logits(n, k, h, w).softmax(1)
    want = densecrf_loss(image, probs, roi, weight=1.0, sigma_xy=5.0, backend="exact")
    image_nc = image.transpose(2, 3).contiguous().transpose(2, 3)
    probs_nc = probs.contiguous(memory_format=torch.channels_last)
    roi_nc = roi.transpose(1, 2).contiguous().transpose(1, 2)
    assert not image_nc.is_contiguous() and not probs_nc.is_contiguous()
    got = densecrf_loss(image_nc, probs_nc, roi_nc, weight=1.0, sigma_xy=5.0, backend="exact")
    torch.testing.assert_close(got, want)


def test_inputs_not_modified_and_bool_roi():
    image, roi = _image(1, 8, 8), _roi(1, 8, 8)
    probs = _logits(1, 3, 8, 8).softmax(1)
    copies = image.clone(), probs.clone(), roi.clone()
    a = densecrf_loss(image, probs, roi, weight=1.0, scale_factor=0.5, backend="exact")
    b = densecrf_loss(image, probs, roi.bool(), weight=1.0, scale_factor=0.5, backend="exact")
    torch.testing.assert_close(a, b)
    for before, after in zip(copies, (image, probs, roi)):
        assert torch.equal(before, after)


def test_no_grad_and_grayscale_guidance():
    image = _image(1, 8, 8)[:, :1]
    probs = _logits(1, 2, 8, 8).softmax(1)
    with torch.no_grad():
        loss = densecrf_loss(image, probs, weight=1.0, backend="exact")
    assert float(loss) > 0


@pytest.mark.parametrize("normalize", [False, True])
def test_prebuilt_lattice_equals_the_loss(normalize):
    """``densecrf_loss(..., lattice=)`` gives the loss's value and gradient, bitwise, and
    the deprecated ``lattice_energy`` alias the same."""
    from rloss.lattice import bilateral_features
    from rloss.losses.densecrf import lattice_energy

    image, roi = _image(2, 12, 16), _roi(2, 12, 16)
    logits = _logits(2, 3, 12, 16, dtype=torch.float64)
    a, b, c = (logits.clone().requires_grad_() for _ in range(3))
    want = densecrf_loss(image, a.softmax(1), roi, weight=0.5, sigma_xy=6.0, normalize=normalize)
    lat = Lattice(bilateral_features(image, 15.0, 6.0))
    got = densecrf_loss(None, b.softmax(1), roi, weight=0.5, normalize=normalize, lattice=lat)
    assert torch.equal(got, want)
    want.backward()
    got.backward()
    assert torch.equal(b.grad, a.grad)
    with pytest.warns(DeprecationWarning, match="lattice_energy is deprecated"):
        old = lattice_energy(lat, c.softmax(1), roi, normalize=normalize, weight=0.5)
    torch.testing.assert_close(old, want)


def test_prebuilt_lattice_checks_its_inputs():
    from rloss.lattice import bilateral_features

    image = _image(1, 8, 8)
    lat = Lattice(bilateral_features(image, 15.0, 6.0))
    probs = _logits(1, 3, 8, 8, dtype=torch.float32).softmax(1)
    with pytest.raises(ValueError, match="scale_factor must be 1 with a prebuilt lattice"):
        densecrf_loss(None, probs, lattice=lat, scale_factor=0.5)
    with pytest.raises(ValueError, match="lattice was built for"):
        densecrf_loss(None, probs[..., :7], lattice=lat)
    with pytest.raises(ValueError, match="did you pass logits"):
        densecrf_loss(None, probs * 5, lattice=lat)
    with pytest.raises(TypeError, match="lattice must be"):
        densecrf_loss(None, probs, lattice="abc")


def test_pairwise_energy_is_a_deprecated_alias():
    from rloss.losses import ncut_loss
    from rloss.losses.densecrf import pairwise_energy

    image = _image(1, 8, 8)
    probs = _logits(1, 3, 8, 8, dtype=torch.float32).softmax(1)
    kw = dict(sigma_rgb=15.0, sigma_xy=6.0, scale_factor=1.0, normalize=False, backend=None)
    with pytest.warns(DeprecationWarning):
        p = pairwise_energy(image, probs, None, kind="potts", **kw)
    with pytest.warns(DeprecationWarning):
        n = pairwise_energy(image, probs, None, kind="ncut", **kw)
    assert torch.equal(p, densecrf_loss(image, probs, weight=1.0, sigma_xy=6.0))
    assert torch.equal(n, ncut_loss(image, probs, sigma_rgb=15.0, sigma_xy=6.0))


@pytest.mark.parametrize("loss", ["densecrf", "ncut"])
@pytest.mark.parametrize("scale", [0.01, 0.1])
def test_scale_factor_that_leaves_no_pixel_names_scale_factor(loss, scale):
    """Issue 16 row 18: a ValueError naming scale_factor before F.interpolate runs."""
    from rloss.losses import DenseCRFLoss, NormalizedCutLoss

    term = (DenseCRFLoss if loss == "densecrf" else NormalizedCutLoss)(
        weight=1.0, sigma_rgb=15.0, sigma_xy=5.0, scale_factor=scale
    )
    probs = _logits(1, 3, 8, 9, dtype=torch.float32).softmax(1)
    with pytest.raises(ValueError, match=r"scale_factor=0.\d+ shrinks probs .* to 0x0 pixels"):
        term(_image(1, 8, 9), probs)


def test_backward_scales_by_the_incoming_gradient_and_can_run_twice():
    """grad_out = 1 hands the saved gradient on as is; other values multiply it;
    with retain_graph the saved gradient is intact for a second backward."""
    image = _image(2, 10, 12)
    logits = _logits(2, 3, 10, 12, dtype=torch.float32)
    z = logits.clone().requires_grad_()
    loss = densecrf_loss(image, z.softmax(1), weight=3e-3, sigma_xy=5.0, backend="numba")
    (g1,) = torch.autograd.grad(loss, z, retain_graph=True)
    (g2,) = torch.autograd.grad(2.5 * loss, z, retain_graph=True)
    (g3,) = torch.autograd.grad(loss, z)
    torch.testing.assert_close(g2, 2.5 * g1)
    torch.testing.assert_close(g3, g1)


@pytest.mark.parametrize("kind", ["potts", "ncut"])
def test_retained_graph_gradients_stay_right_when_grad_is_modified(kind):
    """backward hands its saved gradient on as it is; autograd copies it wherever it
    would otherwise keep or modify it while the graph (and ours) is retained, so
    in-place changes to ``.grad`` and accumulation never leak into a later backward."""
    from rloss.losses import ncut_loss

    image = _image(2, 10, 12)
    probs0 = _logits(2, 3, 10, 12, dtype=torch.float32).softmax(1)
    fn = densecrf_loss if kind == "potts" else ncut_loss
    ref = probs0.clone().requires_grad_()
    (g,) = torch.autograd.grad(fn(image, ref, weight=1e-2, sigma_rgb=15.0, sigma_xy=5.0), ref)
    p = probs0.clone().requires_grad_()
    loss = fn(image, p, weight=1e-2, sigma_rgb=15.0, sigma_xy=5.0)
    loss.backward(retain_graph=True)
    torch.testing.assert_close(p.grad, g)
    p.grad.mul_(-7.0)  # e.g. an in-place clip
    p.grad = None
    loss.backward(retain_graph=True)
    loss.backward(retain_graph=True)  # accumulates into p.grad in place
    torch.testing.assert_close(p.grad, 2 * g)
    p.grad = None
    (loss + loss).backward()  # two paths into one input buffer
    torch.testing.assert_close(p.grad, 2 * g)


def test_cpu_loss_leaves_torch_thread_count_as_it_was():
    """The CPU loss runs torch's preparation on one thread, scoped: the caller's count is
    restored, also when the loss raises."""
    before = torch.get_num_threads()
    image = torch.rand(1, 3, 12, 12) * 255
    densecrf_loss(image, torch.rand(1, 3, 12, 12).softmax(1), sigma_xy=5.0)
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError):
        densecrf_loss(image, torch.rand(1, 3, 12, 12) * 5, sigma_xy=5.0)  # not probabilities
    assert torch.get_num_threads() == before
