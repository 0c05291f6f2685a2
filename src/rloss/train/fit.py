"""Training orchestration: a recipe into a run folder (Lightning; single device, DDP, resume).

:func:`train` builds the parts (data module, network, criterion, module, callbacks,
loggers, ``pl.Trainer`` from :meth:`~rloss.train.config.TrainerSpec.as_trainer_kwargs`)
and fits. The run folder is described by :class:`~rloss.train.run_dir.RunDir`.

Resuming compares the recipe with the one saved in the run folder *before* anything
in the folder is touched: a different network, data kind, supervision or class list is
refused with :class:`ResumeMismatchError` (one line); changed hyper-parameters (``lr``,
loss weights, ...) are accepted and named in one warning line on the ``rloss.train``
logger. Ctrl-C marks ``metrics.json`` ``"interrupted"`` and raises
:class:`TrainingInterrupted` (a ``KeyboardInterrupt`` carrying the run folder).
"""

from __future__ import annotations

import contextlib
import logging
import signal
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.trainer.states import TrainerStatus
from lightning.pytorch.utilities import rank_zero_only

from rloss.train.callbacks import AtomicModelCheckpoint, HistoryCallback, summary
from rloss.train.checkpoint import load_weights, read_checkpoint, save_model_file
from rloss.train.config import ConfigError, Recipe
from rloss.train.datamodule import SegmentationDataModule, dataset_classes
from rloss.train.module import SegmentationModule
from rloss.train.run_dir import RunDir

__all__ = [
    "ResumeMismatchError",
    "TrainResult",
    "TrainingInterrupted",
    "quiet_lightning",
    "recipe_changes",
    "train",
]

log = logging.getLogger("rloss.train")

#: Recipe keys that must not change on ``--resume`` (the checkpoint would not fit, or
#: the run would silently change meaning). Dotted prefixes.
RESUME_INCOMPATIBLE: tuple[str, ...] = (
    "model.arch",
    "model.encoder",
    "model.num_classes",
    "model.output_stride",
    "model.msc",
    "model.kwargs",
    "data.kind",
    "data.supervision",
    "classes",
)

