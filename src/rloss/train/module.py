r"""The LightningModule: network + regularized loss + SGD/poly schedule + mIoU.

Training minimises ``pCE(logits, target) + Σ_r λ_r E_r(image_raw, softmax(logits), roi)``
(:class:`rloss.losses.CompositeLoss`), where ``target`` is the batch's
``scribble`` (weak supervision) or ``mask`` (full supervision). The learning rate
follows the poly schedule ``lr_t = lr_0 · (1 − t / T)^power`` stepped every
iteration, ``T`` the total number of optimizer steps.

Validation runs on full-resolution images and accumulates a
:class:`rloss.train.metrics.ConfusionMatrix` (summed across processes under DDP),
summarised by :func:`rloss.train.metrics.summarize`, the same code as ``rloss eval``.

The module receives its parts (network, criterion, optimiser spec and the few settings
it needs); :meth:`SegmentationModule.from_recipe` builds them from a recipe.
"""

from __future__ import annotations

import math
import os
import time
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn

from rloss import _threads, losses
from rloss.constants import IGNORE_INDEX
from rloss.losses import size_bounds_from_mask
from rloss.train.checkpoint import to_plain
from rloss.train.config import LOSS_TRAINING_KEYS, OptimSpec, Recipe
from rloss.train.metrics import ConfusionMatrix, iou_from_confusion, summarize
from rloss.train.models import MSC, build_model, head_parameters

__all__ = [
    "SegmentationModule",
    "build_criterion",
    "default_threads",
    "iou_from_confusion",
    "poly_factor",
    "set_threads",
]


def build_criterion(loss: Mapping[str, Mapping[str, Any]]) -> nn.Module:
    """:func:`rloss.losses.build_criterion` for a recipe's ``loss`` section.

    The one thing it adds: the keys the training loop consumes itself
    (:data:`rloss.train.config.LOSS_TRAINING_KEYS`, e.g. ``size.margin``) are
    not passed to the loss classes. For a criterion outside a recipe, call
    :func:`rloss.losses.build_criterion` directly.

    Args:
        loss: term name (a key of :data:`rloss.losses.TERMS`) → parameters.

    Returns:
        The composite loss; its forward is
        ``(logits, labels, image, roi, size_bounds) -> (total, {name: value})``.
    """
    return losses.build_criterion(
        {
            name: None
            if params is None
            else {k: v for k, v in params.items() if k not in LOSS_TRAINING_KEYS.get(name, {})}
            for name, params in loss.items()
        }
    )


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


