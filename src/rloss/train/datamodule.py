"""LightningDataModule over VOCScribble, SegmentationFolder or the synthetic scenes.

Training items are random crops (``TrainTransform``); validation items are full
resolution (``EvalTransform``), batched one image at a time by default or padded
with :func:`rloss.data.transforms.pad_collate` (the sample contract's
:data:`~rloss.data.transforms.PAD_VALUES`) for larger batches.

Under DDP, Lightning wraps the training loader in a ``DistributedSampler``; the
validation loader uses :class:`UnpaddedDistributedSampler`, which splits the val
set across processes without repeating images, so the reduced confusion matrix
(and the mIoU) is exactly that of one process.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from rloss.constants import VOC_CLASSES
from rloss.data.demo_scenes import SyntheticScenes
from rloss.data.folder import SegmentationFolder
from rloss.data.transforms import EvalTransform, TrainTransform, pad_collate
from rloss.data.voc import VOCScribble
from rloss.train.config import DataSpec

__all__ = [
    "SegmentationDataModule",
    "UnpaddedDistributedSampler",
    "build_dataset",
    "dataset_classes",
    "pad_collate",
]


class UnpaddedDistributedSampler(DistributedSampler):
    """Split a dataset across processes in order without repeating items.

    Process ``r`` of ``R`` gets indices ``r, r + R, r + 2R, ...``; processes may get
    one item fewer than others, which is fine for evaluation (no collective op per
    step; metrics are reduced once at epoch end).
    """

    def __init__(
        self, dataset: Dataset, num_replicas: int | None = None, rank: int | None = None
    ) -> None:
        super().__init__(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=False
        )
        self.num_samples = len(range(self.rank, len(dataset), self.num_replicas))  # type: ignore[arg-type]
        self.total_size = len(dataset)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return self.num_samples


def dataset_classes(dataset: Any, num_classes: int | None = None) -> list[str]:
    """Class names of ``dataset``: its ``classes``, VOC names for 21 classes, else ``class_i``."""
    for obj in (dataset, getattr(dataset, "dataset", None)):
        names = getattr(obj, "classes", None)
        if names is not None and not isinstance(names, int):
            return [str(n) for n in names]
    n = num_classes
    if n is None:
        for obj in (dataset, getattr(dataset, "dataset", None)):
            n = getattr(obj, "num_classes", None)
            if n is not None:
                break
    if n is None:
        raise ValueError("dataset has neither `classes` nor `num_classes`; set model.num_classes")
    if n == len(VOC_CLASSES):
        return list(VOC_CLASSES)
    return [f"class_{i}" for i in range(int(n))]


def build_dataset(data: Mapping[str, Any] | DataSpec, split: str) -> Dataset:
    """Build the train or val dataset of a recipe's ``data`` section.

    Args:
        data: the ``data`` section (``kind``, ``root``, ``crop_size``, ...), as a
            :class:`~rloss.train.config.DataSpec` or a mapping.
        split: ``"train"`` or ``"val"``.
    """
    if split not in ("train", "val"):
        raise ValueError(f"split: expected 'train' or 'val', got {split!r}")
    if isinstance(data, DataSpec):
        data = data.as_mapping()
    if split == "train":
        transform = TrainTransform(
            int(data["crop_size"]), scale_range=tuple(data["scale_range"]), flip=bool(data["flip"])
        )
    else:
        transform = EvalTransform()
    kind = data["kind"]
    if kind == "acdc":  # acdc dispatch (rloss.data.acdc)
        from rloss.data.acdc import build_acdc_dataset

        return build_acdc_dataset(data, split)
    if kind == "synthetic":
        syn = data.get("synthetic") or {}
        return SyntheticScenes(
            int(syn.get("num_train" if split == "train" else "num_val", 8)),
            tuple(syn.get("size", (64, 64))),
            seed=int(syn.get("seed", 0)),
            scribble_fraction=float(syn.get("scribble_fraction", 0.03)),
            split=split,
            transform=transform,
        )
    name = data["train_split"] if split == "train" else data["val_split"]
    root = Path(str(data["root"])).expanduser()
    if kind == "voc_scribble":
        return VOCScribble(root, split=name, transform=transform)
    if kind == "folder":
        return SegmentationFolder(root, split=name, transform=transform)
    raise ValueError(f"data.kind: unknown kind {kind!r}")


class SegmentationDataModule(pl.LightningDataModule):
    """Train/val loaders for a recipe's ``data`` section.

    Args:
        data: the ``data`` section of a resolved recipe
            (:class:`~rloss.train.config.DataSpec` or its mapping).
        train_dataset: use this dataset instead of building one (sample dicts of the
            data contract).
        val_dataset: likewise for validation (full-resolution items).
    """

    def __init__(
        self,
        data: Mapping[str, Any] | DataSpec,
        train_dataset: Dataset | None = None,
        val_dataset: Dataset | None = None,
    ) -> None:
        super().__init__()
        self.data = data.as_mapping() if isinstance(data, DataSpec) else dict(data)
        self._train = train_dataset
        self._val = val_dataset

    @property
    def train_dataset(self) -> Dataset:
        if self._train is None:
            self._train = build_dataset(self.data, "train")
        return self._train

    @property
    def val_dataset(self) -> Dataset:
        if self._val is None:
            self._val = build_dataset(self.data, "val")
        return self._val

    @property
    def classes(self) -> list[str]:
        """Class names (index = label value)."""
        return dataset_classes(self.val_dataset)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _workers(self) -> int:
        return int(self.data.get("num_workers", 0))

    def train_dataloader(self) -> DataLoader:
        n = len(self.train_dataset)  # type: ignore[arg-type]
        bs = int(self.data["batch_size"])
        return DataLoader(
            self.train_dataset,
            batch_size=bs,
            shuffle=True,
            drop_last=n >= bs * 2,
            num_workers=self._workers(),
            persistent_workers=self._workers() > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def val_dataloader(self) -> DataLoader:
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            world = torch.distributed.get_world_size()
            if world > 1:
                sampler = UnpaddedDistributedSampler(self.val_dataset)
        return DataLoader(
            self.val_dataset,
            batch_size=int(self.data.get("val_batch_size", 1)),
            shuffle=False,
            sampler=sampler,
            num_workers=self._workers(),
            collate_fn=pad_collate,
            pin_memory=torch.cuda.is_available(),
        )
