"""CompositeLoss: the sum of its terms, per-term detached values, dispatch and errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rloss.losses import (
    CompositeLoss,
    DenseCRFLoss,
    NormalizedCutLoss,
    PartialCrossEntropy,
    SizeLoss,
    densecrf_loss,
    ncut_loss,
    partial_cross_entropy,
    size_bounds_from_tags,
    size_loss,
)


def _batch(n=2, k=3, h=8, w=9):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(n, k, h, w, generator=g, requires_grad=True)
    labels = torch.full((n, h, w), 255)
    labels[:, 2, 1:5] = 1
    labels[:, 6, 3:7] = 0
    image = torch.rand(n, 3, h, w, generator=g) * 255
    roi = torch.ones(n, h, w)
    roi[:, -1] = 0
    tags = torch.tensor([[True, True, False], [True, False, True]])
    return logits, labels, image, roi, size_bounds_from_tags(tags, h * w)


def test_total_is_sum_of_terms_and_values_are_detached():
    logits, labels, image, roi, bounds = _batch()
    loss = CompositeLoss(
        {
            "pce": PartialCrossEntropy(),
            "densecrf": DenseCRFLoss(weight=1e-3, sigma_xy=5.0, backend="exact"),
            "ncut": NormalizedCutLoss(0.1, 15.0, 5.0, backend="exact"),
            "size": SizeLoss(2.0),
        }
    )
    total, parts = loss(logits, labels, image, roi, bounds)
    probs = logits.softmax(1)
    want = {
        "pce": partial_cross_entropy(logits, labels),
        "densecrf": densecrf_loss(image, probs, roi, weight=1e-3, sigma_xy=5.0, backend="exact"),
        "ncut": ncut_loss(
            image, probs, roi, weight=0.1, sigma_rgb=15.0, sigma_xy=5.0, backend="exact"
        ),
        "size": size_loss(probs, *bounds, roi, weight=2.0),
    }
    assert list(parts) == ["pce", "densecrf", "ncut", "size"]
    for name, value in want.items():
        torch.testing.assert_close(parts[name], value.detach())
        assert not parts[name].requires_grad
    torch.testing.assert_close(total, sum(want.values()))
    total.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()


def test_dispatch_by_name_for_foreign_modules_and_errors():
    class MyCE(nn.Module):
        def forward(self, logits, labels):
            return partial_cross_entropy(logits, labels)

    logits, labels, image, _, _ = _batch()
    total, _parts = CompositeLoss({"pce": MyCE()})(logits, labels, image)
    torch.testing.assert_close(total, partial_cross_entropy(logits, labels))
    with pytest.raises(ValueError, match="cannot tell which inputs"):
        CompositeLoss({"mystery": MyCE()})
    with pytest.raises(ValueError, match="non-empty mapping"):
        CompositeLoss({})
    with pytest.raises(ValueError, match="size_bounds must be"):
        CompositeLoss({"size": SizeLoss(1.0)})(logits, labels, image)


def test_state_dict_moves_with_module():
    loss = CompositeLoss({"pce": PartialCrossEntropy(weight=torch.ones(3))})
    assert "terms.pce.weight" in loss.state_dict()
