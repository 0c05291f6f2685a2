"""Regularized losses for weakly-supervised segmentation, as functions and thin modules.

- :func:`partial_cross_entropy` / :class:`PartialCrossEntropy`: CE on labelled pixels.
- :func:`densecrf_loss` / :class:`DenseCRFLoss`: relaxed Potts energy over a dense
  bilateral graph (Tang et al., ECCV 2018), ``≥ 0``.
- :func:`ncut_loss` / :class:`NormalizedCutLoss`: normalized cut (Tang et al., CVPR 2018).
- :func:`size_loss` / :class:`SizeLoss`: size constraints (Kervadec et al., MIDL 2018),
  with :func:`size_bounds_from_tags` and :func:`size_bounds_from_mask`.
- :class:`CompositeLoss`: named terms summed, per-term values for logging; each
  term declares its :class:`TermInputs`.
- :data:`TERMS`, :func:`register_term`, :func:`build_criterion`: the registry of
  term names (``pce``, ``densecrf``, ``ncut``, ``size``) and the criterion builder.

See ``docs/losses.md`` for the formulas, recommended weights and the relation to
the rloss reference's (negative) loss values.
"""

from rloss.losses.composite import CompositeLoss, TermInputs
from rloss.losses.densecrf import DenseCRFLoss, densecrf_loss
from rloss.losses.ncut import NormalizedCutLoss, ncut_loss
from rloss.losses.partial_ce import PartialCrossEntropy, partial_cross_entropy
from rloss.losses.registry import (
    TERMS,
    build_criterion,
    build_term,
    get_term,
    register_term,
    term_defaults,
)
from rloss.losses.size import SizeLoss, size_bounds_from_mask, size_bounds_from_tags, size_loss

__all__ = [
    "TERMS",
    "CompositeLoss",
    "DenseCRFLoss",
    "NormalizedCutLoss",
    "PartialCrossEntropy",
    "SizeLoss",
    "TermInputs",
    "build_criterion",
    "build_term",
    "densecrf_loss",
    "get_term",
    "ncut_loss",
    "partial_cross_entropy",
    "register_term",
    "size_bounds_from_mask",
    "size_bounds_from_tags",
    "size_loss",
    "term_defaults",
]
