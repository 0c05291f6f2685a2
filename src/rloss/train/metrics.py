r"""Segmentation metrics: one confusion matrix and one summary, for validation and ``rloss eval``.

:class:`ConfusionMatrix` is torchmetrics' ``MulticlassConfusionMatrix`` (rows = truth,
columns = prediction; summed across processes under DDP) that also ignores pixels
outside the region of interest and labels outside ``0..K-1``. :func:`summarize` turns
a matrix into the numbers every report shows:

``IoU_k = C_kk / (Σ_j C_kj + Σ_i C_ik − C_kk)``; mIoU is the mean over the classes
present in the ground truth or the predictions (VOC convention: absent classes are
NaN and left out); pixel accuracy is ``Σ_k C_kk / Σ C``.

>>> import torch
>>> cm = ConfusionMatrix(3)
>>> cm.update(torch.tensor([[0, 1], [1, 1]]), torch.tensor([[0, 1], [0, 255]]))
>>> s = summarize(cm.compute(), ["bg", "a", "b"])
>>> round(s["miou"], 4), round(s["pixel_acc"], 4), s["per_class_iou"]["b"]
(0.5, 0.6667, nan)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torchmetrics.classification import MulticlassConfusionMatrix

from rloss.constants import IGNORE_INDEX

__all__ = ["ConfusionMatrix", "iou_from_confusion", "object_iou", "summarize"]


class ConfusionMatrix(MulticlassConfusionMatrix):
    """``(K, K)`` int64 confusion matrix of label maps (rows = truth, columns = prediction).

    Args:
        num_classes: K (>= 1).

    ``update(pred, target, roi=None)`` takes integer maps of any equal shape; pixels with
    ``target`` 255, outside ``0..K-1``, or ``roi <= 0`` are ignored.
    """

    def __init__(self, num_classes: int) -> None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected a positive int, got {num_classes!r}")
        super().__init__(num_classes, ignore_index=IGNORE_INDEX, validate_args=False)

    def update(  # type: ignore[override]
        self, pred: torch.Tensor, target: torch.Tensor, roi: torch.Tensor | None = None
    ) -> None:
        if pred.shape != target.shape:
            raise ValueError(
                f"pred: expected the shape of target {tuple(target.shape)}, got {tuple(pred.shape)}"
            )
        target = target.long()
        keep = (target >= 0) & (target < self.num_classes)
        if roi is not None:
            keep &= roi > 0
        target = torch.where(keep, target, torch.full_like(target, IGNORE_INDEX))
        super().update(pred.long().reshape(-1), target.reshape(-1))


def iou_from_confusion(confmat: torch.Tensor) -> torch.Tensor:
    """Per-class IoU ``(K,)`` float64 from a confusion matrix ``(K, K)`` (rows = truth).

    Classes absent from both truth and prediction get NaN (left out of the mean).
    """
    cm = confmat.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))


def summarize(confmat: torch.Tensor, class_names: Sequence[str]) -> dict[str, Any]:
    """``{"miou", "pixel_acc", "per_class_iou": {name: IoU or NaN}, "pixels"}`` of a matrix.

    Raises:
        ValueError: ``class_names`` does not have K names.
    """
    k = int(confmat.shape[0])
    if len(class_names) != k:
        raise ValueError(f"class_names: expected {k} names, got {len(class_names)}")
    iou = iou_from_confusion(confmat)
    valid = ~torch.isnan(iou)
    total = int(confmat.sum())
    return {
        "miou": float(iou[valid].mean()) if bool(valid.any()) else math.nan,
        "pixel_acc": float(confmat.diagonal().sum()) / total if total else math.nan,
        "per_class_iou": {str(n): float(v) for n, v in zip(class_names, iou.tolist())},
        "pixels": total,
    }


def object_iou(pairs: Any, background: int = 0) -> float | None:
    """Class-agnostic IoU of "object" (any class but ``background``) over label maps.

    A pixel is correct when prediction and truth both call it object (whatever the
    class) or both background; pixels whose truth is 255 are left out. This separates
    boundary quality from shape classification.

    Args:
        pairs: iterable of ``(pred, truth)`` integer maps (numpy or torch) of equal shape.
        background: the background label.

    Returns:
        ``intersection / union`` of the object pixels, ``None`` when there are none.

    >>> object_iou([(np.array([0, 1, 2, 0]), np.array([0, 2, 2, 255]))])
    1.0
    """
    inter = union = 0
    for pred, truth in pairs:
        pred, truth = np.asarray(pred), np.asarray(truth)
        valid = truth != IGNORE_INDEX
        t = (truth != background) & valid
        p = (pred != background) & valid
        inter += int(np.count_nonzero(p & t))
        union += int(np.count_nonzero(p | t))
    return inter / union if union else None
