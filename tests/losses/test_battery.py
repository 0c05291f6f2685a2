"""One battery for every registered loss term (kornia's ``BaseTester`` idea).

Each test is parametrised over :data:`rloss.losses.TERMS`; the inputs a term
gets follow its declared :class:`~rloss.losses.TermInputs`, so a new term needs
only a :class:`Case` here (its functional form and small, fast parameters):

- smoke (builds, runs, repr names the weight), output shape and dtype;
- every term takes ``weight`` and the value is linear in it;
- exceptions: bad shapes and dtypes give a ``ValueError`` naming the argument;
- the module equals its function;
- float64 ``gradcheck`` through a softmax (pairwise terms on the brute-force
  ``"exact"`` lattice backend, which is the exact dense Gaussian graph);
- dtypes (float32, float64, bfloat16) and devices (CPU; CUDA marked ``cuda``);
- ``torch.compile`` for the terms whose path is pure torch.

Only the public loss API is used.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import pytest
import torch

from rloss.losses import (
    TERMS,
    TermInputs,
    densecrf_loss,
    ncut_loss,
    partial_cross_entropy,
    size_bounds_from_tags,
    size_loss,
)


@dataclasses.dataclass(frozen=True)
class Case:
    """How the battery runs one registered term."""

    #: The functional form: ``func(*inputs, **kwargs) == TERMS[name](**kwargs)(*inputs)``.
    func: Callable[..., torch.Tensor]
    #: Constructor (and function) keyword arguments: small and fast, every
    #: parameter that changes the value set away from its default.
    kwargs: dict[str, Any]
    #: Whether the whole path is torch ops (``torch.compile`` traces it).
    pure_torch: bool


CASES: dict[str, Case] = {
    "pce": Case(
        partial_cross_entropy,
        {"weight": 0.7, "class_weight": torch.tensor([1.0, 2.0, 0.5])},
        pure_torch=True,
    ),
    "densecrf": Case(
        densecrf_loss,
        {"weight": 0.3, "sigma_rgb": 30.0, "sigma_xy": 3.0, "backend": "exact"},
        pure_torch=False,
    ),
    "ncut": Case(
        ncut_loss,
        {"weight": 0.3, "sigma_rgb": 30.0, "sigma_xy": 3.0, "backend": "exact"},
        pure_torch=False,
    ),
    "size": Case(size_loss, {"weight": 2.0}, pure_torch=True),
}

NAMES = list(TERMS)
N, K, H, W = 2, 3, 5, 6

DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=(
            pytest.mark.cuda,
            pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device"),
        ),
    ),
]


def _case(name: str) -> Case:
    assert name in CASES, (
        f"loss term {name!r} is registered but has no battery case: add it to CASES in "
        f"{__file__}"
    )
    return CASES[name]


def _kwargs(name: str, device: torch.device | str = "cpu") -> dict[str, Any]:
    return {
        k: v.to(device) if isinstance(v, torch.Tensor) else v
        for k, v in _case(name).kwargs.items()
    }


def _data(dtype=torch.float32, device="cpu", seed=0) -> dict[str, Any]:
    """Every input any term kind takes, for one small batch (roi zeroes a border row)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, K, H, W, generator=g, dtype=torch.float64)
    labels = torch.randint(0, K, (N, H, W), generator=g)
    labels[torch.rand(N, H, W, generator=g) < 0.6] = 255
    image = torch.rand(N, 3, H, W, generator=g, dtype=torch.float64) * 255
    roi = torch.ones(N, H, W, dtype=torch.float64)
    roi[:, -1] = 0
    tags = torch.tensor([[True, True, False], [True, False, True]])
    lower, upper = size_bounds_from_tags(tags, H * W, lower_fraction=0.3, upper_fraction=0.6)
    out = {
        "logits": logits.to(dtype),
        "labels": labels,
        "image": image,
        "roi": roi,
        "lower": lower,
        "upper": upper,
    }
    out = {k: v.to(device) for k, v in out.items()}
    if dtype != torch.float64:
        for k in ("image", "roi"):
            out[k] = out[k].float()
    return out


def _inputs(kind: TermInputs, d: dict[str, Any], logits: torch.Tensor | None = None) -> tuple:
    """The positional inputs of a term of ``kind``; ``probs = softmax(logits)`` in its dtype."""
    z = d["logits"] if logits is None else logits
    if kind is TermInputs.LOGITS_LABELS:
        return (z, d["labels"])
    probs = z.softmax(1)
    if kind is TermInputs.IMAGE_PROBS_ROI:
        return (d["image"], probs, d["roi"])
    return (probs, d["lower"], d["upper"], d["roi"])


