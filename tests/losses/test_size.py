"""Size loss: penalty values by hand, bounds helpers, gradients, roi."""

from __future__ import annotations

import pytest
import torch

from rloss.losses import SizeLoss, size_bounds_from_mask, size_bounds_from_tags, size_loss


def _probs(n=2, k=3, h=4, w=5, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, h, w, generator=g, dtype=dtype).softmax(1)


def test_penalty_by_hand():
    h, w = 4, 5
    probs = torch.zeros(1, 3, h, w, dtype=torch.float64)
    probs[0, 0, :2] = 1.0  # class 0: 10 pixels
    probs[0, 1, 2:] = 1.0  # class 1: 10 pixels, class 2: 0
    lower = torch.tensor([[12.0, 0.0, 3.0]])
    upper = torch.tensor([[20.0, 8.0, 20.0]])
    # class 0 below by 2, class 1 above by 2, class 2 below by 3
    want = (4.0 + 4.0 + 9.0) / (h * w) ** 2
    got = size_loss(probs, lower, upper, weight=1.0)
    assert float(got) == pytest.approx(want)
    assert float(size_loss(probs, lower, upper, weight=0.5)) == pytest.approx(0.5 * want)
    inside = size_loss(probs, torch.tensor([[5.0, 5.0, 0.0]]), torch.tensor([[15.0, 15.0, 1.0]]))
    assert float(inside) == 0.0


def test_roi_excludes_pixels_and_batch_mean():
    probs = torch.zeros(2, 2, 2, 2, dtype=torch.float64)
    probs[:, 0] = 1.0
    roi = torch.ones(2, 2, 2)
    roi[0, 0] = 0  # image 0: class-0 volume 2 instead of 4
    lower = torch.tensor([[4.0, 0.0], [4.0, 0.0]])
    upper = torch.full((2, 2), 4.0)
    got = size_loss(probs, lower, upper, roi)
    assert float(got) == pytest.approx(((4 - 2) ** 2 / 16) / 2)


def test_gradcheck_wrt_logits():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 3, 3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    lower = torch.tensor([[6.0, 0.0, 2.0], [0.0, 5.0, 0.0]])
    upper = torch.tensor([[12.0, 1.0, 3.0], [2.0, 12.0, 0.0]])
    assert torch.autograd.gradcheck(lambda z: size_loss(z.softmax(1), lower, upper), (logits,))


def test_bounds_from_tags():
    tags = torch.tensor([[True, False, True], [False, True, True]])
    lower, upper = size_bounds_from_tags(tags, 100, lower_fraction=0.1, upper_fraction=0.6)
    assert lower.tolist() == [[10.0, 0.0, 10.0], [0.0, 10.0, 10.0]]
    assert upper.tolist() == [[60.0, 0.0, 60.0], [0.0, 60.0, 60.0]]
    lower, upper = size_bounds_from_tags(tags.long(), torch.tensor([100.0, 50.0]))
    assert upper[1].tolist() == [0.0, 50.0, 50.0]
    with pytest.raises(ValueError, match="num_pixels"):
        size_bounds_from_tags(tags, torch.ones(3))
    with pytest.raises(ValueError, match="lower_fraction"):
        size_bounds_from_tags(tags, 10, lower_fraction=0.5, upper_fraction=0.1)


