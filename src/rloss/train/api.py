"""Python API for training, evaluation and prediction (the ``rloss train/eval/predict`` commands).

Stable entry points:

* :func:`train` — run a recipe into a run folder (Lightning; single device, DDP, resume);
* :func:`load_model` — rebuild a trained network from a checkpoint, ``weights_only=True``;
* :func:`predict_probs` — multi-scale/flip softmax of one batch;
* :func:`evaluate` — mIoU and per-class IoU on full-resolution val images;
* :func:`predict` — palette PNGs (and overlays) for image files or folders.

Run folder layout written by :func:`train`::

    RUN/config.yaml             resolved recipe
    RUN/checkpoints/last.ckpt   Lightning checkpoint, every epoch and at the end (resume)
    RUN/checkpoints/best-*.ckpt best val mIoU so far
    RUN/model.pt                weights + config only (for load_model/eval/predict)
    RUN/logs/tensorboard/       TensorBoard events
    RUN/logs/csv/metrics.csv    every logged value
    RUN/metrics.json            final metrics and per-epoch history (atomic)
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rloss.constants import IGNORE_INDEX, IMAGENET_MEAN_255, IMAGENET_STD_255, voc_palette

#: Image file suffixes :func:`predict` picks up in folders.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")

#: Name of the weights-only export in a run folder.
MODEL_FILE = "model.pt"


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        checkpoint: ``RUN/checkpoints/last.ckpt`` (Lightning checkpoint; also loadable by
            :func:`load_model`).
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


# --------------------------------------------------------------------------- utils
def write_json_atomic(data: Any, path: str | Path) -> Path:
    """Write ``data`` as JSON (NaN as null) to ``path`` via a temporary file and rename."""
    from rloss.data.io import atomic_write_text

    return atomic_write_text(path, json.dumps(_json_safe(data), indent=2) + "\n")


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        obj = obj.item() if obj.numel() == 1 else obj.tolist()
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _torch_save_atomic(obj: Any, path: Path) -> Path:
    from rloss.data.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return path


def _is_rank_zero() -> bool:
    from lightning.pytorch.utilities import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


# --------------------------------------------------------------------------- weights
def read_checkpoint(checkpoint: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read network weights and metadata from a checkpoint without unpickling code.

    Accepts a Lightning checkpoint written by :func:`train` (``*.ckpt``) or the
    weights-only export ``model.pt``; both are loaded with ``weights_only=True``.

    Returns:
        (state dict of the network (keys without the ``model.`` prefix), metadata dict
        with ``config``, ``num_classes``, ``class_names``; empty when the file has none).

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a checkpoint of this project (or needs unpickling).
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(
            f"checkpoint {str(path)!r} cannot be read with weights_only=True ({err}); "
            "it is either not a torch checkpoint or holds pickled code, which is refused"
        ) from err
    if not isinstance(ckpt, Mapping) or "state_dict" not in ckpt:
        raise ValueError(f"checkpoint {str(path)!r} has no 'state_dict'")
    state = ckpt["state_dict"]
    if any(k.startswith("model.") for k in state):
        state = {k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")}
    meta = dict(ckpt.get("rloss") or {})
    return dict(state), meta


def load_weights(model: nn.Module, checkpoint: str | Path) -> None:
    """Load a checkpoint's network weights into ``model`` (``init_from``), strictly.

    Raises:
        ValueError: architecture or class count differ (names the mismatching keys).
    """
    state, _ = read_checkpoint(checkpoint)
    own = model.state_dict()
    from rloss.train.models import state_dict_mismatch

    mismatch = state_dict_mismatch(own, state)
    if mismatch:
        raise ValueError(
            f"init_from: checkpoint {str(checkpoint)!r} does not fit this model: "
            f"{mismatch} (same model.arch/encoder/num_classes needed)"
        )
    model.load_state_dict(state)


def load_model(
    checkpoint: str | Path, *, map_location: str | torch.device = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained network from a checkpoint (``weights_only=True``, no download).

    Args:
        checkpoint: ``RUN/checkpoints/*.ckpt`` or ``RUN/model.pt``.
        map_location: device for the returned model.

    Returns:
        ``(model, config)``: the network in eval mode mapping ``(N, 3, H, W)``
        ImageNet-normalised float32 images to logits ``(N, K, H, W)``, and the resolved
        recipe it was trained with; ``config["model"]["num_classes"]`` is K and
        ``config["classes"]`` the K class names.
    """
    from rloss.train.models import build_model

    state, meta = read_checkpoint(checkpoint)
    if "config" not in meta:
        raise ValueError(
            f"checkpoint {str(checkpoint)!r} carries no rloss config; it was not written by "
            "rloss train (use rloss.train.api.load_weights on a model you build yourself)"
        )
    config = json.loads(json.dumps(meta["config"]))  # deep copy of plain data
    k = int(meta["num_classes"])
    spec = dict(config["model"], encoder_weights=None, num_classes=k)
    model = build_model(spec, k)
    model.load_state_dict(state)
    config["model"]["num_classes"] = k
    config["classes"] = list(meta.get("class_names") or [f"class_{i}" for i in range(k)])
    return model.to(map_location).eval(), config


