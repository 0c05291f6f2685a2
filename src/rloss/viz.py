"""Palettes, label colouring, overlays and DenseCRF-loss gradient maps.

Display helpers take and return NumPy arrays (``uint8`` RGB images ``(H, W, 3)``,
integer label maps ``(H, W)`` with ``255`` = unlabelled); the gradient maps take
tensors in the project's conventions (image ``(3, H, W)`` RGB 0..255, logits
``(K, H, W)``). Figures are drawn with Matplotlib's ``Agg`` backend and written
atomically; nothing is ever shown on screen.

The gradient figure follows the rloss authors' illustrations: for one image,
the softmax map of each class and the gradient of the DenseCRF loss with
respect to the scores (logits). With ``S = softmax(z)`` and the relaxed Potts
energy ``E(S) = (1/N) sum_k S_k^T W (1 - S_k)``,

    dE/dS_k = (1/N) W (1 - 2 S_k),
    dE/dz_k = S_k * (dE/dS_k - sum_j S_j dE/dS_j),

so the gradient vanishes inside regions of confident, colour-consistent
prediction and lights up where the predicted boundary crosses pixels whose
colours (and positions) say they belong together, i.e. where the prediction
disagrees with the colour edges.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from rloss.constants import IGNORE_INDEX, voc_palette

__all__ = [
    "colorize",
    "colorize_rgba",
    "contour_overlay",
    "densecrf_gradient_maps",
    "label_boundaries",
    "overlay",
    "palette_array",
    "plot_curves",
    "plot_gradient_figure",
    "plot_prediction_grid",
    "plot_segment_figure",
    "save_figure",
    "to_numpy_image",
]

#: Colour (RGB) of unlabelled pixels in opaque renderings.
IGNORE_COLOR: tuple[int, int, int] = (0, 0, 0)


def palette_array(palette: Sequence[int] | None = None) -> np.ndarray:
    """The colour palette as a ``(256, 3)`` ``uint8`` array.

    Args:
        palette: flat list of 768 ints (PIL ``putpalette`` layout); ``None`` for the
            PASCAL VOC palette (:func:`rloss.constants.voc_palette`).

    Returns:
        ``(256, 3)`` ``uint8`` array; row ``i`` is the colour of label ``i``.
    """
    flat = voc_palette() if palette is None else list(palette)
    if len(flat) != 768:
        raise ValueError(f"palette: want a flat list of 768 ints, got {len(flat)} values")
    return np.asarray(flat, dtype=np.uint8).reshape(256, 3)


def _labels_numpy(labels: np.ndarray | Tensor, name: str = "labels") -> np.ndarray:
    arr = labels.detach().cpu().numpy() if isinstance(labels, Tensor) else np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"{name}: want a (H, W) label map, got shape {arr.shape}")
    if arr.dtype.kind not in "iub":
        raise ValueError(f"{name}: want an integer label map, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > 255):
        raise ValueError(f"{name}: values must lie in 0..255, got {arr.min()}..{arr.max()}")
    return arr.astype(np.int64, copy=False)


def colorize(
    labels: np.ndarray | Tensor,
    *,
    palette: Sequence[int] | None = None,
    ignore_color: tuple[int, int, int] = IGNORE_COLOR,
) -> np.ndarray:
    """Render a label map in colour.

    Args:
        labels: ``(H, W)`` integer labels in 0..255; ``255`` = unlabelled.
        palette: flat 768-int palette; ``None`` for the VOC palette.
        ignore_color: RGB colour of ``255`` pixels (black by default).

    Returns:
        ``(H, W, 3)`` ``uint8`` RGB image.
    """
    arr = _labels_numpy(labels)
    pal = palette_array(palette).copy()
    pal[IGNORE_INDEX] = ignore_color
    return pal[arr]


def colorize_rgba(
    labels: np.ndarray | Tensor, *, palette: Sequence[int] | None = None, alpha: int = 255
) -> np.ndarray:
    """Render a label map as RGBA with unlabelled (``255``) pixels fully transparent.

    Args:
        labels: ``(H, W)`` integer labels in 0..255.
        palette: flat 768-int palette; ``None`` for the VOC palette.
        alpha: opacity 0..255 of labelled pixels.

    Returns:
        ``(H, W, 4)`` ``uint8`` RGBA image.
    """
    if not 0 <= int(alpha) <= 255:
        raise ValueError(f"alpha: want an int in 0..255, got {alpha}")
    arr = _labels_numpy(labels)
    rgb = palette_array(palette)[arr]
    a = np.where(arr == IGNORE_INDEX, 0, int(alpha)).astype(np.uint8)
    return np.concatenate([rgb, a[..., None]], axis=-1)


def to_numpy_image(image: np.ndarray | Tensor) -> np.ndarray:
    """Convert an image to ``(H, W, 3)`` ``uint8`` for display.

    Args:
        image: ``(H, W, 3)`` array or ``(3, H, W)`` tensor, ``uint8`` or float in 0..255.

    Returns:
        ``(H, W, 3)`` ``uint8`` array (float values are rounded and clipped to 0..255).
    """
    if isinstance(image, Tensor):
        t = image.detach().cpu()
        if t.dim() == 3 and t.shape[0] == 3 and t.shape[-1] != 3:
            t = t.permute(1, 2, 0)
        arr = t.numpy()
    else:
        arr = np.asarray(image)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"image: want (H, W, 3) or a (3, H, W) tensor, got shape {arr.shape}")
    if arr.dtype == np.uint8:
        return arr
    if arr.dtype.kind not in "fiu":
        raise ValueError(f"image: want uint8 or float values 0..255, got dtype {arr.dtype}")
    return np.clip(np.rint(arr.astype(np.float64)), 0, 255).astype(np.uint8)


def overlay(
    image: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    *,
    alpha: float = 0.5,
    palette: Sequence[int] | None = None,
) -> np.ndarray:
    """Blend a colour-coded label map over an image; unlabelled pixels show the image.

    Args:
        image: ``(H, W, 3)`` (or ``(3, H, W)`` tensor) RGB image, 0..255.
        labels: ``(H, W)`` integer labels; ``255`` = unlabelled (left transparent).
        alpha: opacity of the label colours, in [0, 1].
        palette: flat 768-int palette; ``None`` for the VOC palette.

    Returns:
        ``(H, W, 3)`` ``uint8`` RGB image.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise ValueError(f"alpha: want a float in [0, 1], got {alpha}")
    img = to_numpy_image(image).astype(np.float32)
    arr = _labels_numpy(labels)
    if arr.shape != img.shape[:2]:
        raise ValueError(f"labels: shape {arr.shape} does not match image size {img.shape[:2]}")
    col = palette_array(palette)[arr].astype(np.float32)
    a = np.where(arr == IGNORE_INDEX, 0.0, float(alpha)).astype(np.float32)[..., None]
    return np.clip(np.rint(img * (1 - a) + col * a), 0, 255).astype(np.uint8)