def test_bounds_from_mask_with_margin_and_void():
    mask = torch.zeros(2, 4, 5, dtype=torch.long)
    mask[0, :2] = 2
    mask[1, 0, 0] = 255
    lower, upper = size_bounds_from_mask(mask, 3, margin=0.1)
    torch.testing.assert_close(lower, torch.tensor([[9.0, 0.0, 9.0], [17.1, 0.0, 0.0]]))
    torch.testing.assert_close(upper, torch.tensor([[11.0, 0.0, 11.0], [20.9, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="mask values"):
        size_bounds_from_mask(mask, 2)


def test_true_segmentation_within_mask_bounds_scores_zero_and_tags_penalise_absent():
    mask = torch.randint(0, 3, (2, 6, 6), generator=torch.Generator().manual_seed(0))
    onehot = torch.nn.functional.one_hot(mask, 3).permute(0, 3, 1, 2).double()
    assert float(size_loss(onehot, *size_bounds_from_mask(mask, 3))) == 0.0
    tags = torch.tensor([[True, True, False], [True, True, False]])
    assert float(size_loss(onehot, *size_bounds_from_tags(tags, 36))) > 0.0


def test_module_equals_function_and_bad_input():
    probs = _probs()
    lower, upper = torch.full((2, 3), 5.0), torch.full((2, 3), 6.0)
    torch.testing.assert_close(
        SizeLoss(2.0)(probs, lower, upper), size_loss(probs, lower, upper, weight=2.0)
    )
    with pytest.raises(ValueError, match=r"lower must have shape \(N, K\)"):
        size_loss(probs, torch.zeros(2, 4), upper)
    with pytest.raises(ValueError, match="probs must sum to 1"):
        size_loss(probs * 0.5, lower, upper)
    nan = probs.clone()
    nan[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="probs contains NaN"):
        size_loss(nan, lower, upper)


def test_autocast_bf16():
    probs = _probs(dtype=torch.float32)
    lower, upper = torch.full((2, 3), 8.0), torch.full((2, 3), 9.0)
    want = size_loss(probs, lower, upper)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = size_loss(probs.bfloat16(), lower, upper)
    torch.testing.assert_close(got, want, rtol=5e-2, atol=0)


def test_bounds_are_validated_with_the_argument_named():
    """Issue 16 row 22: negative bounds, lower > upper and fractions are refused."""
    probs = _probs()
    lower = torch.tensor([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0]])
    upper = torch.tensor([[10.0, 5.0, 20.0], [20.0, 9.0, 0.0]])
    size_loss(probs, lower, upper)  # fine
    neg = lower.clone()
    neg[1, 0] = -1.0
    with pytest.raises(ValueError, match=r"lower must be >= 0 \(a pixel count\), got lower\[1, 0"):
        size_loss(probs, neg, upper)
    with pytest.raises(ValueError, match=r"upper must be >= 0"):
        size_loss(probs, lower, -upper)
    crossed = upper.clone()
    crossed[0, 1] = 0.0
    with pytest.raises(
        ValueError, match=r"lower must be <= upper, got lower\[0, 1\] = 1 > upper\[0, 1\] = 0"
    ):
        size_loss(probs, lower + 1.0, crossed)
    # fractions of the image where pixel counts are expected (P = 20 > K = 3)
    with pytest.raises(ValueError, match=r"counts \(P = H\*W = 20 here\).*look like fractions"):
        size_loss(probs, lower / 100, upper / 100)
    with pytest.raises(ValueError, match="fractions"):
        SizeLoss(1.0)(probs, torch.zeros(2, 3), torch.ones(2, 3))
    # integer bounds are pixel counts too
    size_loss(probs, lower.long(), upper.long())


def test_only_probs_get_a_gradient_roi_and_bounds_are_data():
    logits = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    lower = torch.tensor([[12.0, 0.0, 3.0], [0.0, 5.0, 0.0]], requires_grad=True)
    upper = torch.tensor([[15.0, 2.0, 6.0], [20.0, 8.0, 1.0]], requires_grad=True)
    roi = torch.ones(2, 4, 5, dtype=torch.float64, requires_grad=True)
    loss = size_loss(logits.softmax(1), lower, upper, roi)
    assert float(loss.detach()) > 0
    loss.backward()
    assert logits.grad is not None and bool(logits.grad.abs().sum() > 0)
    assert lower.grad is None and upper.grad is None and roi.grad is None
    # nothing of the caller's is changed
    assert lower.requires_grad and roi.requires_grad


def test_bounds_from_tags_names_what_is_wrong_with_num_pixels():
    """Issue 16 row 20: ``size_bounds_from_tags(..., -5)`` said ``got (2,)``."""
    tags = torch.tensor([[True, False], [False, True]])
    with pytest.raises(ValueError, match=r"num_pixels must be a finite pixel count >= 0.*got -5$"):
        size_bounds_from_tags(tags, -5)
    with pytest.raises(ValueError, match=r"num_pixels .*got -2$"):
        size_bounds_from_tags(tags, torch.tensor([4.0, -2.0]))
    with pytest.raises(ValueError, match=r"num_pixels must be an int or an \(N,\) = \(2,\) tensor"):
        size_bounds_from_tags(tags, torch.ones(3))