# --------------------------------------------------------------------------- train
def summary(trainer: Any, module: Any) -> dict[str, Any]:
    """Final/last metrics of a run: last validation, speed, step and epoch."""
    val = dict(module.last_val)
    return {
        "miou": val.get("miou", math.nan),
        "pixel_acc": val.get("pixel_acc", math.nan),
        "per_class_iou": val.get("per_class_iou", {}),
        "val_pixels": int(val.get("pixels", 0)),
        **module.train_stats(),
        "global_step": int(trainer.global_step),
        "epoch": int(trainer.current_epoch),
    }


def _sync_batchnorm(tr: Mapping[str, Any]) -> bool:
    value = tr.get("sync_batchnorm", "auto")
    if value != "auto":
        return bool(value)
    devices = tr.get("devices", 1)
    multi = (isinstance(devices, int) and devices not in (0, 1)) or (
        isinstance(devices, (list, str)) and str(devices) not in ("1", "auto")
    )
    # torch's SyncBatchNorm works only on GPUs
    accel = str(tr.get("accelerator", "auto"))
    on_gpu = accel in ("gpu", "cuda") or (accel == "auto" and torch.cuda.is_available())
    ddp = "ddp" in str(tr.get("strategy", "auto"))
    return on_gpu and ddp and (multi or int(tr.get("num_nodes", 1)) > 1)


def _csv_version(logs: Path, resuming: bool) -> str:
    """``csv`` for a new run; ``csv-resume-<n>`` for the n-th resume (Lightning's CSV
    logger would otherwise replace the earlier rows)."""
    if not resuming or not (logs / "csv").exists():
        return "csv"
    n = 1
    while (logs / f"csv-resume-{n}").exists():
        n += 1
    return f"csv-resume-{n}"


