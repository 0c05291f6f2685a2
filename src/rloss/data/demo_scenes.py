"""The built-in demo data: textured objects on cluttered backgrounds, exact masks, scribbles.

A miniature of the paper's setting (PASCAL VOC with scribbles), built so that a small
network trained on a CPU for minutes can recognise the classes, while scribbles leave
the objects' extent open and the image's colour edges define it:

* **Classes are told by local texture, not by colour or shape.** Each object class has
  its own texture family, drawn with random parameters per object, which modulates the
  object's colour by 22-30 levels along a class-specific colour axis: ``stripes``
  (period 4-6 px), ``dots`` (a lattice of dots, period 5-7 px), ``checker`` (a
  checkerboard, cells of 2.5-3.5 px), each tilted by up to ±10°
  (:data:`MAX_TEXTURE_TILT`), and ``grain`` (pixel-scale random speckle). The
  background is smooth (low-frequency shading). Colours are drawn per image for every
  region, from the same distribution for every class, and shapes are random
  star-shaped blobs whatever the class: neither colour nor shape says which class an
  object is.
* **Boundaries are colour edges.** An object's colour differs from the colour of every
  region it lies on by at least :data:`MIN_CONTRAST` (RGB distance), about twice its
  texture's modulation, so a pairwise colour term (DenseCRF, sigma_rgb ~ 30) finds its
  outline.
* **Clutter.** The background is two materials split by a wavy curve and carries plain
  distractor blobs of other colours: colour edges that are not class edges, so that
  colour thresholds or "cut at every edge" do not solve the task.
* **Sparse scribbles away from boundaries** (~3% of the pixels by default), drawn as a
  person would: a straight stroke across each object along its long axis (half of the
  budget, :func:`_object_stroke`), and strokes along the background's skeleton for the
  rest (:func:`rloss.data.scribble_synthesis.synthesize_scribbles`), all kept >= 4 px
  (>= 2 px in thin objects) inside their region. Objects do not overlap, so no stroke
  touches a class boundary, and the strokes say nothing about where an object ends.

Everything is deterministic given ``seed`` (scene ``i`` of a split has its own random
stream), and nothing is downloaded. :class:`SyntheticScenes` renders on the fly;
:func:`generate_synthetic` writes the same scenes in the folder layout of
:class:`~rloss.data.folder.SegmentationFolder`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import Dataset

from rloss.data.scribble_synthesis import synthesize_scribbles

__all__ = [
    "MAX_TEXTURE_TILT",
    "MIN_CONTRAST",
    "SYNTHETIC_CLASSES",
    "SyntheticScenes",
    "generate_synthetic",
    "render_scene",
]

#: Class names of the generated data, index = label value (objects by texture family).
SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "stripes", "dots", "checker", "grain")
#: Format version written to ``synthetic.json`` (bump when scenes change).
SYNTHETIC_VERSION = 3
#: Minimum RGB distance between an object's colour and every colour it lies on.
MIN_CONTRAST = 110.0
#: Range (radians) of the random tilt of the oriented textures (stripes, dots, checker):
#: ±10°, close to axis-aligned. Textures at any orientation (π) made the classes too slow
#: to learn from scratch in the demo's CPU budget: on tuning seed 100 the phase-1 models
#: reached 34% (pCE) and 51% (full masks) mIoU, against 59% and 94% at ±10° (docs/demo.md).
MAX_TEXTURE_TILT = 0.35

_SPLIT_CODES = {"train": 0, "val": 1}
_NOISE_STD = 4.0
_TEXTURE_AMPLITUDE = (22.0, 30.0)
# share of the scribbled pixels that go to the objects' strokes (the rest: background)
_OBJECT_SHARE = 0.5
# colour axis along which each object class's texture modulates its base colour
_CLASS_AXES = {
    1: np.array([1.0, -1.0, 0.0]),
    2: np.array([0.0, 1.0, -1.0]),
    3: np.array([-1.0, 0.0, 1.0]),
    4: np.array([1.0, 1.0, 1.0]),
}


def _colour(rng: np.random.Generator, avoid: list[np.ndarray], min_dist: float) -> np.ndarray:
    """A random RGB colour (each channel in [30, 225]) at least ``min_dist`` from ``avoid``."""
    best, best_d = None, -1.0
    for _ in range(200):
        c = rng.uniform(30.0, 225.0, 3).astype(np.float32)
        d = min((float(np.linalg.norm(c - a)) for a in avoid), default=np.inf)
        if d >= min_dist:
            return c
        if d > best_d:
            best, best_d = c, d
    assert best is not None
    return best


def _rotated(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray):
    """Coordinates ``(u, v)`` tilted by a random angle within ±:data:`MAX_TEXTURE_TILT`/2."""
    theta = rng.uniform(-0.5, 0.5) * MAX_TEXTURE_TILT
    c, s = np.cos(theta), np.sin(theta)
    return xx * c + yy * s, -xx * s + yy * c


def _texture(rng: np.random.Generator, cls: int, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """The zero-mean brightness modulation ``(H, W)`` of class ``cls`` (amplitude ~1)."""
    h, w = yy.shape
    if cls == 1:  # stripes
        u, _ = _rotated(rng, yy, xx)
        period = rng.uniform(4.0, 6.0)
        return np.sin(2 * np.pi * u / period + rng.uniform(0, 2 * np.pi))
    if cls == 2:  # dots on a rotated lattice
        u, v = _rotated(rng, yy, xx)
        period = rng.uniform(5.0, 7.0)
        fu = (u / period + rng.random()) % 1.0 - 0.5
        fv = (v / period + rng.random()) % 1.0 - 0.5
        r2 = (fu * fu + fv * fv) * period * period
        return 2.0 * np.exp(-r2 / (2 * 1.1**2)) - 0.5
    if cls == 3:  # rotated checkerboard
        u, v = _rotated(rng, yy, xx)
        cell = rng.uniform(2.5, 3.5)
        return ((np.floor(u / cell) + np.floor(v / cell)) % 2) * 2.0 - 1.0
    if cls == 4:  # grain: pixel-scale speckle
        return np.clip(rng.standard_normal((h, w)), -2.0, 2.0)
    # background: smooth shading
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.standard_normal((h, w)), 6.0)
    return field / (np.abs(field).max() + 1e-6)


def _blob(rng: np.random.Generator, yy, xx, cy: float, cx: float, r: float) -> np.ndarray:
    """A random star-shaped blob of mean radius ``r`` centred at ``(cy, cx)``."""
    ang = np.arctan2(yy - cy, xx - cx)
    dist = np.hypot(yy - cy, xx - cx)
    stretch = rng.uniform(0.7, 1.0)
    phi = rng.uniform(0, np.pi)
    # an ellipse (axes 1, stretch) in polar form, times a few random harmonics
    rad = r / np.sqrt(np.cos(ang - phi) ** 2 + (np.sin(ang - phi) / stretch) ** 2)
    for k in (2, 3, 5):
        rad = rad * (1.0 + rng.uniform(0.0, 0.12) * np.cos(k * ang + rng.uniform(0, 2 * np.pi)))
    return dist <= rad


def _material(rng, cls: int, colour: np.ndarray, yy, xx) -> np.ndarray:
    """``(H, W, 3)`` float image of a region of class ``cls`` with base colour ``colour``.

    The texture modulates the base colour along the class's colour axis
    (:data:`_CLASS_AXES`, jittered per object); the background's smooth shading
    modulates brightness.
    """
    if cls:
        amp = rng.uniform(*_TEXTURE_AMPLITUDE)
        axis = _CLASS_AXES[cls] + rng.uniform(-0.15, 0.15, 3)
    else:
        amp = rng.uniform(8.0, 16.0)
        axis = rng.uniform(0.7, 1.0, 3)
    axis = (axis / np.linalg.norm(axis) * np.sqrt(3.0)).astype(np.float32)
    tex = _texture(rng, cls, yy, xx).astype(np.float32) * np.float32(amp)
    return colour[None, None, :] + tex[:, :, None] * axis[None, None, :]


def _object_stroke(region: np.ndarray, rng: np.random.Generator, budget: int) -> np.ndarray:
    """A 3 px wide stroke across an object, as a person would draw it: a straight line
    through the object's centre along its long axis (jittered), kept at least
    ``min(4, depth / 2)`` px inside the region and cut to about ``budget`` pixels."""
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(np.pad(region, 1))[1:-1, 1:-1]
    interior = dist >= min(4.0, 0.5 * float(dist.max()))
    ys, xs = np.nonzero(region)
    cy, cx = ys.mean(), xs.mean()
    cov = np.cov(np.stack([ys - cy, xs - cx]))
    _, vecs = np.linalg.eigh(cov)
    angle = np.arctan2(vecs[0, -1], vecs[1, -1]) + rng.uniform(-0.35, 0.35)
    yy, xx = np.mgrid[0:region.shape[0], 0:region.shape[1]]
    along = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    across = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    half_len = max(1.0, budget / 6.0)  # 3 px wide: ~3 pixels per unit of length per side
    stroke = interior & (np.abs(across) <= 1.5) & (np.abs(along) <= half_len)
    if not stroke.any():  # a tiny object: its deepest pixel
        stroke = dist == dist.max()
    comp, n = ndimage.label(stroke)
    if n > 1:  # keep the piece nearest the centre
        d = np.hypot(yy - cy, xx - cx)
        stroke = comp == comp[stroke][np.argmin(d[stroke])]
    return stroke


def _scribbles(mask: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Scribbles covering about ``fraction`` of the pixels: a straight stroke across each
    object (:func:`_object_stroke`, up to :data:`_OBJECT_SHARE` of the budget in all) and
    strokes along the background's skeleton
    (:func:`~rloss.data.scribble_synthesis.synthesize_scribbles`) for the rest."""
    from scipy import ndimage

    out = np.full(mask.shape, 255, dtype=np.uint8)
    target = fraction * mask.size
    comp, n = ndimage.label(mask > 0)
    if n:
        each = int(_OBJECT_SHARE * target / n)
        for i in range(1, n + 1):
            region = comp == i
            out[_object_stroke(region, rng, each)] = mask[region][0]
    bg = mask == 0
    rest = target - np.count_nonzero(out != 255)
    if bg.any() and rest > 0:
        only_bg = np.where(bg, 0, 255).astype(np.uint8)
        strokes = synthesize_scribbles(only_bg, fraction=min(1.0, rest / bg.sum()), seed=rng)
        out[strokes == 0] = 0
    return out


