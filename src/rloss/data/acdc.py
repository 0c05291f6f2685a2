"""ACDC cine-MRI with scribbles in the WSL4MIS layout: checking, patient selection, datasets.

Layout (as published by the WSL4MIS project, ``data/ACDC/``)::

    ROOT/ACDC_training_slices/patientPPP_frameFF_slice_S.h5   2-D training slices
    ROOT/ACDC_training_volumes/patientPPP_frameFF.h5          (D, H, W) volumes

Every file holds the datasets ``image`` (float, min-max normalised to [0, 1] per
volume), ``label`` (0 background, 1 RV, 2 Myo, 3 LV) and ``scribble`` (classes 0-3 on
scribbled pixels, 4 = unlabelled), all of one shape. The files carry no voxel spacing.

Datasets return the project's sample dict (:mod:`rloss.data.transforms`), with one
channel instead of three:

* ``image``: float32 ``(1, S, S)`` in [0, 1], the network input (no fake RGB);
* ``image_raw``: float32 ``(1, S, S)``, ``image * intensity_scale`` -- what the pairwise
  losses (DenseCRF, NCut) compare; ``sigma_rgb`` is in these units. The recipes use
  ``data.intensity_scale: 255`` with ``sigma_rgb: 15`` (the losses' 0..255 convention);
  ``intensity_scale: 1`` with ``sigma_rgb: 0.06`` is the same kernel (see docs/medical.md);
* ``scribble``: int64, scribble value 4 becomes :data:`rloss.constants.IGNORE_INDEX`;
* ``mask``: int64 ground truth; ``roi``: float32 (0 where a rotation left no pixel).

Files are opened per item (h5py reads lazily; nothing loads a folder into memory).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from rloss._io import check_array_size
from rloss.constants import IGNORE_INDEX
from rloss.data.io import DataError

__all__ = [
    "ACDC_CLASSES",
    "FOLD1",
    "SLICES_DIR",
    "VOLUMES_DIR",
    "AcdcReport",
    "AcdcSlices",
    "AcdcVolumeSlices",
    "AcdcVolumes",
    "check_file",
    "check_root",
    "parse_patients",
    "scan",
    "select_patients",
    "write_h5",
]

#: Class names, index = label value.
ACDC_CLASSES: tuple[str, ...] = ("background", "RV", "Myo", "LV")
#: Scribble value of unlabelled pixels in the WSL4MIS files.
UNLABELLED: int = 4
SLICES_DIR = "ACDC_training_slices"
VOLUMES_DIR = "ACDC_training_volumes"
#: Fold 1 of the published 5-fold protocol (patients 1-20 held out).
FOLD1: dict[str, str] = {"train": "21-60,71-100", "val": "61-70", "test": "1-20"}
KEYS: tuple[str, ...] = ("image", "label", "scribble")

_SLICE_RE = re.compile(r"^patient(\d{3})_frame(\d{2})_slice_(\d+)\.h5$")
_VOLUME_RE = re.compile(r"^patient(\d{3})_frame(\d{2})\.h5$")


def _h5py():
    try:
        import h5py
    except ImportError as err:  # pragma: no cover - h5py is in the train extra
        raise ImportError(
            "reading ACDC needs h5py: pip install 'rloss[train]' (or pip install h5py)"
        ) from err
    return h5py


# ----------------------------------------------------------------- patient ranges
def parse_patients(spec: str | int | Iterable[int | str] | None) -> list[int]:
    """Parse a patient selection such as ``"21-60,71-100"`` into sorted unique ids.

    Accepts a string of comma-separated ids and inclusive ranges, an int, or a list
    of ints/strings (each parsed the same way).

    Example:
        >>> parse_patients("1-3,7, 5")
        [1, 2, 3, 5, 7]
        >>> parse_patients([61, "63-64"])
        [61, 63, 64]

    Raises:
        ValueError: a malformed item, a reversed range, an id < 1, or nothing selected.
    """
    if spec is None:
        raise ValueError("patients: expected ids or ranges such as '21-60,71-100', got None")
    items: list[str]
    if isinstance(spec, bool):
        raise ValueError(f"patients: expected ids or ranges, got {spec!r}")
    if isinstance(spec, int):
        items = [str(spec)]
    elif isinstance(spec, str):
        items = spec.split(",")
    else:
        items = []
        for part in spec:
            items.extend(str(part).split(","))
    out: set[int] = set()
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        m = re.fullmatch(r"(\d+)\s*-\s*(\d+)|(\d+)", item)
        if m is None:
            raise ValueError(
                f"patients: cannot parse {item!r} in {spec!r}; expected ids or ranges such "
                "as '21-60,71-100'"
            )
        lo, hi = (int(m[1]), int(m[2])) if m[3] is None else (int(m[3]), int(m[3]))
        if lo > hi:
            raise ValueError(f"patients: range {item!r} is reversed (want low-high)")
        if lo < 1:
            raise ValueError(f"patients: ids start at 1, got {item!r}")
        out.update(range(lo, hi + 1))
    if not out:
        raise ValueError(f"patients: {spec!r} selects no patient")
    return sorted(out)


def select_patients(
    available: Iterable[int], spec: str | int | Iterable[int | str] | None, what: str
) -> list[int]:
    """Patients of ``spec`` present in ``available``; one warning lists the absent ones.

    Raises:
        DataError: none of the selected patients is present (empty selection).
    """
    wanted = parse_patients(spec)
    have = set(available)
    present = [p for p in wanted if p in have]
    missing = [p for p in wanted if p not in have]
    if not present:
        raise DataError(
            f"{what}: none of the patients {_ranges(wanted)} is in the folder (found "
            f"{_ranges(sorted(have)) or 'none'})"
        )
    if missing:
        warnings.warn(
            f"{what}: {len(missing)} listed patient(s) absent from the folder, skipped: "
            f"{_ranges(missing)}",
            stacklevel=4,  # the dataset's caller
        )
    return present


def _ranges(ids: Sequence[int]) -> str:
    """``[1, 2, 3, 7]`` -> ``"1-3,7"``."""
    parts: list[str] = []
    ids = sorted(ids)
    i = 0
    while i < len(ids):
        j = i
        while j + 1 < len(ids) and ids[j + 1] == ids[j] + 1:
            j += 1
        parts.append(str(ids[i]) if i == j else f"{ids[i]}-{ids[j]}")
        i = j + 1
    return ",".join(parts)


# ----------------------------------------------------------------------- scanning
@dataclass(frozen=True)
class AcdcFile:
    """One file of the layout: patient, frame, slice index (``None`` for a volume)."""

    path: Path
    patient: int
    frame: int
    slice: int | None = None

    @property
    def name(self) -> str:
        return self.path.stem


def scan(root: str | Path) -> tuple[list[AcdcFile], list[AcdcFile]]:
    """List the slice files and volume files under ``root`` (names parsed, nothing opened).

    Returns:
        ``(slices, volumes)`` sorted by patient, frame, slice.

    Raises:
        DataError: ``root`` is not a folder or holds neither sub-folder.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: not a directory")
    slices: list[AcdcFile] = []
    volumes: list[AcdcFile] = []
    sdir, vdir = root / SLICES_DIR, root / VOLUMES_DIR
    if not sdir.is_dir() and not vdir.is_dir():
        raise DataError(
            f"{root}: neither {SLICES_DIR}/ nor {VOLUMES_DIR}/ found (the WSL4MIS data/ACDC "
            "layout); run `rloss data acdc --root DIR --download` or point --root at it"
        )
    if sdir.is_dir():
        for p in sdir.iterdir():
            m = _SLICE_RE.match(p.name)
            if m:
                slices.append(AcdcFile(p, int(m[1]), int(m[2]), int(m[3])))
    if vdir.is_dir():
        for p in vdir.iterdir():
            m = _VOLUME_RE.match(p.name)
            if m:
                volumes.append(AcdcFile(p, int(m[1]), int(m[2])))
    slices.sort(key=lambda f: (f.patient, f.frame, f.slice))
    volumes.sort(key=lambda f: (f.patient, f.frame))
    return slices, volumes


