"""Data: datasets, joint transforms, scribble conversion and synthesis, the demo data.

Every dataset item follows one contract (see :mod:`rloss.data.transforms`)::

    {"image": float32 (3, H, W) normalised, "image_raw": float32 (3, H, W) 0..255,
     "scribble": int64 (H, W) 255 = unlabelled, "mask": int64 (H, W) 255 = void,
     "roi": float32 (H, W) 1 = real pixel, 0 = crop padding, "name": str}

Submodules and the dataset classes are imported lazily, so ``import rloss.data`` (and the
``rloss`` command's ``--help``) stays fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "SegmentationFolder",
    "SyntheticScenes",
    "VOCScribble",
    "generate_synthetic",
    "synthetic",
    "transforms",
]

_LAZY = {
    "VOCScribble": ("rloss.data.voc", "VOCScribble"),
    "SegmentationFolder": ("rloss.data.folder", "SegmentationFolder"),
    "SyntheticScenes": ("rloss.data.synthetic", "SyntheticScenes"),
    "generate_synthetic": ("rloss.data.synthetic", "generate_synthetic"),
    "synthetic": ("rloss.data.synthetic", None),
    "transforms": ("rloss.data.transforms", None),
}

if TYPE_CHECKING:
    from rloss.data import synthetic, transforms
    from rloss.data.folder import SegmentationFolder
    from rloss.data.synthetic import SyntheticScenes, generate_synthetic
    from rloss.data.voc import VOCScribble


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module_name, attr = _LAZY[name]
        module = importlib.import_module(module_name)
        value = module if attr is None else getattr(module, attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'rloss.data' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
