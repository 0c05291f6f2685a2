"""Public API of rloss.lattice: validation, layouts, dispatch, autograd plumbing."""

from __future__ import annotations

import importlib.util

import pytest
import torch

import rloss.lattice._torch as torch_backend
from rloss.lattice import BACKENDS, Lattice, bilateral_features, default_backend, gaussian_filter


def _image(n: int = 2, c: int = 3, h: int = 6, w: int = 7, device: torch.device | str = "cpu"):
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(n, c, h, w, generator=gen) * 255).to(device)


# ----------------------------------------------------------------------------- features


def test_bilateral_features_layout():
    image = _image(n=1, c=3, h=4, w=5)
    feats = bilateral_features(image, sigma_rgb=10.0, sigma_xy=2.0)
    assert feats.shape == (1, 5, 4, 5) and feats.dtype == torch.float32
    assert torch.equal(feats[0, 0, 2], torch.arange(5.0) / 2.0)  # x = column index
    assert torch.equal(feats[0, 1, :, 3], torch.arange(4.0) / 2.0)  # y = row index
    assert torch.allclose(feats[:, 2:], image / 10.0)


@pytest.mark.parametrize("channels", [1, 8])
def test_bilateral_features_any_channel_count(channels, backend, device):
    image = _image(n=1, c=channels, device=device)
    feats = bilateral_features(image, 15.0, 5.0)
    assert feats.shape == (1, 2 + channels, 6, 7) and feats.device == image.device
    out = Lattice(feats, backend=backend).filter(torch.ones(1, 2, 6, 7, device=device))
    assert out.shape == (1, 2, 6, 7) and bool(torch.isfinite(out).all())


def test_bilateral_features_half_precision_image():
    image = _image()
    assert torch.allclose(
        bilateral_features(image.half(), 15.0, 5.0), bilateral_features(image, 15.0, 5.0), rtol=1e-3
    )


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["sigma_rgb", "sigma_xy"])
def test_bilateral_features_rejects_bad_sigma(name, bad):
    kwargs = {"sigma_rgb": 15.0, "sigma_xy": 5.0, name: bad}
    with pytest.raises(ValueError, match=name):
        bilateral_features(_image(), **kwargs)


@pytest.mark.parametrize(
    "shape",
    [(0, 3, 4, 4), (1, 0, 4, 4), (1, 3, 0, 4), (2, 3, 4, 0)],
    ids=["batch", "chan", "h", "w"],
)
def test_empty_image_is_an_error(shape):
    with pytest.raises(ValueError, match="non-empty"):
        bilateral_features(torch.zeros(shape), 15.0, 5.0)


def test_empty_features_is_an_error():
    with pytest.raises(ValueError, match="non-empty"):
        Lattice(torch.zeros(0, 5, 4, 4))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_image_names_image(bad):
    image = _image()
    image[1, 2, 3, 4] = bad
    with pytest.raises(ValueError, match="image"):
        bilateral_features(image, 15.0, 5.0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_values_names_values(bad, backend, device):
    lat = Lattice(bilateral_features(_image(device=device), 15.0, 5.0), backend=backend)
    values = torch.rand(2, 3, 6, 7, device=device)
    values[0, 1, 2, 3] = bad
    with pytest.raises(ValueError, match="values"):
        lat.filter(values)
    with pytest.raises(ValueError, match="values"):
        gaussian_filter(
            bilateral_features(_image(device=device), 15.0, 5.0), values, backend=backend
        )


def test_non_finite_features_names_features():
    feats = bilateral_features(_image(), 15.0, 5.0)
    feats[0, 3, 1, 1] = float("nan")
    with pytest.raises(ValueError, match="features"):
        Lattice(feats)


def test_image_wrong_rank_or_dtype():
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        bilateral_features(torch.rand(3, 4, 4), 15.0, 5.0)
    with pytest.raises(ValueError, match="floating"):
        bilateral_features(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), 15.0, 5.0)


# ----------------------------------------------------------------------------- lattice checks


@pytest.mark.parametrize(
    "shape",
    [(2, 3, 6, 8), (2, 3, 7, 6), (1, 3, 6, 7), (3, 3, 6, 7), (2, 3, 42), (2, 6, 7)],
    ids=["width", "height-swap", "batch-small", "batch-big", "flat", "3d"],
)
def test_mismatched_values_shape_names_both_shapes(shape, backend, device):
    feats = bilateral_features(_image(device=device), 15.0, 5.0)
    lat = Lattice(feats, backend=backend)
    with pytest.raises(ValueError) as info:
        lat.filter(torch.rand(shape, device=device))
    msg = str(info.value)
    assert str(tuple(shape)) in msg and "(6, 7)" in msg and "values" in msg


def test_gaussian_filter_mismatched_shapes_names_both():
    feats = bilateral_features(_image(), 15.0, 5.0)
    with pytest.raises(ValueError) as info:
        gaussian_filter(feats, torch.rand(2, 3, 6, 8), backend="torch")
    assert "(2, 5, 6, 7)" in str(info.value) and "(2, 3, 6, 8)" in str(info.value)


