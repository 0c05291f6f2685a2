"""Regularized losses for weakly-supervised segmentation, as functions and thin modules.

- :func:`partial_cross_entropy` / :class:`PartialCrossEntropy`: CE on labelled pixels.
- :func:`densecrf_loss` / :class:`DenseCRFLoss`: relaxed Potts energy over a dense
  bilateral graph (Tang et al., ECCV 2018), ``≥ 0``.
- :func:`ncut_loss` / :class:`NormalizedCutLoss`: normalized cut (Tang et al., CVPR 2018).
- :func:`size_loss` / :class:`SizeLoss`: size constraints (Kervadec et al., MIDL 2018),
  with :func:`size_bounds_from_tags` and :func:`size_bounds_from_mask`.
- :class:`CompositeLoss`: named terms summed, per-term values for logging.

See ``docs/losses.md`` for the formulas, recommended weights and the relation to
the rloss reference's (negative) loss values.
"""

from rloss.losses.composite import CompositeLoss
from rloss.losses.densecrf import DenseCRFLoss, densecrf_loss
from rloss.losses.ncut import NormalizedCutLoss, ncut_loss
from rloss.losses.partial_ce import PartialCrossEntropy, partial_cross_entropy
from rloss.losses.size import SizeLoss, size_bounds_from_mask, size_bounds_from_tags, size_loss

__all__ = [
    "CompositeLoss",
    "DenseCRFLoss",
    "NormalizedCutLoss",
    "PartialCrossEntropy",
    "SizeLoss",
    "densecrf_loss",
    "ncut_loss",
    "partial_cross_entropy",
    "size_bounds_from_mask",
    "size_bounds_from_tags",
    "size_loss",
]