# ----------------------------------------------------------------------- checking
@dataclass
class FileStats:
    """What :func:`check_file` found: shape, number of slices, labelled scribble pixels."""

    shape: tuple[int, ...]
    slices: int
    pixels: int
    labelled: int


def check_file(path: str | Path, ndim: int) -> FileStats:
    """Check one ACDC HDF5 file; raise :class:`DataError` naming the file and the problem.

    Checks: readable HDF5, datasets ``image``/``label``/``scribble`` present, ``ndim``
    dimensions (2 for a slice, 3 for a volume), one shape for all three, finite image,
    integer labels in 0..3, scribble values in 0..4.
    """
    h5py = _h5py()
    path = Path(path)
    try:
        fh = h5py.File(path, "r")
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable HDF5 file ({err})") from err
    with fh:
        missing = [k for k in KEYS if k not in fh]
        if missing:
            raise DataError(
                f"{path}: missing dataset(s) {missing} (want {list(KEYS)}, found {sorted(fh)})"
            )
        shapes = {k: check_array_size(fh[k].shape, f"{path}:{k}") for k in KEYS}
        if len(set(shapes.values())) != 1:
            raise DataError(f"{path}: shape mismatch between image/label/scribble: {shapes}")
        shape = shapes["image"]
        if len(shape) != ndim:
            raise DataError(
                f"{path}: datasets are {len(shape)}-D {shape}, want {ndim}-D "
                f"({'(H, W) slice' if ndim == 2 else '(D, H, W) volume'})"
            )
        image = np.asarray(fh["image"][()])
        if not np.issubdtype(image.dtype, np.number):
            raise DataError(f"{path}: image has dtype {image.dtype}, want a number type")
        if not np.isfinite(image).all():
            raise DataError(f"{path}: image has {int((~np.isfinite(image)).sum())} non-finite "
                            "value(s) (NaN/Inf)")
        for key, hi in (("label", 3), ("scribble", UNLABELLED)):
            arr = np.asarray(fh[key][()])
            if not np.issubdtype(arr.dtype, np.integer):
                raise DataError(f"{path}: {key} has dtype {arr.dtype}, want an integer type")
            if arr.size and (arr.min() < 0 or arr.max() > hi):
                bad = np.unique(arr[(arr < 0) | (arr > hi)])[:5].tolist()
                raise DataError(
                    f"{path}: {key} values outside 0..{hi}: {bad}"
                    + (" (4 = unlabelled)" if key == "scribble" else "")
                )
            if key == "scribble":
                labelled = int((arr != UNLABELLED).sum())
    slices = 1 if ndim == 2 else int(shape[0])
    return FileStats(shape, slices, int(np.prod(shape)), labelled)


