"""``Lattice.quadratic_form``: the fused quadratic form and gradient against ``Lattice.filter``.

With ``x`` = probabilities and ``r`` = roi it is the relaxed Potts energy of the
DenseCRF loss, which is how most cases here are set up.
"""

from __future__ import annotations

import pytest
import torch

from rloss.lattice import BuildOptions, CapacityHint, Lattice, bilateral_features


def potts(lat, probs, roi=None, *, normalize=False, grad_scale=None, probs_stats=False):
    """``(value, grad[, stats])`` of :meth:`Lattice.quadratic_form` (the old ``potts`` tuple)."""
    q = lat.quadratic_form(
        probs, roi, normalize=normalize, grad_scale=grad_scale, stats=probs_stats
    )
    return (q.value, q.grad, q.stats) if probs_stats else (q.value, q.grad)


def _case(n, k, h, w, device, backend, dtype=torch.float32, seed=0):
    """A lattice over a random image, softmax probabilities and a 0/1 roi."""
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 3, h, w, generator=g) * 255
    probs = torch.randn(n, k, h, w, generator=g, dtype=torch.float64).softmax(1).to(dtype)
    roi = (torch.rand(n, h, w, generator=g) > 0.2).to(dtype)
    lat = Lattice(bilateral_features(image.to(device), 15.0, 8.0), backend=backend)
    return lat, probs.to(device), roi.to(device)


def _by_hand(lat, probs, roi, normalize, grad_scale):
    """E_n = Σ S̃ᵀ(W roi − W S̃) (÷ roiᵀ W roi), G = grad_scale · roi (W roi − 2 W S̃) (÷ ...)."""
    n = probs.shape[0]
    r = roi.unsqueeze(1)
    s = probs * r
    ws, wr = lat.filter(s), lat.filter(r)
    energy = (s * (wr - ws)).reshape(n, -1).sum(1)
    grad = grad_scale * r * (wr - 2 * ws)
    if normalize:
        volume = (r * wr).reshape(n, -1).sum(1)
        energy = energy / volume
        grad = grad / volume.view(n, 1, 1, 1)
    return energy, grad


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_potts_matches_filter(backend, device, normalize, dtype):
    lat, probs, roi = _case(2, 4, 20, 24, device, backend, dtype)
    energy, grad = potts(lat, probs, roi, normalize=normalize, grad_scale=0.25)
    want_e, want_g = _by_hand(lat, probs, roi, normalize, 0.25)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-10, "atol": 1e-12}
    # numba sums the energy over vertices (α (S s)ᵀ B S r ...), where filter() weights
    # each slice by float32(α · bary): in float64 the two differ by ~1e-9, not more
    e_tol = {"rtol": 3e-8, "atol": 1e-12} if dtype == torch.float64 and backend == "numba" else tol
    assert energy.shape == (2,) and energy.dtype == dtype and grad.dtype == dtype
    torch.testing.assert_close(energy, want_e, **e_tol)
    torch.testing.assert_close(grad, want_g, **tol)


def test_potts_roi_none_means_ones(backend, device):
    lat, probs, _ = _case(1, 3, 16, 16, device, backend)
    ones = torch.ones(1, 16, 16, device=device)
    e1, g1 = potts(lat, probs, None, grad_scale=1.0)
    e2, g2 = potts(lat, probs, ones, grad_scale=1.0)
    torch.testing.assert_close(e1, e2)
    torch.testing.assert_close(g1, g2)


def test_potts_without_gradient(backend, device):
    lat, probs, roi = _case(1, 3, 16, 16, device, backend)
    energy, grad = potts(lat, probs, roi)
    assert grad is None
    torch.testing.assert_close(energy, potts(lat, probs, roi, grad_scale=1.0)[0])


