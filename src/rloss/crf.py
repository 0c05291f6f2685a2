"""Deprecated names of mean-field refinement: use :mod:`rloss.meanfield`.

``dense_crf`` is :func:`rloss.meanfield.meanfield_refine` and ``DenseCRF`` is
:class:`rloss.meanfield.MeanFieldCRF`; both warn (``DeprecationWarning``) when used.
The constants are re-exported unchanged.
"""

from __future__ import annotations

import warnings
from typing import Any

from torch import Tensor

from rloss.meanfield import (
    DEFAULT_APPEARANCE_WEIGHT,
    DEFAULT_ITERATIONS,
    DEFAULT_SIGMA_RGB,
    DEFAULT_SIGMA_XY,
    DEFAULT_SMOOTHNESS_SIGMA,
    DEFAULT_SMOOTHNESS_WEIGHT,
    PROB_FLOOR,
    MeanFieldCRF,
    meanfield_refine,
)

__all__ = [
    "DEFAULT_APPEARANCE_WEIGHT",
    "DEFAULT_ITERATIONS",
    "DEFAULT_SIGMA_RGB",
    "DEFAULT_SIGMA_XY",
    "DEFAULT_SMOOTHNESS_SIGMA",
    "DEFAULT_SMOOTHNESS_WEIGHT",
    "PROB_FLOOR",
    "DenseCRF",
    "dense_crf",
]


def dense_crf(image: Tensor, probs: Tensor, **kwargs: Any) -> Tensor:
    """Deprecated: :func:`rloss.meanfield.meanfield_refine`."""
    warnings.warn(
        "rloss.crf.dense_crf is deprecated; use rloss.meanfield.meanfield_refine",
        DeprecationWarning,
        stacklevel=2,
    )
    return meanfield_refine(image, probs, **kwargs)


class DenseCRF(MeanFieldCRF):
    """Deprecated: :class:`rloss.meanfield.MeanFieldCRF`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        warnings.warn(
            "rloss.crf.DenseCRF is deprecated; use rloss.meanfield.MeanFieldCRF",
            DeprecationWarning,
            stacklevel=2,
        )
        super().__init__(*args, **kwargs)