def train(
    config: Mapping[str, Any],
    *,
    run_dir: str | Path,
    progress: bool = True,
    resume: bool = False,
    datamodule: Any | None = None,
    callbacks: Sequence[Any] = (),
) -> TrainResult:
    """Train a recipe into ``run_dir``.

    Args:
        config: a recipe mapping (raw or already resolved by
            :func:`rloss.train.config.load_config`); validated here.
        run_dir: run folder (created). A folder that already holds a ``last.ckpt`` is
            refused unless ``resume=True``.
        progress: show Lightning's progress bar.
        resume: continue from ``RUN/checkpoints/last.ckpt`` (same schedule, optimizer
            state, epoch and step); starts fresh when there is no checkpoint yet.
            This path uses Lightning's own loader on our own run folder (full
            checkpoint incl. optimizer and loop state), not ``weights_only``.
        datamodule: a LightningDataModule to use instead of the recipe's ``data``
            section (its ``val_dataloader`` must yield full-resolution items with
            ``mask``; a ``classes`` or ``num_classes`` attribute gives K).
        callbacks: extra Lightning callbacks.

    Returns:
        :class:`TrainResult` (on every DDP process; metrics are already reduced).

    Raises:
        rloss.train.config.ConfigError: invalid recipe.
        FileExistsError: ``run_dir`` holds a previous run and ``resume`` is False.
    """
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

    from rloss.train.config import validate, write_yaml_atomic
    from rloss.train.datamodule import SegmentationDataModule, dataset_classes
    from rloss.train.module import HistoryCallback, SegmentationModule

    cfg = validate(config)
    run_dir = Path(run_dir).expanduser()
    ckpt_dir = run_dir / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if last.exists() and not resume:
        raise FileExistsError(
            f"run folder {str(run_dir)!r} already holds a run ({last}); pass --resume to "
            "continue it or choose another --run-dir"
        )
    resume_from = last if (resume and last.exists()) else None
    run_dir.mkdir(parents=True, exist_ok=True)

    pl.seed_everything(int(cfg["seed"]), workers=True, verbose=False)
    dm = datamodule if datamodule is not None else SegmentationDataModule(cfg["data"])
    if cfg.get("classes"):
        classes = [str(c) for c in cfg["classes"]]
    else:
        classes = list(
            getattr(dm, "classes", None)
            or dataset_classes(dm.val_dataset, cfg["model"]["num_classes"])
        )
    k = int(cfg["model"]["num_classes"] or len(classes))
    if len(classes) != k:
        classes = [f"class_{i}" for i in range(k)]
    module = SegmentationModule(cfg, k, classes)
    if cfg["init_from"] and resume_from is None:
        load_weights(module.model, cfg["init_from"])
    if _is_rank_zero():
        write_yaml_atomic(dict(cfg, classes=classes), run_dir / "config.yaml")

    tr = cfg["trainer"]
    history: list[dict[str, Any]] = []
    metrics_path = run_dir / "metrics.json"
    if resume_from is not None and metrics_path.is_file():
        try:
            history = list(json.loads(metrics_path.read_text()).get("history") or [])
        except (OSError, ValueError):
            history = []
    best = ModelCheckpoint(
        dirpath=ckpt_dir,
        filename="best-epoch{epoch:03d}",
        monitor="val/miou",
        mode="max",
        save_top_k=1,
        auto_insert_metric_name=False,
        save_on_train_epoch_end=False,
    )
    last_cb = ModelCheckpoint(  # the newest checkpoint, always named last.ckpt
        dirpath=ckpt_dir,
        filename="last",
        monitor=None,
        save_top_k=1,
        enable_version_counter=False,
        every_n_epochs=None if tr["checkpoint_every_n_steps"] else 1,
        every_n_train_steps=tr["checkpoint_every_n_steps"] or None,
        save_on_train_epoch_end=True,
    )
    cbs: list[Any] = [best, last_cb, HistoryCallback(metrics_path, history), *callbacks]
    if progress:
        cbs.append(TQDMProgressBar(refresh_rate=1))
    loggers = [
        TensorBoardLogger(run_dir, name="logs", version="tensorboard", default_hp_metric=False),
        CSVLogger(
            run_dir, name="logs", version=_csv_version(run_dir / "logs", resume_from is not None)
        ),
    ]
    trainer = pl.Trainer(
        default_root_dir=run_dir,
        accelerator=tr["accelerator"],
        devices=tr["devices"],
        num_nodes=int(tr["num_nodes"]),
        strategy=tr["strategy"],
        sync_batchnorm=_sync_batchnorm(tr),
        precision=tr["precision"],
        max_epochs=int(tr["max_epochs"]),
        max_steps=int(tr["max_steps"]),
        check_val_every_n_epoch=int(tr["check_val_every_n_epoch"]),
        limit_train_batches=tr["limit_train_batches"],
        limit_val_batches=tr["limit_val_batches"],
        log_every_n_steps=int(tr["log_every_n_steps"]),
        gradient_clip_val=tr["gradient_clip_val"],
        deterministic=bool(tr["deterministic"]),
        callbacks=cbs,
        logger=loggers,
        enable_progress_bar=progress,
        enable_model_summary=progress,
        num_sanity_val_steps=0,
        use_distributed_sampler=True,
    )
    trainer.fit(module, datamodule=dm, ckpt_path=resume_from, weights_only=False)
    if module.last_val.get("step") != trainer.global_step and not trainer.interrupted:
        # stopped by max_steps (or before the epoch's validation): validate the final weights
        trainer.validate(module, datamodule=dm, verbose=False)

    metrics = {**summary(trainer, module), "status": "done", "checkpoint": str(last)}
    model_file = run_dir / MODEL_FILE
    if trainer.is_global_zero:
        meta = {"config": module.config, "num_classes": k, "class_names": classes}
        state = {k_: v.detach().cpu() for k_, v in module.model.state_dict().items()}
        _torch_save_atomic({"state_dict": state, "rloss": meta}, model_file)
        write_json_atomic({**metrics, "history": history}, metrics_path)
    best_path = Path(best.best_model_path) if best.best_model_path else None
    return TrainResult(
        checkpoint=last,
        metrics=metrics,
        history=history,
        run_dir=run_dir,
        model_file=model_file,
        best_checkpoint=best_path,
    )


