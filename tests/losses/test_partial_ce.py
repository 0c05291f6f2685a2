"""Partial cross-entropy: agreement with torch, class and term weights, empty batches, bad labels.

The shared battery (module == function, gradcheck, dtypes, devices, compile) is
in ``test_battery.py``.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rloss.losses import PartialCrossEntropy, partial_cross_entropy


def _data(n=2, k=4, h=6, w=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, h, w, generator=g, dtype=dtype)
    labels = torch.randint(0, k, (n, h, w), generator=g)
    labels[torch.rand(n, h, w, generator=g) < 0.7] = 255
    return logits, labels


@pytest.mark.parametrize("weighted", [False, True])
def test_matches_torch_mean_over_labelled_pixels(weighted):
    logits, labels = _data()
    weight = torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64) if weighted else None
    got = partial_cross_entropy(logits, labels, weight)
    want = F.cross_entropy(logits, labels, weight=weight, ignore_index=255)
    torch.testing.assert_close(got, want)
    # by hand: mean of -log p over labelled pixels
    if not weighted:
        logp = logits.log_softmax(1)
        mask = labels != 255
        nll = -logp.gather(1, labels.clamp(max=3)[:, None])[:, 0][mask]
        torch.testing.assert_close(got, nll.mean())


def test_no_labelled_pixel_gives_zero_with_zero_gradient():
    logits, _ = _data()
    logits.requires_grad_()
    labels = torch.full((2, 6, 7), 255)
    loss = partial_cross_entropy(logits, labels)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    # zero total class weight behaves the same
    logits.grad = None
    labels[0, 0, 0] = 1
    weight = torch.tensor([1.0, 0.0, 1.0, 1.0], dtype=torch.float64)
    loss = partial_cross_entropy(logits, labels, weight)
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.isfinite(logits.grad).all()


def test_gradcheck():
    logits, labels = _data(n=1, k=3, h=3, w=4)
    logits.requires_grad_()
    weight = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda z: partial_cross_entropy(z, labels, weight), (logits,))


def test_module_equals_function_and_custom_ignore_index():
    logits, labels = _data(dtype=torch.float32)
    labels[labels == 255] = 254
    cw = torch.tensor([1.0, 2.0, 1.0, 1.0])
    module = PartialCrossEntropy(weight=0.25, class_weight=cw, ignore_index=254)
    want = partial_cross_entropy(logits, labels, cw, ignore_index=254, weight=0.25)
    torch.testing.assert_close(module(logits, labels), want)
    assert "class_weight" in dict(module.named_buffers())
    assert module.weight == 0.25
    assert repr(module) == "PartialCrossEntropy(weight=0.25, ignore_index=254, weighted=True)"


def test_weight_scales_the_loss_and_its_gradient_exactly():
    logits, labels = _data()
    logits.requires_grad_()
    base = partial_cross_entropy(logits, labels)
    (g1,) = torch.autograd.grad(base, logits)
    scaled = partial_cross_entropy(logits, labels, weight=3.0)
    (g3,) = torch.autograd.grad(scaled, logits)
    torch.testing.assert_close(scaled, 3.0 * base)
    torch.testing.assert_close(g3, 3.0 * g1)
    assert torch.equal(partial_cross_entropy(logits, labels, weight=1.0), base)
    assert float(partial_cross_entropy(logits, labels, weight=0.0).detach()) == 0.0
    with pytest.raises(ValueError, match="weight must be a finite non-negative number"):
        PartialCrossEntropy(weight=-1.0)
    with pytest.raises(ValueError, match="weight must be a finite non-negative number"):
        partial_cross_entropy(logits, labels, weight=float("nan"))


def test_class_weights_as_weight_still_work_with_a_deprecation_warning():
    """``weight`` was the class weights before every term took a term weight."""
    logits, labels = _data(dtype=torch.float32)
    cw = torch.tensor([0.5, 1.0, 2.0, 3.0])
    want = partial_cross_entropy(logits, labels, class_weight=cw)
    with pytest.warns(DeprecationWarning, match="class_weight"):
        module = PartialCrossEntropy(weight=cw)
    assert module.weight == 1.0
    torch.testing.assert_close(module.class_weight, cw)
    torch.testing.assert_close(module(logits, labels), want)
    with pytest.warns(DeprecationWarning, match="class_weight"):
        positional = PartialCrossEntropy(cw)  # the old first positional parameter
    torch.testing.assert_close(positional(logits, labels), want)
    with pytest.warns(DeprecationWarning, match="class_weight"):
        got = partial_cross_entropy(logits, labels, weight=cw)
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match=r"weight must be a number .* when class_weight"):
        PartialCrossEntropy(weight=[1.0, 2.0], class_weight=cw)


def test_autocast_bf16_and_non_contiguous():
    logits, labels = _data(dtype=torch.float32)
    want = partial_cross_entropy(logits, labels)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = partial_cross_entropy(logits.bfloat16(), labels)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=2e-2, atol=0)
    nc = logits.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(
        partial_cross_entropy(nc, labels.transpose(1, 2).contiguous().transpose(1, 2)), want
    )


@pytest.mark.parametrize(
    ("logits_shape", "labels_shape", "match"),
    [((2, 4, 6, 7), (2, 6, 8), "labels must have shape"), ((2, 4, 6), (2, 6), "logits must have")],
)
def test_bad_shapes(logits_shape, labels_shape, match):
    with pytest.raises(ValueError, match=match):
        partial_cross_entropy(
            torch.randn(logits_shape), torch.zeros(labels_shape, dtype=torch.long)
        )


def test_label_out_of_range_and_bad_dtypes_and_nan():
    logits, labels = _data(dtype=torch.float32)
    labels[0, 0, 0] = 7
    with pytest.raises(ValueError, match=r"0\.\.3.*got the value 7"):
        partial_cross_entropy(logits, labels)
    with pytest.raises(ValueError, match="integer"):
        partial_cross_entropy(logits, labels.float())
    with pytest.raises(ValueError, match=r"class_weight must have shape \(K,\)"):
        partial_cross_entropy(logits, labels.clamp(max=3), torch.ones(3))
    bad = logits.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="logits contains NaN"):
        partial_cross_entropy(bad, labels.clamp(max=3))