@pytest.mark.parametrize("shape", [(3, 5, 24, 20), (1, 5, 96, 96)])
@pytest.mark.parametrize("normalize", [False, True])
def test_numba_fused_equals_filter_path(shape, normalize):
    """The fused kernels against the generic path on the same lattice; (1, 5, 96, 96) is
    split into several pixel blocks per image (the private-rows splat and reduction)."""
    n, k, h, w = shape
    g = torch.Generator().manual_seed(1)
    image = torch.rand(n, 3, h, w, generator=g) * 255
    lat = Lattice(bilateral_features(image, 15.0, 8.0), backend="numba")
    if shape[0] == 1:
        assert not lat._impl.direct
    probs = torch.randn(n, k, h, w, generator=g).softmax(1)
    roi = (torch.rand(n, h, w, generator=g) > 0.3).float()
    energy, grad = potts(lat, probs, roi, normalize=normalize, grad_scale=0.5)
    want_e, _, want_g = lat._quadratic_by_filter(probs, roi, normalize, 0.5)
    torch.testing.assert_close(energy, want_e, rtol=1e-5, atol=0)
    # identical filtering; only the float32 rounding of the gradient formula differs
    torch.testing.assert_close(grad, want_g, rtol=1e-5, atol=1e-6 * float(want_g.abs().max()))


def test_numba_potts_does_not_modify_inputs():
    lat, probs, roi = _case(2, 3, 16, 16, torch.device("cpu"), "numba")
    p0, r0 = probs.clone(), roi.clone()
    potts(lat, probs, roi, normalize=True, grad_scale=1.0)
    assert torch.equal(probs, p0) and torch.equal(roi, r0)


def test_potts_accepts_non_contiguous_probs(backend, device):
    image = torch.rand(1, 3, 12, 14).to(device) * 255
    lat = Lattice(bilateral_features(image, 15.0, 6.0), backend=backend)
    probs = torch.rand(1, 12, 14, 4, device=device).softmax(-1).permute(0, 3, 1, 2)
    assert not probs.is_contiguous()
    e1, g1 = potts(lat, probs, None, grad_scale=1.0)
    e2, g2 = potts(lat, probs.contiguous(), None, grad_scale=1.0)
    torch.testing.assert_close(e1, e2)
    torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"roi": torch.ones(1, 8, 9)}, "r must have shape"),
        ({"roi": torch.ones(1, 8, 8, dtype=torch.float64)}, "r must have shape .* dtype"),
    ],
)
def test_potts_bad_roi(kwargs, match):
    lat = Lattice(bilateral_features(torch.rand(1, 3, 8, 8) * 255, 15.0, 4.0))
    with pytest.raises(ValueError, match=match):
        potts(lat, torch.rand(1, 2, 8, 8), **kwargs)


def test_potts_bad_probs():
    lat = Lattice(bilateral_features(torch.rand(1, 3, 8, 8) * 255, 15.0, 4.0))
    with pytest.raises(ValueError, match="float32 or float64"):
        potts(lat, torch.rand(1, 2, 8, 8).half())
    with pytest.raises(ValueError, match="spatial shape"):
        potts(lat, torch.rand(1, 2, 8, 7))


# ------------------------------------------------ numba: Potts fused image by image


def _batch(n, k, h, w, seed=3):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(n, 3, h, w, generator=g) * 255
    probs = torch.randn(n, k, h, w, generator=g).softmax(1)
    roi = (torch.rand(n, h, w, generator=g) > 0.2).float()
    return bilateral_features(image, 15.0, 6.0), probs, roi


def _built(features):
    lat = Lattice(features, backend="numba")
    lat._impl.arrays  # noqa: B018 - builds the batch lattice
    return lat


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("shape", [(8, 4, 18, 22), (9, 3, 15, 16)])
def test_numba_per_image_fusion_is_bitwise_the_batch_path(shape, normalize, dtype):
    """With one pixel block per image (N >= 8) Potts runs build..slice per image and never
    forms the batch lattice; numbering and arithmetic are those of the batch path."""
    feats, probs, roi = _batch(*shape)
    probs, roi = probs.to(dtype), roi.to(dtype)
    lazy = Lattice(feats, backend="numba")
    e1, g1 = potts(lazy, probs, roi, normalize=normalize, grad_scale=0.3)
    assert not lazy._impl.built
    e2, g2 = potts(_built(feats), probs, roi, normalize=normalize, grad_scale=0.3)
    assert torch.equal(e1, e2) and torch.equal(g1, g2)


def test_numba_lazy_lattice_builds_on_first_filter():
    feats, probs, roi = _batch(8, 3, 12, 12)
    lat = Lattice(feats, backend="numba")
    potts(lat, probs, roi)
    assert not lat._impl.built
    out = lat.filter(probs)
    assert lat._impl.built and lat._impl.num_vertices > 0
    torch.testing.assert_close(out, _built(feats).filter(probs), rtol=0, atol=0)


