"""Data: datasets, joint transforms, scribble conversion and synthesis, the demo data.

Modules: :mod:`~rloss.data.voc` and :mod:`~rloss.data.folder` (datasets),
:mod:`~rloss.data.scribbles` (ScribbleSup XML / text -> label PNGs),
:mod:`~rloss.data.scribble_synthesis` (scribbles synthesised from full masks; formerly
``synth``), :mod:`~rloss.data.demo_scenes` (the generated demo dataset; formerly
``synthetic``), :mod:`~rloss.data.io` (image/label files), :mod:`~rloss.data.transforms`.

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
    "demo_scenes",
    "generate_synthetic",
    "scribble_synthesis",
    "synthetic",
    "transforms",
]

_LAZY = {
    "VOCScribble": ("rloss.data.voc", "VOCScribble"),
    "SegmentationFolder": ("rloss.data.folder", "SegmentationFolder"),
    "SyntheticScenes": ("rloss.data.demo_scenes", "SyntheticScenes"),
    "generate_synthetic": ("rloss.data.demo_scenes", "generate_synthetic"),
    "demo_scenes": ("rloss.data.demo_scenes", None),
    "scribble_synthesis": ("rloss.data.scribble_synthesis", None),
    "synthetic": ("rloss.data.demo_scenes", None),  # the module's former name
    "transforms": ("rloss.data.transforms", None),
}

if TYPE_CHECKING:
    from rloss.data import demo_scenes, scribble_synthesis, transforms
    from rloss.data import demo_scenes as synthetic
    from rloss.data.demo_scenes import SyntheticScenes, generate_synthetic
    from rloss.data.folder import SegmentationFolder
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
