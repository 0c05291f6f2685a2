"""PASCAL VOC 2012 + SBD + ScribbleSup scribbles: the rloss layout, its preparation and dataset.

The rloss layout under one root folder::

    ROOT/JPEGImages/<id>.jpg                    17,125 images (VOC 2012 trainval)
    ROOT/SegmentationClass/<id>.png             VOC 2012 masks (2,913)
    ROOT/SegmentationClassAug/<id>.png          VOC + SBD masks, index PNGs (12,031)
    ROOT/pascal_2012_scribble/<id>.png          ScribbleSup scribbles, 255 = unlabelled
    ROOT/ImageSets/Segmentation/{train,val}.txt VOC 2012 id lists
    ROOT/ImageSets/SegmentationAug/train_aug.txt  10,582 ids: (SBD train+val ∪ VOC train) − VOC val
    ROOT/ImageSets/SegmentationAug/val.txt         1,449 ids (VOC 2012 val)
    ROOT/SBD/{train,val}.txt                    optional SBD id lists (benchmark_RELEASE/dataset)

:func:`prepare_voc` downloads the archives of :data:`VOC_SOURCES` when asked, moves their
folders into place, writes the two ``SegmentationAug`` id lists and checks the tree;
:func:`check_voc_tree` reports exactly what is missing. :class:`VOCScribble` reads it.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rloss.data.folder import LabelledImageDataset, SampleFiles, read_id_list
from rloss.data.io import DataError, atomic_write_text

__all__ = [
    "AUG_LIST_DIR",
    "DEFAULT_DOWNLOADS",
    "NUM_TRAIN_AUG",
    "NUM_VAL",
    "VOC_SOURCES",
    "Source",
    "VOCCheck",
    "VOCScribble",
    "check_voc_tree",
    "prepare_voc",
    "train_aug_ids",
    "write_id_lists",
]

JPEG_DIR = "JPEGImages"
SEG_DIR = "SegmentationClass"
SEG_AUG_DIR = "SegmentationClassAug"
SCRIBBLE_DIR = "pascal_2012_scribble"
VOC_LIST_DIR = "ImageSets/Segmentation"
AUG_LIST_DIR = "ImageSets/SegmentationAug"
SBD_DIR = "SBD"
DOWNLOAD_DIR = "downloads"
CHECKSUM_FILE = "checksums.json"

#: Official sizes of the id lists.
NUM_TRAIN_AUG = 10_582
NUM_VAL = 1_449


@dataclass(frozen=True)
class Source:
    """A downloadable archive.

    Attributes:
        key: short name (``--download`` selects by key).
        url: where to get it.
        filename: local archive name under ``ROOT/downloads/``.
        md5: published MD5, or ``None`` where no checksum is known with certainty (then the
            MD5 of the first download is recorded in ``ROOT/downloads/checksums.json`` and
            later copies are checked against it).
        provides: folders it provides in the rloss layout, as ``(folder name inside the
            archive, destination under ROOT)`` pairs; the archive folder is found by name.
        description: one line for messages.
    """

    key: str
    url: str
    filename: str
    md5: str | None
    provides: tuple[tuple[str, str], ...]
    description: str


#: Every archive the VOC preparation knows about (one table; checksums only where certain).
VOC_SOURCES: dict[str, Source] = {
    s.key: s
    for s in (
        Source(
            "voc2012",
            "http://host.robots.ox.ac.uk/pascal/VOC/voc2012/VOCtrainval_11-May-2012.tar",
            "VOCtrainval_11-May-2012.tar",
            "6cd6e144f989b92b3379bac3b3de84fd",
            (("VOC2012/JPEGImages", JPEG_DIR), ("VOC2012/SegmentationClass", SEG_DIR),
             ("VOC2012/ImageSets/Segmentation", VOC_LIST_DIR)),
            "PASCAL VOC 2012 trainval (images, masks, id lists), 2.0 GB",
        ),
        Source(
            "segmentation_class_aug",
            "https://www.dropbox.com/s/oeu149j8qtbs1x0/SegmentationClassAug.zip?dl=1",
            "SegmentationClassAug.zip",
            None,
            (("SegmentationClassAug", SEG_AUG_DIR),),
            "SegmentationClassAug: VOC + SBD masks as index PNGs",
        ),
        Source(
            "scribbles",
            "http://cs.uwaterloo.ca/~m62tang/rloss/pascal_2012_scribble.zip",
            "pascal_2012_scribble.zip",
            None,
            (("pascal_2012_scribble", SCRIBBLE_DIR),),
            "ScribbleSup scribbles rasterised as PNGs (rloss project page)",
        ),
        Source(
            "sbd",
            "https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/grouping/"
            "semantic_contours/benchmark.tgz",
            "benchmark.tgz",
            "82b4d87ceb2ed10f6038a1cba92111cb",
            (("benchmark_RELEASE/dataset/train.txt", f"{SBD_DIR}/train.txt"),
             ("benchmark_RELEASE/dataset/val.txt", f"{SBD_DIR}/val.txt")),
            "SBD benchmark (only its train/val id lists are used), 1.4 GB",
        ),
        Source(
            "scribblesup_xml",
            "https://www.dropbox.com/s/9vh3kvtd742red8/scribble_annotation.zip?dl=1",
            "scribble_annotation.zip",
            None,
            (),
            "ScribbleSup XML annotations (convert with `rloss scribbles convert`)",
        ),
    )
}

#: Archives ``rloss data voc --download`` fetches by default.
DEFAULT_DOWNLOADS: tuple[str, ...] = ("voc2012", "segmentation_class_aug", "scribbles")


def train_aug_ids(
    voc_train: Iterable[str],
    voc_val: Iterable[str],
    sbd_train: Iterable[str] = (),
    sbd_val: Iterable[str] = (),
) -> list[str]:
    """The train_aug id list: ``(SBD train ∪ SBD val ∪ VOC train) − VOC val``, sorted.

    With the official lists this has 10,582 ids.
    """
    val = set(voc_val)
    return sorted((set(sbd_train) | set(sbd_val) | set(voc_train)) - val)


def _stems(folder: Path, suffix: str) -> set[str]:
    if not folder.is_dir():
        return set()
    return {p[: -len(suffix)] for p in os.listdir(folder) if p.endswith(suffix)}


def _read_ids(path: Path) -> list[str]:
    return read_id_list(path)


def write_id_lists(root: str | os.PathLike[str]) -> dict[str, int]:
    """Write ``ImageSets/SegmentationAug/{train_aug,val}.txt`` from the sources present.

    ``val`` is VOC 2012 ``val.txt``. ``train_aug`` uses the SBD lists (``ROOT/SBD``) when
    present, else the ids of ``SegmentationClassAug/`` (which holds SBD ∪ VOC trainval).
    Lists are written atomically; a list whose sources are missing is not written.

    Returns:
        ``{"train_aug": n, "val": n}`` for the lists written.
    """
    root = Path(root)
    written: dict[str, int] = {}
    voc_lists = root / VOC_LIST_DIR
    if not (voc_lists / "train.txt").is_file() or not (voc_lists / "val.txt").is_file():
        return written
    voc_train = _read_ids(voc_lists / "train.txt")
    voc_val = _read_ids(voc_lists / "val.txt")
    out = root / AUG_LIST_DIR
    atomic_write_text(out / "val.txt", "".join(f"{i}\n" for i in voc_val))
    written["val"] = len(voc_val)
    sbd = root / SBD_DIR
    if (sbd / "train.txt").is_file() and (sbd / "val.txt").is_file():
        ids = train_aug_ids(voc_train, voc_val, _read_ids(sbd / "train.txt"),
                            _read_ids(sbd / "val.txt"))
    elif (root / SEG_AUG_DIR).is_dir():
        ids = train_aug_ids(voc_train, voc_val, _stems(root / SEG_AUG_DIR, ".png"))
    else:
        return written
    atomic_write_text(out / "train_aug.txt", "".join(f"{i}\n" for i in ids))
    written["train_aug"] = len(ids)
    return written


@dataclass
class VOCCheck:
    """What :func:`check_voc_tree` found.

    Attributes:
        root: the tree checked.
        missing_folders: folders that do not exist (relative to ``root``).
        missing_lists: id lists that do not exist (relative to ``root``).
        missing_files: ``folder -> (number missing, first few ids)`` for the ids of the lists.
        counts: ``list name -> number of ids``.
        notes: remarks that are not errors (e.g. counts differing from the official ones).
    """

    root: Path
    missing_folders: list[str] = field(default_factory=list)
    missing_lists: list[str] = field(default_factory=list)
    missing_files: dict[str, tuple[int, list[str]]] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is missing."""
        return not (self.missing_folders or self.missing_lists or self.missing_files)

    def format(self) -> str:
        lines = [f"PASCAL VOC 2012 tree at {self.root}: " + ("complete" if self.ok else
                                                             "incomplete")]
        for f in self.missing_folders:
            lines.append(f"  missing folder: {f}/")
        for f in self.missing_lists:
            lines.append(f"  missing id list: {f}")
        for folder, (n, examples) in self.missing_files.items():
            lines.append(f"  {folder}/: {n} files missing (e.g. {', '.join(examples)})")
        for k, n in self.counts.items():
            lines.append(f"  {k}: {n} ids")
        lines.extend(f"  note: {n}" for n in self.notes)
        if not self.ok:
            lines.append("  run `rloss data voc --root DIR --download` to fetch what is missing")
        return "\n".join(lines)


