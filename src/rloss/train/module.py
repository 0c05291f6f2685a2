r"""The LightningModule: network + regularized loss + SGD/poly schedule + mIoU.

Training minimises ``pCE(logits, target) + Σ_r λ_r E_r(image_raw, softmax(logits), roi)``
(:class:`rloss.losses.CompositeLoss`), where ``target`` is the batch's
``scribble`` (weak supervision) or ``mask`` (full supervision). The learning rate
follows the poly schedule ``lr_t = lr_0 · (1 − t / T)^power`` stepped every
iteration, ``T`` the total number of optimizer steps.

Validation runs on full-resolution images and accumulates a confusion matrix
(torchmetrics ``MulticlassConfusionMatrix``, summed across processes under DDP);
``IoU_k = C_kk / (Σ_j C_kj + Σ_i C_ik − C_kk)``, and mIoU is the mean over
classes present in the ground truth or the predictions (VOC convention).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torchmetrics.classification import MulticlassConfusionMatrix

from rloss.constants import IGNORE_INDEX
from rloss.train.models import MSC, build_model, head_parameters


def build_criterion(loss: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """Build a :class:`rloss.losses.CompositeLoss` from a recipe's ``loss`` section.

    Args:
        loss: term name (``pce``, ``densecrf``, ``ncut``, ``size``) → parameters
            (``weight`` and the loss's own keyword arguments); ``size`` also takes
            ``margin`` (bounds from the ground-truth mask).

    Returns:
        The composite loss; its forward is
        ``(logits, labels, image, roi, size_bounds) -> (total, {name: value})``.
    """
    from rloss.losses import (
        CompositeLoss,
        DenseCRFLoss,
        NormalizedCutLoss,
        PartialCrossEntropy,
        SizeLoss,
    )

    terms: dict[str, nn.Module] = {}
    for name, params in loss.items():
        p = dict(params)
        if name == "pce":
            weight = float(p.pop("weight", 1.0))
            term: nn.Module = PartialCrossEntropy()
            if weight != 1.0:
                term = _Scaled(term, weight)
        elif name == "densecrf":
            term = DenseCRFLoss(**p)
        elif name == "ncut":
            term = NormalizedCutLoss(**p)
        elif name == "size":
            p.pop("margin", None)
            term = SizeLoss(**p)
        else:
            raise ValueError(f"loss: unknown term {name!r}")
        terms[name] = term
    return CompositeLoss(terms)


class _Scaled(nn.Module):
    """``weight · term(*args)`` for a term without its own weight (pCE)."""

    inputs = "logits_labels"

    def __init__(self, term: nn.Module, weight: float) -> None:
        super().__init__()
        self.term = term
        self.weight = float(weight)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        return self.weight * self.term(*args)


def poly_factor(step: int, total: int, power: float) -> float:
    """Poly learning-rate factor ``(1 − step / total)^power``, 0 from ``total`` on."""
    if total <= 0:
        return 1.0
    return max(0.0, 1.0 - step / total) ** power


class _PolyLambda:
    """Picklable LR lambda (stored in the scheduler state as plain numbers)."""

    def __init__(self, total: int, power: float) -> None:
        self.total = int(total)
        self.power = float(power)

    def __call__(self, step: int) -> float:
        return poly_factor(step, self.total, self.power)


def iou_from_confusion(confmat: torch.Tensor) -> torch.Tensor:
    """Per-class IoU ``(K,)`` float64 from a confusion matrix ``(K, K)`` (rows = truth).

    Classes absent from both truth and prediction get NaN (left out of the mean).
    """
    cm = confmat.double()
    tp = cm.diagonal()
    union = cm.sum(0) + cm.sum(1) - tp
    return torch.where(union > 0, tp / union.clamp_min(1), torch.full_like(tp, math.nan))


def default_threads(local_processes: int) -> int:
    """Intra-op threads per process: usable cores // processes on this node (>= 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_processes))


def set_threads(n: int) -> None:
    """Set torch and numba intra-op threads to ``n`` (numba capped at its pool size)."""
    torch.set_num_threads(n)
    try:
        import numba

        numba.set_num_threads(max(1, min(n, numba.config.NUMBA_NUM_THREADS)))
    except ImportError:  # pragma: no cover - numba is a core dependency
        pass


class SegmentationModule(pl.LightningModule):
    """Weakly- or fully-supervised segmentation training with regularized losses.

    Args:
        config: resolved recipe (see :mod:`rloss.train.config`); uses ``model``,
            ``loss``, ``optim``, ``data.supervision`` and ``trainer.threads``.
        num_classes: K.
        class_names: K names for per-class logging (default ``class_i``).

    Batches are dicts of the data contract: ``image`` ``(N, 3, H, W)`` normalised,
    ``image_raw`` ``(N, 3, H, W)`` 0..255, ``scribble``/``mask`` ``(N, H, W)`` int64
    (255 = ignore), ``roi`` ``(N, H, W)`` float.

    Logged: ``train/loss``, ``train/<term>`` for every loss term, ``lr``,
    ``train/sec_per_iter``, ``train/images_per_sec``; ``val/miou``,
    ``val/iou/<class>``, ``val/pixel_acc``.
    """

    def __init__(
        self,
        config: Mapping[str, Any],
        num_classes: int,
        class_names: Sequence[str] | None = None,
    ) -> None:
        super().__init__()
        self.config = _plain_dict(config)
        self.num_classes = int(num_classes)
        self.class_names = (
            list(class_names) if class_names else [f"class_{i}" for i in range(num_classes)]
        )
        if len(self.class_names) != self.num_classes:
            raise ValueError(
                f"class_names: expected {self.num_classes} names, got {len(self.class_names)}"
            )
        self.model = build_model(self.config["model"], self.num_classes)
        self.criterion = build_criterion(self.config["loss"])
        self.target_key = "scribble" if self.config["data"]["supervision"] == "scribble" else "mask"
        self.size_margin = self.config["loss"].get("size", {}).get("margin")
        self.confmat = MulticlassConfusionMatrix(
            self.num_classes, ignore_index=IGNORE_INDEX, validate_args=False
        )
        self.last_val: dict[str, Any] = {}
        self._t_last: float | None = None
        self._train_time = 0.0
        self._train_iters = 0

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        threads = self.config["trainer"].get("threads", "auto")
        if threads == "auto":
            local = int(os.environ.get("LOCAL_WORLD_SIZE", 0)) or (
                self.trainer.num_devices if self.trainer is not None else 1
            )
            threads = default_threads(local)
        set_threads(int(threads))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image``: ``(N, 3, H, W)`` normalised → logits ``(N, K, H, W)``."""
        return self.model(image)

    # --------------------------------------------------------------- training
    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        self._t_last = time.perf_counter()

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._t_last is None:
            return
        # forward + backward + optimizer step of one iteration (data loading excluded)
        dt = time.perf_counter() - self._t_last
        self._t_last = None
        self._train_time += dt
        self._train_iters += 1
        n = int(batch["image"].shape[0]) * max(1, self.trainer.world_size)
        self.log("train/sec_per_iter", dt, on_step=True, on_epoch=True, batch_size=1)
        self.log(
            "train/images_per_sec", n / max(dt, 1e-9), on_step=True, on_epoch=True, batch_size=1
        )

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        image = batch["image"]
        target = batch[self.target_key]
        roi = batch.get("roi")
        logits = self.model(image)
        bounds = None
        if self.size_margin is not None:
            from rloss.losses import size_bounds_from_mask

            mask = batch["mask"]
            if roi is not None:
                mask = torch.where(roi > 0, mask, torch.full_like(mask, IGNORE_INDEX))
            bounds = size_bounds_from_mask(mask, self.num_classes, float(self.size_margin))
        total, parts = self.criterion(logits, target, batch["image_raw"], roi, bounds)
        if isinstance(self.model, MSC) and self.model.last_outputs:
            # DeepLab's MSC training: the cross-entropy also supervises every scale's output
            pce = self.criterion.terms["pce"]
            extra = sum(pce(out, target) for out in self.model.last_outputs)
            total = total + extra
            parts = {**parts, "pce_scales": extra.detach()}
        bs = int(image.shape[0])
        self.log(
            "train/loss", total.detach(), on_step=True, on_epoch=True, prog_bar=True, batch_size=bs
        )
        for name, value in parts.items():
            self.log(f"train/{name}", value, on_step=True, on_epoch=True, batch_size=bs)
        opt = self.optimizers(use_pl_optimizer=False)
        self.log(
            "lr",
            float(opt.param_groups[0]["lr"]),
            on_step=True,
            on_epoch=False,
            prog_bar=True,
            batch_size=bs,
        )
        return total

    # ------------------------------------------------------------- validation
    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        logits = self.model(batch["image"])
        pred = logits.argmax(1)
        mask = batch["mask"]
        roi = batch.get("roi")
        if roi is not None:
            mask = torch.where(roi > 0, mask, torch.full_like(mask, IGNORE_INDEX))
        self.confmat.update(pred, mask)

    def on_validation_epoch_end(self) -> None:
        cm = self.confmat.compute()  # summed across processes
        self.confmat.reset()
        iou = iou_from_confusion(cm)
        valid = ~torch.isnan(iou)
        miou = float(iou[valid].mean()) if bool(valid.any()) else math.nan
        total = float(cm.sum())
        acc = float(cm.diagonal().sum()) / total if total > 0 else math.nan
        per_class = {name: float(v) for name, v in zip(self.class_names, iou.tolist())}
        self.last_val = {
            "miou": miou,
            "pixel_acc": acc,
            "per_class_iou": per_class,
            "pixels": total,
            "step": int(self.global_step),
        }
        self.log("val/miou", miou, prog_bar=True, sync_dist=False)
        self.log("val/pixel_acc", acc, sync_dist=False)
        for name, v in per_class.items():
            self.log(f"val/iou/{name}", v, sync_dist=False)

    # ------------------------------------------------------------- optimizers
    def total_iters(self) -> int:
        """T of the poly schedule: ``optim.total_iters`` or Lightning's estimate."""
        t = self.config["optim"].get("total_iters")
        if t:
            return int(t)
        return int(self.trainer.estimated_stepping_batches)

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.config["optim"]
        backbone, head = head_parameters(self.model)
        groups = [{"params": backbone, "lr": o["lr"]}]
        if head:
            groups.append({"params": head, "lr": o["lr"] * o["head_lr_mult"]})
        if o["name"] == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                groups,
                lr=o["lr"],
                momentum=o["momentum"],
                weight_decay=o["weight_decay"],
                nesterov=bool(o["nesterov"]),
            )
        else:
            opt = torch.optim.AdamW(groups, lr=o["lr"], weight_decay=o["weight_decay"])
        if o["schedule"] == "poly":
            fn = _PolyLambda(self.total_iters(), o["power"])
            sched = torch.optim.lr_scheduler.LambdaLR(opt, [fn] * len(groups))
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, [_PolyLambda(0, 1.0)] * len(groups))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rloss"] = {
            "config": self.config,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
        }

    def train_stats(self) -> dict[str, float]:
        """Mean seconds per iteration and images per second over this process's run."""
        if self._train_iters == 0:
            return {"sec_per_iter": math.nan, "images_per_sec": math.nan}
        spi = self._train_time / self._train_iters
        bs = int(self.config["data"]["batch_size"]) * max(1, self.trainer.world_size)
        return {"sec_per_iter": spi, "images_per_sec": bs / spi}


class HistoryCallback(pl.Callback):
    """Collects the epoch-level logged values and rewrites ``metrics.json`` every epoch.

    Args:
        path: the run's ``metrics.json`` (written atomically by the global-zero process).
        history: list to append one dict per epoch to (shared with the caller).
    """

    def __init__(self, path: Any, history: list[dict[str, Any]]) -> None:
        self.path = path
        self.history = history

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from rloss.train.api import summary, write_json_atomic

        entry: dict[str, Any] = {"epoch": trainer.current_epoch, "step": trainer.global_step}
        for key, value in trainer.callback_metrics.items():
            if key.endswith("_step"):
                continue
            name = key[: -len("_epoch")] if key.endswith("_epoch") else key
            entry[name] = float(value)
        if isinstance(pl_module, SegmentationModule):
            entry.update({f"train/{k}": v for k, v in pl_module.train_stats().items()})
        self.history.append(entry)
        if trainer.is_global_zero:
            status = {"status": "running", **summary(trainer, pl_module), "history": self.history}
            write_json_atomic(status, self.path)


def _plain_dict(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _plain_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain_dict(v) for v in obj]
    return obj
