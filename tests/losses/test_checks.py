"""Bad input to the regularizers: each case a clear ValueError (or one warning)."""

from __future__ import annotations

import warnings

import pytest
import torch

from rloss.losses import _checks, densecrf_loss, ncut_loss

KW = dict(weight=1.0, sigma_xy=5.0, backend="exact")


def _inputs(n=1, k=3, h=6, w=7):
    g = torch.Generator().manual_seed(0)
    image = torch.rand(n, 3, h, w, generator=g) * 255
    probs = torch.randn(n, k, h, w, generator=g).softmax(1)
    return image, probs


@pytest.fixture
def fresh_warnings():
    _checks.reset_warn_once()
    yield
    _checks.reset_warn_once()


def test_nan_probs():
    image, probs = _inputs()
    probs[0, 1, 2, 3] = float("nan")
    with pytest.raises(ValueError, match="probs contains NaN"):
        densecrf_loss(image, probs, **KW)


def test_nan_image():
    image, probs = _inputs()
    image[0, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="image contains NaN or Inf"):
        densecrf_loss(image, probs, **KW)


def test_probs_not_a_distribution():
    image, probs = _inputs()
    with pytest.raises(ValueError, match="probs must sum to 1 over the class dimension"):
        densecrf_loss(image, probs * 0.5, **KW)
    with pytest.raises(ValueError, match="did you pass logits"):
        densecrf_loss(image, torch.randn(1, 3, 6, 7) * 4, **KW)


def test_probs_outside_roi_need_not_sum_to_one():
    image, probs = _inputs()
    roi = torch.ones(1, 6, 7)
    roi[0, :2] = 0
    probs = probs.clone()
    probs[:, :, :2] = 0.0
    densecrf_loss(image, probs, roi, **KW)


@pytest.mark.parametrize(
    ("image_shape", "probs_shape", "match"),
    [
        ((1, 3, 6, 7), (1, 3, 6), r"probs must have shape \(N, K, H, W\)"),
        ((3, 6, 7), (1, 3, 6, 7), r"image must have shape \(N, C, H, W\)"),
        ((1, 3, 6, 8), (1, 3, 6, 7), "image must have shape"),
        ((2, 3, 6, 7), (1, 3, 6, 7), "image must have shape"),
    ],
)
def test_wrong_shapes(image_shape, probs_shape, match):
    image = torch.rand(image_shape) * 255
    probs = torch.rand(probs_shape)
    if probs.dim() == 4:
        probs = probs.softmax(1)
    with pytest.raises(ValueError, match=match):
        densecrf_loss(image, probs, **KW)


def test_roi_shape_dtype_and_range():
    image, probs = _inputs()
    with pytest.raises(ValueError, match=r"roi must have shape \(N, H, W\)"):
        densecrf_loss(image, probs, torch.ones(1, 1, 6, 7), **KW)
    with pytest.raises(ValueError, match="roi must have shape"):
        densecrf_loss(image, probs, torch.ones(1, 7, 6), **KW)
    with pytest.raises(ValueError, match="roi must be a float or bool"):
        densecrf_loss(image, probs, torch.ones(1, 6, 7, dtype=torch.long), **KW)
    with pytest.raises(ValueError, match=r"roi must hold values in 0\.\.1"):
        densecrf_loss(image, probs, torch.full((1, 6, 7), 2.0), **KW)


def test_k_mismatch_for_size_bounds():
    from rloss.losses import size_loss

    _, probs = _inputs(k=3)
    with pytest.raises(ValueError, match=r"upper must have shape \(N, K\) = \(1, 3\)"):
        size_loss(probs, torch.zeros(1, 3), torch.zeros(1, 4))


def test_image_out_of_range():
    image, probs = _inputs()
    with pytest.raises(ValueError, match=r"image must hold raw intensities in 0\.\.255"):
        densecrf_loss((image - 128) / 60, probs, **KW)  # a normalised network input


def test_image_in_unit_range_warns_once_naming_image(fresh_warnings):
    image, probs = _inputs()
    with pytest.warns(UserWarning, match=r"image has all values in 0\.\.1.*multiply image by 255"):
        densecrf_loss(image / 255, probs, **KW)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        densecrf_loss(image / 255, probs, **KW)  # second time: silent
        ncut_loss(image / 255, probs, sigma_rgb=15.0, sigma_xy=5.0, backend="exact")


def test_bad_hyper_parameters():
    image, probs = _inputs()
    for kw, match in (
        (dict(sigma_rgb=0.0), "sigma_rgb must be a finite positive"),
        (dict(sigma_xy=-1.0), "sigma_xy must be a finite positive"),
        (dict(scale_factor=float("nan")), "scale_factor"),
        (dict(weight=-1.0), "weight must be a finite non-negative"),
    ):
        with pytest.raises(ValueError, match=match):
            densecrf_loss(image, probs, **{**KW, **kw})
    with pytest.raises(ValueError, match="backend must be one of"):
        densecrf_loss(image, probs, weight=1.0, backend="cudnn")


def test_not_tensors():
    image, probs = _inputs()
    with pytest.raises(TypeError, match=r"probs must be a torch\.Tensor"):
        densecrf_loss(image, probs.numpy(), **KW)
    with pytest.raises(ValueError, match="probs must be a floating-point"):
        densecrf_loss(image, (probs > 0.5).long(), **KW)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for a device mismatch")
def test_device_mismatch():
    image, probs = _inputs()
    with pytest.raises(ValueError, match="is on"):
        densecrf_loss(image.cuda(), probs, weight=1.0)
    with pytest.raises(ValueError, match="roi is on"):
        densecrf_loss(image.cuda(), probs.cuda(), torch.ones(1, 6, 7), weight=1.0)