def render_scene(
    seed: int,
    index: int,
    size: tuple[int, int] = (64, 64),
    split: str = "train",
    scribble_fraction: float = 0.03,
) -> dict[str, Any]:
    """Render one scene deterministically.

    Args:
        seed: dataset seed.
        index: scene index within the split.
        size: ``(H, W)``, each >= 32.
        split: ``"train"`` or ``"val"`` (separate random streams).
        scribble_fraction: target labelled fraction of the synthesised scribbles, in (0, 1].

    Returns:
        ``{"image": uint8 (H, W, 3), "mask": uint8 (H, W) class indices 0..4,
        "scribble": uint8 (H, W) (255 = unlabelled), "name": str}``.

    Example:
        >>> s = render_scene(0, 3)
        >>> s["image"].shape, s["mask"].shape, bool(s["mask"].max() <= 4)
        ((64, 64, 3), (64, 64), True)
    """
    from scipy import ndimage

    h, w = (int(v) for v in size)
    if h < 32 or w < 32:
        raise ValueError(f"size: want (H, W) with H, W >= 32, got {tuple(size)}")
    if split not in _SPLIT_CODES:
        raise ValueError(f"split: want one of {tuple(_SPLIT_CODES)}, got {split!r}")
    rng = np.random.default_rng([int(seed), _SPLIT_CODES[split], int(index)])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    scale = float(min(h, w))

    # background: two smooth materials split by a wavy curve
    c1 = _colour(rng, [], 0.0)
    c2 = _colour(rng, [c1], 45.0)
    phi = rng.uniform(0, 2 * np.pi)
    offset = rng.uniform(-0.35, 0.35) * scale
    wave = rng.uniform(2, 6) * np.sin(
        2 * np.pi * (yy * np.cos(phi) - xx * np.sin(phi)) / rng.uniform(25, 60))
    side = ((xx - w / 2) * np.cos(phi) + (yy - h / 2) * np.sin(phi) + wave) > offset
    image = np.where(side[:, :, None], _material(rng, 0, c1, yy, xx),
                     _material(rng, 0, c2, yy, xx))
    colour_of = np.where(side, 0, 1)  # index into ``colours`` of the material at each pixel
    colours = [c1, c2]

    # clutter: plain distractor blobs, part of the background
    for _ in range(int(rng.integers(0, 3))):
        shape = _blob(rng, yy, xx, rng.uniform(0.1, 0.9) * h, rng.uniform(0.1, 0.9) * w,
                      scale * rng.uniform(0.07, 0.16))
        c = _colour(rng, [colours[i] for i in np.unique(colour_of[shape])], 45.0)
        image = np.where(shape[:, :, None], _material(rng, 0, c, yy, xx), image)
        colour_of[shape] = len(colours)
        colours.append(c)

    # objects: 1-3 non-overlapping textured blobs, each far in colour from what it covers
    mask = np.zeros((h, w), dtype=np.uint8)
    taken = np.zeros((h, w), dtype=bool)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        for _try in range(20):
            shape = _blob(rng, yy, xx, rng.uniform(0.2, 0.8) * h, rng.uniform(0.2, 0.8) * w,
                          scale * rng.uniform(0.13, 0.24))
            if not (shape & taken).any():
                break
        else:
            continue
        under = [colours[i] for i in np.unique(colour_of[shape])]
        objects = [colours[i] for i in np.unique(colour_of[mask > 0])] if taken.any() else []
        c = _colour(rng, under + objects, MIN_CONTRAST)
        image = np.where(shape[:, :, None], _material(rng, cls, c, yy, xx), image)
        colour_of[shape] = len(colours)
        colours.append(c)
        mask[shape] = cls
        taken |= ndimage.binary_dilation(shape, iterations=3)

    image = ndimage.gaussian_filter(image, sigma=(0.6, 0.6, 0))
    image = image + rng.normal(0.0, _NOISE_STD, image.shape)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    scribble = _scribbles(mask, scribble_fraction, rng)
    return {"image": image, "mask": mask, "scribble": scribble, "name": f"{split}_{index:05d}"}


