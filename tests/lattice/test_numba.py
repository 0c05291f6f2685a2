"""Numba-backend specifics: reference parity, determinism, thread independence, float64.

The cross-backend battery (exactness, edge cases, autograd) lives in the other
files of this folder; these tests call the backend module directly.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

numba = pytest.importorskip("numba")

from rloss.lattice import BuildOptions, _numba, bilateral_features  # noqa: E402
from rloss.lattice._numba import _embed, _layout  # noqa: E402

#: Use the threads even for small problems (the thread-count tests need it).
THREADED = BuildOptions(serial_below=0)

#: Tolerance A of ../shared/reference/README.md: max|out - AS| <= TOL_A * max|AS|.
TOL_A = 1e-4
#: Golden cases: (key prefix, sigma_rgb, sigma_xy); None = read sigmas from the file.
GOLDEN_CASES = ["case1", "case2", "case3", "case4_scaled"]


def _flat_features(image: torch.Tensor, sigma_rgb: float, sigma_xy: float) -> torch.Tensor:
    feats = bilateral_features(image, sigma_rgb, sigma_xy)
    n, d = feats.shape[:2]
    return feats.reshape(n, d, -1).transpose(1, 2).contiguous()


def _golden_inputs(golden: dict, case: str):
    if case == "case4_scaled":
        image = golden["case4_scaled_image"]
        values = golden["case4_scaled_seg"] * golden["case4_scaled_roi"][:, None]
        sigma_rgb = float(golden["case4_sigma_rgb"])
        sigma_xy = float(golden["case4_sigma_xy"]) * float(golden["case4_scale_factor"])
        expected = golden["case4_scaled_AS"]
    else:
        image = golden[f"{case}_image"]
        values = golden[f"{case}_S"]
        sigma_rgb = float(golden[f"{case}_sigma_rgb"])
        sigma_xy = float(golden[f"{case}_sigma_xy"])
        expected = golden[f"{case}_AS"]
    return torch.from_numpy(image), torch.from_numpy(values), sigma_rgb, sigma_xy, expected


def _random_problem(n: int, k: int, h: int, w: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    # smooth-ish image plus noise: realistic vertex counts, several blocks per image
    base = torch.rand(n, 3, h // 8 + 1, w // 8 + 1, generator=g) * 255
    image = torch.nn.functional.interpolate(base, size=(h, w), mode="bilinear")
    image = (image + 8 * torch.randn(n, 3, h, w, generator=g)).clamp(0, 255)
    values = torch.rand(n, k, h * w, generator=g).softmax(1).contiguous()
    return _flat_features(image, 15.0, 20.0), values


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_parity(golden, case):
    image, values, sigma_rgb, sigma_xy, expected = _golden_inputs(golden, case)
    n, k, h, w = values.shape
    lat = _numba.build(_flat_features(image, sigma_rgb, sigma_xy))
    out = lat.apply(values.reshape(n, k, h * w).contiguous()).reshape(n, k, h, w)
    assert out.dtype == torch.float32
    err = np.abs(out.numpy() - expected).max()
    assert err <= TOL_A * np.abs(expected).max(), f"{case}: max error {err}"


@pytest.mark.parametrize("case", GOLDEN_CASES)
def test_golden_parity_float64(golden, case):
    image, values, sigma_rgb, sigma_xy, expected = _golden_inputs(golden, case)
    n, k, h, w = values.shape
    lat = _numba.build(_flat_features(image, sigma_rgb, sigma_xy))
    out = lat.apply(values.reshape(n, k, h * w).double().contiguous())
    assert out.dtype == torch.float64
    err = np.abs(out.reshape(n, k, h, w).numpy() - expected).max()
    assert err <= TOL_A * np.abs(expected).max(), f"{case}: max error {err}"


@pytest.mark.parametrize(("n", "h", "w"), [(1, 96, 128), (3, 64, 80), (9, 32, 40)])
def test_deterministic(n, h, w):
    feats, values = _random_problem(n, 5, h, w)
    first = _numba.build(feats, THREADED).apply(values)
    second = _numba.build(feats, THREADED).apply(values)
    assert torch.equal(first, second)


@pytest.mark.parametrize(("n", "h", "w"), [(1, 96, 128), (2, 80, 100)])
def test_thread_count_independent(n, h, w):
    from rloss._threads import threads

    feats, values = _random_problem(n, 4, h, w, seed=1)
    with threads(1):
        one = _numba.build(feats, THREADED).apply(values)
    with threads(2):  # torch's count caps the lattice's: set both
        two = _numba.build(feats, THREADED).apply(values)
    # the task partition depends on the shapes only, so the sums are bitwise equal
    torch.testing.assert_close(one, two, rtol=0, atol=0)


def test_multi_block_matches_single_block():
    # N=1 splits the image into blocks with per-block vertex tables; stacking
    # the same image 8 times gives one block per image: same numbers either way
    feats, values = _random_problem(1, 3, 96, 128, seed=2)
    assert _layout.blocks_per_image(1, 96 * 128) > 1
    single = _numba.build(feats).apply(values)
    batch = _numba.build(feats.expand(8, -1, -1).contiguous())
    assert batch.nblk == 1
    stacked = batch.apply(values.expand(8, -1, -1).contiguous())
    for i in range(8):
        torch.testing.assert_close(stacked[i], single[0], rtol=1e-5, atol=1e-6)


def test_images_never_share_vertices():
    feats, values = _random_problem(2, 2, 24, 32, seed=3)
    both = _numba.build(feats).apply(values)
    for i in range(2):
        alone = _numba.build(feats[i : i + 1].contiguous()).apply(values[i : i + 1].contiguous())
        torch.testing.assert_close(both[i : i + 1], alone, rtol=1e-5, atol=1e-6)


def test_float64_close_to_float32():
    feats, values = _random_problem(2, 3, 40, 48, seed=4)
    lat = _numba.build(feats)
    out32 = lat.apply(values)
    out64 = lat.apply(values.double())
    assert out64.dtype == torch.float64
    torch.testing.assert_close(out64.float(), out32, rtol=1e-5, atol=1e-5)


def test_small_problems_restore_thread_count():
    before = numba.get_num_threads()
    feats, values = _random_problem(1, 2, 16, 16, seed=7)
    _numba.build(feats).apply(values)
    assert numba.get_num_threads() == before


def test_output_is_new_tensor_and_input_untouched():
    feats, values = _random_problem(1, 2, 16, 16, seed=5)
    keep = values.clone()
    out = _numba.build(feats).apply(values)
    assert out.data_ptr() != values.data_ptr()
    assert torch.equal(values, keep)


def test_any_feature_dimension():
    g = torch.Generator().manual_seed(6)
    for d in (1, 2, 3, 8):
        feats = (torch.rand(2, 300, d, generator=g) * 4).contiguous()
        values = torch.rand(2, 3, 300, generator=g)
        out = _numba.build(feats).apply(values)
        assert out.shape == values.shape and bool(torch.isfinite(out).all())
        assert float(out.min()) >= 0.0


@pytest.mark.parametrize(
    ("features", "match"),
    [
        (torch.zeros(0, 4, 5), "non-empty"),
        (torch.zeros(2, 4), r"\(N, P, d\)"),
        (torch.zeros(1, 4, 5, dtype=torch.float64), "float32"),
        (torch.full((1, 4, 5), 1e12), "overflow"),
    ],
)
def test_build_rejects_bad_features(features, match):
    with pytest.raises(ValueError, match=match):
        _numba.build(features)


@pytest.mark.parametrize(
    ("values", "match"),
    [
        (torch.zeros(1, 2, 7), "shape"),
        (torch.zeros(2, 2, 8), "shape"),
        (torch.zeros(1, 2, 8, dtype=torch.float16), "float32 or float64"),
        (torch.zeros(1, 0, 8), "at least one channel"),
    ],
)
def test_apply_rejects_bad_values(values, match):
    lat = _numba.build(torch.rand(1, 8, 5))
    with pytest.raises(ValueError, match=match):
        lat.apply(values)


@pytest.mark.parametrize("d", [1, 2, 5, 9])
def test_barycentric_weights_match_torch_backend(d):
    # the numba build computes the weights coordinate-major and branch-free; the
    # torch backend scatters them like the reference: same numbers (the last
    # rounding of weight 0 is done in float64 by numba, in float32 by torch)
    from rloss.lattice import _torch

    g = torch.Generator().manual_seed(10 + d)
    feats = (torch.rand(2, 500, d, generator=g) * 6).contiguous()
    feats[0, :50] = feats[0, 50:100]  # repeated points: simplex reuse
    lat = _numba.build(feats)
    _, _, bary = _torch._simplex(_torch._elevate(feats.reshape(-1, d)))
    ours = torch.from_numpy(lat.arrays.bary).view(-1, d + 1)
    torch.testing.assert_close(ours[:, 1:], bary[:, 1:], rtol=0, atol=0)
    torch.testing.assert_close(ours[:, 0], bary[:, 0], rtol=0, atol=1e-6)
    assert float(ours.min()) >= -1e-6
    torch.testing.assert_close(ours.sum(1), torch.ones(len(ours)), rtol=0, atol=1e-5)


def test_pixel_vertices_are_distinct_and_in_range():
    feats, _ = _random_problem(2, 1, 40, 48, seed=11)
    lat = _numba.build(feats)
    off = torch.from_numpy(lat.off.astype(np.int64)).view(2 * 40 * 48, -1)
    assert int(off.min()) >= 0 and int(off.max()) < lat.num_vertices
    assert bool((off.sort(1).values.diff(1) > 0).all())  # d+1 different vertices per pixel
    # images never share a vertex
    first, second = off[: 40 * 48].unique(), off[40 * 48 :].unique()
    assert int(first.max()) < int(second.min())


@pytest.mark.parametrize(("n", "h", "w"), [(1, 96, 128), (3, 40, 48)])
def test_packed_keys_match_full_keys(n, h, w):
    # vertex keys packed into one int64 (default when they fit) and the full-key
    # path (BuildOptions(keys="full")) give the same lattice, bit for bit
    feats, values = _random_problem(n, 4, h, w, seed=5)
    packed = _numba.build(feats)
    assert packed.packed
    full = _numba.build(feats, BuildOptions(keys="full"))
    assert not full.packed
    assert full.num_vertices == packed.num_vertices
    np.testing.assert_array_equal(full.arrays.nbr, packed.arrays.nbr)
    np.testing.assert_array_equal(full.arrays.loc, packed.arrays.loc)
    assert torch.equal(full.apply(values), packed.apply(values))
    assert torch.equal(full.apply(values.double()), packed.apply(values.double()))


def test_packed_keys_out_of_range_fall_back():
    # packing ranges too narrow for the data (a safety net no input reaches by
    # design): the kernel detects it and the build falls back to full keys
    # instead of letting keys collide
    feats, values = _random_problem(2, 3, 40, 48, seed=6)
    expected = _numba.build(feats).apply(values)
    lat = _numba.build(feats)
    rng = _embed.ranges(feats.numpy())
    lat._pack = _embed.pack_params(rng[0] * 0.0, rng[1] * 0.0, lat._scale)
    assert not lat.packed
    assert torch.equal(lat.apply(values), expected)


def test_wide_features_not_packed():
    # coordinates spanning ~2^20 each over 5 dimensions need more than 62 bits
    g = torch.Generator().manual_seed(7)
    feats = (torch.rand(1, 300, 5, generator=g) * 2.0**17).contiguous()
    values = torch.rand(1, 2, 300, generator=g)
    lat = _numba.build(feats)
    assert not lat.packed
    out = lat.apply(values)
    assert out.shape == values.shape and bool(torch.isfinite(out).all())


@pytest.mark.parametrize("shape", [(1, 7, 3), (2, 1, 5), (3, 130, 4), (2, 64, 2), (1, 200, 5)])
def test_range_pass_equals_numpy_and_flags_non_finite(shape):
    a = (np.random.default_rng(0).random(shape, dtype=np.float32) * 10 - 3).astype(np.float32)
    want = np.stack([a.reshape(-1, shape[2]).min(0), a.reshape(-1, shape[2]).max(0)])
    assert np.array_equal(_embed.ranges(a), want)
    for bad in (np.inf, -np.inf, np.nan):
        b = a.copy()
        b[-1, -1, -1] = bad
        assert np.isnan(_embed.ranges(b)).all()


# ------------------------------------------------ feature dimensions of volumes (d = 4..6)


@pytest.mark.parametrize(("d", "gain", "worst"), [(4, (0.45, 0.75), 0.15), (6, (0.22, 0.5), 0.3)])
def test_volume_feature_dimensions_track_exact(d, gain, worst):
    """d = 4 and 6 (what 3-D losses use): filter and fused quadratic form against the
    exact backend, up to the lattice's gain (measured: d=4 0.60 / 0.10 relative error,
    d=6 0.35 / 0.18), and the fused kernels against the filter path on the same lattice."""
    import torch.nn.functional as F

    from rloss.lattice import Lattice

    g = torch.Generator().manual_seed(d)
    small = torch.rand(1, d - 2, 5, 6, generator=g) * 255
    image = F.interpolate(small, size=(20, 24), mode="bicubic", align_corners=False).clamp(0, 255)
    feats = bilateral_features(image, 20.0, 6.0)
    assert feats.shape[1] == d
    logits = torch.randn(1, 3, 5, 6, generator=g) * 2
    probs = F.interpolate(logits, size=(20, 24), mode="bicubic", align_corners=False).softmax(1)
    ex, nb = Lattice(feats, backend="exact"), Lattice(feats, backend="numba")
    out, want = nb.filter(probs).double(), ex.filter(probs.double())
    c = float((out * want).sum() / (want * want).sum())
    assert gain[0] <= c <= gain[1]
    assert float((out - c * want).norm() / (c * want).norm()) <= worst
    q = nb.quadratic_form(probs, grad_scale=1.0)
    qe = ex.quadratic_form(probs.double(), grad_scale=1.0)
    cq = float(q.value / qe.value)
    assert abs(cq - c) <= 0.1
    assert float((q.grad.double() - cq * qe.grad).norm() / (cq * qe.grad).norm()) <= worst + 0.1
    # the fused per-image kernels against the generic path on the same (numba) lattice
    e, _, gr = nb._quadratic_by_filter(probs, torch.ones(1, 20, 24), False, 1.0)
    torch.testing.assert_close(q.value, e, rtol=1e-5, atol=0)
    torch.testing.assert_close(q.grad, gr, rtol=1e-5, atol=1e-6 * float(gr.abs().max()))


# ------------------------------------------------ the task pool


@pytest.mark.parametrize("shape", [(3, 40, 36), (1, 96, 100)])
def test_fused_quadratic_form_is_thread_count_independent(shape):
    """Tasks depend on the shapes only (one per image, or per block for one 96x100
    image): bitwise equal results whatever the thread count."""
    from rloss._threads import threads
    from rloss.lattice import Lattice

    n, h, w = shape
    g = torch.Generator().manual_seed(4)
    feats = bilateral_features(torch.rand(n, 3, h, w, generator=g) * 255, 15.0, 8.0)
    probs = torch.randn(n, 5, h, w, generator=g).softmax(1)
    got = []
    for n in (1, 2):
        with threads(n):
            lat = Lattice(feats, backend="numba", options=THREADED)
            q = lat.quadratic_form(probs, grad_scale=1.0)
        got.append(q)
    assert torch.equal(got[0].value, got[1].value) and torch.equal(got[0].grad, got[1].grad)


def test_run_tasks_runs_every_task_once_and_reraises():
    import threading

    from rloss._threads import run_tasks

    seen, slots, lock = [], set(), threading.Lock()

    def task(t, slot):
        with lock:
            seen.append(t)
            slots.add(slot)

    run_tasks(task, 50, 3)
    assert sorted(seen) == list(range(50)) and slots <= {0, 1, 2}
    run_tasks(task, 0, 2)  # no tasks: nothing runs

    def bad(t, slot):
        if t == 7:
            raise RuntimeError("task 7 failed")

    with pytest.raises(RuntimeError, match="task 7 failed"):
        run_tasks(bad, 20, 2)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_run_tasks_works_in_a_forked_child():
    """A data-loader style fork after the pool exists: the child makes its own threads."""
    import multiprocessing as mp

    from rloss._threads import run_tasks

    run_tasks(lambda t, slot: None, 4, 2)  # the parent's pool exists
    ctx = mp.get_context("fork")
    with ctx.Pool(1) as pool:
        got = pool.apply_async(_fork_child_sum, (8,)).get(timeout=60)  # hangs without the fix
    assert got == sum(t * t for t in range(8))


def _fork_child_sum(n):
    from rloss._threads import run_tasks

    out = [0] * n
    run_tasks(lambda t, slot: out.__setitem__(t, t * t), n, 2)
    return sum(out)


def test_stale_kernel_cache_is_dropped_when_any_source_changes(tmp_path):
    # numba checks only the defining file's timestamp; a changed constant imported
    # from a sibling module must still invalidate every cached kernel of the package
    from rloss.lattice._numba import _invalidate_stale_cache

    (tmp_path / "_layout.py").write_text("TILE = 64\n")
    (tmp_path / "_filter.py").write_text("from _layout import TILE\n")
    cache = tmp_path / "__pycache__"
    cache.mkdir()
    kernel = cache / "_filter.splat-1.py311.nbi"
    kernel.write_text("old")
    assert _invalidate_stale_cache(tmp_path) is True  # no stamp yet: dropped
    assert not kernel.exists()
    kernel.write_text("compiled against TILE = 64")
    assert _invalidate_stale_cache(tmp_path) is False  # unchanged sources: kept
    assert kernel.exists()
    (tmp_path / "_layout.py").write_text("TILE = 32\n")
    assert _invalidate_stale_cache(tmp_path) is True
    assert not kernel.exists() and not (cache / "_filter.splat-1.py311.nbc").exists()
    assert (cache / "rloss-kernels.sha256").is_file()