# --------------------------------------------------------------------------- inference
def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """RGB 0..255 ``(N, 3, H, W)`` → ImageNet-normalised float32 ``(N, 3, H, W)``."""
    mean = torch.tensor(IMAGENET_MEAN_255, dtype=torch.float32, device=image.device).view(
        1, 3, 1, 1
    )
    std = torch.tensor(IMAGENET_STD_255, dtype=torch.float32, device=image.device).view(1, 3, 1, 1)
    return (image.float() - mean) / std


@torch.no_grad()
def predict_probs(
    model: nn.Module,
    image: torch.Tensor,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
) -> torch.Tensor:
    """Softmax probabilities averaged over input scales and horizontal flips.

    Args:
        model: network mapping ``(N, 3, h, w)`` to logits ``(N, K, h, w)``.
        image: ``(N, 3, H, W)`` float32 ImageNet-normalised input.
        scales: positive input scales (1.0 = full resolution).
        flip: also average the horizontally flipped input's prediction.

    Returns:
        ``(N, K, H, W)`` float32 probabilities at the input size.
    """
    if image.dim() != 4 or image.shape[1] != 3:
        raise ValueError(f"image: expected shape (N, 3, H, W), got {tuple(image.shape)}")
    scales = [float(s) for s in scales]
    if not scales or any(s <= 0 for s in scales):
        raise ValueError(f"scales: expected positive numbers, got {scales}")
    h, w = image.shape[-2:]
    total: torch.Tensor | None = None
    count = 0
    for s in scales:
        x = image
        if s != 1.0:
            size = (max(1, round(h * s)), max(1, round(w * s)))
            x = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True) if flip else (False,):
            xi = x.flip(-1) if flipped else x
            logits = model(xi).float()
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)
            p = logits.softmax(1)
            total = p if total is None else total + p
            count += 1
    assert total is not None
    return total / count


def crf_refine(
    image_raw: torch.Tensor, probs: torch.Tensor, params: Mapping[str, Any] | None
) -> torch.Tensor:
    """DenseCRF mean-field post-processing via :mod:`rloss.crf`.

    Args:
        image_raw: ``(N, 3, H, W)`` float RGB 0..255.
        probs: ``(N, K, H, W)`` softmax probabilities.
        params: keyword arguments for the CRF (``None`` = its defaults).

    Returns:
        Refined ``(N, K, H, W)`` probabilities.

    Raises:
        RuntimeError: :mod:`rloss.crf` is not available in this installation.
    """
    try:
        from rloss import crf
    except ImportError as err:
        raise RuntimeError(
            "DenseCRF post-processing needs rloss.crf, which is not available in this "
            f"installation ({err}); run without --crf"
        ) from err
    fn = getattr(crf, "dense_crf", None)
    if not callable(fn):
        raise RuntimeError("rloss.crf exposes no dense_crf function; run without --crf")
    return fn(image_raw, probs, **dict(params or {}))