class SyntheticScenes(Dataset):
    """In-memory generated dataset (rendered on the fly, deterministic by ``seed``).

    Items follow the sample contract (:mod:`rloss.data.transforms`); with ``transform=None``
    an :class:`~rloss.data.transforms.EvalTransform` is used. Item ``i`` equals the file
    ``<split>_<i:05d>`` written by :func:`generate_synthetic` with the same arguments.

    Args:
        num_images: number of scenes, >= 1.
        size: ``(H, W)`` of every scene.
        seed: dataset seed.
        scribble_fraction: target labelled fraction of the scribbles.
        split: ``"train"`` or ``"val"`` (separate random streams).
        transform: raw sample -> sample callable.

    Attributes:
        classes: :data:`SYNTHETIC_CLASSES`; ``num_classes`` = 5.
    """

    classes: tuple[str, ...] = SYNTHETIC_CLASSES
    num_classes: int = len(SYNTHETIC_CLASSES)

    def __init__(
        self,
        num_images: int,
        size: tuple[int, int] = (64, 64),
        seed: int = 0,
        scribble_fraction: float = 0.03,
        split: str = "train",
        transform: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        from rloss.data.transforms import EvalTransform

        if int(num_images) != num_images or num_images < 1:
            raise ValueError(f"num_images: want a positive integer, got {num_images!r}")
        if split not in _SPLIT_CODES:
            raise ValueError(f"split: want one of {tuple(_SPLIT_CODES)}, got {split!r}")
        if not 0 < scribble_fraction <= 1:
            raise ValueError(f"scribble_fraction: want a value in (0, 1], got {scribble_fraction}")
        if len(size) != 2 or min(size) < 32:
            raise ValueError(f"size: want (H, W) with H, W >= 32, got {size!r}")
        self.num_images = int(num_images)
        self.size = (int(size[0]), int(size[1]))
        self.seed = int(seed)
        self.scribble_fraction = float(scribble_fraction)
        self.split = split
        self.transform = transform if transform is not None else EvalTransform()

    def __len__(self) -> int:
        return self.num_images

    def load_raw(self, index: int) -> dict[str, Any]:
        """Scene ``index`` as a raw sample (see :func:`render_scene`)."""
        if not 0 <= index < self.num_images:
            raise IndexError(f"index {index} out of range for {self.num_images} scenes")
        return render_scene(self.seed, index, self.size, self.split, self.scribble_fraction)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if -self.num_images <= index < 0:
            index += self.num_images
        return self.transform(self.load_raw(index))


def _meta(num_train, num_val, size, seed, scribble_fraction) -> dict[str, Any]:
    return {"generator": "rloss.data.synthetic", "version": SYNTHETIC_VERSION,
            "num_train": int(num_train), "num_val": int(num_val),
            "size": [int(size[0]), int(size[1])], "seed": int(seed),
            "scribble_fraction": float(scribble_fraction), "classes": list(SYNTHETIC_CLASSES)}


def generate_synthetic(
    root: str | os.PathLike[str],
    num_train: int = 200,
    num_val: int = 50,
    size: tuple[int, int] = (64, 64),
    seed: int = 0,
    scribble_fraction: float = 0.03,
    *,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write the generated dataset in the folder layout, atomically and idempotently.

    Layout: ``images/<id>.png``, ``labels/<id>.png``, ``scribbles/<id>.png``,
    ``classes.txt``, ``splits/train.txt``, ``splits/val.txt`` and ``synthetic.json`` (the
    parameters). Ids are ``train_00000``... and ``val_00000``...

    The dataset is built in a temporary sibling folder and renamed to ``root`` when complete.
    If ``root`` already holds a dataset generated with the same parameters it is returned
    unchanged (no work); a different one is replaced only with ``overwrite=True``; a folder
    that is not a generated dataset is never touched.

    Args:
        root: destination folder.
        num_train: training scenes, >= 1.
        num_val: validation scenes, >= 0.
        size: ``(H, W)``, each >= 32.
        seed: dataset seed.
        scribble_fraction: target labelled fraction of the scribbles, in (0, 1].
        overwrite: replace an existing generated dataset with different parameters.
        progress: show a tqdm progress bar.

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        FileExistsError: ``root`` exists and is not the same generated dataset (see above).
    """
    from tqdm.auto import tqdm

    from rloss.data.io import atomic_write_text, write_image, write_label

    if int(num_train) != num_train or num_train < 1:
        raise ValueError(f"num_train: want a positive integer, got {num_train!r}")
    if int(num_val) != num_val or num_val < 0:
        raise ValueError(f"num_val: want a non-negative integer, got {num_val!r}")
    if len(size) != 2 or min(size) < 32:
        raise ValueError(f"size: want (H, W) with H, W >= 32, got {size!r}")
    if not 0 < scribble_fraction <= 1:
        raise ValueError(f"scribble_fraction: want a value in (0, 1], got {scribble_fraction}")
    root = Path(root)
    meta = _meta(num_train, num_val, size, seed, scribble_fraction)
    meta_file = root / "synthetic.json"
    if root.exists():
        old = None
        if meta_file.is_file():
            try:
                old = json.loads(meta_file.read_text("utf-8"))
            except (OSError, ValueError):
                old = None
        if old == meta:
            return root
        if old is None and (not root.is_dir() or any(root.iterdir())):
            raise FileExistsError(
                f"{root}: exists and is not a generated rloss dataset; refusing to touch it"
            )
        if old is not None and not overwrite:
            raise FileExistsError(
                f"{root}: holds a generated dataset with other parameters ({old}); "
                "pass overwrite=True (--overwrite) to replace it"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".tmp", dir=root.parent))
    try:
        for sub in ("images", "labels", "scribbles", "splits"):
            (tmp / sub).mkdir()
        jobs = [("train", i) for i in range(num_train)] + [("val", i) for i in range(num_val)]
        names: dict[str, list[str]] = {"train": [], "val": []}
        for split, i in tqdm(jobs, desc="synthetic data", unit="img", disable=not progress):
            scene = render_scene(seed, i, size, split, scribble_fraction)
            name = scene["name"]
            # the whole folder is renamed into place at the end: plain writes suffice here
            write_image(tmp / "images" / f"{name}.png", scene["image"], atomic=False)
            write_label(tmp / "labels" / f"{name}.png", scene["mask"], atomic=False)
            write_label(tmp / "scribbles" / f"{name}.png", scene["scribble"], atomic=False)
            names[split].append(name)
        for split, ids in names.items():
            atomic_write_text(tmp / "splits" / f"{split}.txt", "".join(f"{n}\n" for n in ids))
        atomic_write_text(tmp / "classes.txt", "".join(f"{c}\n" for c in SYNTHETIC_CLASSES))
        atomic_write_text(tmp / "synthetic.json", json.dumps(meta, indent=2) + "\n")
        if root.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".old",
                                          dir=root.parent))
            os.replace(root, trash / "old")
            os.replace(tmp, root)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


