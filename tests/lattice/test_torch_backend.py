"""The torch backend's own structure: generic feature dimension d, key layout, the fused
quadratic form, and agreement with the exact and numba backends at d = 3..6."""

from __future__ import annotations

import pytest
import torch

from rloss.lattice import BuildOptions, Lattice, bilateral_features, exact_filter
from rloss.lattice import _torch as T

from .test_filter import fit, probs_like, scene_image


def _guidance(seed: int, channels: int, h: int = 24, w: int = 30) -> torch.Tensor:
    """(1, channels, h, w) guidance image: the scene's RGB, then its gray level."""
    base = scene_image(seed, h, w)
    return torch.cat([base, base.mean(0, keepdim=True)])[:channels].unsqueeze(0)


#: d = 2 + guidance channels -> (gain range, worst relative error) against exact, measured
#: on these scenes (sigma_rgb 15, sigma_xy 30) on 2026-12-02: d=4 c 0.62, err 0.06-0.10;
#: d=6 c 0.44-0.48, err 0.05-0.07. The gain falls with d (the lattice's blur widens).
EXACT_BOUNDS = {3: ((0.6, 0.8), 0.1), 4: ((0.52, 0.72), 0.13), 5: ((0.45, 0.62), 0.1),
                6: ((0.36, 0.56), 0.1)}  # fmt: skip


@pytest.mark.parametrize("d", [3, 4, 5, 6])
@pytest.mark.parametrize("seed", [6, 7])
def test_torch_backend_tracks_exact_in_d(d, seed):
    """3-D volumes use d = 4..6: the torch lattice ≈ c · exact there too."""
    feats = bilateral_features(_guidance(seed, d - 2), 15.0, 30.0)
    values = probs_like(3, 24, 30)
    exact = exact_filter(feats.flatten(2).transpose(1, 2), values.flatten(2)).view(values.shape)
    c, rel = fit(Lattice(feats, backend="torch").filter(values), exact)
    (lo, hi), worst = EXACT_BOUNDS[d]
    assert lo <= c <= hi and rel <= worst, (c, rel)


@pytest.mark.parametrize("d", [1, 2, 4, 6, 9])
def test_torch_backend_equals_numba_in_d(d):
    """Two independent builds of the same lattice (sorted keys here, hash tables there)
    give the same filter to float32 rounding, whatever d."""
    g = torch.Generator().manual_seed(d)
    feats = torch.rand(2, d, 14, 17, generator=g) * 5
    feats[1, :, :4] = feats[1, :, 4:8]  # repeated points share simplices
    values = torch.rand(2, 4, 14, 17, generator=g)
    a = Lattice(feats, backend="torch").filter(values)
    b = Lattice(feats, backend="numba").filter(values)
    from rloss.lattice import _numba

    flat = feats.flatten(2).transpose(1, 2).contiguous()
    assert T.build(flat).num_vertices == _numba.build(flat).num_vertices
    torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6 * float(b.abs().max()))


@pytest.mark.parametrize("d", [2, 4, 6])
def test_key_paths_are_bit_identical(d):
    """int32 keys, int64 keys (features spread so the int32 range overflows) and the
    exact relabelling path number the same vertices and filter bit-identically."""
    g = torch.Generator().manual_seed(30 + d)
    feats = torch.rand(3, 9 * 11, d, generator=g) * 4
    spread = feats.clone()
    spread[1] += {2: 5e4, 4: 750.0, 6: 500.0}[d]  # key capacity beyond 2^31, within 2^63
    values = torch.rand(3, 5, 9 * 11, generator=g)
    for f, want in ((feats, torch.int32), (spread, torch.int64)):
        packed = T.build(f)
        relabelled = T.build(f, BuildOptions(keys="full"))
        assert packed.packed and not relabelled.packed
        assert _key_dtype(f) == want
        assert packed.num_vertices == relabelled.num_vertices
        assert torch.equal(packed.apply(values), relabelled.apply(values))
        # the two number vertices in different orders: the same graph up to that renaming
        rename = torch.full((packed.num_vertices + 1,), packed.num_vertices, dtype=torch.long)
        rename[packed._vertex.long().flatten()] = relabelled._vertex.long().flatten()
        m = packed.num_vertices
        renamed = rename[packed._neighbours.long()]  # (d+1, 2, M) in packed vertex order
        assert torch.equal(renamed, relabelled._neighbours.long()[:, :, rename[:m]])