def test_mismatched_devices():
    """A tensor on another device is rejected before any computation ('meta' stands in
    for a second device on CPU-only machines)."""
    feats = bilateral_features(_image(), 15.0, 5.0)
    values = torch.empty(2, 3, 6, 7, device="meta")
    with pytest.raises(ValueError, match="meta"):
        Lattice(feats, backend="torch").filter(values)
    with pytest.raises(ValueError, match="meta"):
        gaussian_filter(feats, values, backend="torch")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mismatched_devices_cuda():
    feats = bilateral_features(_image(), 15.0, 5.0)
    with pytest.raises(ValueError, match="cuda"):
        Lattice(feats, backend="torch").filter(torch.rand(2, 3, 6, 7, device="cuda"))


def test_features_requiring_grad_are_rejected():
    feats = bilateral_features(_image(), 15.0, 5.0).requires_grad_(True)
    with pytest.raises(ValueError, match="grad"):
        Lattice(feats, backend="torch")
    with pytest.raises(ValueError, match="grad"):
        gaussian_filter(feats, torch.rand(2, 3, 6, 7), backend="torch")


def test_image_requiring_grad_gives_a_clear_error():
    image = _image().requires_grad_(True)
    with pytest.raises(ValueError, match="detach"):
        Lattice(bilateral_features(image, 15.0, 5.0), backend="torch")


def test_unknown_backend():
    with pytest.raises(ValueError, match="backend"):
        Lattice(bilateral_features(_image(), 15.0, 5.0), backend="cuda")


def test_non_float_values_rejected():
    lat = Lattice(bilateral_features(_image(), 15.0, 5.0), backend="torch")
    with pytest.raises(ValueError, match="floating"):
        lat.filter(torch.ones(2, 3, 6, 7, dtype=torch.int64))


def test_values_with_zero_channels_rejected():
    lat = Lattice(bilateral_features(_image(), 15.0, 5.0), backend="torch")
    with pytest.raises(ValueError, match="channel"):
        lat.filter(torch.ones(2, 0, 6, 7))


def test_torch_build_rejects_huge_features():
    with pytest.raises(ValueError, match="too large"):
        torch_backend.build(torch.full((1, 4, 5), 1e15))


def test_torch_build_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"\(N, P, d\)"):
        torch_backend.build(torch.zeros(4, 5))
    with pytest.raises(ValueError, match="non-empty"):
        torch_backend.build(torch.zeros(1, 0, 5))


# ----------------------------------------------------------------------------- dispatch


def test_backends_registry():
    assert set(BACKENDS) == {"torch", "numba", "exact"}


def test_default_backend():
    has_numba = importlib.util.find_spec("rloss.lattice._numba") is not None
    assert default_backend(torch.device("cpu")) == ("numba" if has_numba else "torch")
    assert default_backend(torch.device("cuda")) == "torch"
    assert default_backend(torch.device("mps")) == "torch"


def test_default_backend_used_by_lattice(device):
    lat = Lattice(bilateral_features(_image(device=device), 15.0, 5.0))
    assert lat.backend == default_backend(device)
    assert "Lattice(" in repr(lat) and lat.backend in repr(lat)


# ----------------------------------------------------------------------------- layouts, autograd


def test_flat_layout_equals_image_layout(backend, device):
    feats = bilateral_features(_image(device=device), 15.0, 5.0)
    values = torch.rand(2, 4, 6, 7, device=device)
    img = Lattice(feats, backend=backend).filter(values)
    flat = Lattice(feats.flatten(2), backend=backend).filter(values.flatten(2))
    assert flat.shape == (2, 4, 42)
    assert torch.allclose(flat.view_as(img), img, rtol=1e-6, atol=1e-6)


def test_filter_does_not_modify_inputs(backend, device):
    feats = bilateral_features(_image(device=device), 15.0, 5.0)
    values = torch.rand(2, 3, 6, 7, device=device)
    feats_copy, values_copy = feats.clone(), values.clone()
    Lattice(feats, backend=backend).filter(values)
    assert torch.equal(feats, feats_copy) and torch.equal(values, values_copy)


def test_autograd_reaches_values_only(backend, device):
    feats = bilateral_features(_image(device=device), 15.0, 5.0)
    lat = Lattice(feats, backend=backend)
    values = torch.rand(2, 3, 6, 7, device=device, requires_grad=True)
    out = lat.filter(values)
    assert out.requires_grad and not feats.requires_grad
    grad_out = torch.rand_like(out)
    (grad,) = torch.autograd.grad(out, values, grad_out)
    assert torch.allclose(grad, lat.filter(grad_out), rtol=1e-6, atol=1e-6)


