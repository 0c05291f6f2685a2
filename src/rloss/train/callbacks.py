"""Lightning callbacks of a training run: the per-epoch history and atomic checkpoints."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any
from weakref import proxy

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from rloss.train.run_dir import RunDir

__all__ = ["AtomicModelCheckpoint", "HistoryCallback", "summary"]


def summary(trainer: Any, module: Any) -> dict[str, Any]:
    """Final/last metrics of a run: last validation, speed, step and epoch.

    ``module`` is a :class:`~rloss.train.module.SegmentationModule` (anything with
    ``last_val`` and ``train_stats()``).
    """
    val = dict(getattr(module, "last_val", {}) or {})
    stats = module.train_stats() if hasattr(module, "train_stats") else {}
    return {
        "miou": val.get("miou", math.nan),
        "pixel_acc": val.get("pixel_acc", math.nan),
        "per_class_iou": val.get("per_class_iou", {}),
        "val_pixels": int(val.get("pixels", 0)),
        **stats,
        "global_step": int(trainer.global_step),
        "epoch": int(trainer.current_epoch),
    }


class HistoryCallback(pl.Callback):
    """Collects the epoch-level logged values and rewrites ``metrics.json`` every epoch.

    Args:
        run: the run folder (or the path of its ``metrics.json``); written atomically by
            the global-zero process with status ``running``.
        history: list to append one dict per epoch to (shared with the caller).
    """

    def __init__(self, run: RunDir | str | Path, history: list[dict[str, Any]]) -> None:
        if not isinstance(run, RunDir):
            run = RunDir(Path(run).parent)  # the path of metrics.json (earlier signature)
        self.run = run
        self.history = history

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        entry: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for key, value in trainer.callback_metrics.items():
            if key.endswith("_step"):
                continue
            name = key[: -len("_epoch")] if key.endswith("_epoch") else key
            entry[name] = float(value)
        if hasattr(pl_module, "train_stats"):
            entry.update({f"train/{k}": v for k, v in pl_module.train_stats().items()})
        self.history.append(entry)
        if trainer.is_global_zero:
            self.run.write_metrics(
                summary(trainer, pl_module), status="running", history=self.history
            )


class AtomicModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that writes each file to ``<name>.partial`` and renames it.

    A crash or Ctrl-C while saving leaves the previous ``last.ckpt`` intact (Lightning
    writes the target in place on local disks).
    """

    def _save_checkpoint(self, trainer: pl.Trainer, filepath: str) -> None:
        tmp = f"{filepath}.partial"
        trainer.save_checkpoint(tmp, self.save_weights_only)
        trainer.strategy.barrier("AtomicModelCheckpoint")
        if trainer.is_global_zero and os.path.exists(tmp):
            os.replace(tmp, filepath)
        self._last_global_step_saved = trainer.global_step
        self._last_checkpoint_saved = filepath
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