def check_voc_tree(root: str | os.PathLike[str]) -> VOCCheck:
    """Check an rloss-layout VOC tree and report exactly what is missing (reads no image)."""
    root = Path(root)
    report = VOCCheck(root=root)
    if not root.is_dir():
        report.notes.append(f"{root} does not exist")
    for folder in (JPEG_DIR, SEG_AUG_DIR, SCRIBBLE_DIR, VOC_LIST_DIR):
        if not (root / folder).is_dir():
            report.missing_folders.append(folder)
    lists = {"train_aug": root / AUG_LIST_DIR / "train_aug.txt",
             "val": root / AUG_LIST_DIR / "val.txt"}
    stems = {JPEG_DIR: _stems(root / JPEG_DIR, ".jpg"),
             SEG_AUG_DIR: _stems(root / SEG_AUG_DIR, ".png"),
             SCRIBBLE_DIR: _stems(root / SCRIBBLE_DIR, ".png")}
    needs = {"train_aug": (JPEG_DIR, SCRIBBLE_DIR, SEG_AUG_DIR), "val": (JPEG_DIR, SEG_AUG_DIR)}
    missing: dict[str, list[str]] = {}
    for name, path in lists.items():
        if not path.is_file():
            report.missing_lists.append(str(path.relative_to(root)))
            continue
        ids = _read_ids(path)
        report.counts[name] = len(ids)
        official = NUM_TRAIN_AUG if name == "train_aug" else NUM_VAL
        if len(ids) != official:
            report.notes.append(f"{name} has {len(ids)} ids; the official list has {official}")
        for folder in needs[name]:
            if folder in report.missing_folders:
                continue
            missing.setdefault(folder, []).extend(i for i in ids if i not in stems[folder])
    for folder, ids in missing.items():
        if ids:
            uniq = sorted(set(ids))
            report.missing_files[folder] = (len(uniq), uniq[:5])
    return report