@dataclass
class AcdcReport:
    """Summary of a checked ACDC folder (:func:`check_root`)."""

    root: Path
    slice_patients: list[int] = field(default_factory=list)
    volume_patients: list[int] = field(default_factory=list)
    slice_frames: int = 0
    volume_frames: int = 0
    slice_files: int = 0
    volume_slices: int = 0
    pixels: int = 0
    labelled: int = 0

    @property
    def labelled_fraction(self) -> float:
        return self.labelled / self.pixels if self.pixels else math.nan

    def format(self) -> str:
        lines = [f"ACDC (WSL4MIS layout) at {self.root}: OK"]
        lines.append(
            f"  {SLICES_DIR}: {len(self.slice_patients)} patients "
            f"({_ranges(self.slice_patients) or '-'}), {self.slice_frames} frames, "
            f"{self.slice_files} slices"
        )
        lines.append(
            f"  {VOLUMES_DIR}: {len(self.volume_patients)} patients "
            f"({_ranges(self.volume_patients) or '-'}), {self.volume_frames} volumes, "
            f"{self.volume_slices} slices"
        )
        lines.append(
            f"  scribbled (labelled) pixels: {self.labelled} of {self.pixels} "
            f"({100 * self.labelled_fraction:.2f}%)"
        )
        return "\n".join(lines)