def densecrf_gradient_maps(
    image: Tensor,
    logits: Tensor,
    *,
    sigma_rgb: float = 15.0,
    sigma_xy: float = 100.0,
    scale_factor: float = 1.0,
    weight: float = 1.0,
    normalize: bool = False,
    roi: Tensor | None = None,
    backend: str | None = None,
) -> dict[str, Any]:
    """Softmax maps and the DenseCRF loss gradient for one image, via autograd.

    The loss is :class:`rloss.losses.DenseCRFLoss` with the given
    hyper-parameters; the gradients are those the network would receive.

    Args:
        image: ``(3, H, W)`` float RGB image, 0..255 (unnormalised).
        logits: ``(K, H, W)`` float scores (pre-softmax), K >= 2.
        sigma_rgb: colour bandwidth of the kernel, in 0..255 units.
        sigma_xy: spatial bandwidth, in pixels of ``image``.
        scale_factor: resolution at which the loss is computed (0.5 halves it).
        weight: loss weight (scales the energy and gradients; 1 for raw values).
        normalize: passed to the loss (its size-independent normalised form).
        roi: optional ``(H, W)`` float mask, 1 where the loss applies.
        backend: lattice backend (``None`` picks by device).

    Returns:
        A dict of CPU tensors / floats:
        ``probs`` ``(K, H, W)`` softmax; ``prediction`` ``(H, W)`` int64 argmax;
        ``grad_logits`` ``(K, H, W)`` dLoss/dlogits; ``grad_probs`` ``(K, H, W)``
        dLoss/dS with its per-pixel mean over classes removed (the part that
        survives the softmax; equal to the rloss reference's gradient, whose
        energy differs from ours by a class-independent term);
        ``grad_norm`` ``(H, W)`` the Euclidean norm of ``grad_logits`` over
        classes; ``energy`` float, the loss value.
    """
    from rloss.losses import DenseCRFLoss

    if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image: want a (3, H, W) tensor, got {got}")
    if not isinstance(logits, Tensor) or logits.dim() != 3 or logits.shape[0] < 2:
        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(f"logits: want a (K, H, W) tensor with K >= 2, got {got}")
    if logits.shape[1:] != image.shape[1:]:
        raise ValueError(
            f"logits: spatial size {tuple(logits.shape[1:])} does not match image "
            f"{tuple(image.shape[1:])}"
        )
    if roi is not None and (not isinstance(roi, Tensor) or roi.shape != image.shape[1:]):
        raise ValueError(f"roi: want a (H, W) tensor matching the image, got {roi!r:.60}")
    loss_fn = DenseCRFLoss(
        weight=weight,
        sigma_rgb=sigma_rgb,
        sigma_xy=sigma_xy,
        scale_factor=scale_factor,
        normalize=normalize,
        backend=backend,
    )
    z = logits.detach().to(torch.float32).clone().unsqueeze(0).requires_grad_(True)
    img = image.detach().to(device=z.device, dtype=torch.float32).unsqueeze(0)
    with torch.enable_grad():
        probs = torch.softmax(z, dim=1)
        probs.retain_grad()
        r = None if roi is None else roi.detach().to(z.device, torch.float32).unsqueeze(0)
        energy = loss_fn(img, probs, r)
        energy.backward()
    assert z.grad is not None and probs.grad is not None
    gp = probs.grad[0]
    gz = z.grad[0]
    return {
        "probs": probs.detach()[0].cpu(),
        "prediction": probs.detach()[0].argmax(0).cpu(),
        "grad_logits": gz.detach().cpu(),
        "grad_probs": (gp - gp.mean(0, keepdim=True)).detach().cpu(),
        "grad_norm": gz.detach().norm(dim=0).cpu(),
        "energy": float(energy.detach()),
    }