def _kind(name: str) -> TermInputs:
    return TermInputs(TERMS[name].inputs)


def test_every_registered_term_has_a_case_and_takes_weight():
    import inspect

    for name, cls in TERMS.items():
        _case(name)
        assert "weight" in inspect.signature(cls).parameters, name
        TermInputs(cls.inputs)  # declared, and a known kind


@pytest.mark.parametrize("name", NAMES)
def test_smoke_shape_dtype_and_non_negative(name):
    module = TERMS[name](**_kwargs(name))
    assert f"weight={_case(name).kwargs['weight']:g}" in repr(module)
    d = _data()
    value = module(*_inputs(_kind(name), d))
    assert value.shape == () and value.dtype == torch.float32
    assert torch.isfinite(value) and float(value) >= 0.0
    d64 = _data(torch.float64)
    assert module(*_inputs(_kind(name), d64)).dtype == torch.float64


@pytest.mark.parametrize("name", NAMES)
def test_value_is_linear_in_weight(name):
    d = _data(torch.float64)
    kw = _kwargs(name)
    one = TERMS[name](**{**kw, "weight": 1.0})(*_inputs(_kind(name), d))
    three = TERMS[name](**{**kw, "weight": 3.0})(*_inputs(_kind(name), d))
    zero = TERMS[name](**{**kw, "weight": 0.0})(*_inputs(_kind(name), d))
    assert float(one) > 0.0
    torch.testing.assert_close(three, 3.0 * one)
    assert float(zero) == 0.0
    for bad in (-1.0, float("nan"), "heavy"):
        with pytest.raises(ValueError, match="weight"):
            TERMS[name](**{**kw, "weight": bad})


@pytest.mark.parametrize("name", NAMES)
def test_module_equals_function(name):
    d = _data()
    args = _inputs(_kind(name), d)
    kw = _kwargs(name)
    got = TERMS[name](**kw)(*args)
    want = _case(name).func(*args, **kw)
    torch.testing.assert_close(got, want, rtol=0, atol=0)


def _bad_inputs(kind: TermInputs, d: dict[str, Any]) -> list[tuple[str, tuple]]:
    """``(argument named in the error, inputs)`` for shape and dtype mistakes of ``kind``."""
    good = _inputs(kind, d)
    if kind is TermInputs.LOGITS_LABELS:
        z, y = good
        return [
            ("logits", (z[0], y)),
            ("logits", (z.long(), y)),
            ("labels", (z, y[:, :-1])),
            ("labels", (z, y.float())),
        ]
    if kind is TermInputs.IMAGE_PROBS_ROI:
        image, probs, roi = good
        return [
            ("image", (image[0], probs, roi)),
            ("image", (image.long(), probs, roi)),
            ("image", (image[:, :, :-1], probs, roi)),
            ("probs", (image, probs[0], roi)),
            ("probs", (image, probs.long(), roi)),
            ("probs", (image, probs * 2, roi)),
            ("roi", (image, probs, roi[0])),
        ]
    probs, lower, upper, roi = good
    return [
        ("probs", (probs[0], lower, upper, roi)),
        ("probs", (probs.long(), lower, upper, roi)),
        ("lower", (probs, lower[:, :-1], upper, roi)),
        ("upper", (probs, lower, upper.bool(), roi)),
        ("roi", (probs, lower, upper, roi[0])),
    ]


@pytest.mark.parametrize("name", NAMES)
def test_bad_shapes_and_dtypes_name_the_argument(name):
    module = TERMS[name](**_kwargs(name))
    cases = _bad_inputs(_kind(name), _data())
    assert cases
    for argument, args in cases:
        with pytest.raises(ValueError, match=rf"^{argument}\b"):
            module(*args)


