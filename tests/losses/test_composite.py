"""CompositeLoss and the term registry: sums, detached values, dispatch, build_criterion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rloss.losses import (
    TERMS,
    CompositeLoss,
    DenseCRFLoss,
    NormalizedCutLoss,
    PartialCrossEntropy,
    SizeLoss,
    TermInputs,
    build_criterion,
    densecrf_loss,
    get_term,
    ncut_loss,
    partial_cross_entropy,
    register_term,
    size_bounds_from_tags,
    size_loss,
    term_defaults,
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


# --- the registry and build_criterion ---------------------------------------------


def test_registry_maps_the_four_names_to_their_classes():
    assert TERMS == {
        "pce": PartialCrossEntropy,
        "densecrf": DenseCRFLoss,
        "ncut": NormalizedCutLoss,
        "size": SizeLoss,
    }
    assert get_term("ncut") is NormalizedCutLoss
    with pytest.raises(ValueError, match=r"unknown loss term 'nuct'; did you mean 'ncut'\?"):
        get_term("nuct")


def test_build_criterion_from_a_recipe_like_mapping_equals_the_hand_built_one():
    logits, labels, image, roi, bounds = _batch()
    spec = {
        "pce": {"weight": 0.5},
        "densecrf": {"weight": 1e-3, "sigma_xy": 5.0, "backend": "exact"},
        "ncut": {"weight": 0.1, "sigma_rgb": 15.0, "sigma_xy": 5.0, "backend": "exact"},
        "size": {"weight": 2.0},
        "disabled": None,  # as a recipe's `loss.<name>: null`; never looked up
    }
    built = build_criterion(spec)
    assert isinstance(built, CompositeLoss)
    assert list(built.terms) == ["pce", "densecrf", "ncut", "size"]
    by_hand = CompositeLoss(
        {
            "pce": PartialCrossEntropy(weight=0.5),
            "densecrf": DenseCRFLoss(weight=1e-3, sigma_xy=5.0, backend="exact"),
            "ncut": NormalizedCutLoss(0.1, 15.0, 5.0, backend="exact"),
            "size": SizeLoss(2.0),
        }
    )
    assert repr(built) == repr(by_hand)
    got, got_parts = built(logits, labels, image, roi, bounds)
    want, want_parts = by_hand(logits, labels, image, roi, bounds)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert got_parts.keys() == want_parts.keys()


def test_build_criterion_errors_name_the_term_and_the_key():
    with pytest.raises(ValueError, match=r"unknown loss term 'densecr'; did you mean 'densecrf'\?"):
        build_criterion({"pce": {}, "densecr": {"weight": 1.0}})
    with pytest.raises(
        ValueError, match=r"densecrf: unknown parameter 'sigma_rbg' .*did you mean 'sigma_rgb'\?"
    ):
        build_criterion({"densecrf": {"sigma_rbg": 5.0}})
    with pytest.raises(ValueError, match=r"ncut: NormalizedCutLoss needs .*'sigma_rgb'"):
        build_criterion({"ncut": {"weight": 0.5, "sigma_xy": 5.0}})
    with pytest.raises(ValueError, match=r"size: weight must be a finite non-negative"):
        build_criterion({"size": {"weight": -1.0}})
    with pytest.raises(ValueError, match="pce: expected a mapping"):
        build_criterion({"pce": 1.0})
    with pytest.raises(ValueError, match="enables no loss term"):
        build_criterion({"pce": None})


def test_a_registered_toy_term_is_built_from_a_mapping_and_summed():
    class MeanForeground(nn.Module):
        """Toy regulariser: weight · mean foreground probability."""

        inputs = TermInputs.IMAGE_PROBS_ROI

        def __init__(self, weight: float = 1.0, first: int = 1) -> None:
            super().__init__()
            self.weight, self.first = float(weight), int(first)

        def forward(self, image, probs, roi=None):
            return self.weight * probs[:, self.first :].sum(1).mean()

    assert register_term("toy_fg")(MeanForeground) is MeanForeground
    try:
        assert term_defaults("toy_fg") == {"weight": 1.0, "first": 1}
        criterion = build_criterion({"pce": {}, "toy_fg": {"weight": 0.25, "first": 2}})
        logits, labels, image, roi, _ = _batch()
        total, parts = criterion(logits, labels, image, roi)
        want = 0.25 * logits.softmax(1)[:, 2:].sum(1).mean()
        torch.testing.assert_close(parts["toy_fg"], want.detach())
        torch.testing.assert_close(total, partial_cross_entropy(logits, labels) + want)
        # the same class again is fine; another class under the name needs replace=True
        register_term("toy_fg", MeanForeground)
        with pytest.raises(ValueError, match="already registered"):
            register_term("toy_fg", SizeLoss)
        with pytest.raises(ValueError, match="toy_fg: unknown parameter 'frist'"):
            build_criterion({"toy_fg": {"frist": 2}})
    finally:
        del TERMS["toy_fg"]
    assert "toy_fg" not in TERMS


def test_register_term_refuses_what_is_no_term():
    class NoWeight(nn.Module):
        inputs = TermInputs.LOGITS_LABELS

    class NoInputs(nn.Module):
        def __init__(self, weight=1.0):
            super().__init__()

    with pytest.raises(ValueError, match="must take `weight`"):
        register_term("x", NoWeight)
    with pytest.raises(ValueError, match="cannot tell which inputs"):
        register_term("x", NoInputs)
    with pytest.raises(ValueError, match=r"nn\.Module subclass"):
        register_term("x", partial_cross_entropy)
    with pytest.raises(ValueError, match=r"without '\.'"):
        register_term("a.b", SizeLoss)
    assert "x" not in TERMS


def test_train_build_criterion_is_the_registry_builder_minus_training_keys():
    from rloss.train.config import LOSS_TERMS
    from rloss.train.module import build_criterion as train_build

    loss = {"pce": dict(LOSS_TERMS["pce"]), "size": dict(LOSS_TERMS["size"])}
    assert loss["size"]["margin"] == 0.1  # consumed by the training loop, not SizeLoss
    criterion = train_build(loss)
    assert repr(criterion) == repr(build_criterion({"pce": {}, "size": {"weight": 1e-6}}))


def test_recipe_defaults_are_the_class_defaults_plus_the_stated_overrides():
    """``LOSS_TERMS`` is derived, and equals the table recipes used before it was."""
    from rloss.train.config import LOSS_OVERRIDES, LOSS_TERMS

    assert dict(LOSS_TERMS) == {
        "pce": {"weight": 1.0},
        "densecrf": {
            "weight": 2e-9,
            "sigma_rgb": 15.0,
            "sigma_xy": 100.0,
            "scale_factor": 0.5,
            "normalize": False,
            "backend": None,
            "spacing": None,
        },
        "ncut": {
            "weight": 0.5,
            "sigma_rgb": 15.0,
            "sigma_xy": 100.0,
            "scale_factor": 0.5,
            "backend": None,
            "spacing": None,
        },
        "size": {"weight": 1e-6, "margin": 0.1},
    }
    # each default is written once: on the class, unless stated as an override
    crf = DenseCRFLoss()
    for key in ("weight", "sigma_rgb", "sigma_xy", "normalize", "backend"):
        assert LOSS_TERMS["densecrf"][key] == getattr(crf, key)
    assert crf.scale_factor == 1.0 and LOSS_OVERRIDES["densecrf"] == {"scale_factor": 0.5}


def test_a_registered_term_is_a_recipe_term_with_its_class_defaults():
    from rloss.train.config import LOSS_TERMS, load_config

    class Tv(nn.Module):
        inputs = TermInputs.IMAGE_PROBS_ROI

        def __init__(self, weight: float = 0.01, p: int = 1) -> None:
            super().__init__()
            self.weight, self.p = weight, p

        def forward(self, image, probs, roi=None):
            return self.weight * probs.diff(dim=-1).abs().pow(self.p).mean()

    register_term("tv", Tv)
    try:
        assert LOSS_TERMS["tv"] == {"weight": 0.01, "p": 1}
        from pathlib import Path

        recipe = Path(__file__).parents[2] / "configs/synthetic/deeplabv3plus_mobilenet_pce.yaml"
        cfg = load_config(recipe, ["loss.tv.p=2"], check_paths=False)
        loss = cfg["loss"] if isinstance(cfg, dict) else cfg.loss
        assert loss["tv"] == {"weight": 0.01, "p": 2}
    finally:
        del TERMS["tv"]
    assert "tv" not in LOSS_TERMS