def save_figure(fig: Any, path: str | os.PathLike[str], *, dpi: int = 100) -> Path:
    """Save a Matplotlib figure as PNG atomically (temporary name + rename)."""
    from rloss._io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def _figure(nrows: int, ncols: int, figsize: tuple[float, float]) -> tuple[Any, np.ndarray]:
    """A pyplot-free Figure (Agg canvas: no global state, no window) and its axes grid."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def plot_gradient_figure(
    image: np.ndarray | Tensor,
    maps: Mapping[str, Any],
    path: str | os.PathLike[str],
    *,
    class_names: Sequence[str] | None = None,
    class_labels: Sequence[int] | None = None,
    scribbles: np.ndarray | Tensor | None = None,
    title: str | None = None,
    palette: Sequence[int] | None = None,
    channels: Sequence[int] | None = None,
    dpi: int = 100,
) -> Path:
    """Draw the DenseCRF gradient figure and write it as a PNG.

    Top row: the image (with scribbles when given), the prediction, and the
    norm of the gradient over classes. Then one row per class: its softmax
    map (0..1, with colour bar) and dLoss/dlogits for that class (diverging
    colour map symmetric about 0, with colour bar; negative = the loss wants
    this class's score raised).

    Args:
        image: ``(H, W, 3)`` array or ``(3, H, W)`` tensor, 0..255.
        maps: the dict returned by :func:`densecrf_gradient_maps`.
        path: output ``.png`` (written atomically; parent folders are created).
        class_names: optional names of the K channels, for the titles.
        class_labels: optional label value of each channel (for colouring the
            prediction with the palette); default ``0..K-1``.
        scribbles: optional ``(H, W)`` labels (255 unlabelled) drawn over the image.
        title: optional figure title.
        palette: flat 768-int palette; ``None`` for the VOC palette.
        channels: which classes get a row (default: all K; with many classes
            pass e.g. those present in the prediction).
        dpi: resolution of the PNG.

    Returns:
        ``path``.
    """
    img = to_numpy_image(image)
    probs = torch.as_tensor(maps["probs"]).numpy()
    grad = torch.as_tensor(maps["grad_logits"]).numpy()
    gnorm = torch.as_tensor(maps["grad_norm"]).numpy()
    k = probs.shape[0]
    labels = np.arange(k) if class_labels is None else np.asarray(class_labels, dtype=np.int64)
    if len(labels) != k:
        raise ValueError(f"class_labels: want {k} values, got {len(labels)}")
    names = [f"class {int(v)}" for v in labels] if class_names is None else list(class_names)
    if len(names) != k:
        raise ValueError(f"class_names: want {k} names, got {len(names)}")
    pred = labels[probs.argmax(0)]
    rows = list(range(k)) if channels is None else [int(c) for c in channels]
    if not rows or any(not 0 <= c < k for c in rows):
        raise ValueError(f"channels: want indices in 0..{k - 1}, got {channels}")
    h, w = img.shape[:2]
    cell = 3.0
    aspect = h / max(w, 1)
    n_rows = 1 + len(rows)
    fig, axes = _figure(n_rows, 3, (3 * cell + 1.5, n_rows * cell * aspect + 0.4))
    shown = img if scribbles is None else overlay(img, scribbles, alpha=1.0, palette=palette)
    axes[0, 0].imshow(shown)
    axes[0, 0].set_title("image" + (" + scribbles" if scribbles is not None else ""), fontsize=9)
    axes[0, 1].imshow(overlay(img, pred, alpha=0.6, palette=palette))
    axes[0, 1].set_title("prediction", fontsize=9)
    im = axes[0, 2].imshow(gnorm, cmap="magma")
    axes[0, 2].set_title("|dE/dscores| (all classes)", fontsize=9)
    fig.colorbar(im, ax=axes[0, 2], shrink=0.9)
    vmax = float(np.abs(grad).max()) or 1.0
    for r, i in enumerate(rows):
        row = axes[1 + r]
        row[0].imshow(img)
        row[0].contour(probs[i], levels=[0.5], colors="yellow", linewidths=0.8)
        row[0].set_title(f"{names[i]}: S=0.5 contour", fontsize=9)
        im = row[1].imshow(probs[i], cmap="viridis", vmin=0.0, vmax=1.0)
        row[1].set_title(f"softmax {names[i]}", fontsize=9)
        fig.colorbar(im, ax=row[1], shrink=0.9)
        im = row[2].imshow(grad[i], cmap="RdBu_r", vmin=-vmax, vmax=vmax)
        row[2].set_title(f"dE/dscore {names[i]}", fontsize=9)
        fig.colorbar(im, ax=row[2], shrink=0.9)
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    energy = maps.get("energy")
    head = title or "DenseCRF loss gradient"
    if energy is not None:
        head += f"  (E = {float(energy):.4g})"
    fig.suptitle(head, fontsize=10)
    return save_figure(fig, path, dpi=dpi)


def plot_prediction_grid(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    path: str | os.PathLike[str],
    *,
    palette: Sequence[int] | None = None,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """A grid of images and label maps: one row per sample, one column per key.

    Args:
        rows: one mapping per row; ``row[col]`` is either an ``(H, W, 3)`` RGB
            image (shown as is) or an ``(H, W)`` label map (colourised; 255 black).
            The key ``"image"``, when present, is blended under label maps
            whose column name starts with ``"scribbles"``.
        columns: the keys to show, in order; they title the first row.
        path: output ``.png``, written atomically.
        palette: flat 768-int palette; ``None`` for the VOC palette.
        title: optional figure title.
        dpi: resolution.

    Returns:
        ``path``.
    """
    if not rows or not columns:
        raise ValueError(f"rows and columns must be non-empty, got {len(rows)} and {len(columns)}")
    first = next(iter(rows[0].values()))
    h, w = np.asarray(first).shape[:2]
    cell = 2.0
    fig, axes = _figure(
        len(rows), len(columns), (cell * len(columns), cell * h / max(w, 1) * len(rows) + 0.4)
    )
    for r, row in enumerate(rows):
        for c, col in enumerate(columns):
            ax = axes[r, c]
            value = row[col]
            arr = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
            if arr.ndim == 2:
                if col.startswith("scribble") and "image" in row:
                    shown = overlay(row["image"], arr, alpha=1.0, palette=palette)
                else:
                    shown = colorize(arr, palette=palette)
            else:
                shown = to_numpy_image(arr)
            ax.imshow(shown, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col, fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=dpi)


def plot_curves(
    series: Mapping[str, Mapping[str, Sequence[float]]],
    path: str | os.PathLike[str],
    *,
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Line plots, one panel per metric, one line per run.

    Args:
        series: ``{panel name: {run name: values per epoch}}``; empty runs are skipped.
        path: output ``.png``, written atomically.
        title: optional figure title.
        dpi: resolution.

    Returns:
        ``path``.
    """
    if not series:
        raise ValueError("series: want at least one panel, got none")
    fig, axes = _figure(1, len(series), (4.2 * len(series), 3.2))
    for ax, (panel, runs) in zip(axes[0], series.items()):
        for run, values in runs.items():
            vals = [float(v) for v in values]
            if vals:
                ax.plot(range(1, len(vals) + 1), vals, marker="o", markersize=3, label=run)
        ax.set_title(panel, fontsize=10)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if any(len(v) for v in runs.values()):
            ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=dpi)