def test_numba_fusion_reruns_when_its_rows_are_too_few():
    feats, probs, roi = _batch(8, 3, 20, 20)
    want = potts(_built(feats), probs, roi, grad_scale=1.0)
    hint = CapacityHint(per_task=1)  # scratch rows: max(2 * 1, 16) + 1 = 17
    lat = Lattice(feats, backend="numba", options=BuildOptions(min_table=16, capacity=hint))
    got = potts(lat, probs, roi, grad_scale=1.0)
    assert lat._impl.fused_passes == 2 and not lat._impl.built
    assert hint.per_task > 17  # the hint learnt the real size
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


@pytest.mark.parametrize("shape", [(8, 3, 14, 14), (1, 3, 96, 96)])
def test_numba_fusion_falls_back_when_keys_do_not_pack(shape):
    """A remainder-0 point outside the packed range: the fused kernel (per image, or in
    block phases for one image) gives up and the batch lattice is built with full keys;
    the result is unchanged. With keys="packed" that is an error instead."""
    feats, probs, roi = _batch(*shape)
    want = potts(_built(feats), probs, roi, grad_scale=1.0)
    lat = Lattice(feats, backend="numba")
    pbase, plim, pu = lat._impl._pack
    lat._impl._pack = (pbase, plim * 0, pu)  # every key "out of range"
    got = potts(lat, probs, roi, grad_scale=1.0)
    assert lat._impl.built and not lat._impl.packed
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    strict = Lattice(feats, backend="numba", options=BuildOptions(keys="packed"))
    strict._impl._pack = (pbase, plim * 0, pu)
    with pytest.raises(ValueError, match="keys='packed'"):
        potts(strict, probs, roi, grad_scale=1.0)


def test_numba_build_rejects_non_finite_features():
    feats, _, _ = _batch(2, 2, 8, 8)
    feats[1, 3, 2, 2] = float("inf")
    with pytest.raises(ValueError, match="features contains NaN or Inf"):
        Lattice(feats, backend="numba")
    feats[1, 3, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="features contains NaN or Inf"):
        Lattice(feats, backend="numba")


def _want_stats(probs, roi):
    s = probs.double().sum(1)
    err = ((s - 1).abs() * (roi > 0)).max()
    inside = probs.movedim(1, -1)[roi > 0]
    return float(inside.min()), float(inside.max()), float(err)


@pytest.mark.parametrize("path", ["torch", "numba-fused", "numba-batch", "numba-blocks"])
def test_potts_probs_stats(path):
    """Statistics for validating probs: min, max, largest |Σ−1| over roi > 0, finite."""
    n = 1 if path == "numba-blocks" else 8
    h, w = (96, 96) if path == "numba-blocks" else (10, 12)
    feats, probs, roi = _batch(n, 3, h, w)
    probs = probs * 1.003  # sums 1.003 everywhere
    probs[0, 1, 2, 3] = -0.02
    probs[-1, 0, 4, 5] = 1.5  # roi 0 there: counts neither for max nor for the sum error
    roi[-1, 4, 5] = 0.0
    lat = Lattice(feats, backend="torch" if path == "torch" else "numba")
    if path in ("numba-batch", "numba-blocks"):
        lat._impl.arrays  # noqa: B018 - builds
    _, _, stats = potts(lat, probs, roi, grad_scale=1.0, probs_stats=True)
    lo, hi, err = _want_stats(probs, roi)
    assert stats.finite
    assert stats.min == pytest.approx(lo) and stats.max == pytest.approx(hi)
    assert stats.sum_error == pytest.approx(err, rel=1e-5)
    for bad in (float("nan"), float("inf")):
        p2 = probs.clone()
        p2[0, 2, 1, 1] = bad
        assert not potts(lat, p2, roi, probs_stats=True)[2].finite


