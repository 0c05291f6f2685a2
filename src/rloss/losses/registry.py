"""The loss-term registry: names -> term classes, and the criterion builder.

Adding a loss term is one file plus one registry entry:

1. write the term in its own module: an ``nn.Module`` whose constructor takes
   ``weight`` (and its own hyper-parameters, with defaults where a default
   makes sense), and whose class declares what it is called with,
   ``inputs = TermInputs.<KIND>`` (:class:`~rloss.losses.TermInputs`);
2. add it to :data:`TERMS` (a term of the library), or register it from your
   own code with :func:`register_term` (``@register_term("name")`` on the class).

:func:`build_criterion` then builds a :class:`~rloss.losses.CompositeLoss`
from ``{name: parameters}``, a recipe's ``loss`` section; the recipe defaults
of ``rloss.train.config.LOSS_TERMS`` are read from the constructor signatures
(:func:`term_defaults`), so each default is written once, on the class.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, overload

from torch import nn

from rloss.losses.composite import CompositeLoss, term_inputs
from rloss.losses.densecrf import DenseCRFLoss
from rloss.losses.ncut import NormalizedCutLoss
from rloss.losses.partial_ce import PartialCrossEntropy
from rloss.losses.size import SizeLoss

__all__ = ["TERMS", "build_criterion", "build_term", "get_term", "register_term", "term_defaults"]

#: Term name -> class, in the order recipes list them (smp's
#: ``MODEL_ARCHITECTURES_MAPPING`` pattern). Extend it with :func:`register_term`.
TERMS: dict[str, type[nn.Module]] = {
    "pce": PartialCrossEntropy,
    "densecrf": DenseCRFLoss,
    "ncut": NormalizedCutLoss,
    "size": SizeLoss,
}

T = TypeVar("T", bound=type[nn.Module])


def _did_you_mean(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=1)
    return f"; did you mean {close[0]!r}?" if close else ""


def _parameters(cls: type) -> dict[str, inspect.Parameter]:
    """The constructor's keyword-capable parameters (no ``self``, ``*args``, ``**kwargs``)."""
    sig = inspect.signature(cls)
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {n: p for n, p in sig.parameters.items() if p.kind in kinds}