def label_boundaries(labels: np.ndarray | Tensor) -> np.ndarray:
    """Pixels on a boundary between two labels (4-neighbourhood), both sides marked.

    Args:
        labels: ``(H, W)`` integer label map.

    Returns:
        ``(H, W)`` bool array.

    Example:
        >>> lab = np.zeros((3, 4), int)
        >>> lab[:, 2:] = 1
        >>> label_boundaries(lab).astype(int)
        array([[0, 1, 1, 0],
               [0, 1, 1, 0],
               [0, 1, 1, 0]])
    """
    arr = _labels_numpy(labels)
    out = np.zeros(arr.shape, dtype=bool)
    dx = arr[:, 1:] != arr[:, :-1]
    dy = arr[1:, :] != arr[:-1, :]
    out[:, 1:] |= dx
    out[:, :-1] |= dx
    out[1:, :] |= dy
    out[:-1, :] |= dy
    return out


def contour_overlay(
    image: np.ndarray | Tensor,
    labels: np.ndarray | Tensor,
    *,
    alpha: float = 0.45,
    color: tuple[int, int, int] = (255, 255, 255),
    palette: Sequence[int] | None = None,
) -> np.ndarray:
    """:func:`overlay` with the label boundaries (:func:`label_boundaries`) drawn in ``color``.

    Args:
        image: ``(H, W, 3)`` (or ``(3, H, W)`` tensor) RGB image, 0..255.
        labels: ``(H, W)`` integer labels; ``255`` = unlabelled.
        alpha: opacity of the label colours, in [0, 1].
        color: RGB of the contour pixels.
        palette: flat 768-int palette; ``None`` for the VOC palette.

    Returns:
        ``(H, W, 3)`` ``uint8`` RGB image.
    """
    out = overlay(image, labels, alpha=alpha, palette=palette)
    out[label_boundaries(labels)] = np.asarray(color, dtype=np.uint8)
    return out