@pytest.mark.parametrize("backend", ["numba", "torch"])
@pytest.mark.parametrize(
    ("change", "match"),
    [("nan", "NaN or Inf"), ("logits", "did you pass logits"), ("unnormalised", "sum to 1")],
)
def test_densecrf_loss_validates_probs_on_cpu(backend, change, match):
    """The DenseCRF loss checks probabilities from the lattice's statistics (CPU)."""
    from rloss.losses import densecrf_loss

    g = torch.Generator().manual_seed(0)
    image = torch.rand(8, 3, 10, 10, generator=g) * 255
    probs = torch.randn(8, 4, 10, 10, generator=g).softmax(1)
    if change == "nan":
        probs[3, 1, 2, 2] = float("nan")
    elif change == "logits":
        probs = torch.randn(8, 4, 10, 10, generator=g) * 3
    else:
        probs = probs * 0.9
    with pytest.raises(ValueError, match=match):
        densecrf_loss(image, probs, sigma_xy=5.0, backend=backend)


def test_numba_lattice_used_twice_is_built_once_and_reused():
    """Only a lattice's first Potts call runs fused; a second call builds the batch
    lattice (kept for later calls) and gives the same result."""
    feats, probs, roi = _batch(8, 3, 12, 12)
    lat = Lattice(feats, backend="numba")
    first = potts(lat, probs, roi, grad_scale=1.0)
    assert not lat._impl.built
    second = potts(lat, probs, roi, grad_scale=1.0)
    assert lat._impl.built
    impl = lat._impl
    potts(lat, probs, roi, grad_scale=1.0)
    assert lat._impl is impl and impl.built
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


# ------------------------------------------------ the primitive against the exact filter


@pytest.mark.parametrize("normalize", [False, True])
def test_quadratic_form_against_exact_backend(normalize):
    """value, volume and grad of the exact backend equal the formula written with the
    brute-force float64 filter ``W`` (exact is symmetric, so grad is ∂value/∂x exactly)."""
    from rloss.lattice import exact_filter

    g = torch.Generator().manual_seed(4)
    feats = torch.rand(2, 5, 7, 6, generator=g) * 3
    x = torch.rand(2, 3, 7, 6, generator=g, dtype=torch.float64)
    r = torch.rand(2, 7, 6, generator=g, dtype=torch.float64)
    q = Lattice(feats, backend="exact").quadratic_form(x, r, normalize=normalize, grad_scale=0.7)
    f = feats.flatten(2).transpose(1, 2)

    def w(v):
        return exact_filter(f, v.flatten(2)).view(v.shape)

    s, rr = x * r.unsqueeze(1), r.unsqueeze(1)
    ws, wr = w(s), w(rr)
    value = (s * (wr - ws)).sum((1, 2, 3))
    volume = (rr * wr).sum((1, 2, 3))
    grad = 0.7 * rr * (wr - 2 * ws)
    if normalize:
        value, grad = value / volume, grad / volume.view(2, 1, 1, 1)
        torch.testing.assert_close(q.volume, volume)
    else:
        assert torch.equal(q.volume, torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(q.value, value)
    torch.testing.assert_close(q.grad, grad)
    # and grad is the derivative: autograd through the exact filter agrees
    xg = x.clone().requires_grad_(True)
    sg = xg * rr
    val = (sg * (wr - w(sg))).sum((1, 2, 3))
    val = (val / volume if normalize else val).sum() * 0.7
    (auto,) = torch.autograd.grad(val, xg)
    torch.testing.assert_close(q.grad, auto)


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_quadratic_form_of_the_lattices_tracks_exact(backend):
    """The lattice backends track exact: the volume rᵀWr with the lattice's gain (about 0.31
    on this noise image, measured), and the energy with the same gain within 20%."""
    g = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 20, 20, generator=g) * 255
    feats = bilateral_features(image, 30.0, 4.0)
    x = torch.randn(1, 3, 20, 20, generator=g).softmax(1)
    exact = Lattice(feats, backend="exact").quadratic_form(x.double(), normalize=True)
    approx = Lattice(feats, backend=backend).quadratic_form(x, normalize=True)
    gain = float(approx.volume / exact.volume)
    assert 0.2 < gain < 0.8
    ratio = float(approx.value * approx.volume / (exact.value * exact.volume))
    assert ratio == pytest.approx(gain, rel=0.2)


def test_potts_is_a_deprecated_alias_of_quadratic_form():
    feats, probs, roi = _batch(2, 3, 10, 10)
    lat = Lattice(feats, backend="torch")
    with pytest.warns(DeprecationWarning, match="quadratic_form"):
        e, gr = lat.potts(probs, roi, grad_scale=1.0)
    q = lat.quadratic_form(probs, roi, grad_scale=1.0)
    assert torch.equal(e, q.value) and torch.equal(gr, q.grad)


