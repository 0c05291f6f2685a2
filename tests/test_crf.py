"""Mean-field DenseCRF post-processing: improves a noisy prediction on a toy image."""

from __future__ import annotations

import importlib

import pytest
import torch

from rloss.meanfield import MeanFieldCRF, meanfield_refine


def _importable(name: str) -> bool:
    try:
        importlib.import_module(f"rloss.lattice._{name}")
    except ImportError:
        return False
    return True


BACKENDS = ["exact"] + [
    pytest.param(
        b, marks=pytest.mark.skipif(not _importable(b), reason=f"rloss.lattice._{b} not importable")
    )
    for b in ("torch", "numba")
]


def _toy(h=20, w=24, k=3, seed=0):
    """Three colour-separated vertical bands; unaries = truth + heavy noise."""
    g = torch.Generator().manual_seed(seed)
    gt = torch.zeros(1, h, w, dtype=torch.long)
    gt[:, :, w // 3 :] = 1
    gt[:, :, 2 * w // 3 :] = 2
    colours = torch.tensor([[220.0, 30.0, 30.0], [30.0, 200.0, 40.0], [40.0, 40.0, 210.0]])
    image = colours[gt].permute(0, 3, 1, 2) + torch.randn(1, 3, h, w, generator=g) * 5
    onehot = torch.nn.functional.one_hot(gt, k).permute(0, 3, 1, 2).float()
    probs = (1.5 * onehot + 1.2 * torch.randn(1, k, h, w, generator=g)).softmax(1)
    return image.clamp(0, 255), probs, gt


@pytest.mark.parametrize("backend", BACKENDS)
def test_crf_improves_agreement_with_ground_truth(backend):
    image, probs, gt = _toy()
    before = float((probs.argmax(1) == gt).float().mean())
    q = meanfield_refine(image, probs, num_iterations=8, sigma_xy=10.0, backend=backend)
    after = float((q.argmax(1) == gt).float().mean())
    assert before < 0.85
    assert after > before + 0.1 and after > 0.95
    torch.testing.assert_close(q.sum(1), torch.ones(1, 20, 24))


def test_zero_iterations_is_identity_and_module_equals_function():
    image, probs, _ = _toy()
    torch.testing.assert_close(meanfield_refine(image, probs, num_iterations=0), probs)
    module = MeanFieldCRF(num_iterations=3, sigma_xy=10.0, backend="exact")
    want = meanfield_refine(image, probs, num_iterations=3, sigma_xy=10.0, backend="exact")
    torch.testing.assert_close(module(image, probs), want)


def test_bad_input():
    image, probs, _ = _toy()
    with pytest.raises(ValueError, match="num_iterations"):
        meanfield_refine(image, probs, num_iterations=-1)
    with pytest.raises(ValueError, match="probs must sum to 1"):
        meanfield_refine(image, probs * 0.5)
    with pytest.raises(ValueError, match="image must have shape"):
        meanfield_refine(image[:, :, :10], probs)


def test_old_crf_names_are_deprecated_aliases():
    import rloss.crf as old

    image = torch.rand(1, 3, 8, 8) * 255
    probs = torch.randn(1, 2, 8, 8).softmax(1)
    with pytest.warns(DeprecationWarning, match="meanfield_refine"):
        q = old.dense_crf(image, probs, num_iterations=2)
    assert torch.equal(q, meanfield_refine(image, probs, num_iterations=2))
    with pytest.warns(DeprecationWarning, match="MeanFieldCRF"):
        module = old.DenseCRF(num_iterations=2)
    assert isinstance(module, MeanFieldCRF)
    assert torch.equal(module(image, probs), q)