def _confusion(pred: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    valid = (target != IGNORE_INDEX) & (target >= 0) & (target < k)
    idx = target[valid] * k + pred[valid]
    return torch.bincount(idx.reshape(-1), minlength=k * k).reshape(k, k)


def evaluate(
    checkpoint: str | Path | nn.Module,
    data: Mapping[str, Any] | Any | None = None,
    *,
    config: Mapping[str, Any] | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crf: bool | Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    out: str | Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """mIoU and per-class IoU on full-resolution validation images.

    Args:
        checkpoint: a checkpoint path (``*.ckpt`` or ``model.pt``) or a network.
        data: ``None`` (the recipe's val split), a mapping overriding keys of the
            recipe's ``data`` section (e.g. ``{"kind": "folder", "root": "..."}``), or a
            dataset yielding contract samples (full-resolution ``image``,
            ``image_raw`` and ``mask``).
        config: recipe to use when ``checkpoint`` is a network (for ``data`` and
            ``classes``).
        scales: test-time input scales (probabilities averaged).
        flip: also average horizontally flipped predictions.
        crf: DenseCRF post-processing: ``None``/``False`` off, ``True`` defaults, or a
            mapping of CRF parameters (needs :mod:`rloss.crf`).
        device: inference device (default CUDA if available, else CPU).
        out: write the metrics JSON here (atomically).
        progress: tqdm progress bar.

    Returns:
        ``{"miou", "pixel_acc", "per_class_iou": {name: IoU or NaN}, "num_images",
        "scales", "flip", "crf", "checkpoint"}``.
    """
    from tqdm.auto import tqdm

    from rloss.train.config import deep_merge
    from rloss.train.datamodule import build_dataset, dataset_classes

    if isinstance(checkpoint, nn.Module):
        model, cfg = checkpoint, dict(config or {})
        ckpt_name = None
    else:
        model, cfg = load_model(checkpoint)
        ckpt_name = str(checkpoint)
        if config is not None:
            cfg = deep_merge(cfg, config)
    dev = (
        torch.device(device)
        if device
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    model = model.to(dev).eval()
    if data is None or isinstance(data, Mapping):
        if "data" not in cfg:
            raise ValueError("data: pass a dataset or a data mapping (no recipe to take it from)")
        section = deep_merge(cfg["data"], dict(data or {}))
        dataset = build_dataset(section, "val")
    else:
        dataset = data
    classes = list(cfg.get("classes") or dataset_classes(dataset))
    k = len(classes)
    if crf is True:
        crf_params: dict[str, Any] | None = dict((cfg.get("eval") or {}).get("crf") or {})
    else:
        crf_params = dict(crf) if crf else None
    confmat = torch.zeros(k, k, dtype=torch.int64)
    n = len(dataset)
    for i in tqdm(range(n), desc="eval", disable=not progress, unit="img"):
        sample = dataset[i]
        image = sample["image"].unsqueeze(0).to(dev)
        probs = predict_probs(model, image, scales=scales, flip=flip)
        if crf_params is not None:
            probs = crf_refine(sample["image_raw"].unsqueeze(0).to(dev), probs, crf_params)
        pred = probs.argmax(1)[0].cpu()
        mask = sample["mask"]
        if "roi" in sample:
            mask = torch.where(sample["roi"] > 0, mask, torch.full_like(mask, IGNORE_INDEX))
        confmat += _confusion(pred, mask, k)
    from rloss.train.module import iou_from_confusion

    iou = iou_from_confusion(confmat)
    valid = ~torch.isnan(iou)
    total = int(confmat.sum())
    result = {
        "miou": float(iou[valid].mean()) if bool(valid.any()) else math.nan,
        "pixel_acc": float(confmat.diagonal().sum()) / total if total else math.nan,
        "per_class_iou": {name: float(v) for name, v in zip(classes, iou.tolist())},
        "num_images": n,
        "scales": [float(s) for s in scales],
        "flip": bool(flip),
        "crf": crf_params,
        "checkpoint": ckpt_name,
    }
    if out is not None:
        write_json_atomic(result, out)
    return result


def format_iou_table(metrics: Mapping[str, Any]) -> str:
    """Per-class IoU table (percent) with the mIoU last, as printed by ``rloss eval``."""
    per = metrics["per_class_iou"]
    width = max([len("mIoU"), *(len(n) for n in per)])
    lines = [f"{'class':<{width}}  IoU (%)", f"{'-' * width}  -------"]
    for name, v in per.items():
        cell = (
            "    n/a"
            if v is None or (isinstance(v, float) and math.isnan(v))
            else f"{100 * v:7.2f}"
        )
        lines.append(f"{name:<{width}}  {cell}")
    lines.append(f"{'-' * width}  -------")
    miou = metrics["miou"]
    lines.append(
        f"{'mIoU':<{width}}  "
        f"{'    n/a' if miou is None or math.isnan(miou) else f'{100 * miou:7.2f}'}"
    )
    return "\n".join(lines)


def _expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(
                f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(f"input {str(p)!r} does not exist")
    if not files:
        raise ValueError("inputs: no image files found")
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems and stems[f.stem] != f:
            raise ValueError(
                f"inputs: {str(stems[f.stem])!r} and {str(f)!r} would both write {f.stem}.png"
            )
        stems[f.stem] = f
    return list(dict.fromkeys(files))


def _save_png_atomic(img: Any, path: Path) -> None:
    from rloss.data.io import atomic_path

    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")


def predict(
    checkpoint: str | Path | nn.Module,
    inputs: Sequence[str | Path],
    out_dir: str | Path,
    *,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crf: bool | Mapping[str, Any] | None = None,
    overlay: bool = True,
    alpha: float = 0.5,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> list[Path]:
    """Segment image files (or folders of images) into VOC-palette PNGs.

    For every input ``X.ext`` writes ``OUT/X.png`` (palette PNG, one class index per
    pixel, the input's size) and, with ``overlay``, ``OUT/X_overlay.png`` (RGB, the
    image blended with the class colours by ``alpha``). Files are written atomically;
    running twice gives the same files.

    Args:
        checkpoint: checkpoint path or a network (see :func:`load_model`).
        inputs: image files and/or folders (their images, sorted by name).
        out_dir: output folder (created).
        scales, flip, crf, device: as in :func:`evaluate`.
        overlay: also write the overlay images.
        alpha: overlay opacity of the class colours, in [0, 1].
        progress: tqdm progress bar.

    Returns:
        The written label PNG paths, in input order.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    model = checkpoint if isinstance(checkpoint, nn.Module) else load_model(checkpoint)[0]
    dev = (
        torch.device(device)
        if device
        else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    )
    model = model.to(dev).eval()
    files = _expand_inputs(inputs)
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    palette = voc_palette()
    colours = np.asarray(palette, dtype=np.uint8).reshape(256, 3)
    crf_params = None if not crf else ({} if crf is True else dict(crf))
    written: list[Path] = []
    for f in tqdm(files, desc="predict", disable=not progress, unit="img"):
        try:
            with Image.open(f) as im:
                rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
        except OSError as err:
            raise ValueError(f"input {str(f)!r} is not a readable image ({err})") from err
        raw = torch.from_numpy(rgb.copy()).permute(2, 0, 1).unsqueeze(0).float().to(dev)
        probs = predict_probs(model, normalize_image(raw), scales=scales, flip=flip)
        if crf_params is not None:
            probs = crf_refine(raw, probs, crf_params)
        pred = probs.argmax(1)[0].to(torch.uint8).cpu().numpy()
        label = Image.fromarray(pred, mode="P")
        label.putpalette(palette)
        target = out / f"{f.stem}.png"
        _save_png_atomic(label, target)
        if overlay:
            blend = (1 - alpha) * rgb.astype(np.float32) + alpha * colours[pred].astype(np.float32)
            _save_png_atomic(
                Image.fromarray(np.clip(blend + 0.5, 0, 255).astype(np.uint8)),
                out / f"{f.stem}_overlay.png",
            )
        written.append(target)
    return written
