"""Numerical behaviour of the lattice backends: against the exact Gaussian, linearity,
adjointness, backend agreement and edge cases."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rloss.lattice import Lattice, bilateral_features, exact_filter, gaussian_filter

from .conftest import require_backend

#: Crop size for comparisons with the exact filter (exact is quadratic in pixels).
CROP_H, CROP_W = 48, 64

#: (sigma_rgb, sigma_xy) -> worst ||AS - c E|| / ||AS|| of the rloss reference on 48x64
#: crops of real photos (reference README). We allow MARGIN on top, capped at the
#: README's overall bound for any approximation (REL_ERR_CAP).
REFERENCE_REL_ERR = {(15.0, 100.0): 0.09, (15.0, 20.0): 0.08, (5.0, 10.0): 0.11}
MARGIN = 0.02
REL_ERR_CAP = 0.12
#: The reference's global gain relative to the exact Gaussian (README).
GAIN_RANGE = (0.5, 0.7)

#: Real photographs: (file, top row, left column) of each crop.
PHOTO_CROPS = [("im1.png", 80, 120), ("im2.png", 80, 120), ("im3.png", 120, 80)]


# ----------------------------------------------------------------------------- inputs


def smooth_field(
    gen: torch.Generator, channels: int, h: int, w: int, cell: int = 8
) -> torch.Tensor:
    """(channels, h, w) smooth random field in about [0, 1] (bicubic upsampled noise)."""
    coarse = torch.rand(1, channels, h // cell + 2, w // cell + 2, generator=gen)
    return F.interpolate(coarse, size=(h, w), mode="bicubic", align_corners=False)[0]


def scene_image(seed: int, h: int = CROP_H, w: int = CROP_W) -> torch.Tensor:
    """(3, h, w) synthetic photo-like image: shaded background, flat discs, mild noise."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(
        torch.arange(h, dtype=torch.float32), torch.arange(w, dtype=torch.float32), indexing="ij"
    )
    top = torch.rand(3, 1, 1, generator=gen) * 255
    bottom = torch.rand(3, 1, 1, generator=gen) * 255
    img = top + (bottom - top) * (yy / h)
    for _ in range(4):
        cy, cx = (torch.rand(2, generator=gen) * torch.tensor([h, w])).tolist()
        radius = 6 + 12 * float(torch.rand(1, generator=gen))
        colour = torch.rand(3, 1, 1, generator=gen) * 255
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        img = torch.where(disc, colour.expand(3, h, w), img)
    return (img + 3 * torch.randn(3, h, w, generator=gen)).clamp(0, 255)


def blocks_image(seed: int, h: int = CROP_H, w: int = CROP_W) -> torch.Tensor:
    """(3, h, w) random piecewise-constant 3x4 blocks of random colour plus noise."""
    gen = torch.Generator().manual_seed(seed)
    blocks = torch.rand(1, 3, 3, 4, generator=gen) * 255
    img = F.interpolate(blocks, size=(h, w), mode="nearest")[0]
    return (img + 4 * torch.randn(3, h, w, generator=gen)).clamp(0, 255)


