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
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(_checks, "_WARNED", set())


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
