"""Scribbles and clicks synthesised from full masks, for datasets that have no scribbles.

For every connected region of every class (background included) a stroke is drawn along
the region's main skeleton axis, after eroding the region away from its boundary, so the
synthetic scribbles resemble human ones: inside objects, not touching boundaries, sparse.

Algorithm (``mode="scribble"``):

1. Split the mask into 4-connected regions per class; regions smaller than ``min_region``
   pixels get no stroke; ``ignore_index`` pixels are never labelled.
2. Erode each region: keep pixels whose Euclidean distance to another region is at least
   ``min(margin, max(1, d_max / 2))`` (``d_max`` = the region's largest distance, so thin
   parts keep a centre line). The image border does not count as a boundary.
3. Skeletonize the eroded region (:func:`skimage.morphology.skeletonize`) and take the
   longest path of the skeleton through its deepest point (two breadth-first searches).
4. Share a total stroke length among regions in proportion to ``sqrt(area)`` (capped by
   each path's length, at least one pixel per region); each region draws a window of its
   path at a seeded random offset, with a ``width`` x ``width`` brush, clipped to the region.
5. The total length is rescaled (three passes) so that the labelled fraction of the valid
   pixels comes close to ``fraction``. When the paths are too short for the requested
   fraction (large fractions, small regions) the strokes are thickened inside their regions.

``mode="points"`` places ``width`` x ``width`` clicks at seeded random interior points
instead (at least one per region), as many as the fraction allows.

Every labelled pixel carries the class of the mask at that pixel, by construction.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np

from rloss._io import check_output_dir
from rloss.constants import IGNORE_INDEX
from rloss.data.io import DataError, read_label, write_label
from rloss.data.scribbles import ConvertResult, ConvertSummary, labelled_fraction

__all__ = ["SYNTH_MODES", "synthesize_directory", "synthesize_scribbles"]

#: Supported synthesis modes.
SYNTH_MODES: tuple[str, ...] = ("scribble", "points")

def _longest_path(skel: np.ndarray, start: tuple[int, int]) -> np.ndarray:
    """Longest (BFS-diameter) path of the 8-connected skeleton component holding ``start``,
    as an ``(M, 2)`` array of (row, col)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import breadth_first_order

    ys, xs = np.nonzero(skel)
    n = len(ys)
    index = np.full(skel.shape, -1, dtype=np.int64)
    index[ys, xs] = np.arange(n)
    h, w = skel.shape
    rows, cols = [], []
    for dy, dx in ((0, 1), (1, -1), (1, 0), (1, 1)):  # each undirected edge once
        ny, nx = ys + dy, xs + dx
        ok = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        nb = np.full(n, -1, dtype=np.int64)
        nb[ok] = index[ny[ok], nx[ok]]
        keep = nb >= 0
        rows.append(np.nonzero(keep)[0])
        cols.append(nb[keep])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n)).tocsr()
    src = int(index[start])
    order, _ = breadth_first_order(graph, src, directed=False, return_predecessors=True)
    a = int(order[-1])
    order, pred = breadth_first_order(graph, a, directed=False, return_predecessors=True)
    node = int(order[-1])
    path = [node]
    while node != a:
        node = int(pred[node])
        path.append(node)
    path = np.asarray(path, dtype=np.int64)
    return np.stack([ys[path], xs[path]], axis=1)


def _regions(mask: np.ndarray, ignore_index: int, min_region: int):
    """Yield (class, slices, local boolean region, local distance map) per region."""
    from scipy import ndimage

    h, w = mask.shape
    for cls in np.unique(mask):
        if cls == ignore_index:
            continue
        comp, _ = ndimage.label(mask == cls)
        for idx, sl in enumerate(ndimage.find_objects(comp), start=1):
            if sl is None:
                continue
            y0, y1 = max(sl[0].start - 1, 0), min(sl[0].stop + 1, h)
            x0, x1 = max(sl[1].start - 1, 0), min(sl[1].stop + 1, w)
            local = comp[y0:y1, x0:x1] == idx
            area = int(local.sum())
            if area < min_region:
                continue
            # edge padding: the image border is not a region boundary
            padded = np.pad(local, 1, mode="edge")
            dist = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
            yield int(cls), (y0, x0), local, dist, area