def _check_term_class(name: str, cls: object) -> None:
    if not isinstance(name, str) or not name or "." in name:
        raise ValueError(f"name must be a non-empty string without '.', got {name!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"term {name!r} must be an nn.Module subclass, got {cls!r}")
    term_inputs(cls, f"term {name!r}")
    if "weight" not in _parameters(cls):
        raise ValueError(
            f"term {name!r} ({cls.__name__}): its constructor must take `weight` "
            "(every term carries its own weight)"
        )


@overload
def register_term(name: str, cls: None = None, *, replace: bool = False) -> Callable[[T], T]: ...
@overload
def register_term(name: str, cls: T, *, replace: bool = False) -> T: ...
def register_term(
    name: str, cls: T | None = None, *, replace: bool = False
) -> T | Callable[[T], T]:
    """Register a loss-term class under ``name``; usable as a decorator.

    The class must be an ``nn.Module`` whose constructor takes ``weight`` and
    that declares ``inputs = TermInputs.<KIND>``. Once registered,
    :func:`build_criterion` and training recipes (``loss.<name>``) know it,
    with the constructor's defaults as recipe defaults.

    Args:
        name: the term's name in criteria and recipes (no ``"."``).
        cls: the class; omit it to use ``register_term(name)`` as a decorator.
        replace: allow replacing a different class already registered as ``name``.

    Returns:
        ``cls`` (or a decorator returning it).

    Raises:
        ValueError: bad name, a class that is no term, or ``name`` taken.

    Example:
        >>> from torch import nn
        >>> from rloss.losses import TERMS, TermInputs, build_criterion, register_term
        >>> @register_term("mean_prob")
        ... class MeanProb(nn.Module):
        ...     inputs = TermInputs.IMAGE_PROBS_ROI
        ...     def __init__(self, weight: float = 1.0):
        ...         super().__init__()
        ...         self.weight = weight
        ...     def forward(self, image, probs, roi=None):
        ...         return self.weight * probs[:, 1:].mean()
        >>> criterion = build_criterion({"pce": {}, "mean_prob": {"weight": 0.1}})
        >>> list(criterion.terms)
        ['pce', 'mean_prob']
        >>> del TERMS["mean_prob"]
    """

    def add(c: T) -> T:
        _check_term_class(name, c)
        old = TERMS.get(name)
        if old is not None and old is not c and not replace:
            raise ValueError(
                f"loss term {name!r} is already registered ({old.__module__}.{old.__qualname__}); "
                "pass replace=True to replace it"
            )
        TERMS[name] = c
        return c

    return add if cls is None else add(cls)


def get_term(name: str) -> type[nn.Module]:
    """The class registered as ``name``; a did-you-mean ``ValueError`` for an unknown one."""
    try:
        return TERMS[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown loss term {name!r}{_did_you_mean(str(name), list(TERMS))} "
            f"(known terms: {sorted(TERMS)}; add one with rloss.losses.register_term)"
        ) from None


def term_defaults(name: str) -> dict[str, Any]:
    """The constructor defaults of term ``name``: ``{parameter: default}``, in signature order.

    Parameters without a default (required) are left out.

    Example:
        >>> from rloss.losses import term_defaults
        >>> term_defaults("size")
        {'weight': 1.0}
    """
    return {
        n: p.default
        for n, p in _parameters(get_term(name)).items()
        if p.default is not inspect.Parameter.empty
    }


def build_term(name: str, params: Mapping[str, Any] | None = None) -> nn.Module:
    """``TERMS[name](**params)``, with errors naming the term and the parameter.

    Raises:
        ValueError: unknown term or parameter (with a did-you-mean), a missing
            required parameter, or the term's own validation error.
    """
    cls = get_term(name)
    params = dict(params or {})
    accepted = _parameters(cls)
    for key in params:
        if key not in accepted:
            raise ValueError(
                f"{name}: unknown parameter {key!r} for {cls.__name__}"
                f"{_did_you_mean(str(key), list(accepted))} (parameters: {list(accepted)})"
            )
    missing = [
        n for n, p in accepted.items() if p.default is inspect.Parameter.empty and n not in params
    ]
    if missing:
        raise ValueError(f"{name}: {cls.__name__} needs the parameter(s) {missing}")
    try:
        return cls(**params)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from e


def build_criterion(spec: Mapping[str, Mapping[str, Any] | None]) -> CompositeLoss:
    """A :class:`~rloss.losses.CompositeLoss` from ``{term name: parameters}``.

    ``CompositeLoss({n: TERMS[n](**p) for n, p in spec.items()})``, in the
    order of ``spec``; a term whose parameters are ``None`` is left out (as a
    recipe's ``loss.<name>: null``).

    Args:
        spec: term name (a key of :data:`TERMS`) -> constructor keyword
            arguments, e.g. ``{"pce": {}, "densecrf": {"weight": 2e-9,
            "scale_factor": 0.5}}``.

    Raises:
        ValueError: an unknown term or parameter (did-you-mean), a missing
            required parameter, an invalid value, or no term at all.

    Example:
        >>> from rloss.losses import build_criterion
        >>> criterion = build_criterion({"pce": {}, "densecrf": {"weight": 2e-9,
        ...                                                     "scale_factor": 0.5}})
        >>> criterion.terms["densecrf"].scale_factor
        0.5
        >>> build_criterion({"densecr": {}})
        Traceback (most recent call last):
        ...
        ValueError: unknown loss term 'densecr'; did you mean 'densecrf'? ...
    """
    if not isinstance(spec, Mapping):
        raise ValueError(f"spec must be a mapping term name -> parameters, got {spec!r}")
    terms: dict[str, nn.Module] = {}
    for name, params in spec.items():
        if params is None:
            continue
        if not isinstance(params, Mapping):
            raise ValueError(f"{name}: expected a mapping of parameters or None, got {params!r}")
        terms[name] = build_term(name, params)
    if not terms:
        raise ValueError(f"spec enables no loss term, got {dict(spec)!r}")
    return CompositeLoss(terms)
