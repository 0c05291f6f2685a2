"""Training recipes of the demo's methods, built from its settings.

Every method shares the network, data, batch size, augmentation and schedule; they differ
only in supervision (scribbles or full masks) and loss terms. The recipes are plain
mappings in the format of :func:`rloss.train.config.validate`, trained by
:func:`rloss.train.fit.train`.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from rloss.train.run_dir import RunDir

__all__ = ["demo_recipes"]


def _accelerator(device: str) -> str:
    return {"auto": "auto", "cpu": "cpu", "cuda": "gpu", "gpu": "gpu"}[device]


def demo_recipes(
    settings: Mapping[str, Any],
    data_root: str | Path,
    runs_dir: str | Path,
    *,
    ncut: bool = False,
    device: str = "auto",
) -> dict[str, dict[str, Any]]:
    """Training recipes (for :func:`rloss.train.fit.train`) of every demo method.

    All methods share the network, data, batch size, augmentation and schedule: phase 1
    trains ``epochs`` epochs from scratch (``pce_phase1`` on scribbles, ``full_phase1`` on
    full masks); phase 2 fine-tunes for ``finetune_epochs`` epochs at ``finetune_lr``:
    (a) ``pce`` continues ``pce_phase1`` with pCE alone, (b) ``densecrf`` continues it with
    pCE + DenseCRF (the paper's two-phase recipe), (d) ``ncut`` with pCE + Normalized Cut,
    and (c) ``full`` continues ``full_phase1`` on the masks. So (a) and (b) differ only by
    the regularizer, not by the number of iterations.

    Args:
        settings: from :func:`demo_settings`.
        data_root: the generated dataset folder.
        runs_dir: parent of the run folders (``init_from`` of (b)/(d) points into it).
        ncut: include method (d).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Returns:
        ``{run name: recipe}`` in training order (phase-1 runs first).
    """
    runs_dir = Path(runs_dir)
    base: dict[str, Any] = {
        "seed": int(settings["seed"]),
        "init_from": None,
        "model": copy.deepcopy(settings["model"]),
        "data": {
            "kind": "folder",
            "root": str(data_root),
            "supervision": "scribble",
            "train_split": "train",
            "val_split": "val",
            "crop_size": int(max(settings["data"]["size"])),
            "scale_range": [float(v) for v in settings["augment"]["scale_range"]],
            "flip": bool(settings["augment"]["flip"]),
            "batch_size": int(settings["batch_size"]),
            "val_batch_size": 1,
            "num_workers": 0,
        },
        "loss": {"pce": {"weight": 1.0}},
        "optim": copy.deepcopy(settings["optim"]),
        "trainer": {
            "max_epochs": int(settings["epochs"]),
            "accelerator": _accelerator(device),
            "log_every_n_steps": 1,
            "threads": settings.get("threads", "auto"),
        },
    }
    full1 = copy.deepcopy(base)
    full1["data"]["supervision"] = "full"

    def phase2(phase1: str, supervision: str, extra: Mapping[str, Any]) -> dict[str, Any]:
        r = copy.deepcopy(base)
        r["data"]["supervision"] = supervision
        r["init_from"] = str(RunDir(runs_dir / phase1).model_file)
        r["trainer"]["max_epochs"] = int(settings["finetune_epochs"])
        r["optim"]["lr"] = float(settings["finetune_lr"])
        r["loss"].update(copy.deepcopy(dict(extra)))
        return r

    recipes = {
        "pce_phase1": base,
        "full_phase1": full1,
        "pce": phase2("pce_phase1", "scribble", {}),
        "densecrf": phase2("pce_phase1", "scribble", {"densecrf": settings["densecrf"]}),
        "full": phase2("full_phase1", "full", {}),
    }
    if ncut:
        recipes["ncut"] = phase2("pce_phase1", "scribble", {"ncut": settings["ncut"]})
    return recipes


