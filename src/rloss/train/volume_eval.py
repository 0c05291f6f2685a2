"""Per-volume 3-D Dice and HD95 on ACDC volumes (``rloss eval --kind acdc``).

Every slice of each selected volume is resized to the training resolution (the recipe's
``data.crop_size``, bilinear), segmented by the network, its logits resized back to the
slice's own grid (bilinear) and arg-maxed; the slices are stacked into the volume's
prediction. Per class c in RV, Myo, LV and per volume:

* Dice ``2 |P ∩ G| / (|P| + |G|)`` over the whole 3-D volume (1 when both are empty,
  0 when exactly one is);
* HD95, the 95th percentile of the symmetric surface distances (surfaces = the voxels
  a 3-D erosion with the 6-neighbourhood removes; distances by
  :func:`scipy.ndimage.distance_transform_edt`), the definition of medpy's ``hd95`` that
  the WSL4MIS evaluation calls. Units: millimetres when the file carries a voxel spacing;
  the WSL4MIS files carry none, so HD95 is in **voxels** (one unit per pixel in-plane and
  per slice), as in the WSL4MIS code. HD95 is NaN (left out of the means) when the
  prediction or the truth of a class is empty.

With ``largest_component`` (``--largest-component``) each class of the prediction is
reduced to its largest 3-D connected component (26-connectivity) before scoring, a common
post-processing for single-organ cardiac structures; results are reported with
``"largest_component": true``.

With ``crf`` (``--crf 2d`` / ``--crf 3d``) the network's probabilities (softmax of the
resized logits) are refined by dense-CRF mean-field inference
(:func:`rloss.meanfield.meanfield_refine`) before the arg-max: ``"2d"`` refines each slice
on its own (a batch of 2-D images), ``"3d"`` the whole volume at once, every voxel
connected to every voxel of the volume, with the anisotropic voxel ``spacing`` of
:data:`ACDC_CRF` (the files carry none; see :func:`crf_spacing`). The guidance image is
``image * intensity_scale`` (the recipe's ``data.intensity_scale``, 0..255).

The summary averages each class over volumes and the three classes into ``mean_dice``
/ ``mean_hd95``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "ACDC_CRF",
    "CRF_MODES",
    "FOREGROUND",
    "crf_spacing",
    "dice",
    "evaluate_checkpoint",
    "evaluate_volumes",
    "hd95",
    "largest_component",
    "predict_volume",
    "predict_volume_probs",
    "refine_volume",
    "summarize",
]

#: The evaluated classes (label value, name).
FOREGROUND: tuple[tuple[int, str], ...] = ((1, "RV"), (2, "Myo"), (3, "LV"))

#: ``crf`` values of :func:`evaluate_volumes`: slice-wise or volumetric mean-field.
CRF_MODES: tuple[str, ...] = ("2d", "3d")

#: Mean-field parameters for ACDC volumes (``rloss eval --kind acdc --crf``), lengths in
#: in-plane voxels (the WSL4MIS files carry no spacing). ``slice_spacing`` is the assumed
#: distance between slices in in-plane voxels: ACDC's ~1.5 mm pixels and 5-10 mm slice
#: spacing (Bernard et al. 2018) give 3.3-6.7; 6.5 is the common 10 mm / 1.5 mm (3.3 scored
#: the same). ``sigma_xy`` 5 was chosen among 5, 15, 30 on the development patients 61-65
#: for the DenseCRF recipe's network (docs/medical.md, *Mean-field refinement*).
ACDC_CRF: dict[str, float] = {
    "num_iterations": 5,
    "sigma_rgb": 15.0,
    "sigma_xy": 5.0,
    "appearance_weight": 3.0,
    "smoothness_sigma": 1.0,
    "smoothness_weight": 1.0,
    "slice_spacing": 6.5,
}


def crf_spacing(params: Mapping[str, Any], file_spacing: Sequence[float] | None = None
                ) -> tuple[float, float, float]:
    """The ``(sd, sh, sw)`` a 3-D refinement uses, in the units of the CRF's sigmas.

    With a file spacing (mm), the file's; otherwise ``(slice_spacing, 1, 1)`` in in-plane
    voxels (``params["slice_spacing"]``, :data:`ACDC_CRF`'s 6.5 by default).

    Example:
        >>> crf_spacing({"slice_spacing": 5.0})
        (5.0, 1.0, 1.0)
    """
    if file_spacing is not None and len(file_spacing) == 3:
        return tuple(float(v) for v in file_spacing)  # type: ignore[return-value]
    return (float(params.get("slice_spacing", ACDC_CRF["slice_spacing"])), 1.0, 1.0)


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice of two boolean arrays: ``2|P∩G| / (|P|+|G|)``, 1.0 when both are empty.

    Example:
        >>> import numpy as np
        >>> dice(np.array([1, 1, 0, 0], bool), np.array([1, 0, 0, 0], bool))
        0.6666666666666666
    """
    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ in shape")
    denom = int(p.sum()) + int(g.sum())
    return 1.0 if denom == 0 else 2.0 * int((p & g).sum()) / denom


def _surface(mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import binary_erosion, generate_binary_structure

    footprint = generate_binary_structure(mask.ndim, 1)
    return mask ^ binary_erosion(mask, structure=footprint, iterations=1)


def hd95(pred: np.ndarray, gt: np.ndarray, spacing: Sequence[float] | None = None) -> float:
    """95th-percentile symmetric Hausdorff distance between two boolean masks.

    Args:
        pred, gt: boolean arrays of one shape (2-D or 3-D).
        spacing: voxel size per axis (e.g. mm); ``None`` for 1 per axis (voxel units).

    Returns:
        The distance, or NaN when either mask is empty.

    Example:
        >>> import numpy as np
        >>> a = np.zeros((1, 5, 5), bool); a[0, 1:4, 1:4] = True
        >>> b = np.zeros((1, 5, 5), bool); b[0, 1:4, 2:5] = True
        >>> hd95(a, b)
        1.0
    """
    from scipy.ndimage import distance_transform_edt

    p, g = np.asarray(pred, bool), np.asarray(gt, bool)
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ in shape")
    if not p.any() or not g.any():
        return math.nan
    sp = None if spacing is None else [float(s) for s in spacing]
    if sp is not None and len(sp) != p.ndim:
        raise ValueError(f"spacing: expected {p.ndim} values, got {spacing}")
    sp_ = sp if sp is not None else [1.0] * p.ndim
    ps, gs = _surface(p), _surface(g)
    d_pg = distance_transform_edt(~gs, sampling=sp_)[ps]
    d_gp = distance_transform_edt(~ps, sampling=sp_)[gs]
    return float(np.percentile(np.hstack([d_pg, d_gp]), 95))


@torch.no_grad()
def predict_volume(
    model: nn.Module,
    image: torch.Tensor,
    size: int | Sequence[int] | None,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Segment a ``(D, H, W)`` [0, 1] volume slice by slice at ``size``; ``(D, H, W)`` int64.

    Each slice is resized to ``size`` (bilinear; ``None`` keeps it), the network's logits
    are resized back to ``(H, W)`` (bilinear) and arg-maxed.
    """
    return _predict(model, image, size, batch_size, device, probs=False)


@torch.no_grad()
def predict_volume_probs(
    model: nn.Module,
    image: torch.Tensor,
    size: int | Sequence[int] | None,
    *,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """As :func:`predict_volume`, but the softmax of the resized logits: ``(K, D, H, W)``
    float32 (its arg-max over K is :func:`predict_volume`'s labels)."""
    return _predict(model, image, size, batch_size, device, probs=True)


def _predict(model: nn.Module, image: torch.Tensor, size: int | Sequence[int] | None,
             batch_size: int, device: torch.device | str, *, probs: bool) -> torch.Tensor:
    if image.dim() != 3:
        raise ValueError(f"image: expected (D, H, W), got {tuple(image.shape)}")
    d, h, w = image.shape
    hw = None if size is None else ((size, size) if isinstance(size, int) else tuple(size))
    out: torch.Tensor | None = None if probs else torch.empty(d, h, w, dtype=torch.int64)
    for z0 in range(0, d, batch_size):
        x = image[z0 : z0 + batch_size, None].to(device=device, dtype=torch.float32)
        if hw is not None and tuple(x.shape[-2:]) != hw:
            x = F.interpolate(x, size=hw, mode="bilinear", align_corners=False)
        logits = model(x)
        if tuple(logits.shape[-2:]) != (h, w):
            logits = F.interpolate(logits.float(), size=(h, w), mode="bilinear",
                                   align_corners=False)
        if probs:
            p = logits.float().softmax(1).cpu()
            if out is None:
                out = torch.empty(p.shape[1], d, h, w, dtype=torch.float32)
            out[:, z0 : z0 + batch_size] = p.transpose(0, 1)
        else:
            assert out is not None
            out[z0 : z0 + batch_size] = logits.argmax(1).cpu()
    assert out is not None
    return out


def refine_volume(
    image_raw: torch.Tensor,
    probs: torch.Tensor,
    mode: str,
    params: Mapping[str, Any] | None = None,
    *,
    spacing: Sequence[float] | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Mean-field refinement of one volume's probabilities, slice-wise or in 3-D.

    Args:
        image_raw: ``(D, H, W)`` guidance intensities, 0..255.
        probs: ``(K, D, H, W)`` softmax probabilities.
        mode: ``"2d"``: each slice alone (the slices as a batch of ``(1, H, W)``
            images); ``"3d"``: the volume as one ``(1, 1, D, H, W)`` volume with the
            spacing of :func:`crf_spacing`.
        params: :data:`ACDC_CRF` keys to override (lengths in in-plane voxels, or in the
            units of ``spacing``).
        spacing: the file's voxel size ``(sd, sh, sw)``, or ``None`` (see :func:`crf_spacing`).
        backend: lattice backend (``None``: the device default).

    Returns:
        ``(K, D, H, W)`` float32 refined marginals.

    Example:
        >>> import torch
        >>> img = torch.rand(3, 12, 12) * 255
        >>> p = torch.randn(4, 3, 12, 12).softmax(0)
        >>> refine_volume(img, p, "3d").shape
        torch.Size([4, 3, 12, 12])
    """
    from rloss.meanfield import meanfield_refine

    if mode not in CRF_MODES:
        raise ValueError(f"crf: expected one of {CRF_MODES}, got {mode!r}")
    if image_raw.dim() != 3 or probs.dim() != 4 or tuple(probs.shape[1:]) != tuple(image_raw.shape):
        raise ValueError(
            f"image_raw (D, H, W) and probs (K, D, H, W) must match, got "
            f"{tuple(image_raw.shape)} and {tuple(probs.shape)}"
        )
    p = {**ACDC_CRF, **dict(params or {})}
    unknown = sorted(set(p) - set(ACDC_CRF))
    if unknown:
        raise ValueError(f"crf params: unknown key(s) {unknown}; known: {sorted(ACDC_CRF)}")
    kw = {k: v for k, v in p.items() if k != "slice_spacing"}
    kw["num_iterations"] = int(kw["num_iterations"])
    img = image_raw.float().clamp(0.0, 255.0)
    if mode == "2d":
        out = meanfield_refine(img[:, None], probs.transpose(0, 1).contiguous(),
                               backend=backend, **kw)
        return out.transpose(0, 1).contiguous()
    out = meanfield_refine(img[None, None], probs[None].contiguous(), backend=backend,
                           spacing=crf_spacing(p, spacing), **kw)
    return out[0]


def largest_component(pred: np.ndarray, classes: Sequence[int] = (1, 2, 3)) -> np.ndarray:
    """Keep, for each class, only its largest connected component (full connectivity);
    removed voxels become background (0).

    Example:
        >>> import numpy as np
        >>> p = np.array([[1, 1, 0, 1], [0, 0, 0, 2]])
        >>> largest_component(p).tolist()
        [[1, 1, 0, 0], [0, 0, 0, 2]]
    """
    from scipy.ndimage import generate_binary_structure, label

    out = np.array(pred, copy=True)
    structure = generate_binary_structure(out.ndim, out.ndim)
    for c in classes:
        comp, n = label(out == c, structure=structure)
        if n > 1:
            sizes = np.bincount(comp.ravel())
            sizes[0] = 0
            out[(comp > 0) & (comp != int(sizes.argmax()))] = 0
    return out


def volume_metrics(pred: np.ndarray, gt: np.ndarray,
                   spacing: Sequence[float] | None = None) -> dict[str, dict[str, float]]:
    """Per-class Dice and HD95 of one labelled volume: ``{"dice": {RV..}, "hd95": {RV..}}``."""
    out: dict[str, dict[str, float]] = {"dice": {}, "hd95": {}}
    for value, name in FOREGROUND:
        p, g = pred == value, gt == value
        out["dice"][name] = dice(p, g)
        out["hd95"][name] = hd95(p, g, spacing)
    return out


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else math.nan


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Means over volumes per class, then over classes (NaN HD95 left out)."""
    names = [n for _, n in FOREGROUND]
    d = {n: _nanmean([r["dice"][n] for r in rows]) for n in names}
    h = {n: _nanmean([r["hd95"][n] for r in rows]) for n in names}
    return {
        "mean_dice": _nanmean(list(d.values())),
        "dice": d,
        "mean_hd95": _nanmean(list(h.values())),
        "hd95": h,
        "volumes": len(rows),
    }


def evaluate_volumes(
    model: nn.Module,
    volumes: Any,
    size: int | Sequence[int] | None,
    *,
    device: torch.device | str = "cpu",
    progress: bool = True,
    largest: bool = False,
    crf: str | None = None,
    crf_params: Mapping[str, Any] | None = None,
    intensity_scale: float = 255.0,
) -> dict[str, Any]:
    """Evaluate ``model`` on every item of an :class:`rloss.data.acdc.AcdcVolumes`.

    ``largest``: score :func:`largest_component` of each prediction. ``crf``: ``None``,
    ``"2d"`` or ``"3d"`` mean-field refinement (:func:`refine_volume`, parameters
    :data:`ACDC_CRF` updated by ``crf_params``) of the probabilities before the arg-max,
    guided by ``image * intensity_scale``.

    Returns:
        :func:`summarize`'s keys plus ``hd95_unit`` (``"mm"`` or ``"voxel"``) and
        ``per_volume``: one row per volume (``name``, ``patient``, ``frame``, ``slices``,
        ``dice``, ``hd95``, ``mean_dice``).
    """
    from tqdm.auto import tqdm

    if crf is not None and crf not in CRF_MODES:
        raise ValueError(f"crf: expected None or one of {CRF_MODES}, got {crf!r}")
    model = model.to(device).eval()
    rows: list[dict[str, Any]] = []
    units = set()
    for i in tqdm(range(len(volumes)), desc="eval volumes", unit="vol", disable=not progress):
        v = volumes[i]
        spacing = v.get("spacing")
        if crf is None:
            pred = predict_volume(model, v["image"], size, device=device).numpy()
        else:
            probs = predict_volume_probs(model, v["image"], size, device=device)
            raw = v["image"].float() * float(intensity_scale)
            pred = refine_volume(raw, probs, crf, crf_params, spacing=spacing).argmax(0).numpy()
        if largest:
            pred = largest_component(pred)
        if spacing is not None and len(spacing) != pred.ndim:
            spacing = None
        units.add("mm" if spacing is not None else "voxel")
        m = volume_metrics(pred, v["label"].numpy(), spacing)
        rows.append({
            "name": v["name"], "patient": v.get("patient"), "frame": v.get("frame"),
            "slices": int(pred.shape[0]), **m,
            "mean_dice": _nanmean(list(m["dice"].values())),
        })
    if not rows:
        raise ValueError("volumes: no volume to evaluate")
    extra: dict[str, Any] = {}
    if crf is not None:
        extra = {"crf": crf, "crf_params": {**ACDC_CRF, **dict(crf_params or {})}}
    return {**summarize(rows), "hd95_unit": "/".join(sorted(units)),
            "largest_component": bool(largest), **extra, "per_volume": rows}


def evaluate_checkpoint(
    checkpoint: str | Path,
    root: str | Path | None = None,
    *,
    split: str = "val",
    patients: Any = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    progress: bool = True,
    largest: bool = False,
    crf: str | None = None,
    crf_params: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Load a run's network and evaluate it on the ACDC volumes of ``split``.

    Args:
        checkpoint: ``RUN/model.pt`` or a Lightning checkpoint of an ACDC recipe.
        root: the WSL4MIS folder (default: the recipe's ``data.root``).
        split: ``"val"`` or ``"test"``: patients from the recipe's ``data.val_patients``
            / ``data.test_patients`` (fold 1's 61-70 / 1-20 by default).
        patients: override the selection (ids/ranges).
        out: metrics JSON, written atomically; an existing file is refused unless
            ``overwrite``.
        device: default cuda when available.
        largest: keep each class's largest 3-D connected component before scoring.
        crf: ``None``, ``"2d"`` (slice-wise) or ``"3d"`` (volumetric) mean-field
            refinement; ``crf_params`` override :data:`ACDC_CRF`.

    Raises:
        FileExistsError: ``out`` exists and ``overwrite`` is False.
        ValueError / rloss.data.io.DataError: bad split, folder or selection.
    """
    from rloss.data.acdc import FOLD1, AcdcVolumes
    from rloss.train.api import load_model, write_json_atomic

    if split not in ("val", "test"):
        raise ValueError(f"split: expected 'val' or 'test', got {split!r}")
    if out is not None and Path(out).exists() and not overwrite:
        raise FileExistsError(f"--out {str(out)!r} exists; pass --overwrite to replace it")
    dev = torch.device(device) if device else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    model, cfg = load_model(checkpoint, map_location=dev)
    data = cfg.get("data") or {}
    root = root if root is not None else data.get("root")
    if root in (None, ""):
        raise ValueError("--data: the checkpoint's recipe has no data.root; pass --data ROOT")
    key = f"{split}_patients"
    sel = patients if patients is not None else (data.get(key) or FOLD1[split])
    volumes = AcdcVolumes(root, sel, what=f"data.{key}")
    size = int(data.get("crop_size") or 256)
    result = evaluate_volumes(model, volumes, size, device=dev, progress=progress,
                              largest=largest, crf=crf, crf_params=crf_params,
                              intensity_scale=float(data.get("intensity_scale") or 255.0))
    result = {**result, "split": split, "checkpoint": str(checkpoint), "size": size,
              "patients": sorted({f.patient for f in volumes.files})}
    if out is not None:
        write_json_atomic(result, out)
    return result


def format_table(metrics: Mapping[str, Any]) -> str:
    """Dice / HD95 per class and mean, as printed by ``rloss eval --kind acdc``."""
    unit = metrics.get("hd95_unit", "voxel")
    lines = [f"{'class':<6} {'Dice':>7} {'HD95 (' + unit + ')':>14}"]
    for _, n in FOREGROUND:
        lines.append(f"{n:<6} {metrics['dice'][n]:7.4f} {metrics['hd95'][n]:14.2f}")
    lines.append(f"{'mean':<6} {metrics['mean_dice']:7.4f} {metrics['mean_hd95']:14.2f}")
    crf = f", mean-field CRF {metrics['crf']}" if metrics.get("crf") else ""
    lines.append(f"({metrics['volumes']} volumes{crf})")
    return "\n".join(lines)