# ------------------------------------------------ build options (the paths tests pick)


@pytest.mark.parametrize("options", [
    BuildOptions(fused=False),
    BuildOptions(keys="full"),
    BuildOptions(serial_below=0),
    BuildOptions(keys="packed", min_table=16),
])  # fmt: skip
def test_every_build_option_gives_bitwise_the_same_quadratic_form(options):
    feats, probs, roi = _batch(8, 3, 14, 15)
    want = potts(Lattice(feats, backend="numba"), probs, roi, normalize=True, grad_scale=0.3)
    lat = Lattice(feats, backend="numba", options=options)
    got = potts(lat, probs, roi, normalize=True, grad_scale=0.3)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    # the fused path runs only when asked for and the keys pack
    assert lat._impl.built == (not options.fused or options.keys == "full")
    assert torch.equal(lat.filter(probs), Lattice(feats, backend="numba").filter(probs))


def test_build_options_validate():
    with pytest.raises(ValueError, match="keys must be one of"):
        BuildOptions(keys="fast")
    with pytest.raises(ValueError, match="min_table must be a power of two"):
        BuildOptions(min_table=100)
    with pytest.raises(ValueError, match="serial_below"):
        BuildOptions(serial_below=-1)
    with pytest.raises(TypeError, match="options must be a BuildOptions"):
        Lattice(torch.rand(1, 3, 4, 4), options={"keys": "full"})


@pytest.mark.parametrize("backend", ["numba", "torch"])
def test_packed_keys_required_but_too_wide_is_an_error(backend):
    g = torch.Generator().manual_seed(7)
    feats = (torch.rand(1, 5, 1, 300, generator=g) * 2.0**17).contiguous()
    with pytest.raises(ValueError, match="keys='packed'"):
        Lattice(feats, backend=backend, options=BuildOptions(keys="packed")).filter(
            torch.rand(1, 2, 1, 300)
        )
    out = Lattice(feats, backend=backend).filter(torch.rand(1, 2, 1, 300))
    assert bool(torch.isfinite(out).all())


def test_capacity_hint_is_owned_by_the_caller():
    """Builds update the hint named in their options and leave the default alone."""
    from rloss.lattice import DEFAULT_CAPACITY_HINT

    before = DEFAULT_CAPACITY_HINT.per_task
    feats, probs, roi = _batch(8, 3, 12, 12)
    mine = CapacityHint()
    Lattice(feats, backend="numba", options=BuildOptions(capacity=mine)).quadratic_form(probs, roi)
    assert mine.per_task != CapacityHint.INITIAL
    assert DEFAULT_CAPACITY_HINT.per_task == before


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("shape", [(1, 4, 96, 96), (3, 21, 64, 130), (2, 2, 100, 90)])
def test_numba_split_fusion_is_bitwise_the_batch_path(shape, normalize, dtype):
    """Fewer than 8 images (several pixel blocks per image): the fused path runs in
    phases over the batch lattice's blocks, never forms the batch lattice, and gives
    its result bit for bit (value, volume, gradient, statistics)."""
    feats, probs, roi = _batch(*shape)
    probs, roi = probs.to(dtype), roi.to(dtype)
    lazy = Lattice(feats, backend="numba")
    assert lazy._impl.nblk > 1
    got = lazy.quadratic_form(probs, roi, normalize=normalize, grad_scale=0.3, stats=True)
    assert not lazy._impl.built and lazy._impl.fused_passes == 1
    want = _built(feats).quadratic_form(probs, roi, normalize=normalize, grad_scale=0.3,
                                        stats=True)  # fmt: skip
    for a, b in zip(got[:3], want[:3]):
        assert torch.equal(a, b)
    assert got.stats == want.stats
    # and against the definition through filter (the exact oracle lives in test_numba)
    wx = lazy.filter(probs * roi.unsqueeze(1))
    wr = lazy.filter(roi.unsqueeze(1))
    direct = ((probs * roi.unsqueeze(1)) * (wr - wx)).flatten(1).sum(1)
    if normalize:
        direct = direct / (roi.unsqueeze(1) * wr).flatten(1).sum(1)
    torch.testing.assert_close(got.value, direct, rtol=1e-4, atol=1e-6)