def _key_dtype(features: torch.Tensor) -> torch.dtype:
    """The key dtype build() picks for these (N, P, d) features."""
    n, _, d = features.shape
    el = T._elevate(features.reshape(-1, d))
    lo = [int(v // (d + 1)) - T._KEY_MARGIN for v in el.amin(0)[:d].tolist()]
    hi = [int(-(-v // (d + 1))) + T._KEY_MARGIN for v in el.amax(0)[:d].tolist()]
    layout = T._KeyLayout(lo, [h - l + 1 for l, h in zip(lo, hi)], n, d)
    return torch.int32 if layout.capacity < T._INT32_LIMIT else torch.int64


@pytest.mark.parametrize("d", [1, 3, 5, 6])
def test_neighbour_key_shifts_match_coordinate_deltas(d):
    """The packed-key shifts of the 2(d+1) blur neighbours are the coordinate deltas of
    the lattice directions, for vertices of every remainder r (q = (c - r) / (d+1))."""
    d1 = d + 1
    g = torch.Generator().manual_seed(d)
    lo, ranges = [-7] * d, [15] * d
    layout = T._KeyLayout(lo, ranges, batch=2, d=d)
    deltas = T._neighbour_deltas(d)

    def key(image: int, r: int, coords: list[int]) -> int:
        qs = [(c - r) // d1 for c in coords]
        assert all((c - r) % d1 == 0 for c in coords)
        return (
            r
            + sum((q - l) * s for q, l, s in zip(qs, lo, layout.strides))
            + (image * layout.image_stride)
        )

    for _ in range(20):
        r = int(torch.randint(0, d1, (1,), generator=g))
        qs = torch.randint(-3, 4, (d,), generator=g).tolist()
        coords = [r + d1 * q for q in qs]
        k0 = key(1, r, coords)
        for (wrap_r, shift, wrapped), delta in zip(layout.neighbour_shifts(), deltas):
            moved = [c + dc for c, dc in zip(coords, delta)]
            r2 = moved[0] % d1  # every coordinate of a lattice point has the same remainder
            assert k0 + (wrapped if r == wrap_r else shift) == key(1, r2, moved)


def test_blur_neighbours_are_mutual():
    """n2 of direction j is the inverse step of n1: where both exist they point back."""
    feats = bilateral_features(_guidance(3, 3, 20, 22), 10.0, 6.0)
    lat = Lattice(feats, backend="torch")._impl
    nb = lat._neighbours.long()
    m = lat.num_vertices
    for j in range(lat.dim + 1):
        n1, n2 = nb[j, 0], nb[j, 1]
        has = n1 < m
        assert bool((nb[j, 1][n1[has]] == torch.arange(m)[has]).all())
        has2 = n2 < m
        assert bool((nb[j, 0][n2[has2]] == torch.arange(m)[has2]).all())


@pytest.mark.parametrize("d", [4, 5, 6])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("normalize", [False, True])
def test_fused_quadratic_form_equals_filter_route(d, dtype, normalize):
    """The fused pass (value and volume from the splatted and blurred vertices, the
    gradient from the slice) equals quadratic_form computed from filter()."""
    g = torch.Generator().manual_seed(d)
    n, k, h, w = 2, 4, 12, 13
    feats = torch.rand(n, d, h, w, generator=g) * 3
    x = torch.rand(n, k, h, w, generator=g, dtype=torch.float64).softmax(1).to(dtype)
    r = (torch.rand(n, h, w, generator=g) > 0.25).to(dtype)
    lat = Lattice(feats, backend="torch")
    q = lat.quadratic_form(x, r, normalize=normalize, grad_scale=0.3)
    value, volume, grad = lat._quadratic_by_filter(x, r, normalize, 0.3)
    tol = {"rtol": 1e-5, "atol": 1e-6} if dtype == torch.float32 else {"rtol": 1e-11, "atol": 0}
    assert q.value.dtype == q.grad.dtype == dtype
    torch.testing.assert_close(q.value, value, **tol)
    torch.testing.assert_close(q.volume, volume, **tol)
    gtol = {"rtol": 1e-5, "atol": 1e-6 * float(grad.abs().max())} if dtype == torch.float32 else tol
    torch.testing.assert_close(q.grad, grad, **gtol)
    assert q.grad.is_contiguous()
    nograd = lat.quadratic_form(x, r, normalize=normalize)
    assert nograd.grad is None and torch.equal(nograd.value, q.value)


def test_build_is_independent_of_the_channel_count_and_reused():
    """Building needs the features only; one lattice filters any number of channels,
    and channel c of a K-channel filter equals filtering channel c alone."""
    feats = bilateral_features(_guidance(4, 3, 16, 18), 15.0, 8.0)
    lat = Lattice(feats, backend="torch")
    values = probs_like(5, 16, 18)
    many = lat.filter(values)
    for c in range(5):
        assert torch.allclose(many[:, c : c + 1], lat.filter(values[:, c : c + 1]), atol=1e-6)


def test_float64_path_reuses_the_float32_pattern():
    feats = bilateral_features(_guidance(5, 3, 10, 12), 15.0, 5.0)
    lat = Lattice(feats, backend="torch")
    values = probs_like(3, 10, 12).double()
    out64 = lat.filter(values)
    out32 = lat.filter(values.float())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64, out32.double(), rtol=1e-5, atol=1e-6)


def test_lattice_from_vertex_ids_alone_filters_the_same():
    """A TorchLattice made from per-point vertex ids and weights only (no sort
    permutation from the build: the splat rows are found again) filters identically."""
    feats = bilateral_features(_guidance(8, 3, 12, 14), 15.0, 5.0)
    built = Lattice(feats, backend="torch")._impl
    again = T.TorchLattice(
        batch=built.batch, num_pixels=built.num_pixels, dim=built.dim,
        vertex=built._vertex, weight=built._weight, neighbours=built._neighbours,
        num_vertices=built.num_vertices, packed=built.packed,
    )  # fmt: skip
    values = probs_like(3, 12, 14).flatten(2)
    assert torch.equal(again.apply(values), built.apply(values))
    x, r = values, torch.ones(1, 12 * 14)
    ours, theirs = again.quadratic_form(x, r, True, 1.0), built.quadratic_form(x, r, True, 1.0)
    assert all(torch.equal(a, b) for a, b in zip(ours[:3], theirs[:3]))


@pytest.mark.parametrize("d1", [2, 3, 6, 10, 130])
def test_descending_positions_are_a_stable_descending_sort(d1):
    """The pairwise ranks equal the positions of a stable descending sort, ties
    (many here: values on a coarse grid) to the lower coordinate first; the wide
    case takes the int32 counters."""
    g = torch.Generator().manual_seed(d1)
    diff = torch.randint(-3, 4, (257, d1), generator=g).float() / 2
    order = torch.sort(diff, dim=1, descending=True, stable=True).indices
    want = torch.empty_like(order).scatter_(
        1, order, torch.arange(d1).expand_as(order).contiguous()
    )
    got = T._descending_positions(diff)
    assert got.shape == (d1, 257)
    assert got.dtype == (torch.uint8 if d1 < 128 else torch.int32)
    assert torch.equal(got.t().long(), want)


def _grouped(monkeypatch, feats: torch.Tensor, group_pixels: int):
    """The CPU build split into groups of images (small groups for small test images)."""
    monkeypatch.setattr(T, "_GROUP_PIXELS", group_pixels)
    return T.build(feats)


@pytest.mark.parametrize("threads", [1, 2])
def test_image_groups_filter_as_the_batch_lattice(monkeypatch, threads):
    """On the CPU the batch is built and filtered as groups of images (tasks on the
    rloss pool, torch on one thread each): the same vertices, the same filter (to
    float32 rounding), the same quadratic form, whatever the thread count; torch's
    thread count is restored."""
    from rloss._threads import threads as scoped_threads

    n, d, p = 5, 5, 90
    g = torch.Generator().manual_seed(3)
    feats = torch.rand(n, p, d, generator=g) * 3
    feats[3] = feats[1]  # two equal images: their groups number vertices alike
    batch = T.build(feats, split=False)
    values = torch.rand(n, 4, p, generator=g)
    x = torch.rand(n, 4, p, generator=g, dtype=torch.float64).softmax(1)
    r = (torch.rand(n, p, generator=g) > 0.3).double()
    before = torch.get_num_threads()
    with scoped_threads(threads):
        grouped = _grouped(monkeypatch, feats, 2 * p)  # groups of 2, 2 and 1 images
        assert isinstance(grouped, T.ImageLattices) and grouped.bounds == [0, 2, 4, 5]
        assert grouped.num_vertices == batch.num_vertices and grouped.packed
        for transpose in (False, True):
            torch.testing.assert_close(
                grouped.apply(values, transpose=transpose),
                batch.apply(values, transpose=transpose), rtol=1e-6, atol=1e-6,
            )  # fmt: skip
        for normalize in (False, True):
            ours = grouped.quadratic_form(x, r, normalize, 0.3)
            theirs = batch.quadratic_form(x, r, normalize, 0.3)
            for a, b in zip(ours[:3], theirs[:3]):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        value, _, grad, _ = grouped.quadratic_form(x, r, True, None)
        assert grad is None and torch.equal(value, ours[0])
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="lattice was built for"):
        grouped.apply(values[:4])


def test_image_groups_are_cpu_only_and_whole_batch_when_small(monkeypatch):
    """Images of at least _GROUP_PIXELS pixels make one group each; smaller ones are
    grouped; split=False (what accelerators get) keeps one batch lattice."""
    feats = torch.rand(3, 64, 4) * 2
    monkeypatch.setattr(T, "_GROUP_PIXELS", 64)
    assert isinstance(T.build(feats), T.ImageLattices)
    assert len(T.build(feats).parts) == 3
    assert isinstance(T.build(feats, split=False), T.TorchLattice)
    monkeypatch.setattr(T, "_GROUP_PIXELS", 1000)
    assert isinstance(T.build(feats), T.TorchLattice)  # all three in one group


def test_image_group_errors_come_from_their_task(monkeypatch):
    """A bad image in one group raises the build's ValueError from the task pool."""
    feats = torch.rand(4, 50, 3)
    feats[2, 7, 0] = 1e13
    monkeypatch.setattr(T, "_GROUP_PIXELS", 50)
    from rloss._threads import threads as scoped_threads

    with scoped_threads(2), pytest.raises(ValueError, match="too large or not finite"):
        T.build(feats)


def test_densecrf_loss_on_image_groups_matches_numba(monkeypatch):
    """The DenseCRF loss (which runs its torch work under torch_threads(1)) on the
    grouped CPU lattice: value and gradient as the numba backend's."""
    from rloss._threads import threads as scoped_threads
    from rloss.losses import densecrf_loss

    n, k, h, w = 3, 4, 12, 14
    monkeypatch.setattr(T, "_GROUP_PIXELS", h * w)  # one group per image
    g = torch.Generator().manual_seed(11)
    image = torch.rand(n, 3, h, w, generator=g) * 255
    probs = torch.rand(n, k, h, w, generator=g).softmax(1)
    roi = (torch.rand(n, h, w, generator=g) > 0.2).float()
    grouped_calls = []
    real = T.ImageLattices.quadratic_form

    def counted(self, *args, **kwargs):
        grouped_calls.append(len(self.parts))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(T.ImageLattices, "quadratic_form", counted)
    out = {}
    with scoped_threads(2):
        for backend in ("torch", "numba"):
            p = probs.clone().requires_grad_()
            loss = densecrf_loss(image, p, roi, weight=1.0, sigma_xy=5.0, backend=backend)
            loss.backward()
            out[backend] = (loss.detach(), p.grad)
    assert grouped_calls == [n]  # the torch loss ran on the grouped lattice
    torch.testing.assert_close(out["torch"][0], out["numba"][0], rtol=1e-5, atol=0)
    gt, gn = out["torch"][1], out["numba"][1]
    torch.testing.assert_close(gt, gn, rtol=1e-5, atol=1e-6 * float(gn.abs().max()))


def test_filter_through_image_groups_backpropagates(monkeypatch):
    """Lattice.filter on grouped images (two threads): forward and backward as the
    batch lattice's, and the tasks record no autograd history of their own."""
    from rloss._threads import threads as scoped_threads

    g = torch.Generator().manual_seed(5)
    feats = torch.rand(3, 4, 9, 10, generator=g) * 3
    values = torch.rand(3, 2, 9, 10, generator=g)
    weights = torch.rand(3, 2, 9, 10, generator=g)
    grads = []
    for group_pixels in (90, 10**9):  # one image per group, then one batch lattice
        monkeypatch.setattr(T, "_GROUP_PIXELS", group_pixels)
        with scoped_threads(2):
            lat = Lattice(feats, backend="torch")
            v = values.clone().requires_grad_()
            out = lat.filter(v)
            (out * weights).sum().backward()
        assert isinstance(lat._impl, T.ImageLattices if group_pixels == 90 else T.TorchLattice)
        assert out.grad_fn is not None and out.grad_fn.next_functions[-1][0] is not None
        grads.append((out.detach(), v.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grads[0][1], grads[1][1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("caller_threads", [1, 2])
def test_densecrf_loss_runs_image_groups_on_the_callers_threads(monkeypatch, caller_threads):
    """In a process without numba (the torch backend never imports it) the groups' tasks
    take torch's count as the caller set it, not the one thread the loss holds torch at
    for its preparation (issue 14: that ran every group on the calling thread)."""
    from rloss import _threads
    from rloss._threads import torch_threads
    from rloss.losses import densecrf_loss

    n, k, h, w = 3, 4, 12, 14
    monkeypatch.setattr(T, "_GROUP_PIXELS", h * w)  # one group per image
    monkeypatch.setattr(_threads, "get_numba_threads", lambda **kw: None)  # as if not imported
    seen = []
    real = T.run_tasks

    def spy(fn, ntasks, nthreads=None):
        seen.append((ntasks, nthreads, torch.get_num_threads()))
        return real(fn, ntasks, nthreads)

    monkeypatch.setattr(T, "run_tasks", spy)
    g = torch.Generator().manual_seed(2)
    image = torch.rand(n, 3, h, w, generator=g) * 255
    probs = torch.rand(n, k, h, w, generator=g).softmax(1).requires_grad_()
    with torch_threads(caller_threads):
        densecrf_loss(image, probs, None, weight=1.0, sigma_xy=5.0, backend="torch").backward()
        assert torch.get_num_threads() == caller_threads  # restored after the loss
    if caller_threads == 1:
        assert seen == []  # one thread: the groups run in turn on the caller's
    else:
        assert seen and all(s == (n, 2, 1) for s in seen)  # 2 task threads, torch at 1
    assert probs.grad is not None and torch.isfinite(probs.grad).all()
