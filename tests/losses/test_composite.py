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
    TermInputs,
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


def test_dispatch_follows_the_declared_inputs_never_the_name():
    class MyCE(nn.Module):
        inputs = TermInputs.LOGITS_LABELS

        def forward(self, logits, labels):
            return partial_cross_entropy(logits, labels)

    class MyCrf(nn.Module):
        inputs = "image_probs_roi"  # the plain string resolves to the same kind

        def forward(self, image, probs, roi):
            return probs[:, 0].mean() + 0 * image.mean()

    logits, labels, image, roi, _ = _batch()
    # names that say nothing, or mislead: the declaration decides
    loss = CompositeLoss({"size": MyCE(), "a": MyCrf()})
    assert loss.kinds == {"size": TermInputs.LOGITS_LABELS, "a": TermInputs.IMAGE_PROBS_ROI}
    total, parts = loss(logits, labels, image, roi)
    torch.testing.assert_close(parts["size"], partial_cross_entropy(logits, labels).detach())
    torch.testing.assert_close(parts["a"], logits.softmax(1)[:, 0].mean().detach())
    torch.testing.assert_close(total, parts["size"] + parts["a"])


def test_errors_name_the_term():
    class NoInputs(nn.Module):
        def forward(self, logits, labels):
            return partial_cross_entropy(logits, labels)

    logits, labels, image, _, _ = _batch()
    # a module that declares nothing is refused even under a known name
    with pytest.raises(ValueError, match=r"terms\['pce'\] \(NoInputs\): cannot tell which inputs"):
        CompositeLoss({"pce": NoInputs()})
    with pytest.raises(ValueError, match=r"TermInputs\.IMAGE_PROBS_ROI"):
        CompositeLoss({"mystery": NoInputs()})
    with pytest.raises(ValueError, match="non-empty mapping"):
        CompositeLoss({})
    with pytest.raises(ValueError, match=r"terms\['x'\] must be an nn.Module"):
        CompositeLoss({"x": partial_cross_entropy})
    with pytest.raises(ValueError, match=r"size_bounds must be .* size term 'size'"):
        CompositeLoss({"size": SizeLoss(1.0)})(logits, labels, image)


def test_probs_are_computed_only_when_a_term_needs_them():
    seen = []

    class Spy(nn.Module):
        inputs = TermInputs.PROBS_BOUNDS_ROI

        def forward(self, probs, lower, upper, roi):
            seen.append(probs)
            return probs.sum() * 0

    logits, labels, image, roi, bounds = _batch()
    CompositeLoss({"s": Spy()})(logits.bfloat16(), labels, image, roi, bounds)
    assert seen[0].dtype == torch.float32
    torch.testing.assert_close(seen[0], logits.bfloat16().float().softmax(1))
    assert [k.needs_probs for k in TermInputs] == [False, True, True]


def test_state_dict_moves_with_module():
    loss = CompositeLoss({"pce": PartialCrossEntropy(class_weight=torch.ones(3))})
    assert "terms.pce.class_weight" in loss.state_dict()