def _recorded(root: Path) -> dict[str, str]:
    path = root / DOWNLOAD_DIR / CHECKSUM_FILE
    try:
        return json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return {}


def _find(staging: Path, inner: str) -> Path | None:
    """Locate ``inner`` (a relative path) anywhere below ``staging``."""
    parts = Path(inner).parts
    for cand in sorted(staging.rglob(parts[-1])):
        if cand.relative_to(staging).parts[-len(parts):] == parts and "__MACOSX" not in \
                cand.parts:
            return cand
    return None


def _fetch_source(root: Path, source: Source, progress: bool, keep_archive: bool) -> None:
    from rloss.data.download import download_file, extract_archive, file_digest, move_tree

    needed = [(inner, dest) for inner, dest in source.provides if not (root / dest).exists()]
    if source.provides and not needed:
        return
    downloads = root / DOWNLOAD_DIR
    archive = downloads / source.filename
    recorded = _recorded(root)
    md5 = source.md5 or recorded.get(source.filename)
    download_file(source.url, archive, md5=md5, progress=progress)
    if source.md5 is None and source.filename not in recorded:
        recorded[source.filename] = file_digest(archive, "md5")
        atomic_write_text(downloads / CHECKSUM_FILE, json.dumps(recorded, indent=2) + "\n")
    if not source.provides:
        return
    staging = downloads / f".extract-{source.key}"
    shutil.rmtree(staging, ignore_errors=True)
    try:
        extract_archive(archive, staging, progress=progress)
        for inner, dest in needed:
            found = _find(staging, inner)
            if found is None:
                raise DataError(f"{archive}: does not contain {inner}")
            move_tree(found, root / dest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if not keep_archive:
        archive.unlink(missing_ok=True)


def prepare_voc(
    root: str | os.PathLike[str],
    download: bool | Sequence[str] = False,
    *,
    progress: bool = True,
    keep_archives: bool = False,
) -> VOCCheck:
    """Lay out PASCAL VOC 2012 + SBD masks + scribbles under ``root`` and check the tree.

    Args:
        root: the dataset root (created when downloading).
        download: ``False`` only checks; ``True`` downloads :data:`DEFAULT_DOWNLOADS`; a
            sequence of :data:`VOC_SOURCES` keys downloads those. Archives whose folders
            already exist are skipped, so a second run downloads nothing.
        progress: show progress bars.
        keep_archives: keep the archives in ``ROOT/downloads`` after extraction.

    Returns:
        The :class:`VOCCheck` of the tree after preparation (id lists written when their
        sources are present).

    Raises:
        rloss.data.download.DownloadError: a download or extraction failed (message says
            which); nothing partial is left in the tree.
    """
    root = Path(root)
    if download:
        keys = DEFAULT_DOWNLOADS if download is True else tuple(download)
        unknown = [k for k in keys if k not in VOC_SOURCES]
        if unknown:
            raise ValueError(f"download: unknown sources {unknown}; want keys of "
                             f"{sorted(VOC_SOURCES)}")
        root.mkdir(parents=True, exist_ok=True)
        for key in keys:
            _fetch_source(root, VOC_SOURCES[key], progress, keep_archives)
    if root.is_dir():
        write_id_lists(root)
    return check_voc_tree(root)


# --------------------------------------------------------------------------- dataset


class VOCScribble(LabelledImageDataset):
    """PASCAL VOC 2012 with ScribbleSup scribbles, in the rloss layout (see module docstring).

    * ``split="train"``: ids of ``ImageSets/SegmentationAug/train_aug.txt``; image, scribble
      (``pascal_2012_scribble``, required) and full mask (``SegmentationClassAug``, where
      present; all 255 otherwise).
    * ``split="val"``: ids of ``ImageSets/SegmentationAug/val.txt`` (or the VOC
      ``ImageSets/Segmentation/val.txt``); image and full mask (required); the scribble is
      all 255.

    Items follow the sample contract (:mod:`rloss.data.transforms`); with ``transform=None``
    an :class:`~rloss.data.transforms.EvalTransform` is used.

    Args:
        root: the rloss-layout root.
        split: ``"train"`` or ``"val"``.
        transform: raw sample -> sample callable.
        ids_file: read the ids from this file instead of the split's list.

    Raises:
        DataError: the id list is missing, or required files are missing (the message gives
            the folder, the count and examples).
    """

    classes: tuple[str, ...]
    num_classes: int

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str = "train",
        transform: Callable[[Mapping[str, Any]], dict[str, Any]] | None = None,
        ids_file: str | os.PathLike[str] | None = None,
    ) -> None:
        from rloss.constants import VOC_CLASSES

        if split not in ("train", "val"):
            raise ValueError(f"split: want 'train' or 'val', got {split!r}")
        self.root = Path(root)
        self.split = split
        self.classes = VOC_CLASSES
        self.num_classes = len(VOC_CLASSES)
        if ids_file is None:
            ids_file = self.root / AUG_LIST_DIR / ("train_aug.txt" if split == "train" else
                                                   "val.txt")
            if split == "val" and not Path(ids_file).is_file():
                ids_file = self.root / VOC_LIST_DIR / "val.txt"
        if not Path(ids_file).is_file():
            raise DataError(f"{ids_file}: id list not found; run `rloss data voc --root "
                            f"{self.root}` to check and prepare the tree")
        ids = _read_ids(Path(ids_file))
        jpeg = _stems(self.root / JPEG_DIR, ".jpg")
        aug = _stems(self.root / SEG_AUG_DIR, ".png")
        seg = _stems(self.root / SEG_DIR, ".png")
        scrib = _stems(self.root / SCRIBBLE_DIR, ".png")

        def fail(folder: str, missing: list[str]) -> None:
            shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
            raise DataError(f"{self.root / folder}: {len(missing)} of {len(ids)} {split} files "
                            f"missing ({shown})")

        missing = [i for i in ids if i not in jpeg]
        if missing:
            fail(JPEG_DIR, missing)
        files = []
        if split == "train":
            missing = [i for i in ids if i not in scrib]
            if missing:
                fail(SCRIBBLE_DIR, missing)
            for i in ids:
                mask = self.root / SEG_AUG_DIR / f"{i}.png" if i in aug else None
                files.append(SampleFiles(i, self.root / JPEG_DIR / f"{i}.jpg",
                                         self.root / SCRIBBLE_DIR / f"{i}.png", mask))
        else:
            missing = [i for i in ids if i not in aug and i not in seg]
            if missing:
                fail(SEG_AUG_DIR, missing)
            for i in ids:
                folder = SEG_AUG_DIR if i in aug else SEG_DIR
                files.append(SampleFiles(i, self.root / JPEG_DIR / f"{i}.jpg", None,
                                         self.root / folder / f"{i}.png"))
        super().__init__(files, transform)

    @property
    def label_classes(self) -> int:
        """Scribble and mask values must be VOC class indices (0..20) or 255."""
        return self.num_classes

    def __repr__(self) -> str:
        return f"VOCScribble(root={str(self.root)!r}, split={self.split!r}, n={len(self)})"