def synthesize_scribbles(
    mask: np.ndarray,
    fraction: float = 0.03,
    seed: int | np.random.Generator = 0,
    mode: str = "scribble",
    width: int = 3,
    margin: float = 4.0,
    min_region: int = 16,
    ignore_index: int = IGNORE_INDEX,
) -> np.ndarray:
    """Synthesise scribbles (or clicks) from a full label mask.

    Args:
        mask: integer array ``(H, W)``, class indices 0..254, ``ignore_index`` = void.
        fraction: target fraction of the non-void pixels to label, in ``(0, 1]``.
        seed: integer seed or a :class:`numpy.random.Generator`; same seed, same output.
        mode: ``"scribble"`` (strokes along skeletons) or ``"points"`` (clicks).
        width: brush / click size in pixels (odd values centre exactly), >= 1.
        margin: distance in pixels kept from region boundaries (reduced in thin regions).
        min_region: regions with fewer pixels get no stroke.
        ignore_index: void value of ``mask`` and unlabelled value of the output.

    Returns:
        ``uint8`` array ``(H, W)``: the mask's class on labelled pixels, ``ignore_index``
        elsewhere.
    """
    from skimage.morphology import skeletonize

    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask: want a (H, W) array, got shape {mask.shape}")
    if mask.dtype.kind not in "iub":
        raise ValueError(f"mask: want an integer array, got dtype {mask.dtype}")
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: want a value in (0, 1], got {fraction}")
    if mode not in SYNTH_MODES:
        raise ValueError(f"mode: want one of {SYNTH_MODES}, got {mode!r}")
    if width < 1:
        raise ValueError(f"width: want >= 1, got {width}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    out = np.full(mask.shape, ignore_index, dtype=np.uint8)
    valid = int(np.count_nonzero(mask != ignore_index))
    if valid == 0:
        return out
    target = fraction * valid
    half = width // 2
    offs = np.arange(-half, width - half)

    regions = []
    for cls, (y0, x0), local, dist, area in _regions(mask, ignore_index, min_region):
        m = min(float(margin), max(1.0, 0.5 * float(dist.max())))
        interior = dist >= m
        if mode == "scribble":
            skel = skeletonize(interior)
            if not skel.any():
                skel = dist == dist.max()
            ys, xs = np.nonzero(skel)
            deepest = int(np.argmax(dist[ys, xs]))
            path = _longest_path(skel, (int(ys[deepest]), int(xs[deepest])))
        else:
            ys, xs = np.nonzero(interior)
            order = rng.permutation(len(ys))
            path = np.stack([ys[order], xs[order]], axis=1)
        regions.append({"cls": cls, "y0": y0, "x0": x0, "local": local, "path": path,
                        "area": area, "u": rng.random()})
    if not regions:
        return out

    weights = np.sqrt(np.asarray([r["area"] for r in regions], dtype=np.float64))
    caps = np.asarray([len(r["path"]) for r in regions], dtype=np.float64)

    def allocate(total: float) -> np.ndarray:
        # water-filling of ``total`` among regions, shares ~ weights, capped by caps
        alloc = np.zeros(len(regions))
        free = np.ones(len(regions), dtype=bool)
        remaining = total
        for _ in range(len(regions)):
            if remaining <= 0 or not free.any():
                break
            share = remaining * weights * free / weights[free].sum()
            capped = free & (alloc + share >= caps)
            if not capped.any():
                alloc += share
                break
            remaining -= (caps[capped] - alloc[capped]).sum()
            alloc[capped] = caps[capped]
            free &= ~capped
        return np.clip(np.round(alloc), 1, caps).astype(np.int64)

    def draw(lengths: np.ndarray) -> np.ndarray:
        canvas = np.full(mask.shape, ignore_index, dtype=np.uint8)
        for r, n in zip(regions, lengths):
            path = r["path"]
            if mode == "scribble":
                start = int(r["u"] * (len(path) - n + 1))
                centre = path[start:start + n]
            else:
                centre = path[:n]
            local = r["local"]
            lh, lw = local.shape
            rr = (centre[:, 0, None] + offs[None, :])[:, :, None]
            cc = (centre[:, 1, None] + offs[None, :])[:, None, :]
            rr, cc = np.broadcast_arrays(rr, cc)
            rr, cc = rr.ravel(), cc.ravel()
            keep = (rr >= 0) & (rr < lh) & (cc >= 0) & (cc < lw)
            rr, cc = rr[keep], cc[keep]
            keep = local[rr, cc]
            canvas[rr[keep] + r["y0"], cc[keep] + r["x0"]] = r["cls"]
        return canvas

    per_unit = float(width) if mode == "scribble" else float(width * width)
    total = target / per_unit
    best, best_err = None, np.inf
    for _ in range(3):
        canvas = draw(allocate(total))
        count = int(np.count_nonzero(canvas != ignore_index))
        err = abs(count - target)
        if err < best_err:
            best, best_err = canvas, err
        if count == 0 or err <= 0.05 * target:
            break
        total *= target / count
    if mode == "scribble" and best_err > 0.1 * target:
        best = _thicken(best, mask, target, ignore_index)
    return best


def _thicken(canvas: np.ndarray, mask: np.ndarray, target: float, ignore_index: int):
    """Grow strokes inside their regions until ``target`` pixels are labelled (used when the
    skeleton paths are too short for the requested fraction)."""
    from scipy import ndimage

    canvas = canvas.copy()
    classes = [int(c) for c in np.unique(canvas) if c != ignore_index]
    cross = ndimage.generate_binary_structure(2, 1)
    for _ in range(32):
        count = np.count_nonzero(canvas != ignore_index)
        if count >= 0.95 * target:
            break
        grown = False
        for c in classes:
            new = ndimage.binary_dilation(canvas == c, cross) & (mask == c) & (
                canvas == ignore_index)
            if new.any():
                canvas[new] = c
                grown = True
        if not grown:
            break
    return canvas


def _stem_seed(seed: int, stem: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(stem.encode("utf-8"))])


