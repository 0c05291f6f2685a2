r"""Sum of named loss terms, each carrying its own weight, with per-term values for logging.

``total = Σ_name term(...)``; e.g. pCE + λ_crf·E_crf (Tang et al., ECCV 2018).

Which arguments a term is called with is declared on its class, as
``inputs = TermInputs.<KIND>`` (:class:`TermInputs`); :class:`CompositeLoss`
dispatches on that declaration, never on the term's name.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor, nn

from rloss.losses import _checks

__all__ = ["CompositeLoss", "TermInputs"]


class _Batch(NamedTuple):
    """Everything a term may be called with (``probs`` is ``None`` when no term needs it)."""

    logits: Tensor
    labels: Tensor
    image: Tensor
    probs: Tensor | None
    roi: Tensor | None
    size_bounds: tuple[Tensor, Tensor] | None


class TermInputs(str, enum.Enum):
    """What a loss term is called with; declare it as the class attribute ``inputs``.

    A ``str`` enum, so a term that still declares the plain string (e.g.
    ``inputs = "image_probs_roi"``) resolves to the same member.

    - ``LOGITS_LABELS``: ``term(logits, labels)`` (partial cross-entropy);
    - ``IMAGE_PROBS_ROI``: ``term(image, probs, roi)`` (DenseCRF, normalized cut);
    - ``PROBS_BOUNDS_ROI``: ``term(probs, lower, upper, roi)`` (size constraint),
      with ``(lower, upper) = size_bounds``;

    where ``probs = softmax(logits, dim=1)`` in float32, computed once per call.

    Example:
        >>> from rloss.losses import TermInputs
        >>> TermInputs("image_probs_roi") is TermInputs.IMAGE_PROBS_ROI
        True
        >>> TermInputs.LOGITS_LABELS.needs_probs
        False
    """

    LOGITS_LABELS = "logits_labels"
    IMAGE_PROBS_ROI = "image_probs_roi"
    PROBS_BOUNDS_ROI = "probs_bounds_roi"

    @property
    def needs_probs(self) -> bool:
        """Whether the term takes ``softmax(logits)`` rather than the logits."""
        return self is not TermInputs.LOGITS_LABELS

    def call(self, name: str, term: nn.Module, batch: _Batch) -> Tensor:
        """Call ``term`` (registered as ``name``) with the arguments of this kind."""
        return _CALLS[self](name, term, batch)


def _call_size(name: str, term: nn.Module, b: _Batch) -> Tensor:
    if b.size_bounds is None or len(b.size_bounds) != 2:
        raise ValueError(
            f"size_bounds must be a (lower, upper) pair of (N, K) tensors for the "
            f"size term {name!r}, got {b.size_bounds!r}"
        )
    return term(b.probs, b.size_bounds[0], b.size_bounds[1], b.roi)


_CALLS = {
    TermInputs.LOGITS_LABELS: lambda name, term, b: term(b.logits, b.labels),
    TermInputs.IMAGE_PROBS_ROI: lambda name, term, b: term(b.image, b.probs, b.roi),
    TermInputs.PROBS_BOUNDS_ROI: _call_size,
}


def term_inputs(term: object, name: str = "term") -> TermInputs:
    """The :class:`TermInputs` a module (or module class) declares as ``inputs``.

    Raises:
        ValueError: naming ``name`` when ``inputs`` is missing or not a known kind.
    """
    kind = getattr(term, "inputs", None)
    try:
        return TermInputs(kind)
    except ValueError:
        cls = term if isinstance(term, type) else type(term)
        kinds = ", ".join(f"TermInputs.{k.name}" for k in TermInputs)
        raise ValueError(
            f"{name} ({cls.__name__}): cannot tell which inputs it takes (inputs={kind!r}); "
            f"give its class the attribute inputs = one of {kinds} "
            "(from rloss.losses import TermInputs)"
        ) from None


class CompositeLoss(nn.Module):
    r"""``total = Σ_name term``: named loss terms summed, each module carrying its own weight.

    Each term is called according to its class attribute ``inputs``, a
    :class:`TermInputs` (every rloss loss declares it; a module of your own
    must too):

    - ``PartialCrossEntropy``: ``term(logits, labels)``;
    - ``DenseCRFLoss``, ``NormalizedCutLoss``: ``term(image, probs, roi)``;
    - ``SizeLoss``: ``term(probs, *size_bounds, roi)``;

    where ``probs = softmax(logits, dim=1)`` in float32, computed once.
    :func:`rloss.losses.build_criterion` builds one from ``{name: parameters}``.

    Args:
        terms: name -> loss module, in summation order (names must be valid
            ``nn.ModuleDict`` keys, no ``"."``).

    Shape:
        - logits: ``(N, K, H, W)`` float network output.
        - labels: ``(N, H, W)`` int64, 255 where unlabelled.
        - image: ``(N, C, H, W)`` float raw image 0..255.
        - roi: ``(N, H, W)`` or ``None``.
        - size_bounds: ``(lower, upper)``, each ``(N, K)`` in pixels; required
          when a size term is present.
        - output: ``(total, {name: weighted value, detached})``.

    Example:
        >>> import torch
        >>> from rloss.losses import CompositeLoss, DenseCRFLoss, PartialCrossEntropy
        >>> loss_fn = CompositeLoss({"pce": PartialCrossEntropy(),
        ...                          "densecrf": DenseCRFLoss(weight=2e-9)})
        >>> logits = torch.randn(1, 3, 16, 16, requires_grad=True)
        >>> labels = torch.full((1, 16, 16), 255)
        >>> labels[0, 4, 4:8] = 2
        >>> total, parts = loss_fn(logits, labels, torch.rand(1, 3, 16, 16) * 255)
        >>> sorted(parts)
        ['densecrf', 'pce']
    """

    def __init__(self, terms: Mapping[str, nn.Module]) -> None:
        super().__init__()
        if not isinstance(terms, Mapping) or len(terms) == 0:
            raise ValueError(f"terms must be a non-empty mapping name -> nn.Module, got {terms!r}")
        for name, term in terms.items():
            if not isinstance(term, nn.Module):
                raise ValueError(
                    f"terms[{name!r}] must be an nn.Module, got {type(term).__name__}"
                )
        self.terms = nn.ModuleDict(dict(terms))
        #: name -> :class:`TermInputs` of each term.
        self.kinds = {
            name: term_inputs(term, f"terms[{name!r}]") for name, term in self.terms.items()
        }

    def forward(
        self,
        logits: Tensor,
        labels: Tensor,
        image: Tensor,
        roi: Tensor | None = None,
        size_bounds: tuple[Tensor, Tensor] | None = None,
    ) -> tuple[Tensor, dict[str, Tensor]]:
        logits = _checks.check_float_tensor("logits", logits, 4, "(N, K, H, W)")
        probs = None
        if any(kind.needs_probs for kind in self.kinds.values()):
            with _checks.no_autocast(logits.device):
                probs = torch.softmax(logits.float(), dim=1)
        batch = _Batch(logits, labels, image, probs, roi, size_bounds)
        total: Tensor | None = None
        values: dict[str, Tensor] = {}
        for name, term in self.terms.items():
            value = self.kinds[name].call(name, term, batch)
            values[name] = value.detach()
            total = value if total is None else total + value
        assert total is not None
        return total, values