def default_threads(local_processes: int) -> int:
    """Intra-op threads per process: usable cores // processes on this node (>= 1)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS/Windows
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, local_processes))


# one owner of thread control: rloss._threads (re-exported here for old imports)
set_threads = _threads.set_threads


class SegmentationModule(pl.LightningModule):
    """Weakly- or fully-supervised segmentation training with regularized losses.

    Args:
        model: network mapping ``(N, 3, H, W)`` normalised images to logits
            ``(N, K, H, W)``; an :class:`~rloss.train.models.MSC` network also has its
            per-scale outputs supervised by the cross-entropy (DeepLab's MSC training).
        criterion: :class:`rloss.losses.CompositeLoss` with a ``pce`` term, called as
            ``criterion(logits, target, image_raw, roi, size_bounds)``.
        optim: optimiser and schedule (:class:`~rloss.train.config.OptimSpec` or its
            mapping).
        class_names: K names (index = label value) for per-class logging.
        target_key: batch key the cross-entropy trains on: ``"scribble"`` or ``"mask"``.
        size_margin: margin of the size-loss bounds taken from the ground-truth mask
            (``None``: no size bounds are passed).
        threads: intra-op threads per process, or ``"auto"`` (cores / local processes).
        meta: plain data stored under ``"rloss"`` in every checkpoint (the resolved
            recipe as ``{"config": ...}``, which :func:`rloss.train.checkpoint.load_model`
            needs).

    Batches are dicts of the data contract: ``image`` ``(N, 3, H, W)`` normalised,
    ``image_raw`` ``(N, 3, H, W)`` 0..255, ``scribble``/``mask`` ``(N, H, W)`` int64
    (255 = ignore), ``roi`` ``(N, H, W)`` float.

    Logged: ``train/loss``, ``train/<term>`` for every loss term, ``lr``,
    ``train/sec_per_iter``, ``train/images_per_sec``; ``val/miou``,
    ``val/iou/<class>``, ``val/pixel_acc``.
    """

    def __init__(
        self,
        model: nn.Module,
        criterion: nn.Module,
        optim: OptimSpec | Mapping[str, Any] | None = None,
        *,
        class_names: Sequence[str] | None = None,
        target_key: str = "scribble",
        size_margin: float | None = None,
        threads: int | str = "auto",
        meta: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(model, Mapping):
            # the signature before the split: SegmentationModule(config, num_classes, names)
            warnings.warn(
                "SegmentationModule(config, num_classes, class_names) is deprecated; use "
                "SegmentationModule.from_recipe(config, class_names)",
                DeprecationWarning,
                stacklevel=2,
            )
            names = optim if optim is not None else class_names
            k = int(criterion)  # type: ignore[call-overload]
            names = list(names) if names else [f"class_{i}" for i in range(k)]  # type: ignore[arg-type]
            if len(names) != k:
                raise ValueError(f"class_names: expected {k} names, got {len(names)}")
            r = Recipe.from_mapping(model, check_paths=False)
            model = build_model(r.model.as_mapping(), k)
            criterion, optim, class_names = build_criterion(r.loss), r.optim, names
            target_key = r.data.target_key
            size_margin = r.loss.get("size", {}).get("margin")
            threads, meta = r.trainer.threads, {"config": r.to_mapping()}
        if optim is None:
            raise ValueError("optim: expected an OptimSpec or its mapping, got None")
        if target_key not in ("scribble", "mask"):
            raise ValueError(f"target_key: expected 'scribble' or 'mask', got {target_key!r}")
        if not class_names:
            raise ValueError("class_names: expected at least one class name")
        self.model = model
        self.criterion = criterion
        self.optim = optim if isinstance(optim, OptimSpec) else OptimSpec(**dict(optim))
        self.class_names = [str(c) for c in class_names]
        self.num_classes = len(self.class_names)
        self.target_key = target_key
        self.size_margin = None if size_margin is None else float(size_margin)
        self.threads = threads
        self.meta = to_plain(dict(meta or {}))
        self.confmat = ConfusionMatrix(self.num_classes)
        self.last_val: dict[str, Any] = {}
        self._t_last: float | None = None
        self._train_time = 0.0
        self._train_iters = 0
        self._train_images = 0

    @classmethod
    def from_recipe(
        cls,
        recipe: Recipe | Mapping[str, Any],
        class_names: Sequence[str],
        *,
        model: nn.Module | None = None,
    ) -> SegmentationModule:
        """Build the network, the criterion and the settings from a recipe.

        Args:
            recipe: a :class:`~rloss.train.config.Recipe` or a (resolved) recipe mapping.
            class_names: the K class names.
            model: use this network instead of building ``recipe.model``.
        """
        r = recipe if isinstance(recipe, Recipe) else Recipe.from_mapping(recipe, check_paths=False)
        k = len(class_names)
        config = r.to_mapping()
        return cls(
            model if model is not None else build_model(r.model.as_mapping(), k),
            build_criterion(r.loss),
            r.optim,
            class_names=class_names,
            target_key=r.data.target_key,
            size_margin=r.loss.get("size", {}).get("margin"),
            threads=r.trainer.threads,
            meta={"config": config},
        )

    @property
    def config(self) -> dict[str, Any]:
        """The resolved recipe stored in the checkpoints (``{}`` when none was given)."""
        return dict(self.meta.get("config") or {})

    # ------------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        threads = self.threads
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
        n = int(batch["image"].shape[0]) * max(1, self.trainer.world_size)
        self._train_time += dt
        self._train_iters += 1
        self._train_images += n
        self.log("train/sec_per_iter", dt, on_step=True, on_epoch=True, batch_size=1)
        self.log(
            "train/images_per_sec", n / max(dt, 1e-9), on_step=True, on_epoch=True, batch_size=1
        )

    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        image = batch["image"]
        target = batch[self.target_key]
        roi = batch.get("roi")
        per_scale: tuple[torch.Tensor, ...] = ()
        if isinstance(self.model, MSC):
            out = self.model.forward_all(image)
            logits, per_scale = out.fused, out.per_scale
        else:
            logits = self.model(image)
        bounds = None
        if self.size_margin is not None:
            mask = batch["mask"]
            if roi is not None:
                mask = torch.where(roi > 0, mask, torch.full_like(mask, IGNORE_INDEX))
            bounds = size_bounds_from_mask(mask, self.num_classes, float(self.size_margin))
        total, parts = self.criterion(logits, target, batch["image_raw"], roi, bounds)
        if per_scale:
            # DeepLab's MSC training: the cross-entropy also supervises every scale's output
            pce = self.criterion.terms["pce"]
            extra = sum(pce(out, target) for out in per_scale)
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
        pred = self.model(batch["image"]).argmax(1)
        self.confmat.update(pred, batch["mask"], batch.get("roi"))

    def on_validation_epoch_end(self) -> None:
        cm = self.confmat.compute()  # summed across processes
        self.confmat.reset()
        s = summarize(cm, self.class_names)
        self.last_val = {**s, "step": int(self.global_step)}
        self.log("val/miou", s["miou"], prog_bar=True, sync_dist=False)
        self.log("val/pixel_acc", s["pixel_acc"], sync_dist=False)
        for name, v in s["per_class_iou"].items():
            self.log(f"val/iou/{name}", v, sync_dist=False)

    # ------------------------------------------------------------- optimizers
    def total_iters(self) -> int:
        """T of the poly schedule: ``optim.total_iters`` or Lightning's estimate."""
        t = self.optim.total_iters
        if t:
            return int(t)
        return int(self.trainer.estimated_stepping_batches)

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.optim
        backbone, head = head_parameters(self.model)
        groups = [{"params": backbone, "lr": o.lr}]
        if head:
            groups.append({"params": head, "lr": o.lr * o.head_lr_mult})
        if o.name == "sgd":
            opt: torch.optim.Optimizer = torch.optim.SGD(
                groups,
                lr=o.lr,
                momentum=o.momentum,
                weight_decay=o.weight_decay,
                nesterov=bool(o.nesterov),
            )
        else:
            opt = torch.optim.AdamW(groups, lr=o.lr, weight_decay=o.weight_decay)
        if o.schedule == "poly":
            fn = _PolyLambda(self.total_iters(), o.power)
            sched = torch.optim.lr_scheduler.LambdaLR(opt, [fn] * len(groups))
        else:
            sched = torch.optim.lr_scheduler.LambdaLR(opt, [_PolyLambda(0, 1.0)] * len(groups))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    # ------------------------------------------------------------- checkpoint
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["rloss"] = {
            **self.meta,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
        }

    def train_stats(self) -> dict[str, float]:
        """Mean seconds per iteration and images per second over this process's run."""
        if self._train_iters == 0:
            return {"sec_per_iter": math.nan, "images_per_sec": math.nan}
        spi = self._train_time / self._train_iters
        return {
            "sec_per_iter": spi,
            "images_per_sec": self._train_images / max(self._train_time, 1e-9),
        }
