r"""Partial cross-entropy: cross-entropy on the labelled (scribbled) pixels only.

Tang et al., "On Regularized Losses for Weakly-supervised CNN Segmentation",
ECCV 2018 (and Lin et al., ScribbleSup, CVPR 2016)::

    L = λ · Σ_{i ∈ Ω_L} w_{y_i} (−log softmax(z_i)_{y_i}) / Σ_{i ∈ Ω_L} w_{y_i}

over the set ``Ω_L`` of pixels whose label is not ``ignore_index``, with the
term weight ``λ = weight`` (1 by default) and the class weights ``w =
class_weight`` (``w ≡ 1`` without: the mean over labelled pixels).

``weight`` is the term's weight, as for every rloss loss; the class weights
that ``torch.nn.CrossEntropyLoss`` calls ``weight`` are ``class_weight`` here
(a tensor passed as ``weight`` is still read as class weights, with a
``DeprecationWarning``).
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rloss.constants import IGNORE_INDEX
from rloss.losses import _checks
from rloss.losses.composite import TermInputs

__all__ = ["PartialCrossEntropy", "partial_cross_entropy"]

_INT_DTYPES = (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8)


def _check_labels(labels: object, logits: Tensor, ignore_index: int) -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    n, k, h, w = (int(s) for s in logits.shape)
    if tuple(labels.shape) != (n, h, w):
        raise ValueError(
            f"labels must have shape (N, H, W) = {(n, h, w)} to match logits "
            f"{tuple(logits.shape)}, got {tuple(labels.shape)}"
        )
    if labels.dtype not in _INT_DTYPES:
        raise ValueError(f"labels must be an integer tensor (int64), got dtype {labels.dtype}")
    _checks.check_same_device(("logits", logits), ("labels", labels))
    labels = labels.long()
    if not _checks.host_values(labels):
        return labels  # value checks would sync an accelerator with the host
    bad = (labels != ignore_index) & ((labels < 0) | (labels >= k))
    if bool(bad.any()):
        value = int(labels[bad][0])
        raise ValueError(
            f"labels must be class indices in 0..{k - 1} (K={k} from logits) or "
            f"ignore_index={ignore_index}, got the value {value}"
        )
    return labels


def _split_weight(weight: object, class_weight: object) -> tuple[float, object]:
    """``(term weight, class weights)``, reading a tensor/sequence ``weight`` as class weights.

    Before every term took a scalar ``weight``, ``weight`` was the ``(K,)`` class
    weights (``torch.nn.CrossEntropyLoss``'s name); that use is deprecated.
    """
    is_scalar = isinstance(weight, (int, float)) or (
        isinstance(weight, Tensor) and weight.dim() == 0
    )
    if weight is None or not is_scalar:
        if class_weight is not None:
            raise ValueError(
                "weight must be a number (the term weight) when class_weight is given, "
                f"got {type(weight).__name__}"
            )
        if weight is not None:
            warnings.warn(
                "partial cross-entropy: class weights passed as `weight` are deprecated; "
                "pass them as `class_weight` (`weight` is now the term weight, a number)",
                DeprecationWarning,
                stacklevel=3,
            )
        return 1.0, weight
    return _checks.check_weight("weight", float(weight)), class_weight


def partial_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    class_weight: Tensor | None = None,
    ignore_index: int = IGNORE_INDEX,
    *,
    weight: float = 1.0,
) -> Tensor:
    r"""Cross-entropy averaged over labelled pixels; 0 (zero gradient) when none is labelled.

    ``L = λ · Σ_{i labelled} w_{y_i} · (−log softmax(logits_i)_{y_i}) / Σ_{i labelled} w_{y_i}``
    (``λ = weight``, ``w = class_weight``), the weighted mean that
    ``torch.nn.functional.cross_entropy`` computes, except that a batch with
    no labelled pixel (or zero total class weight) gives 0 with a zero
    gradient instead of NaN. Computed in float32 (float64 for float64 logits).

    Reference: Tang et al., ECCV 2018 (partial cross-entropy on scribbles).

    Args:
        logits: ``(N, K, H, W)`` float network outputs (before softmax).
        labels: ``(N, H, W)`` integer labels in ``0..K-1``, ``ignore_index``
            on unlabelled pixels.
        class_weight: optional ``(K,)`` non-negative class weights ``w``.
        ignore_index: label value of unlabelled pixels (default 255).
        weight: term weight ``≥ 0`` (default 1). A ``(K,)`` tensor here is
            read as ``class_weight`` (deprecated).

    Returns:
        0-dim float32 tensor (float64 for float64 logits), ``≥ 0``.

    Example:
        >>> import torch
        >>> from rloss.losses import partial_cross_entropy
        >>> logits = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> labels = torch.full((2, 8, 8), 255)
        >>> labels[:, 2, 2:6] = 1
        >>> partial_cross_entropy(logits, labels).backward()
        >>> half = partial_cross_entropy(logits, labels, weight=0.5)
        >>> torch.allclose(half, 0.5 * partial_cross_entropy(logits, labels))
        True
    """
    weight, class_weight = _split_weight(weight, class_weight)
    logits = _checks.check_float_tensor("logits", logits, 4, "(N, K, H, W)")
    labels = _check_labels(labels, logits, ignore_index)
    if _checks.host_values(logits) and not math.isfinite(
        float(logits.detach().sum(dtype=torch.float64))
    ):
        raise ValueError("logits contains NaN or Inf values")
    dtype = _checks.compute_dtype(logits)
    k = logits.shape[1]
    w = None
    if class_weight is not None:
        if not isinstance(class_weight, Tensor):
            class_weight = torch.as_tensor(class_weight)
        if tuple(class_weight.shape) != (k,):
            raise ValueError(
                f"class_weight must have shape (K,) = ({k},) to match logits "
                f"{tuple(logits.shape)}, got {tuple(class_weight.shape)}"
            )
        _checks.check_same_device(("logits", logits), ("class_weight", class_weight))
        w = class_weight.to(dtype)
        if _checks.host_values(w) and (not bool(torch.isfinite(w).all()) or bool((w < 0).any())):
            raise ValueError(
                f"class_weight must be finite and non-negative, got {class_weight.tolist()}"
            )
    with _checks.no_autocast(logits.device):
        z = logits.to(dtype)
        total = F.cross_entropy(z, labels, weight=w, ignore_index=ignore_index, reduction="sum")
        valid = labels != ignore_index
        if w is None:
            denom = valid.sum().to(dtype)
        else:
            denom = (w[labels.clamp(0, k - 1)] * valid).sum()
        # No labelled pixel: total is 0 with zero gradient; 0 / tiny stays 0 (no NaN).
        loss = total / denom.clamp_min(torch.finfo(dtype).tiny)
        return weight * loss  # exact for weight 1


class PartialCrossEntropy(nn.Module):
    r"""Module form of :func:`partial_cross_entropy` (mean CE over labelled pixels).

    Args:
        weight: term weight ``≥ 0`` (default 1). A ``(K,)`` tensor here is read
            as ``class_weight`` (deprecated: it was the class weights before
            every term took a weight).
        class_weight: optional ``(K,)`` class weights (a buffer: moves with ``.to()``).
        ignore_index: label value of unlabelled pixels (default 255).

    Shape:
        - logits: ``(N, K, H, W)`` float.
        - labels: ``(N, H, W)`` int64, ``ignore_index`` where unlabelled.
        - output: scalar.

    Example:
        >>> import torch
        >>> from rloss.losses import PartialCrossEntropy
        >>> pce = PartialCrossEntropy()
        >>> loss = pce(torch.randn(1, 3, 4, 4), torch.full((1, 4, 4), 255))
        >>> float(loss)
        0.0
        >>> PartialCrossEntropy(weight=0.5, class_weight=[1.0, 2.0, 1.0])
        PartialCrossEntropy(weight=0.5, ignore_index=255, weighted=True)
    """

    #: How :class:`~rloss.losses.CompositeLoss` feeds this term.
    inputs: ClassVar[TermInputs] = TermInputs.LOGITS_LABELS

    def __init__(
        self,
        weight: float = 1.0,
        class_weight: Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
    ) -> None:
        super().__init__()
        weight, class_weight = _split_weight(weight, class_weight)
        if class_weight is not None:
            class_weight = torch.as_tensor(class_weight, dtype=torch.float32)
            if class_weight.dim() != 1:
                raise ValueError(
                    f"class_weight must have shape (K,), got {tuple(class_weight.shape)}"
                )
        self.weight = weight
        self.register_buffer("class_weight", class_weight)
        self.ignore_index = int(ignore_index)

    def extra_repr(self) -> str:
        return (
            f"weight={self.weight:g}, ignore_index={self.ignore_index}, "
            f"weighted={self.class_weight is not None}"
        )

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return partial_cross_entropy(
            logits, labels, self.class_weight, self.ignore_index, weight=self.weight
        )