def check_root(root: str | Path, *, progress: bool = False) -> AcdcReport:
    """Check every file of a WSL4MIS-layout folder and summarise it.

    Raises:
        DataError: no file found, or the first malformed file (named, with the problem).
    """
    from tqdm.auto import tqdm

    root = Path(root).expanduser()
    slices, volumes = scan(root)
    if not slices and not volumes:
        raise DataError(
            f"{root}: no patientPPP_frameFF[_slice_S].h5 files in {SLICES_DIR}/ or {VOLUMES_DIR}/"
        )
    report = AcdcReport(root)
    for files, ndim in ((slices, 2), (volumes, 3)):
        for f in tqdm(files, desc=f"check {'slices' if ndim == 2 else 'volumes'}",
                      unit="file", disable=not progress or not files):
            st = check_file(f.path, ndim)
            report.pixels += st.pixels
            report.labelled += st.labelled
            if ndim == 3:
                report.volume_slices += st.slices
    report.slice_patients = sorted({f.patient for f in slices})
    report.volume_patients = sorted({f.patient for f in volumes})
    report.slice_frames = len({(f.patient, f.frame) for f in slices})
    report.volume_frames = len(volumes)
    report.slice_files = len(slices)
    return report


def write_h5(path: str | Path, image: np.ndarray, label: np.ndarray,
             scribble: np.ndarray) -> Path:
    """Write one slice ``(H, W)`` or volume ``(D, H, W)`` in the WSL4MIS format, atomically.

    ``image`` float32 in [0, 1], ``label`` uint8 0..3, ``scribble`` uint16 0..4 (4 =
    unlabelled), gzip-compressed, as the published files. Useful to bring other data
    into the layout (and for tests).
    """
    from rloss.data.io import atomic_path

    h5py = _h5py()
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as fh:
            fh.create_dataset("image", data=np.asarray(image, np.float32), compression="gzip")
            fh.create_dataset("label", data=np.asarray(label, np.uint8), compression="gzip")
            fh.create_dataset("scribble", data=np.asarray(scribble, np.uint16),
                              compression="gzip")
    return Path(path)