def plot_segment_figure(
    rows: Sequence[Mapping[str, Any]],
    path: str | os.PathLike[str],
    *,
    columns: Sequence[tuple[str, str]] = (
        ("scribbles", "image + scribbles"),
        ("pce", "pCE only"),
        ("crf", "pCE + DenseCRF"),
    ),
    title: str | None = None,
    palette: Sequence[int] | None = None,
    cell: float = 2.6,
    dpi: int = 100,
) -> Path:
    """One row per photograph: the scribbles, then one mask per method as a contour overlay.

    Args:
        rows: mappings with ``"image"`` (``(H, W, 3)`` uint8), ``"name"`` (row label) and,
            for each column key, an ``(H, W)`` label map (255 = unlabelled): the
            ``"scribbles"`` column is drawn opaque over the image, the others as
            :func:`contour_overlay`.
        path: output ``.png``, written atomically.
        columns: ``(key, column title)`` pairs, in order.
        title: optional figure title.
        palette: flat 768-int palette; ``None`` for the VOC palette.
        cell: width of one panel in inches.
        dpi: resolution.

    Returns:
        ``path``.
    """
    if not rows or not columns:
        raise ValueError(f"rows and columns must be non-empty, got {len(rows)} and {len(columns)}")
    from matplotlib.figure import Figure

    aspects = [
        np.asarray(r["image"]).shape[0] / max(1, np.asarray(r["image"]).shape[1]) for r in rows
    ]
    fig = Figure(figsize=(cell * len(columns), cell * sum(aspects) + 0.5), layout="constrained")
    axes = fig.subplots(
        len(rows), len(columns), squeeze=False, gridspec_kw={"height_ratios": aspects}
    )
    for r, row in enumerate(rows):
        image = to_numpy_image(row["image"])
        for c, (key, head) in enumerate(columns):
            ax = axes[r, c]
            if key == "scribbles":
                shown = overlay(image, row[key], alpha=1.0, palette=palette)
            else:
                shown = contour_overlay(image, row[key], palette=palette)
            ax.imshow(shown, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(head, fontsize=9)
            if c == 0 and row.get("name"):
                ax.set_ylabel(str(row["name"]), fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_figure(fig, path, dpi=dpi)