def test_double_backward(backend, device):
    """The backward is itself a filter, so second derivatives work too."""
    lat = Lattice(bilateral_features(_image(device=device), 15.0, 5.0), backend=backend)
    values = torch.rand(2, 3, 6, 7, device=device, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(lat.filter(values).square().sum(), values, create_graph=True)
    (hvp,) = torch.autograd.grad(grad.sum(), values)
    # d/dv sum(2 W^T W v) = 2 W^T W 1, with W^T ~ W as in the backward
    ones = torch.ones_like(values)
    assert torch.allclose(hvp, 2 * lat.filter(lat.filter(ones)), rtol=1e-10, atol=1e-10)


def test_no_grad_mode(backend, device):
    lat = Lattice(bilateral_features(_image(device=device), 15.0, 5.0), backend=backend)
    values = torch.rand(2, 3, 6, 7, device=device, requires_grad=True)
    with torch.no_grad():
        out = lat.filter(values)
    assert not out.requires_grad


def test_lattice_is_reusable(backend, device):
    """Build once, filter many times: repeated calls give identical results."""
    lat = Lattice(bilateral_features(_image(device=device), 15.0, 5.0), backend=backend)
    values = torch.rand(2, 3, 6, 7, device=device)
    first = lat.filter(values)
    lat.filter(torch.rand(2, 5, 6, 7, device=device))
    assert torch.equal(lat.filter(values), first)


def test_exact_module_is_a_deprecated_alias():
    import importlib
    import sys

    import rloss.lattice as lattice

    sys.modules.pop("rloss.lattice.exact", None)
    with pytest.warns(DeprecationWarning, match="rloss.lattice.exact is deprecated"):
        old = importlib.import_module("rloss.lattice.exact")
    assert old.exact_filter is lattice.exact_filter


def test_exact_filter_validates_shapes():
    from rloss.lattice import exact_filter

    with pytest.raises(ValueError, match=r"\(1, 12, 5\).*\(1, 2, 13\)"):
        exact_filter(torch.zeros(1, 12, 5), torch.zeros(1, 2, 13))
    with pytest.raises(ValueError, match=r"\(N, P, d\)"):
        exact_filter(torch.zeros(12, 5), torch.zeros(1, 2, 12))


def test_threads_context_sets_and_restores_torch_and_numba():
    """rloss._threads.threads: both runtimes on n threads inside, the old counts after
    (numba's pool launch must not undo torch's setting)."""
    numba = pytest.importorskip("numba")
    from rloss._threads import numba_threads, threads

    before = (torch.get_num_threads(), numba.get_num_threads())
    with threads(1):
        assert (torch.get_num_threads(), numba.get_num_threads()) == (1, 1)
    assert (torch.get_num_threads(), numba.get_num_threads()) == before
    with numba_threads(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before[1]
    with pytest.raises(ValueError, match="threads: want an integer >= 1"):
        with threads(0):
            pass


def test_lattice_threads_is_the_smaller_of_torch_and_numba(monkeypatch):
    """The CPU lattice runs on min(torch's count as the caller set it, numba's count):
    a process that gives torch one thread gets a one-thread loss (torchrun sets
    OMP_NUM_THREADS=1; numba's own default would be every CPU)."""
    numba = pytest.importorskip("numba")
    from rloss import _threads
    from rloss._threads import lattice_threads, numba_threads, threads, torch_threads

    two = min(2, numba.config.NUMBA_NUM_THREADS)
    with threads(2):
        assert lattice_threads() == two
        with torch_threads(1):
            assert lattice_threads() == 1
        with numba_threads(1):
            assert lattice_threads() == 1
        # inside the losses' one-thread preparation, the caller's count still applies
        with torch_threads(1, remember_caller=True):
            assert lattice_threads() == two
    with torch_threads(2):
        monkeypatch.setattr(_threads, "get_numba_threads", lambda **kw: None)  # no numba
        assert lattice_threads() == 2


@pytest.mark.parametrize("torch_n", [1, 2])
def test_numba_densecrf_loss_takes_the_callers_torch_thread_count(monkeypatch, torch_n):
    """The numba backend's tasks run on as many threads as the caller gave torch (numba's
    count set to 2 throughout), and the result does not depend on it."""
    numba = pytest.importorskip("numba")
    from rloss._threads import threads, torch_threads
    from rloss.lattice._numba import lattice as numba_lattice
    from rloss.losses import densecrf_loss

    seen = []
    real = numba_lattice._team.run

    def spy(launcher, kernel, ntasks, nthreads, args):
        seen.append(nthreads)
        return real(launcher, kernel, ntasks, nthreads, args)

    monkeypatch.setattr(numba_lattice._team, "run", spy)
    g = torch.Generator().manual_seed(3)
    n, k, h, w = 8, 4, 64, 72  # 36 864 pixels: above the serial threshold
    image = torch.rand(n, 3, h, w, generator=g) * 255
    probs = torch.rand(n, k, h, w, generator=g).softmax(1)
    out = []
    for caller in (2, torch_n):
        seen.clear()
        p = probs.clone().requires_grad_()
        with threads(2), torch_threads(caller):
            loss = densecrf_loss(image, p, None, weight=1.0, sigma_xy=5.0, backend="numba")
        loss.backward()
        out.append((loss.detach(), p.grad, list(seen)))
    assert set(out[0][2]) == {min(2, numba.config.NUMBA_NUM_THREADS)}
    assert set(out[1][2]) == {min(torch_n, numba.config.NUMBA_NUM_THREADS)}
    assert torch.equal(out[0][0], out[1][0]) and torch.equal(out[0][1], out[1][1])
