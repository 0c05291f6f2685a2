"""Inference: normalisation, multi-scale/flip probabilities, CRF refinement, PNG prediction."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from tqdm.auto import tqdm

from rloss.constants import voc_palette
from rloss.data.io import IMAGE_EXTENSIONS, atomic_path
from rloss.data.transforms import normalize_image as _normalize
from rloss.meanfield import meanfield_refine
from rloss.train.checkpoint import load_model
from rloss.train.run_dir import resolve_checkpoint

__all__ = ["crf_refine", "default_device", "normalize_image", "predict", "predict_probs"]


def normalize_image(image: torch.Tensor) -> torch.Tensor:
    """RGB 0..255 ``(N, 3, H, W)`` → ImageNet-normalised float32 ``(N, 3, H, W)``.

    The one normalisation of the sample contract
    (:func:`rloss.data.transforms.normalize_image`), for a batch.
    """
    if image.dim() != 4:
        raise ValueError(f"image: expected shape (N, 3, H, W), got {tuple(image.shape)}")
    return _normalize(image)


def default_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or CUDA when available, else CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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
    """DenseCRF mean-field post-processing via :func:`rloss.meanfield.meanfield_refine`.

    Args:
        image_raw: ``(N, 3, H, W)`` float RGB 0..255.
        probs: ``(N, K, H, W)`` softmax probabilities.
        params: keyword arguments for the CRF (``None`` = its defaults).

    Returns:
        Refined ``(N, K, H, W)`` probabilities.
    """
    return meanfield_refine(image_raw, probs, **dict(params or {}))


def _expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    suffixes = {s.lower() for s in IMAGE_EXTENSIONS}
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.is_file() and f.suffix.lower() in suffixes)
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
    running twice gives the same files. Folders are searched for the suffixes of
    :data:`rloss.data.io.IMAGE_EXTENSIONS`.

    Args:
        checkpoint: checkpoint path, run folder or a network (see :func:`load_model`).
        inputs: image files and/or folders (their images, sorted by name).
        out_dir: output folder (created).
        scales, flip, crf, device: as in :func:`rloss.train.evaluation.evaluate`.
        overlay: also write the overlay images.
        alpha: overlay opacity of the class colours, in [0, 1].
        progress: tqdm progress bar.

    Returns:
        The written label PNG paths, in input order.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha: expected a value in [0, 1], got {alpha}")
    if isinstance(checkpoint, nn.Module):
        model = checkpoint
    else:
        model = load_model(resolve_checkpoint(checkpoint))[0]
    dev = default_device(device)
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
