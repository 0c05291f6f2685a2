"""``rloss eval``: mIoU and per-class IoU of a network on full-resolution images.

Uses the same :class:`~rloss.train.metrics.ConfusionMatrix` and
:func:`~rloss.train.metrics.summarize` as validation during training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from rloss.train.checkpoint import load_model, write_json_atomic
from rloss.train.config import deep_merge
from rloss.train.datamodule import build_dataset, dataset_classes
from rloss.train.inference import crf_refine, default_device, predict_probs
from rloss.train.metrics import ConfusionMatrix, summarize
from rloss.train.run_dir import resolve_checkpoint

__all__ = ["evaluate", "format_iou_table"]


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
        checkpoint: a checkpoint path (``*.ckpt`` or ``model.pt``), a run folder (its
            ``model.pt``, else ``last.ckpt``) or a network.
        data: ``None`` (the recipe's val split), a mapping overriding keys of the
            recipe's ``data`` section (e.g. ``{"kind": "folder", "root": "..."}``), or a
            dataset yielding contract samples (full-resolution ``image``,
            ``image_raw`` and ``mask``).
        config: recipe to use when ``checkpoint`` is a network (for ``data`` and
            ``classes``).
        scales: test-time input scales (probabilities averaged).
        flip: also average horizontally flipped predictions.
        crf: DenseCRF post-processing: ``None``/``False`` off, ``True`` the recipe's
            ``eval.crf`` parameters (or the CRF's defaults), or a mapping of parameters.
        device: inference device (default CUDA if available, else CPU).
        out: write the metrics JSON here (atomically).
        progress: tqdm progress bar.

    Returns:
        ``{"miou", "pixel_acc", "per_class_iou": {name: IoU or NaN}, "num_images",
        "scales", "flip", "crf", "checkpoint"}``.
    """
    if isinstance(checkpoint, nn.Module):
        model, cfg = checkpoint, dict(config or {})
        ckpt_name = None
    else:
        path = resolve_checkpoint(checkpoint)
        model, cfg = load_model(path)
        ckpt_name = str(path)
        if config is not None:
            cfg = deep_merge(cfg, config)
    dev = default_device(device)
    model = model.to(dev).eval()
    if data is None or isinstance(data, Mapping):
        if "data" not in cfg:
            raise ValueError("data: pass a dataset or a data mapping (no recipe to take it from)")
        dataset = build_dataset(deep_merge(cfg["data"], dict(data or {})), "val")
    else:
        dataset = data
    classes = list(cfg.get("classes") or dataset_classes(dataset))
    if crf is True:
        crf_params: dict[str, Any] | None = dict((cfg.get("eval") or {}).get("crf") or {})
    else:
        crf_params = dict(crf) if crf else None
    confmat = ConfusionMatrix(len(classes))
    n = len(dataset)
    for i in tqdm(range(n), desc="eval", disable=not progress, unit="img"):
        sample = dataset[i]
        image = sample["image"].unsqueeze(0).to(dev)
        probs = predict_probs(model, image, scales=scales, flip=flip)
        if crf_params is not None:
            probs = crf_refine(sample["image_raw"].unsqueeze(0).to(dev), probs, crf_params)
        confmat.update(probs.argmax(1)[0].cpu(), sample["mask"], sample.get("roi"))
    s = summarize(confmat.compute(), classes)
    result = {
        "miou": s["miou"],
        "pixel_acc": s["pixel_acc"],
        "per_class_iou": s["per_class_iou"],
        "num_images": n,
        "scales": [float(v) for v in scales],
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