@pytest.mark.parametrize("name", NAMES)
def test_gradcheck_float64(name):
    d = _data(torch.float64)
    module = TERMS[name](**_kwargs(name))
    logits = d["logits"].clone().requires_grad_()

    def f(z):
        return module(*_inputs(_kind(name), d, z))

    assert torch.autograd.gradcheck(f, (logits,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    ("dtype", "rtol"), [(torch.float32, 1e-5), (torch.float64, 1e-5), (torch.bfloat16, 3e-2)]
)
def test_dtype_and_device_agree_with_float64_on_cpu(name, device, dtype, rtol):
    """The value in every input dtype, on every device, matches float64 on the CPU.

    Half inputs are upcast (float32 compute, float32 result); the bf16 tolerance
    is the rounding of the logits themselves.
    """
    want = TERMS[name](**_kwargs(name))(*_inputs(_kind(name), _data(torch.float64)))
    d = _data(dtype, device)
    logits = d["logits"].clone().requires_grad_()
    module = TERMS[name](**_kwargs(name, device)).to(device)
    value = module(*_inputs(_kind(name), d, logits))
    assert value.device.type == torch.device(device).type
    assert value.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    torch.testing.assert_close(value.double().cpu(), want, rtol=rtol, atol=1e-7)
    value.backward()
    assert logits.grad is not None and logits.grad.dtype == dtype
    assert bool(torch.isfinite(logits.grad.float()).all())


@pytest.mark.parametrize("name", [n for n in NAMES if CASES.get(n) and CASES[n].pure_torch])
def test_torch_compile_matches_eager_value_and_gradient(name):
    """``torch.compile`` traces the term (graph breaks at the host value checks are fine).

    The ``aot_eager`` backend runs dynamo and AOTAutograd (what breaks on
    non-traceable code) in a few seconds; inductor's C++ code generation takes
    about a minute on two cores for no extra coverage of our code.
    """
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is unavailable")
    torch._dynamo.reset()
    d = _data()
    module = TERMS[name](**_kwargs(name))
    compiled = torch.compile(module, backend="aot_eager")
    z1 = d["logits"].clone().requires_grad_()
    z2 = d["logits"].clone().requires_grad_()
    want = module(*_inputs(_kind(name), d, z1))
    got = compiled(*_inputs(_kind(name), d, z2))
    torch.testing.assert_close(got, want)
    want.backward()
    got.backward()
    torch.testing.assert_close(z2.grad, z1.grad)


# ----------------------------------------------------------------------------- volumes

PAIRWISE = [n for n in NAMES if TermInputs(TERMS[n].inputs) is TermInputs.IMAGE_PROBS_ROI]


def _volume_data(dtype=torch.float64, seed=0) -> dict[str, Any]:
    """A batch of two 1-channel volumes (N, 1, D, H, W); roi zeroes one slice's border row."""
    g = torch.Generator().manual_seed(seed)
    d, h, w = 2, 4, 5
    roi = torch.ones(N, d, h, w, dtype=torch.float64)
    roi[:, 1, -1] = 0
    return {
        "logits": torch.randn(N, K, d, h, w, generator=g, dtype=torch.float64).to(dtype),
        "image": torch.rand(N, 1, d, h, w, generator=g, dtype=torch.float64) * 255,
        "roi": roi,
    }


@pytest.mark.parametrize("name", PAIRWISE)
def test_pairwise_terms_on_volumes(name):
    """5-D inputs (issue 15): value, module = function, spacing, gradcheck, bad inputs."""
    d = _volume_data()
    kw = {**_kwargs(name), "spacing": (2.0, 1.0, 1.5)}
    module = TERMS[name](**kw)
    args = _inputs(TermInputs.IMAGE_PROBS_ROI, d)
    value = module(*args)
    assert value.shape == () and value.dtype == torch.float64 and float(value) > 0.0
    torch.testing.assert_close(value, _case(name).func(*args, **kw), rtol=0, atol=0)
    assert float(TERMS[name](**_kwargs(name))(*args)) != float(value)  # spacing matters

    logits = d["logits"].clone().requires_grad_()

    def f(z):
        return module(*_inputs(TermInputs.IMAGE_PROBS_ROI, d, z))

    assert torch.autograd.gradcheck(f, (logits,), eps=1e-6, atol=1e-6)
    image, probs, roi = args
    for argument, bad in (
        ("probs", (image, probs[:, :, 0], roi)),
        ("image", (image[:, :, :1], probs, roi)),
        ("roi", (image, probs, roi[:, 0])),
    ):
        with pytest.raises(ValueError, match=rf"^{argument}\b"):
            module(*bad)
    with pytest.raises(ValueError, match=r"^spacing must have 3 values"):
        TERMS[name](**{**kw, "spacing": (1.0, 1.0)})(*args)
