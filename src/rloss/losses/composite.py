r"""Sum of named loss terms, each carrying its own weight, with per-term values for logging.

``total = Σ_name term(...)``; e.g. pCE + λ_crf·E_crf (Tang et al., ECCV 2018).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from rloss.losses import _checks

__all__ = ["CompositeLoss"]

#: Input kinds: what each term is called with.
LOGITS_LABELS = "logits_labels"  # term(logits, labels)
IMAGE_PROBS_ROI = "image_probs_roi"  # term(image, probs, roi)
PROBS_BOUNDS_ROI = "probs_bounds_roi"  # term(probs, lower, upper, roi)

#: Term names recognised for modules that do not declare ``inputs``.
_KIND_BY_NAME = {
    "pce": LOGITS_LABELS,
    "ce": LOGITS_LABELS,
    "partial_ce": LOGITS_LABELS,
    "densecrf": IMAGE_PROBS_ROI,
    "ncut": IMAGE_PROBS_ROI,
    "size": PROBS_BOUNDS_ROI,
}


def _term_kind(name: str, term: nn.Module) -> str:
    kind = getattr(term, "inputs", None)
    if kind is None:
        kind = _KIND_BY_NAME.get(name)
    if kind not in (LOGITS_LABELS, IMAGE_PROBS_ROI, PROBS_BOUNDS_ROI):
        raise ValueError(
            f"terms[{name!r}] ({type(term).__name__}): cannot tell which inputs it takes; "
            f"give it a class attribute inputs = {LOGITS_LABELS!r} | {IMAGE_PROBS_ROI!r} | "
            f"{PROBS_BOUNDS_ROI!r}, or name it one of {sorted(_KIND_BY_NAME)}"
        )
    return kind


class CompositeLoss(nn.Module):
    r"""``total = Σ_name term``: named loss terms summed, each module carrying its own weight.

    Each term is called according to its ``inputs`` class attribute (the rloss
    losses declare it) or, for other modules, its name:

    - ``PartialCrossEntropy`` / ``"pce"``: ``term(logits, labels)``;
    - ``DenseCRFLoss``, ``NormalizedCutLoss`` / ``"densecrf"``, ``"ncut"``:
      ``term(image, probs, roi)``;
    - ``SizeLoss`` / ``"size"``: ``term(probs, *size_bounds, roi)``;

    where ``probs = softmax(logits, dim=1)`` in float32, computed once.

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
        self.kinds = {name: _term_kind(name, term) for name, term in self.terms.items()}

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
        if any(kind != LOGITS_LABELS for kind in self.kinds.values()):
            with _checks.no_autocast(logits.device):
                probs = torch.softmax(logits.float(), dim=1)
        total: Tensor | None = None
        values: dict[str, Tensor] = {}
        for name, term in self.terms.items():
            kind = self.kinds[name]
            if kind == LOGITS_LABELS:
                value = term(logits, labels)
            elif kind == IMAGE_PROBS_ROI:
                value = term(image, probs, roi)
            else:
                if size_bounds is None or len(size_bounds) != 2:
                    raise ValueError(
                        f"size_bounds must be a (lower, upper) pair of (N, K) tensors for the "
                        f"size term {name!r}, got {size_bounds!r}"
                    )
                value = term(probs, size_bounds[0], size_bounds[1], roi)
            values[name] = value.detach()
            total = value if total is None else total + value
        assert total is not None
        return total, values