# -------------------------------------------------------------------- geometry
def resize_image(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of a ``(C, H, W)`` or ``(N, C, H, W)`` float image to ``size``."""
    batched = image.dim() == 4
    x = image if batched else image[None]
    if tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    return x if batched else x[0]


def resize_label(label: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Nearest-neighbour resize of an ``(H, W)`` integer map to ``size``."""
    if tuple(label.shape[-2:]) == tuple(size):
        return label
    out = F.interpolate(label[None, None].to(torch.float32), size=size, mode="nearest")
    return out[0, 0].to(label.dtype)


def _rotate(maps: dict[str, torch.Tensor], degrees: float) -> dict[str, torch.Tensor]:
    """Rotate image (bilinear) and label maps/roi (nearest) by ``degrees`` about the centre."""
    theta = math.radians(degrees)
    c, s = math.cos(theta), math.sin(theta)
    h, w = maps["roi"].shape
    mat = torch.tensor([[c, -s * h / w, 0.0], [s * w / h, c, 0.0]], dtype=torch.float32)
    grid = F.affine_grid(mat[None], [1, 1, h, w], align_corners=False)
    out = {}
    for key, t in maps.items():
        if key == "image":
            out[key] = F.grid_sample(t[None], grid, mode="bilinear", padding_mode="zeros",
                                     align_corners=False)[0]
        else:
            # labels are shifted by one so that 0 marks "outside" after sampling
            fill = t.to(torch.float32) + 1.0
            r = F.grid_sample(fill[None, None], grid, mode="nearest", padding_mode="zeros",
                              align_corners=False)[0, 0]
            if key == "roi":
                out[key] = (r > 0).to(torch.float32) * (r - 1.0)
            else:
                out[key] = torch.where(r > 0, r - 1.0, float(IGNORE_INDEX)).to(t.dtype)
    return out


def make_sample(
    image: np.ndarray,
    scribble: np.ndarray,
    label: np.ndarray,
    name: str,
    size: tuple[int, int] | None,
    intensity_scale: float,
) -> dict[str, Any]:
    """Arrays of one slice -> sample dict at ``size`` (``None``: native size)."""
    img = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    scr = torch.from_numpy(np.asarray(scribble).astype(np.int64))
    scr = torch.where(scr == UNLABELLED, torch.full_like(scr, IGNORE_INDEX), scr)
    msk = torch.from_numpy(np.asarray(label).astype(np.int64))
    if size is not None:
        img = resize_image(img, size)
        scr, msk = resize_label(scr, size), resize_label(msk, size)
    roi = torch.ones(img.shape[-2:], dtype=torch.float32)
    return {"image": img, "scribble": scr, "mask": msk, "roi": roi, "name": name,
            "intensity_scale": float(intensity_scale)}


def finish(sample: dict[str, Any]) -> dict[str, Any]:
    """Add ``image_raw = image * intensity_scale``; fixed key order of the contract."""
    img = sample["image"].clamp(0.0, 1.0).contiguous()
    return {
        "image": img,
        "image_raw": (img * sample["intensity_scale"]).contiguous(),
        "scribble": sample["scribble"].contiguous(),
        "mask": sample["mask"].contiguous(),
        "roi": sample["roi"].contiguous(),
        "name": sample["name"],
    }


class AcdcAugment:
    """Random 90-degree rotation + flip (WSL4MIS ``random_rot_flip``) and a small rotation.

    Args:
        rot_flip: probability of a random ``rot90(k)`` followed by a random flip.
        rotate: probability of a rotation by ``U(-max_degrees, max_degrees)``.
        max_degrees: largest rotation angle.
        generator: optional :class:`torch.Generator` (default: torch's global one,
            seeded per DataLoader worker).
    """

    def __init__(self, rot_flip: float = 0.5, rotate: float = 0.5, max_degrees: float = 20.0,
                 generator: torch.Generator | None = None) -> None:
        self.rot_flip = float(rot_flip)
        self.rotate = float(rotate)
        self.max_degrees = float(max_degrees)
        self.generator = generator

    def _rand(self) -> float:
        return float(torch.rand((), generator=self.generator))

    def __call__(self, s: dict[str, Any]) -> dict[str, Any]:
        maps = {k: s[k] for k in ("image", "scribble", "mask", "roi")}
        square = maps["roi"].shape[0] == maps["roi"].shape[1]
        if self._rand() < self.rot_flip:
            k = int(self._rand() * 4) % 4 if square else 2 * (self._rand() < 0.5)
            axis = -1 if self._rand() < 0.5 else -2
            maps = {key: torch.rot90(t, k, dims=(-2, -1)).flip(axis) for key, t in maps.items()}
        if self._rand() < self.rotate:
            maps = _rotate(maps, (2 * self._rand() - 1) * self.max_degrees)
        return {**s, **maps}


# ---------------------------------------------------------------------- datasets
def _patient_files(files: list[AcdcFile], spec: Any, what: str) -> list[AcdcFile]:
    chosen = set(select_patients({f.patient for f in files}, spec, what))
    return [f for f in files if f.patient in chosen]


def _read(path: Path, index: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h5py = _h5py()
    try:
        with h5py.File(path, "r") as fh:
            sel = () if index is None else (index,)
            for key in KEYS:  # untrusted sizes are bounded before anything is read
                check_array_size(fh[key].shape, f"{path}:{key}")
            return (np.asarray(fh["image"][sel]), np.asarray(fh["scribble"][sel]),
                    np.asarray(fh["label"][sel]))
    except KeyError as err:
        raise DataError(f"{path}: missing dataset ({err}); run `rloss data acdc --root ROOT`"
                        ) from err
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err})") from err