def _synth_task(task: tuple) -> ConvertResult:
    src, out, kwargs, seed, overwrite = task
    result = ConvertResult(source=str(src), output=str(out), status="failed")
    try:
        if out.exists() and not overwrite:
            result.status = "skipped"
            result.labelled_fraction = labelled_fraction(read_label(out))
            return result
        mask = read_label(src)
        scribble = synthesize_scribbles(mask, seed=_stem_seed(seed, src.stem), **kwargs)
        write_label(out, scribble)
        result.status = "converted"
        valid = np.count_nonzero(mask != kwargs.get("ignore_index", IGNORE_INDEX))
        result.labelled_fraction = float(np.count_nonzero(scribble != IGNORE_INDEX)) / max(
            valid, 1)
    except DataError as err:
        result.message = str(err) if str(src) in str(err) or str(out) in str(err) else (
            f"{src}: {err}")
    except Exception as err:  # report, never take the batch down
        result.message = f"{src}: unexpected error: {type(err).__name__}: {err}"
    return result


def synthesize_directory(
    mask_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    fraction: float = 0.03,
    seed: int = 0,
    mode: str = "scribble",
    width: int = 3,
    margin: float = 4.0,
    min_region: int = 16,
    ignore_index: int = IGNORE_INDEX,
    overwrite: bool = False,
    workers: int | None = None,
    progress: bool = True,
) -> ConvertSummary:
    """Synthesise scribbles for every ``*.png`` mask of a folder into ``out_dir/<stem>.png``.

    Each file's random stream is derived from ``seed`` and the file's stem, so the output
    does not depend on the order or the number of workers. Existing outputs are skipped
    unless ``overwrite``; unreadable masks are reported and do not stop the batch. The output
    folder is checked first (:func:`rloss._io.check_output_dir`): it may not be the mask
    folder, so ground-truth masks are never replaced.

    Returns:
        A :class:`~rloss.data.scribbles.ConvertSummary`; ``labelled_fraction`` of each
        result is relative to the non-void pixels of its mask.

    Raises:
        DataError: the mask folder is missing.
        rloss._io.UnsafeOutputError: ``out_dir`` is the mask folder, a file, or not writable.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction: want a value in (0, 1], got {fraction}")
    if mode not in SYNTH_MODES:
        raise ValueError(f"mode: want one of {SYNTH_MODES}, got {mode!r}")
    mask_dir, out_dir = Path(mask_dir), Path(out_dir)
    if not mask_dir.is_dir():
        raise DataError(f"{mask_dir}: mask folder not found")
    files = sorted(p for p in mask_dir.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    outputs = [out_dir / f"{f.stem}.png" for f in files]
    check_output_dir(out_dir, inputs=[mask_dir, *files], outputs=outputs, overwrite=overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = {"fraction": fraction, "mode": mode, "width": width, "margin": margin,
              "min_region": min_region, "ignore_index": ignore_index}
    tasks = [(f, out, kwargs, seed, overwrite) for f, out in zip(files, outputs, strict=True)]

    from rloss.data._parallel import map_files

    results = map_files(_synth_task, tasks, workers=workers, desc="synth", progress=progress)
    return ConvertSummary(results=results)
