"""The demo's settings: one nested dict of hyper-parameters, and the ``--quick`` overrides.

All of the demo's knobs live in :data:`DEFAULTS`; :data:`QUICK` shrinks them for smoke
tests. They were tuned on seeds other than the reported ones only through these settings,
never by touching results (``docs/demo.md``).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from rloss.train.config import deep_merge

__all__ = ["DEFAULTS", "METHODS", "QUICK", "RUNS", "demo_settings"]

#: Method key -> display name, in the order they are trained and reported.
METHODS: dict[str, str] = {
    "pce": "(a) pCE on scribbles",
    "densecrf": "(b) pCE + DenseCRF loss",
    "full": "(c) full supervision",
    "ncut": "(d) pCE + Normalized Cut loss",
}

#: Phase-1 runs (trained from scratch) -> description.
RUNS: dict[str, str] = {
    "pce_phase1": "phase 1: pCE on scribbles, from scratch",
    "full_phase1": "phase 1: full masks, from scratch",
}

#: Default demo settings (a run of a few minutes on 2 CPU cores).
DEFAULTS: dict[str, Any] = {
    "data": {"num_train": 512, "num_val": 32, "size": [64, 64], "scribble_fraction": 0.03},
    "model": {
        "arch": "unet2d",
        "encoder_weights": None,
        "kwargs": {"in_channels": 3, "channels": [16, 32, 64, 128]},
    },
    "augment": {"scale_range": [1.0, 1.0], "flip": True},
    "batch_size": 8,
    "epochs": 10,
    "finetune_epochs": 10,
    "optim": {"name": "adamw", "lr": 0.003, "weight_decay": 1e-4, "schedule": "poly", "power": 0.9},
    "finetune_lr": 0.003,
    "densecrf": {
        "weight": 6.0,
        "sigma_rgb": 30.0,
        "sigma_xy": 8.0,
        "scale_factor": 1.0,
        "normalize": True,
    },
    "ncut": {"weight": 0.5, "sigma_rgb": 30.0, "sigma_xy": 8.0, "scale_factor": 1.0},
    "figure_images": 4,
    "threads": "auto",
}

#: Overrides for ``--quick`` (well under two minutes; numbers are not meaningful).
QUICK: dict[str, Any] = {
    "data": {"num_train": 8, "num_val": 2, "size": [40, 40], "scribble_fraction": 0.03},
    "batch_size": 4,
    "epochs": 1,
    "finetune_epochs": 1,
    "figure_images": 2,
}


def demo_settings(
    *, quick: bool = False, seed: int = 0, overrides: Mapping[str, Any] = {}
) -> dict[str, Any]:
    """The demo's settings: :data:`DEFAULTS`, then :data:`QUICK` if ``quick``, then ``overrides``.

    Returns:
        A new nested dict, with ``seed`` and ``quick`` set.

    Example:
        >>> s = demo_settings(quick=True, seed=3, overrides={"densecrf": {"weight": 2.0}})
        >>> s["seed"], s["quick"], s["densecrf"]["weight"], s["epochs"]
        (3, True, 2.0, 1)
    """
    s = deep_merge(DEFAULTS, QUICK) if quick else copy.deepcopy(DEFAULTS)
    s = deep_merge(s, overrides)
    s["seed"] = int(seed)
    s["quick"] = bool(quick)
    return s