def _size(size: int | Sequence[int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    if isinstance(size, int):
        return (size, size)
    h, w = (int(v) for v in size)
    return (h, w)


class AcdcSlices(Dataset):
    """Training slices (``ACDC_training_slices/``) of the selected patients.

    Args:
        root: the WSL4MIS ``data/ACDC`` folder.
        patients: ids or ranges, e.g. ``"21-60,71-100"`` (fold 1's training set).
        size: output size (int or ``(H, W)``), slices are resized (bilinear image,
            nearest labels) as in WSL4MIS; ``None`` keeps the native size.
        augment: an :class:`AcdcAugment` (or any callable on the sample dict), or ``None``.
        intensity_scale: ``image_raw = image * intensity_scale``.
    """

    classes = ACDC_CLASSES

    def __init__(self, root: str | Path, patients: Any = FOLD1["train"], *,
                 size: int | Sequence[int] | None = 256, augment: Any = None,
                 intensity_scale: float = 255.0) -> None:
        slices, _ = scan(root)
        if not slices:
            raise DataError(f"{root}: no slice files in {SLICES_DIR}/")
        self.files = _patient_files(slices, patients, "data.train_patients")
        self.size = _size(size)
        self.augment = augment
        self.intensity_scale = float(intensity_scale)

    @property
    def patients(self) -> list[int]:
        return sorted({f.patient for f in self.files})

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        f = self.files[i]
        img, scr, lab = _read(f.path)
        s = make_sample(img, scr, lab, f.name, self.size, self.intensity_scale)
        if self.augment is not None:
            s = self.augment(s)
        return finish(s)


class AcdcVolumes(Dataset):
    """Whole volumes (``ACDC_training_volumes/``) of the selected patients, for evaluation.

    Items: ``{"image": float32 (D, H, W), "label": int64 (D, H, W), "scribble": int64
    (D, H, W) (4 -> 255), "name": str, "patient": int, "frame": int, "spacing": tuple | None}``
    (``spacing`` from a ``spacing``/``voxel_spacing`` attribute when the file has one; the
    WSL4MIS files have none).
    """

    classes = ACDC_CLASSES

    def __init__(self, root: str | Path, patients: Any = FOLD1["val"], *,
                 what: str = "data.val_patients") -> None:
        _, volumes = scan(root)
        if not volumes:
            raise DataError(f"{root}: no volume files in {VOLUMES_DIR}/")
        self.files = _patient_files(volumes, patients, what)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict[str, Any]:
        f = self.files[i]
        img, scr, lab = _read(f.path)
        if img.ndim != 3:
            raise DataError(f"{f.path}: want a (D, H, W) volume, got shape {img.shape}")
        scr_t = torch.from_numpy(scr.astype(np.int64))
        return {
            "image": torch.from_numpy(np.ascontiguousarray(img, dtype=np.float32)),
            "label": torch.from_numpy(lab.astype(np.int64)),
            "scribble": torch.where(scr_t == UNLABELLED, IGNORE_INDEX, scr_t),
            "name": f.name,
            "patient": f.patient,
            "frame": f.frame,
            "spacing": _spacing(f.path),
        }


def _spacing(path: Path) -> tuple[float, ...] | None:
    h5py = _h5py()
    with h5py.File(path, "r") as fh:
        for obj in (fh, fh["image"]):
            for key in ("spacing", "voxel_spacing", "pixdim"):
                if key in obj.attrs:
                    return tuple(float(v) for v in np.ravel(obj.attrs[key]))
    return None


class AcdcVolumeSlices(Dataset):
    """Every slice of the selected volumes at the training size (validation during training).

    Args:
        root, patients: as :class:`AcdcVolumes`.
        size: slice size the network sees (``None``: native).
        intensity_scale: ``image_raw = image * intensity_scale``.
    """

    classes = ACDC_CLASSES

    def __init__(self, root: str | Path, patients: Any = FOLD1["val"], *,
                 size: int | Sequence[int] | None = 256, intensity_scale: float = 255.0,
                 what: str = "data.val_patients") -> None:
        self.volumes = AcdcVolumes(root, patients, what=what)
        self.size = _size(size)
        self.intensity_scale = float(intensity_scale)
        h5py = _h5py()
        self.index: list[tuple[int, int]] = []
        for v, f in enumerate(self.volumes.files):
            with h5py.File(f.path, "r") as fh:
                if "image" not in fh or fh["image"].ndim != 3:
                    raise DataError(f"{f.path}: want an (D, H, W) 'image' dataset")
                self.index.extend((v, z) for z in range(int(fh["image"].shape[0])))

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        v, z = self.index[i]
        f = self.volumes.files[v]
        img, scr, lab = _read(f.path, z)
        return finish(make_sample(img, scr, lab, f"{f.name}_slice_{z}", self.size,
                                  self.intensity_scale))


def build_acdc_dataset(data: Mapping[str, Any], split: str) -> Dataset:
    """The ``data.kind: acdc`` datasets of a recipe: train slices or validation volume slices.

    ``data`` keys: ``root``, ``train_patients``, ``val_patients``, ``crop_size`` (the slice
    size S), ``flip`` (random rot90 + flip), ``rotate`` (small random rotations),
    ``intensity_scale``.
    """
    root = Path(str(data["root"])).expanduser()
    size = int(data.get("crop_size") or 256)
    scale = float(data.get("intensity_scale") or 255.0)
    if split == "train":
        flip = bool(data.get("flip", True))
        rot = float(data.get("rotate", 0.5) or 0.0)
        augment = AcdcAugment(rot_flip=0.5 if flip else 0.0, rotate=rot)
        return AcdcSlices(root, data.get("train_patients") or FOLD1["train"], size=size,
                          augment=augment if (flip or rot) else None, intensity_scale=scale)
    key = "test_patients" if split == "test" else "val_patients"
    return AcdcVolumeSlices(root, data.get(key) or FOLD1[split], size=size,
                            intensity_scale=scale, what=f"data.{key}")


# ---------------------------------------------------------------------- download
#: The public WSL4MIS repository (its ``data/ACDC/`` folder is this layout).
WSL4MIS_GIT: str = "https://github.com/HiLab-git/WSL4MIS.git"
#: Folder of the layout inside the repository.
WSL4MIS_SUBDIR: str = "data/ACDC"
_DOWNLOAD_TMP = ".acdc-download"


def _git(args: Sequence[str], cwd: Path | None = None) -> str:
    import shutil
    import subprocess

    from rloss.data.download import DownloadError

    exe = shutil.which("git")
    if exe is None:
        raise DownloadError(
            "--download needs git on PATH; install git, or fetch the WSL4MIS folder "
            f"{WSL4MIS_SUBDIR}/ by hand and pass its path as --root"
        )
    proc = subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True,
                          env={**_git_env()})
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise DownloadError(f"git {args[0]} failed: {last}")
    return proc.stdout


def _git_env() -> dict[str, str]:
    import os

    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"  # never ask for credentials
    return env


def download_acdc(
    root: str | Path,
    *,
    url: str = WSL4MIS_GIT,
    ref: str | None = None,
    subdir: str = WSL4MIS_SUBDIR,
    progress: bool = True,
) -> AcdcReport:
    """Fetch the WSL4MIS ``data/ACDC`` folder into ``root`` and check it.

    A shallow, sparse git checkout of ``url`` (only ``subdir``'s files are fetched) goes
    to ``ROOT/.acdc-download/``; git verifies every object by its hash. The checked-out
    folder is validated file by file (:func:`check_root`) and only then are
    ``ACDC_training_slices/`` and ``ACDC_training_volumes/`` renamed into ``root`` (atomic
    per folder). An interrupted download keeps ``.acdc-download/`` and the next call
    continues it (objects already fetched are not fetched again); folders already in
    ``root`` are kept as they are.

    Args:
        root: destination folder (created).
        url: git URL of the repository (tests pass a ``file://`` URL).
        ref: branch or tag (default: the remote's default branch).
        subdir: the layout's folder inside the repository.

    Raises:
        rloss.data.download.DownloadError: git missing, network failure (offline), or
            ``subdir`` absent from the repository; the message says what to do.
        DataError: the fetched files are malformed (nothing is moved into ``root``).
    """
    from rloss.data.download import DownloadError, move_tree

    root = Path(root).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    if (root / SLICES_DIR).is_dir() and (root / VOLUMES_DIR).is_dir():
        return check_root(root, progress=progress)
    tmp = root / _DOWNLOAD_TMP
    repo = tmp / "repo"
    try:
        if not (repo / ".git").is_dir():
            import shutil

            shutil.rmtree(repo, ignore_errors=True)
            tmp.mkdir(parents=True, exist_ok=True)
            args = ["clone", "--depth", "1", "--filter=blob:none", "--sparse", "--no-checkout"]
            if ref:
                args += ["--branch", ref]
            _git([*args, url, str(repo)])
        _git(["sparse-checkout", "set", subdir], cwd=repo)
        _git(["checkout"], cwd=repo)
    except DownloadError as err:
        raise DownloadError(
            f"could not fetch {url} ({err}). Offline? On a machine with internet run "
            f"`git clone --depth 1 {url}` and copy its {subdir}/ folder here, or pass that "
            "folder as --root; rerunning --download continues an interrupted fetch"
        ) from err
    src = repo / subdir
    if not src.is_dir():
        raise DownloadError(f"{url}: the repository has no {subdir}/ folder")
    check_root(src, progress=progress)  # raises DataError before anything is moved
    for sub in (SLICES_DIR, VOLUMES_DIR):
        if (src / sub).is_dir() and not (root / sub).exists():
            move_tree(src / sub, root / sub)
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return check_root(root, progress=progress)
