"""A dataset over a plain folder of images, label PNGs and optional scribble PNGs.

Layout::

    ROOT/images/<id>.png|jpg        RGB images
    ROOT/labels/<id>.png            full masks: index or palette PNG, 255 = void   (optional)
    ROOT/scribbles/<id>.png         scribbles: class index, 255 = unlabelled        (optional)
    ROOT/classes.txt                one class name per line, line i = class i      (optional)
    ROOT/splits/train.txt, val.txt  one id per line                                 (optional)

When ``labels/`` (or ``scribbles/``) exists, every id of the split must have a file there;
when the folder is absent the corresponding sample entry is all 255.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from rloss.constants import IGNORE_INDEX
from rloss.data.io import IMAGE_EXTENSIONS, DataError, find_image, read_image, read_label
from rloss.data.transforms import EvalTransform

__all__ = ["LabelledImageDataset", "SampleFiles", "SegmentationFolder", "read_id_list"]

Transform = Callable[[Mapping[str, Any]], dict[str, Any]]


def read_id_list(path: str | os.PathLike[str]) -> list[str]:
    """Read an id list (one id per line; blank lines and ``#`` comments skipped; only the first
    whitespace-separated field of a line is used, as in VOC ``ImageSets`` files)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise DataError(f"{path}: id list not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read id list ({err})") from err
    ids = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            ids.append(line.split()[0])
    return ids


@dataclass(frozen=True)
class SampleFiles:
    """Files of one sample: the image and, when known, the scribble and full mask."""

    name: str
    image: Path
    scribble: Path | None = None
    mask: Path | None = None


def _check_label_values(label, path: Path, key: str, num_classes: int | None) -> None:
    """Every value of ``label`` is a class index ``< num_classes`` or 255 (unlabelled/void)."""
    if num_classes is None or not label.size:
        return
    import numpy as np

    bad = np.unique(label[(label >= num_classes) & (label != IGNORE_INDEX)])
    if bad.size:
        shown = ", ".join(str(int(v)) for v in bad[:8]) + (" ..." if bad.size > 8 else "")
        raise DataError(
            f"{path}: {key} holds value(s) {shown}, but there are {num_classes} classes "
            f"(valid: 0..{num_classes - 1}, and 255 = unlabelled)"
        )


def _missing_message(what: str, folder: Path, missing: Sequence[str], total: int) -> str:
    shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
    return f"{folder}: {len(missing)} of {total} {what} missing ({shown})"


class LabelledImageDataset(Dataset):
    """Base dataset: reads :class:`SampleFiles` and applies a transform.

    Items follow the sample contract of :mod:`rloss.data.transforms`; with
    ``transform=None`` an :class:`~rloss.data.transforms.EvalTransform` is used.
    """

    def __init__(self, files: Sequence[SampleFiles], transform: Transform | None = None) -> None:
        self.files = list(files)
        self.transform = transform if transform is not None else EvalTransform()

    @property
    def ids(self) -> list[str]:
        """Sample ids in dataset order."""
        return [f.name for f in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def load_raw(self, index: int) -> dict[str, Any]:
        """Read sample ``index`` from disk without transforming it.

        Returns:
            ``{"image": uint8 (H, W, 3), "scribble": uint8 (H, W) | None,
            "mask": uint8 (H, W) | None, "name": str}``.

        Raises:
            DataError: a file is missing or corrupt, or its size differs from the image's.
        """
        f = self.files[index]
        image = read_image(f.image)
        raw: dict[str, Any] = {"image": image, "scribble": None, "mask": None, "name": f.name}
        for key, path in (("scribble", f.scribble), ("mask", f.mask)):
            if path is None:
                continue
            label = read_label(path)
            if label.shape != image.shape[:2]:
                raise DataError(
                    f"{path}: {key} is {label.shape[1]}x{label.shape[0]} (WxH) but image "
                    f"{f.image} is {image.shape[1]}x{image.shape[0]}"
                )
            _check_label_values(label, path, key, self.label_classes)
            raw[key] = label
        return raw

    @property
    def label_classes(self) -> int | None:
        """Number of classes label values are checked against (``None``: not checked)."""
        return None

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        return self.transform(self.load_raw(index % len(self)))


class SegmentationFolder(LabelledImageDataset):
    """Images with optional full masks and scribbles in the folder layout of this module.

    Args:
        root: dataset folder.
        split: ``None`` (every image of ``images/``) or a split name read from
            ``splits/<split>.txt`` (e.g. ``"train"``, ``"val"``).
        transform: raw sample -> sample callable; ``None`` = :class:`EvalTransform`.
        num_classes: number of classes K; scribble and mask values must be ``< K`` or 255,
            checked when a sample is read (the error names the file). ``None``: the length of
            ``classes.txt`` when present, else unchecked.

    Attributes:
        classes: class names from ``classes.txt`` (``None`` when absent).
        num_classes: ``len(classes)`` or ``None``.

    Raises:
        DataError: ``root``/``images`` missing, split file missing, an id without image, or
            ids without a label file in an existing ``labels/``/``scribbles/`` folder.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        split: str | None = None,
        transform: Transform | None = None,
        num_classes: int | None = None,
    ) -> None:
        if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) < 1):
            raise ValueError(f"num_classes: want a positive int or None, got {num_classes!r}")
        self._num_classes = None if num_classes is None else int(num_classes)
        self.root = Path(root)
        self.split = split
        images = self.root / "images"
        if not images.is_dir():
            raise DataError(f"{images}: image folder not found (want ROOT/images/<id>.png|jpg)")
        if split is None:
            ids = sorted({p.stem for p in images.iterdir()
                          if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS})
        else:
            if not isinstance(split, str) or not split or "/" in split or "\\" in split:
                raise ValueError(f"split: want None or a split name such as 'train', got "
                                 f"{split!r}")
            ids = read_id_list(self.root / "splits" / f"{split}.txt")
        classes_file = self.root / "classes.txt"
        self.classes: list[str] | None = None
        if classes_file.is_file():
            self.classes = [ln.strip() for ln in classes_file.read_text("utf-8-sig").splitlines()
                            if ln.strip()]
        files, no_image = [], []
        for i in ids:
            img = find_image(images, i)
            if img is None:
                no_image.append(i)
            files.append((i, img))
        if no_image:
            raise DataError(_missing_message("images", images, no_image, len(ids)))
        optional = {}
        for key, sub in (("scribble", "scribbles"), ("mask", "labels")):
            folder = self.root / sub
            if not folder.is_dir():
                optional[key] = None
                continue
            paths = {i: folder / f"{i}.png" for i in ids}
            missing = [i for i, p in paths.items() if not p.is_file()]
            if missing:
                raise DataError(_missing_message(f"{sub} files", folder, missing, len(ids)))
            optional[key] = paths
        samples = [
            SampleFiles(
                name=i,
                image=img,
                scribble=optional["scribble"][i] if optional["scribble"] else None,
                mask=optional["mask"][i] if optional["mask"] else None,
            )
            for i, img in files
        ]
        super().__init__(samples, transform)

    @property
    def num_classes(self) -> int | None:
        if self._num_classes is not None:
            return self._num_classes
        return len(self.classes) if self.classes is not None else None

    @property
    def label_classes(self) -> int | None:
        return self.num_classes

    def __repr__(self) -> str:
        return (f"SegmentationFolder(root={str(self.root)!r}, split={self.split!r}, "
                f"n={len(self)}, classes={self.num_classes})")