def probs_like(k: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    """(1, k, h, w) softmax of smooth random logits; for k = 1 a smooth field in [0, 1]."""
    gen = torch.Generator().manual_seed(seed)
    field = smooth_field(gen, k, h, w)
    return (field if k == 1 else (6 * field).softmax(0)).unsqueeze(0)


@functools.cache
def photo_crops(shared: str) -> torch.Tensor:
    """(3, 3, CROP_H, CROP_W) crops of the real photographs, RGB 0..255."""
    from PIL import Image

    crops = []
    for name, top, left in PHOTO_CROPS:
        with Image.open(Path(shared) / "data" / "msrc_partial" / name) as im:
            arr = np.asarray(im.convert("RGB"), dtype=np.float32)
        crops.append(torch.from_numpy(arr[top : top + CROP_H, left : left + CROP_W].copy()))
    return torch.stack(crops).permute(0, 3, 1, 2).contiguous()


def exact_reference(images_key: str, sigma: tuple[float, float], k: int, shared: str):
    """Features, values (k channels) and their exact float64 filter for a batch of test images."""
    feats, values, exact = _exact_all_k(images_key, sigma, shared)
    start = {1: 0, 3: 1, 21: 4}[k]
    return feats, values[:, start : start + k], exact[:, start : start + k]


@functools.cache
def _exact_all_k(images_key: str, sigma: tuple[float, float], shared: str):
    """Exact filter of K = 1, 3 and 21 channels stacked (one quadratic pass, cached)."""
    if images_key == "photos":
        images = photo_crops(shared)
    elif images_key == "synthetic":
        images = torch.stack([scene_image(0), blocks_image(1)])
    else:  # "noise": white-noise colours, a worst case for the lattice
        gen = torch.Generator().manual_seed(5)
        images = torch.stack(
            [
                torch.rand(3, CROP_H, CROP_W, generator=gen) * 255,
                255 * smooth_field(gen, 3, CROP_H, CROP_W),
            ]
        )
    n = images.shape[0]
    feats = bilateral_features(images, *sigma)
    values = torch.cat(
        [
            torch.cat([probs_like(k, CROP_H, CROP_W, seed=k + i) for k in (1, 3, 21)], 1)
            for i in range(n)
        ]
    )
    exact = exact_filter(feats.flatten(2).transpose(1, 2), values.flatten(2)).view(values.shape)
    return feats, values, exact


def fit(out: torch.Tensor, exact: torch.Tensor) -> tuple[float, float]:
    """Least-squares gain c and relative error ||out - c E|| / ||out|| (float64)."""
    out = out.double()
    c = float((out * exact).sum() / (exact * exact).sum())
    return c, float((out - c * exact).norm() / out.norm())


def filter_with(backend: str, device: torch.device, feats: torch.Tensor, values: torch.Tensor):
    return Lattice(feats.to(device), backend=backend).filter(values.to(device)).cpu()


# ----------------------------------------------------------------------------- vs exact


@pytest.mark.parametrize("sigma", list(REFERENCE_REL_ERR), ids=lambda s: f"rgb{s[0]:g}-xy{s[1]:g}")
@pytest.mark.parametrize("k", [1, 3, 21])
@pytest.mark.parametrize("images_key", ["photos", "synthetic"])
def test_against_exact(request, images_key, sigma, k, backend, device):
    """Per image: gain c in the reference's range, shape error no worse than the reference's."""
    shared = str(request.getfixturevalue("shared_dir")) if images_key == "photos" else ""
    feats, values, exact = exact_reference(images_key, sigma, k, shared)
    out = filter_with(backend, device, feats, values)
    bound = min(REFERENCE_REL_ERR[sigma] + MARGIN, REL_ERR_CAP)
    for i in range(out.shape[0]):
        c, rel = fit(out[i], exact[i])
        assert GAIN_RANGE[0] <= c <= GAIN_RANGE[1], f"image {i}: gain c = {c:.3f}"
        assert rel <= bound, f"image {i}: relative error {rel:.3f} > {bound:.3f}"


@pytest.mark.parametrize("sigma", [(15.0, 20.0), (5.0, 10.0)], ids=["rgb15-xy20", "rgb5-xy10"])
def test_against_exact_on_noise_is_characterised(sigma):
    """White-noise colours are a worst case of this lattice (it is the reference's too:
    the golden tests pin the algorithm). Its gain drops to ~0.33 and the shape error
    rises to ~0.23; pin those measured values loosely so regressions still show."""
    feats, values, exact = exact_reference("noise", sigma, 3, "")
    out = filter_with("torch", torch.device("cpu"), feats, values)
    for i in range(out.shape[0]):
        c, rel = fit(out[i], exact[i])
        assert 0.25 <= c <= 0.7, f"image {i}: gain c = {c:.3f}"
        assert rel <= 0.27, f"image {i}: relative error {rel:.3f}"


# ----------------------------------------------------------------------------- linear algebra


def _random_problem(n: int = 2, k: int = 3, h: int = 20, w: int = 24, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    images = torch.stack([scene_image(seed + i, h, w) for i in range(n)])
    feats = bilateral_features(images, 15.0, 10.0)
    values = torch.randn(n, k, h, w, generator=gen, dtype=torch.float64)
    return feats, values, gen


def test_adjointness(backend, device):
    """<W a, b> ~ <a, W b> for non-negative a, b (probabilities): the lattice is only
    nearly symmetric (measured asymmetry <= 1e-3 relative), which is what lets
    autograd use W for W^T, as the reference does."""
    feats, _, _ = _random_problem()
    a = torch.cat([probs_like(3, 20, 24, seed=s) for s in (0, 1)]).double()
    b = torch.cat([probs_like(3, 20, 24, seed=s) for s in (2, 3)]).double()
    lat = Lattice(feats.to(device), backend=backend)
    lhs = float((lat.filter(a.to(device)).cpu() * b).sum())
    rhs = float((a * lat.filter(b.to(device)).cpu()).sum())
    assert abs(lhs - rhs) <= 5e-3 * abs(lhs), (lhs, rhs)


def test_exact_adjoint_of_torch_lattice(device):
    """The torch backend's transpose (blur passes reversed) is the exact adjoint:
    this pins the structure splat^T = slice and each blur pass symmetric."""
    feats, a, gen = _random_problem(seed=5)
    b = torch.randn(a.shape, generator=gen, dtype=torch.float64)
    impl = Lattice(feats.to(device), backend="torch")._impl
    flat_a, flat_b = a.flatten(2).to(device), b.flatten(2).to(device)
    lhs = float((impl.apply(flat_a) * flat_b).sum())
    rhs = float((flat_a * impl.apply(flat_b, transpose=True)).sum())
    assert abs(lhs - rhs) <= 1e-12 * float(flat_a.norm() * flat_b.norm()), (lhs, rhs)
    # ...and the plain lattice is measurably asymmetric, so the check above can fail
    plain = float((flat_a * impl.apply(flat_b)).sum())
    assert abs(lhs - plain) > 1e-8 * float(flat_a.norm() * flat_b.norm())


def test_exact_backend_is_symmetric():
    feats, a, gen = _random_problem(n=1, h=8, w=10)
    b = torch.randn(a.shape, generator=gen, dtype=torch.float64)
    lat = Lattice(feats, backend="exact")
    lhs, rhs = float((lat.filter(a) * b).sum()), float((a * lat.filter(b)).sum())
    assert abs(lhs - rhs) <= 1e-12 * float(a.norm() * b.norm())


def test_linearity(backend, device):
    feats, a, gen = _random_problem(seed=3)
    b = torch.randn(a.shape, generator=gen, dtype=torch.float64)
    lat = Lattice(feats.to(device), backend=backend)
    lhs = lat.filter((2.5 * a - 0.75 * b).to(device)).cpu()
    rhs = 2.5 * lat.filter(a.to(device)).cpu() - 0.75 * lat.filter(b.to(device)).cpu()
    assert torch.allclose(lhs, rhs, rtol=1e-10, atol=1e-10 * float(rhs.abs().max()))


def test_gradient_is_filter_of_grad_and_matches_finite_differences(backend, device):
    """Autograd gives d<W v, g>/dv = W g (backward filters the gradient). Finite
    differences of the (linear) map along e give <W e, g>, which equals the autograd
    directional derivative <e, W g> up to the lattice's small asymmetry."""
    feats, _, _ = _random_problem(n=1, h=12, w=14, seed=7)
    v = probs_like(2, 12, 14, seed=1).double()
    g = probs_like(2, 12, 14, seed=2).double()
    lat = Lattice(feats.to(device), backend=backend)
    vv = v.to(device).clone().requires_grad_(True)
    (lat.filter(vv) * g.to(device)).sum().backward()
    grad = vv.grad.cpu()
    assert torch.allclose(grad, lat.filter(g.to(device)).cpu(), rtol=1e-12, atol=1e-12)

    def energy(x: torch.Tensor) -> float:
        return float((lat.filter(x.to(device)).cpu() * g).sum())

    eps = 1e-3
    for seed in range(3):
        e = probs_like(2, 12, 14, seed=10 + seed).double()
        fd = (energy(v + eps * e) - energy(v - eps * e)) / (2 * eps)
        assert fd == pytest.approx(energy(e), rel=1e-8)  # linear: FD is exact
        directional = float((grad * e).sum())
        assert fd == pytest.approx(directional, rel=5e-3)


def test_gradcheck_exact_backend():
    feats, v, _ = _random_problem(n=2, k=2, h=4, w=5)
    lat = Lattice(feats, backend="exact")
    assert torch.autograd.gradcheck(lat.filter, (v.requires_grad_(True),))
    assert torch.autograd.gradgradcheck(lat.filter, (v,))


def test_gradcheck_lattice_backend_double_precision(backend, device):
    """The lattice's autograd uses W for W^T; with a symmetric-enough lattice (large
    sigma: one simplex, no missing neighbours) gradcheck passes exactly."""
    feats = bilateral_features(torch.rand(1, 3, 3, 4) * 255, 1e5, 1e5).to(device)
    v = torch.randn(1, 2, 3, 4, dtype=torch.float64, device=device, requires_grad=True)
    lat = Lattice(feats, backend=backend)
    assert torch.autograd.gradcheck(lat.filter, (v,), atol=1e-7)


# ----------------------------------------------------------------------------- backends agree


def test_torch_and_numba_agree(golden):
    cpu = torch.device("cpu")
    require_backend("numba", cpu)
    image = torch.from_numpy(golden["case1_image"])
    values = torch.from_numpy(golden["case1_S"])
    feats = bilateral_features(image, 10.0, 20.0)
    a = Lattice(feats, backend="torch").filter(values)
    b = Lattice(feats, backend="numba").filter(values)
    assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(a.abs().max()))
    a64 = Lattice(feats, backend="torch").filter(values.double())
    b64 = Lattice(feats, backend="numba").filter(values.double())
    assert torch.allclose(a64, b64, rtol=0, atol=1e-5 * float(a64.abs().max()))


@pytest.mark.parametrize("sigma", [(15.0, 100.0), (5.0, 10.0), (1e-3, 1e-3)])
def test_torch_and_numba_agree_synthetic(sigma):
    cpu = torch.device("cpu")
    require_backend("numba", cpu)
    images = torch.stack([scene_image(4), blocks_image(5)])
    values = torch.cat([probs_like(5, CROP_H, CROP_W, seed=s) for s in (1, 2)])
    feats = bilateral_features(images, *sigma)
    a = Lattice(feats, backend="torch").filter(values)
    b = Lattice(feats, backend="numba").filter(values)
    assert torch.allclose(a, b, rtol=0, atol=1e-5 * float(a.abs().max()))


# ----------------------------------------------------------------------------- edge cases


def test_single_pixel(backend, device):
    """A 1x1 image is one isolated point: W v = alpha * sum_r bary_r^2 * v, with
    sum_r bary_r^2 in [1/(d+1), 1]."""
    image = torch.tensor([[[[30.0]], [[200.0]], [[90.0]]]], device=device)
    values = torch.tensor([[[[1.0]], [[-2.0]], [[0.5]]]], device=device)
    out = Lattice(bilateral_features(image, 15.0, 100.0), backend=backend).filter(values).cpu()
    d = 5
    alpha = 1.0 / (1.0 + 2.0**-d)
    ratio = out / values.cpu()
    assert torch.allclose(ratio, ratio[0, 0].expand_as(ratio), rtol=1e-6)
    assert alpha / (d + 1) - 1e-6 <= float(ratio[0, 0]) <= alpha + 1e-6


def test_constant_image(backend, device):
    """A flat image reduces the filter to a spatial Gaussian; it still tracks exact."""
    image = torch.full((1, 3, 24, 30), 128.0)
    feats = bilateral_features(image, 15.0, 5.0)
    values = probs_like(3, 24, 30)
    exact = exact_filter(feats.flatten(2).transpose(1, 2), values.flatten(2)).view(values.shape)
    out = filter_with(backend, device, feats, values)
    c, rel = fit(out, exact)
    assert GAIN_RANGE[0] <= c <= GAIN_RANGE[1] and rel <= REL_ERR_CAP, (c, rel)


def test_many_channels_equal_channel_by_channel(backend, device):
    """K = 60 in one pass equals filtering each channel alone (and K = 1 works)."""
    image = scene_image(2, 16, 20).unsqueeze(0)
    values = probs_like(60, 16, 20)
    lat = Lattice(bilateral_features(image, 15.0, 20.0).to(device), backend=backend)
    out = lat.filter(values.to(device)).cpu()
    assert out.shape == (1, 60, 16, 20)
    scale = float(out.abs().max())
    for k in (0, 17, 59):
        single = lat.filter(values[:, k : k + 1].to(device)).cpu()
        assert single.shape == (1, 1, 16, 20)
        assert torch.allclose(single[:, 0], out[:, k], rtol=0, atol=1e-6 * scale)


def test_batch_equals_per_image(backend, device):
    """The image index is part of the key: a batch equals its images filtered alone."""
    images = torch.stack(
        [scene_image(10, 20, 24), blocks_image(11, 20, 24), scene_image(12, 20, 24)]
    )
    images[2] = images[0]  # identical images in one batch must not share vertices either
    feats = bilateral_features(images, 15.0, 20.0)
    values = torch.cat([probs_like(4, 20, 24, seed=s) for s in range(3)])
    batched = filter_with(backend, device, feats, values)
    for i in range(3):
        alone = filter_with(backend, device, feats[i : i + 1], values[i : i + 1])
        assert torch.allclose(
            batched[i : i + 1], alone, rtol=0, atol=1e-6 * float(alone.abs().max())
        )


@pytest.mark.parametrize("sigma", [1e-3, 0.1])
def test_tiny_sigma_every_pixel_its_own_vertex(backend, device, sigma):
    """With tiny sigmas no two pixels share a vertex: W is diagonal, W v = (W 1) * v."""
    image = scene_image(3, 12, 16).unsqueeze(0)
    feats = bilateral_features(image, sigma, sigma)
    values = probs_like(3, 12, 16)
    lat = Lattice(feats.to(device), backend=backend)
    if backend == "torch":
        assert lat._impl.num_vertices == 12 * 16 * 6
    out = lat.filter(values.to(device)).cpu()
    diag = lat.filter(torch.ones(1, 1, 12, 16, device=device)).cpu()
    assert torch.allclose(out, diag * values, rtol=1e-5, atol=1e-7)
    alpha = 1.0 / (1.0 + 2.0**-5)
    assert float(diag.min()) >= alpha / 6 - 1e-6 and float(diag.max()) <= alpha + 1e-6


def test_huge_sigma_is_a_global_sum(backend, device):
    """With huge sigmas every pixel sees every other with weight ~1: W v ~ c * sum(v)."""
    image = scene_image(4, 16, 20).unsqueeze(0)
    feats = bilateral_features(image, 1e6, 1e6)
    values = probs_like(3, 16, 20)
    exact = exact_filter(feats.flatten(2).transpose(1, 2), values.flatten(2)).view(values.shape)
    out = filter_with(backend, device, feats, values)
    c, rel = fit(out, exact)
    assert rel < 1e-3 and 0.5 < c < 1.5, (c, rel)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_value_dtypes(backend, device, dtype):
    feats, values, _ = _random_problem(n=1, k=3, h=10, w=12)
    lat = Lattice(feats.to(device), backend=backend)
    ref = lat.filter(values.to(device)).cpu()  # float64
    out = lat.filter(values.to(device=device, dtype=dtype))
    assert out.dtype == dtype and out.shape == values.shape
    tol = {torch.float16: 2e-2, torch.bfloat16: 5e-2, torch.float32: 1e-5, torch.float64: 1e-12}[
        dtype
    ]
    err = float((out.cpu().double() - ref).abs().max() / ref.abs().max())
    assert err <= tol, err


def test_float64_is_computed_in_double(backend, device):
    """Float64 values keep double precision (not a float32 round trip)."""
    feats, values, _ = _random_problem(n=1, k=1, h=8, w=8)
    lat = Lattice(feats.to(device), backend=backend)
    big = values.to(device) + 1e9
    out = lat.filter(big).cpu() - lat.filter(torch.full_like(big, 1e9)).cpu()
    ref = lat.filter(values.to(device)).cpu()
    assert float((out - ref).abs().max()) < 1e-4 * float(ref.abs().max())


def test_non_contiguous_and_channels_last(backend, device):
    feats, values, _ = _random_problem(n=2, k=4, h=10, w=12)
    values = values.float().to(device)
    lat = Lattice(feats.to(device), backend=backend)
    ref = lat.filter(values)
    transposed = values.permute(0, 1, 3, 2).contiguous().permute(0, 1, 3, 2)
    assert not transposed.is_contiguous()
    channels_last = values.contiguous(memory_format=torch.channels_last)
    strided = torch.stack([values, -values], dim=2)[:, :, 0]  # every other plane
    for v in (transposed, channels_last, strided):
        assert not v.is_contiguous()
        assert torch.allclose(lat.filter(v), ref, rtol=1e-6, atol=1e-6)
    # features: channels_last and non-contiguous too
    feats_cl = feats.contiguous(memory_format=torch.channels_last).to(device)
    assert torch.allclose(
        Lattice(feats_cl, backend=backend).filter(values), ref, rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("channels", [1, 8])
def test_guidance_channels(backend, device, channels):
    """Grayscale and multispectral guidance: the lattice tracks exact with a gain that
    depends on the dimension d = 2 + channels (measured on photo crops: d = 3 gives
    c ~ 0.68, error ~ 0.035; d = 10 gives c ~ 0.23-0.29, error ~ 0.09-0.15)."""
    base = scene_image(6, 24, 30)
    gray = base.mean(0, keepdim=True)
    image = (
        gray
        if channels == 1
        else torch.cat([base, gray, F.avg_pool2d(base[None], 5, 1, 2)[0], 255 - gray])
    )
    assert image.shape[0] == channels
    feats = bilateral_features(image.unsqueeze(0), 15.0, 100.0)
    values = probs_like(3, 24, 30)
    exact = exact_filter(feats.flatten(2).transpose(1, 2), values.flatten(2)).view(values.shape)
    out = filter_with(backend, device, feats, values)
    c, rel = fit(out, exact)
    lo, hi, worst = (0.6, 0.85, 0.08) if channels == 1 else (0.15, 0.45, 0.25)
    assert lo <= c <= hi and rel <= worst, (c, rel)


# ----------------------------------------------------------------------------- key packing


def test_forced_exact_key_path_matches_packed(device):
    """With packing disabled (keys="full") the exact relabelling path gives bit-identical
    results."""
    from rloss.lattice import BuildOptions

    images = torch.stack([scene_image(20, 20, 24), blocks_image(21, 20, 24)])
    for sigma in [(15.0, 20.0), (5.0, 3.0)]:
        feats = bilateral_features(images, *sigma).to(device)
        values = torch.cat([probs_like(3, 20, 24, seed=s) for s in (0, 1)]).to(device)
        packed = Lattice(feats, backend="torch")
        assert packed._impl.packed
        relabelled = Lattice(feats, backend="torch", options=BuildOptions(keys="full"))
        assert not relabelled._impl.packed
        assert relabelled._impl.num_vertices == packed._impl.num_vertices
        assert torch.equal(relabelled.filter(values), packed.filter(values))


def test_overflowing_keys_take_exact_path(backend, device):
    """Two clusters of pixels 1e6 feature units apart: packed keys would need ~2^100,
    so the torch backend relabels exactly; the result must equal each cluster alone."""
    image = scene_image(30, 16, 20).unsqueeze(0)
    feats = bilateral_features(image, 15.0, 10.0)
    far = feats.clone()
    far[:, :, :, 10:] += 1e6  # the right half jumps far away in every coordinate
    values = probs_like(3, 16, 20)
    lat = Lattice(far.to(device), backend=backend)
    if backend == "torch":
        assert not lat._impl.packed
    out = lat.filter(values.to(device)).cpu()
    for cols in (slice(0, 10), slice(10, 20)):
        part = far[:, :, :, cols].contiguous()
        alone = Lattice(part.to(device), backend=backend)
        if backend == "torch":
            assert alone._impl.packed
        ref = alone.filter(values[:, :, :, cols].contiguous().to(device)).cpu()
        assert torch.allclose(out[:, :, :, cols], ref, rtol=0, atol=1e-6 * float(ref.abs().max()))


def test_gaussian_filter_matches_lattice(backend, device):
    feats, values, _ = _random_problem(n=1, k=2, h=8, w=9)
    feats, values = feats.to(device), values.to(device)
    assert torch.equal(
        gaussian_filter(feats, values, backend=backend), Lattice(feats, backend).filter(values)
    )
