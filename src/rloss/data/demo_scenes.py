"""The built-in demo data: generated scenes of textured shapes with exact masks and scribbles.

Each scene is a textured background (two materials split by a wavy curve) with one to
three textured objects of four shape classes. The data are built to show what a CRF
regulariser buys when training from scribbles:

* **Boundaries align with colour edges.** An object's colour always differs clearly from
  the background and the objects it lies on, so a pairwise colour term can find the edge.
* **Colour does not tell the class.** Every class (background included) draws its colour
  and texture (plain, stripes, checker, blotches) from the same distribution, so a network
  must learn shape; the background also has internal colour edges that are not class edges.
* **Thin parts.** Crosses have thin arms and rectangles can be thin bars.
* **Sparse scribbles away from boundaries** (~3% of the pixels by default), synthesised by
  :func:`rloss.data.scribble_synthesis.synthesize_scribbles`, so partial cross-entropy
  alone gets the boundaries wrong.

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
    "SYNTHETIC_CLASSES",
    "SyntheticScenes",
    "generate_synthetic",
    "render_scene",
]

#: Class names of the generated data, index = label value.
SYNTHETIC_CLASSES: tuple[str, ...] = ("background", "ellipse", "rectangle", "triangle", "cross")
#: Format version written to ``synthetic.json`` (bump when scenes change).
SYNTHETIC_VERSION = 1

_SPLIT_CODES = {"train": 0, "val": 1}
# Shared colour palette: every class (background included) picks from it.
_PALETTE = np.array(
    [[200, 60, 50], [60, 160, 70], [60, 90, 200], [220, 200, 70], [150, 80, 170],
     [70, 180, 190], [230, 140, 60], [120, 120, 120], [200, 200, 200], [90, 60, 40]],
    dtype=np.float32,
)
_MIN_COLOUR_DIST = 70.0


def _texture(rng: np.random.Generator, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """A zero-mean texture field ``(H, W)`` of amplitude ~1."""
    kind = rng.integers(4)
    h, w = yy.shape
    if kind == 0:  # plain (noise only)
        return np.zeros((h, w), dtype=np.float32)
    if kind == 1:  # stripes
        theta = rng.uniform(0, np.pi)
        period = rng.uniform(4.0, 10.0)
        return np.sign(np.sin(2 * np.pi * (xx * np.cos(theta) + yy * np.sin(theta)) / period))
    if kind == 2:  # checker
        period = rng.uniform(5.0, 12.0)
        return ((np.floor(xx / period) + np.floor(yy / period)) % 2) * 2.0 - 1.0
    # blotches: smooth random field
    from scipy import ndimage

    field = ndimage.gaussian_filter(rng.standard_normal((h, w)).astype(np.float32), 3.0)
    return field / (np.abs(field).max() + 1e-6)


def _material(rng, yy, xx, avoid: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """A (colour (3,), texture field (H, W, 3)) pair whose colour is far from ``avoid``."""
    for _ in range(50):
        base = _PALETTE[rng.integers(len(_PALETTE))] + rng.uniform(-15, 15, 3).astype(np.float32)
        if all(np.linalg.norm(base - a) >= _MIN_COLOUR_DIST for a in avoid):
            break
    amp = rng.uniform(15.0, 40.0)
    tex = _texture(rng, yy, xx).astype(np.float32) * amp
    # texture modulates brightness (and slightly the hue) of the base colour
    tint = rng.uniform(0.6, 1.0, 3).astype(np.float32)
    return base, base[None, None, :] + tex[:, :, None] * tint[None, None, :]


def _shape(rng, cls: int, yy, xx, cy, cx, r) -> np.ndarray:
    """Boolean mask of a shape of class ``cls`` centred at (cy, cx) with radius ``r``."""
    theta = rng.uniform(0, np.pi)
    c, s = np.cos(theta), np.sin(theta)
    u = (xx - cx) * c + (yy - cy) * s
    v = -(xx - cx) * s + (yy - cy) * c
    if cls == 1:  # ellipse
        a, b = r * rng.uniform(0.7, 1.0), r * rng.uniform(0.45, 0.9)
        return (u / a) ** 2 + (v / b) ** 2 <= 1.0
    if cls == 2:  # rectangle, possibly a thin bar
        a = r * rng.uniform(0.7, 1.0)
        b = r * (rng.uniform(0.12, 0.25) if rng.random() < 0.4 else rng.uniform(0.45, 0.85))
        return (np.abs(u) <= a) & (np.abs(v) <= b)
    if cls == 3:  # triangle
        angles = theta + np.array([0.0, 2.1, 4.2]) + rng.uniform(-0.3, 0.3, 3)
        px, py = cx + r * np.cos(angles), cy + r * np.sin(angles)
        inside = np.ones_like(xx, dtype=bool)
        sign = np.sign((px[1] - px[0]) * (py[2] - py[0]) - (py[1] - py[0]) * (px[2] - px[0]))
        for i in range(3):
            j = (i + 1) % 3
            cross = (px[j] - px[i]) * (yy - py[i]) - (py[j] - py[i]) * (xx - px[i])
            inside &= cross * sign >= 0
        return inside
    # cross with thin arms
    t = max(1.5, r * rng.uniform(0.08, 0.2))
    a = r * rng.uniform(0.8, 1.0)
    return ((np.abs(u) <= a) & (np.abs(v) <= t)) | ((np.abs(v) <= a) & (np.abs(u) <= t))


def render_scene(
    seed: int,
    index: int,
    size: tuple[int, int] = (128, 128),
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
    """
    h, w = (int(v) for v in size)
    if h < 32 or w < 32:
        raise ValueError(f"size: want (H, W) with H, W >= 32, got {tuple(size)}")
    if split not in _SPLIT_CODES:
        raise ValueError(f"split: want one of {tuple(_SPLIT_CODES)}, got {split!r}")
    rng = np.random.default_rng([int(seed), _SPLIT_CODES[split], int(index)])
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)

    # background: two materials split by a wavy curve
    c1, bg1 = _material(rng, yy, xx, [])
    c2, bg2 = _material(rng, yy, xx, [c1])
    phi = rng.uniform(0, np.pi)
    offset = rng.uniform(-0.3, 0.3) * min(h, w)
    wave = rng.uniform(3, 10) * np.sin(2 * np.pi * (yy * np.cos(phi) - xx * np.sin(phi))
                                       / rng.uniform(30, 80))
    side = ((xx - w / 2) * np.cos(phi) + (yy - h / 2) * np.sin(phi) + wave) > offset
    image = np.where(side[:, :, None], bg1, bg2)
    mask = np.zeros((h, w), dtype=np.uint8)
    colours = [c1, c2]

    scale = min(h, w)
    for _ in range(int(rng.integers(1, 4))):
        cls = int(rng.integers(1, len(SYNTHETIC_CLASSES)))
        r = scale * rng.uniform(0.14, 0.3)
        cy = rng.uniform(0.2, 0.8) * h
        cx = rng.uniform(0.2, 0.8) * w
        shape = _shape(rng, cls, yy, xx, cy, cx, r)
        if shape.sum() < 30:
            continue
        colour, tex = _material(rng, yy, xx, colours)
        colours.append(colour)
        image = np.where(shape[:, :, None], tex, image)
        mask[shape] = cls

    from scipy import ndimage

    image = ndimage.gaussian_filter(image, sigma=(0.7, 0.7, 0))
    image = image + rng.normal(0.0, 6.0, image.shape)
    image = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    scribble = synthesize_scribbles(mask, fraction=scribble_fraction, seed=rng)
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
        size: tuple[int, int] = (128, 128),
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
    size: tuple[int, int] = (128, 128),
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