# ------------------------------------------------ the public checks module (one message each)


def test_checks_module_is_public_and_the_old_path_re_exports_it():
    from rloss import checks
    from rloss.losses import _checks as old

    for name in checks.__all__:
        assert getattr(old, name) is getattr(checks, name)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda c: c.check_positive("sigma_xy", 0), ValueError,
         "sigma_xy must be a finite positive number, got 0"),
        (lambda c: c.check_positive("sigma_xy", "abc"), ValueError,
         "sigma_xy must be a positive number, got 'abc'"),
        (lambda c: c.check_weight("weight", -1), ValueError,
         "weight must be a finite non-negative number, got -1"),
        (lambda c: c.check_float_dtype("values", torch.zeros(2, dtype=torch.int64)), ValueError,
         "values must be a floating-point tensor, got dtype torch.int64"),
        (lambda c: c.check_finite("features", torch.tensor([1.0, float("inf")])), ValueError,
         "features contains NaN or Inf values"),
        (lambda c: c.check_float_tensor("probs", [1.0], 4, "(N, K, H, W)"), TypeError,
         "probs must be a torch.Tensor, got list"),
    ],
)  # fmt: skip
def test_checks_messages(call, error, match):
    from rloss import checks

    with pytest.raises(error, match=match):
        call(checks)


def test_lattice_uses_the_same_messages():
    """The lattice's dtype and finiteness errors are the checks module's."""
    from rloss.lattice import Lattice

    with pytest.raises(ValueError, match="features must be a floating-point tensor"):
        Lattice(torch.zeros(1, 3, 4, 4, dtype=torch.int32))
    with pytest.raises(ValueError, match="values contains NaN or Inf values"):
        lat = Lattice(torch.rand(1, 3, 4, 4), backend="torch")
        lat.filter(torch.full((1, 1, 4, 4), float("inf")))


def test_bilateral_features_names_a_bad_sigma():
    """Issue 16 row 20: a sigma that is not a number names the argument."""
    from rloss.lattice import bilateral_features

    image = torch.rand(1, 3, 4, 4) * 255
    with pytest.raises(ValueError, match="sigma_rgb must be a positive number, got 'abc'"):
        bilateral_features(image, "abc", 5.0)
    with pytest.raises(ValueError, match="sigma_xy must be a finite positive number"):
        bilateral_features(image, 15.0, float("nan"))


@pytest.mark.parametrize("backend", ["numba", "torch", "exact"])
@pytest.mark.parametrize("loss", ["densecrf", "ncut"])
def test_probs_outside_roi_may_be_anything_finite(backend, loss):
    """Issue 16 row 19: outside roi the losses ignore probs, so any finite value passes
    (2.0, -3.0); inside roi the check still applies; NaN is rejected everywhere."""
    image, probs = _inputs(n=2)
    roi = torch.ones(2, 6, 7)
    roi[1, :, :3] = 0
    probs = probs.clone()
    probs[1, :, :, :3] = 2.0
    probs[1, 0, 0, 0] = -3.0
    fn = densecrf_loss if loss == "densecrf" else ncut_loss
    kw = dict(sigma_xy=5.0, backend=backend)
    kw.update({"weight": 1.0} if loss == "densecrf" else {"sigma_rgb": 15.0})
    value = fn(image, probs, roi, **kw)
    assert bool(torch.isfinite(value))
    inside = probs.clone()
    inside[0, 1, 2, 3] = 2.0
    with pytest.raises(ValueError, match="did you pass logits"):
        fn(image, inside, roi, **kw)
    nan = probs.clone()
    nan[1, 0, 1, 1] = float("nan")  # outside roi, still rejected
    with pytest.raises(ValueError, match="probs contains NaN"):
        fn(image, nan, roi, **kw)


def test_compile_notice_is_said_once_and_only_on_a_cache_miss(caplog):
    """Issue 16 row 11: with an empty numba cache the first lattice says it compiles."""
    from rloss.lattice._numba.lattice import CompileNotice, kernels_cached

    assert kernels_cached() in (True, False)  # cheap probe, never raises
    assert kernels_cached(threaded=False) in (True, False)
    caplog.set_level("WARNING", logger="rloss.lattice")
    miss = CompileNotice(probe=lambda threaded: False)
    assert miss.check() and not miss.check() and not miss.check(threaded=False)
    assert [r.getMessage() for r in caplog.records] == [CompileNotice.MESSAGE]
    caplog.clear()
    hit = CompileNotice(probe=lambda threaded: True)
    assert not hit.check() and not hit.check(threaded=False)
    assert caplog.records == []


def test_compile_notice_checks_the_kernels_of_the_kind_of_call(caplog):
    """One-thread (small) calls compile other kernels than threaded ones: a process that
    had only small calls cached still says it compiles before its first threaded call,
    and a cached threaded path says nothing."""
    from rloss.lattice._numba.lattice import CompileNotice

    caplog.set_level("WARNING", logger="rloss.lattice")
    asked = []

    def probe(threaded):
        asked.append(threaded)
        return not threaded  # one-thread kernels cached, the team's launchers not

    notice = CompileNotice(probe=probe)
    assert not notice.check(threaded=False) and not notice.check(threaded=False)
    assert caplog.records == []
    assert notice.check(threaded=True) and not notice.check(threaded=True)
    assert asked == [False, True]
    assert [r.getMessage() for r in caplog.records] == [CompileNotice.MESSAGE]