#: Keys that may change on ``--resume`` without a warning (where and how it runs).
RESUME_SILENT: tuple[str, ...] = (
    "init_from",
    "model.encoder_weights",
    "data.root",
    "data.num_workers",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.threads",
)


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped by Ctrl-C; ``metrics.json`` says ``"interrupted"``.

    Attributes:
        run_dir: the run folder (resume with ``rloss train RECIPE --run-dir RUN --resume``).
    """

    def __init__(self, run_dir: Path) -> None:
        super().__init__(f"training interrupted; run folder {run_dir}")
        self.run_dir = Path(run_dir)


class ResumeMismatchError(ConfigError):
    """``resume=True`` with a recipe whose network or data differ from the saved run's."""


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        checkpoint: ``RUN/checkpoints/last.ckpt`` (Lightning checkpoint; also loadable by
            :func:`~rloss.train.checkpoint.load_model`).
        metrics: final metrics: ``miou``, ``pixel_acc``, ``per_class_iou`` (name → IoU,
            NaN for classes absent from truth and prediction), ``sec_per_iter``,
            ``images_per_sec``, ``global_step``, ``epoch``, ...
        history: one dict per epoch with the epoch-averaged logged values
            (``train/loss``, ``train/<term>``, ``val/miou``, ...).
        run_dir: the run folder.
        model_file: ``RUN/model.pt`` (weights + config, ``weights_only`` loadable).
        best_checkpoint: best-val-mIoU checkpoint, if any.
    """

    checkpoint: Path
    metrics: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    run_dir: Path | None = None
    model_file: Path | None = None
    best_checkpoint: Path | None = None


# --------------------------------------------------------------------------- noise
_NOISE_MESSAGES: tuple[str, ...] = (
    "litlogger",
    "litmodels",
    # start-up and shut-down chatter (our own progress lines say what runs and why it stops)
    "GPU available:",
    "TPU available:",
    "HPU available:",
    "LOCAL_RANK:",
    "Loading `train_dataloader` to estimate",
    "`Trainer.fit` stopped:",
)
_NOISE_LOGGERS: tuple[str, ...] = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning_utilities.core.rank_zero",
)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = str(record.getMessage())
        return not any(word in msg for word in _NOISE_MESSAGES)


@contextlib.contextmanager
def quiet_lightning() -> Iterator[None]:
    """Drop the framework's advertising and deprecation noise while this block runs.

    Filters Lightning's litlogger/litmodels tips and its start-up/shut-down chatter (log
    records: "GPU available", "Loading `train_dataloader`", "`Trainer.fit` stopped"), the
    ``LeafSpec`` /
    ``_pytree`` deprecation ``FutureWarning`` that Lightning's own code triggers and its
    "checkpoint directory is not empty" warning on resume (:func:`train` refuses a used
    run folder unless resuming); other
    warnings and log records pass, and the filters are removed on exit (the user's
    process keeps its own warning settings).
    """
    drop = _DropNoise()
    loggers = [logging.getLogger(name) for name in _NOISE_LOGGERS]
    for lg in loggers:
        lg.addFilter(drop)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r".*_pytree", category=FutureWarning)
            # our run folder is refused unless resuming, where a non-empty one is expected
            warnings.filterwarnings("ignore", message=r"Checkpoint directory .* is not empty")
            yield
    finally:
        for lg in loggers:
            lg.removeFilter(drop)


# --------------------------------------------------------------------------- resume
def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, Mapping) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def recipe_changes(saved: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[list[str], list[str]]:
    """Differences between a run's saved recipe and a new one, as ``"key: old -> new"``.

    Returns:
        ``(incompatible, changed)``: keys under :data:`RESUME_INCOMPATIBLE`, and the
        other changed keys (without :data:`RESUME_SILENT`).

    >>> recipe_changes({"model": {"arch": "a"}, "optim": {"lr": 1}},
    ...                {"model": {"arch": "b"}, "optim": {"lr": 2}})
    (['model.arch: a -> b'], ['optim.lr: 1 -> 2'])
    """
    a, b = _flatten(saved), _flatten(new)
    incompatible: list[str] = []
    changed: list[str] = []
    missing = object()
    for key in sorted(set(a) | set(b)):
        old, cur = a.get(key, missing), b.get(key, missing)
        if (
            old == cur
            or (old is missing and cur in (None, {}))
            or (cur is missing and old in (None, {}))
        ):
            continue
        was = "(unset)" if old is missing else old
        now = "(unset)" if cur is missing else cur
        text = f"{key}: {was} -> {now}"
        if any(key == p or key.startswith(p + ".") for p in RESUME_INCOMPATIBLE):
            incompatible.append(text)
        elif not any(key == p or key.startswith(p + ".") for p in RESUME_SILENT):
            changed.append(text)
    return incompatible, changed


def _saved_recipe(run: RunDir) -> dict[str, Any] | None:
    saved = run.saved_config()
    if saved is not None:
        return saved
    try:
        _, meta = read_checkpoint(run.last_ckpt)
    except (OSError, ValueError):
        return None
    config = meta.get("config")
    if not isinstance(config, Mapping):
        return None
    return {**config, "classes": list(meta.get("class_names") or [])}


def _check_resume(run: RunDir, new: Mapping[str, Any]) -> None:
    saved = _saved_recipe(run)
    if saved is None:
        return
    incompatible, changed = recipe_changes(saved, new)
    if incompatible:
        raise ResumeMismatchError(
            f"--resume: the recipe differs from the run in {str(run.root)!r} in "
            f"{'; '.join(incompatible)}; resume with the run's own recipe "
            f"({run.config_yaml}) or choose another --run-dir"
        )
    if changed:
        log.warning("resuming %s with changed settings: %s", run.root, "; ".join(changed))


# --------------------------------------------------------------------------- train
def _classes(recipe: Recipe, dm: Any) -> list[str]:
    if recipe.classes:
        classes = [str(c) for c in recipe.classes]
    else:
        classes = list(
            getattr(dm, "classes", None)
            or dataset_classes(dm.val_dataset, recipe.model.num_classes)
        )
    k = int(recipe.model.num_classes or len(classes))
    if len(classes) != k:
        classes = [f"class_{i}" for i in range(k)]
    return classes


def train(
    config: Mapping[str, Any] | Recipe,
    *,
    run_dir: str | Path,
    progress: bool = True,
    resume: bool = False,
    datamodule: Any | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train a recipe into ``run_dir``.

    Args:
        config: a :class:`~rloss.train.config.Recipe` or a recipe mapping (raw or
            already resolved by :func:`rloss.train.config.load_config`); validated here.
        run_dir: run folder (created). A folder that already holds a ``last.ckpt`` is
            refused unless ``resume=True``.
        progress: show Lightning's progress bar.
        resume: continue from ``RUN/checkpoints/last.ckpt`` (same schedule, optimizer
            state, epoch and step); starts fresh when there is no checkpoint yet. The
            recipe is first compared with the run's ``config.yaml`` (see the module
            docstring). This path uses Lightning's own loader on our own run folder (full
            checkpoint incl. optimizer and loop state), not ``weights_only``.
        datamodule: a LightningDataModule to use instead of the recipe's ``data``
            section (its ``val_dataloader`` must yield full-resolution items with
            ``mask``; a ``classes`` or ``num_classes`` attribute gives K).
        callbacks: extra Lightning callbacks.

    Returns:
        :class:`TrainResult` (on every DDP process; metrics are already reduced).

    Raises:
        rloss.train.config.ConfigError: invalid recipe.
        ResumeMismatchError: ``resume`` with another network or data (nothing written).
        FileExistsError: ``run_dir`` holds a previous run and ``resume`` is False.
        TrainingInterrupted: Ctrl-C (``metrics.json`` status ``"interrupted"``).
    """
    recipe = config if isinstance(config, Recipe) else Recipe.from_mapping(config)
    run = RunDir(run_dir)
    last = run.last_ckpt
    if last.exists() and not resume:
        raise FileExistsError(
            f"run folder {str(run.root)!r} already holds a run ({last}); pass --resume to "
            "continue it or choose another --run-dir"
        )
    resume_from = last if (resume and last.exists()) else None

    pl.seed_everything(int(recipe.seed), workers=True, verbose=False)
    dm = datamodule if datamodule is not None else SegmentationDataModule(recipe.data)
    classes = _classes(recipe, dm)
    resolved = {**recipe.to_mapping(), "classes": classes}
    if resume_from is not None:
        _check_resume(run, resolved)  # before anything in the folder is touched

    module = SegmentationModule.from_recipe(recipe, classes)
    if recipe.init_from and resume_from is None:
        load_weights(module.model, recipe.init_from)
    run.root.mkdir(parents=True, exist_ok=True)
    if _is_rank_zero():
        run.write_config(resolved)

    history = run.load_history() if resume_from is not None else []
    tr = recipe.trainer
    best = AtomicModelCheckpoint(
        dirpath=run.checkpoints,
        filename="best-epoch{epoch:03d}",
        monitor="val/miou",
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
        save_on_train_epoch_end=False,
    )
    last_cb = AtomicModelCheckpoint(  # the newest checkpoint, always named last.ckpt
        dirpath=run.checkpoints,
        filename="last",
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
        every_n_epochs=None if tr.checkpoint_every_n_steps else 1,
        every_n_train_steps=tr.checkpoint_every_n_steps or None,
        save_on_train_epoch_end=True,
    )
    cbs: list[Any] = [best, last_cb, HistoryCallback(run, history), *callbacks]
    if progress:
        cbs.append(TQDMProgressBar(refresh_rate=1))
    loggers = [
        TensorBoardLogger(run.root, name="logs", version="tensorboard", default_hp_metric=False),
        CSVLogger(run.root, name="logs", version=run.csv_version(resume_from is not None)),
    ]
    sigint = signal.getsignal(signal.SIGINT)
    with quiet_lightning():
        trainer = pl.Trainer(
            default_root_dir=run.root,
            callbacks=cbs,
            logger=loggers,
            enable_progress_bar=progress,
            enable_model_summary=progress,
            num_sanity_val_steps=0,
            use_distributed_sampler=True,
            **tr.as_trainer_kwargs(),
        )
        try:
            trainer.fit(module, datamodule=dm, ckpt_path=resume_from, weights_only=False)
            if module.last_val.get("step") != trainer.global_step and not trainer.interrupted:
                # stopped by max_steps (or before the epoch's validation): validate the final
                # weights
                trainer.validate(module, datamodule=dm, verbose=False)
        except (KeyboardInterrupt, SystemExit) as err:
            # Lightning turns Ctrl-C into sys.exit(1) after its own shutdown and ignores
            # SIGINT from then on; give the caller a KeyboardInterrupt and SIGINT back.
            if isinstance(err, SystemExit) and trainer.state.status != TrainerStatus.INTERRUPTED:
                raise
            signal.signal(signal.SIGINT, sigint)
            if trainer.is_global_zero:
                run.write_metrics(summary(trainer, module), status="interrupted", history=history)
            raise TrainingInterrupted(run.root) from None

    metrics = {**summary(trainer, module), "status": "done", "checkpoint": str(last)}
    if trainer.is_global_zero:
        meta = {**module.meta, "num_classes": module.num_classes, "class_names": classes}
        save_model_file(module.model, meta, run.model_file)
        run.write_metrics(metrics, status="done", history=history)
    best_path = Path(best.best_model_path) if best.best_model_path else None
    return TrainResult(
        checkpoint=last,
        metrics=metrics,
        history=history,
        run_dir=run.root,
        model_file=run.model_file,
        best_checkpoint=best_path,
    )


def _is_rank_zero() -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0
