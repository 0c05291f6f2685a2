"""Compatibility module: the names ``rloss.train.api`` has always exported.

New code imports from the module that owns each name:

* :mod:`rloss.train.fit` — :func:`train`, :class:`TrainResult`, :class:`TrainingInterrupted`;
* :mod:`rloss.train.evaluation` — :func:`evaluate`, :func:`format_iou_table`;
* :mod:`rloss.train.inference` — :func:`normalize_image`, :func:`predict_probs`,
  :func:`crf_refine`, :func:`predict`;
* :mod:`rloss.train.checkpoint` — :func:`read_checkpoint`, :func:`load_weights`,
  :func:`load_model`, :data:`MODEL_FILE`, :func:`write_json_atomic`;
* :mod:`rloss.train.run_dir` — :class:`RunDir` (the run folder layout);
* :mod:`rloss.train.callbacks` — :func:`summary`, :class:`HistoryCallback`.

Stable entry points, as before: :func:`train`, :func:`load_model`, :func:`predict_probs`,
:func:`evaluate`, :func:`predict`.
"""

from __future__ import annotations

from rloss.data.io import IMAGE_EXTENSIONS
from rloss.train.callbacks import summary
from rloss.train.checkpoint import (
    MODEL_FILE,
    _json_safe,
    _torch_save_atomic,
    load_model,
    load_weights,
    read_checkpoint,
    write_json_atomic,
)
from rloss.train.evaluation import evaluate, format_iou_table
from rloss.train.fit import TrainingInterrupted, TrainResult, train
from rloss.train.inference import crf_refine, normalize_image, predict, predict_probs
from rloss.train.run_dir import RunDir

#: Image file suffixes :func:`predict` picks up in folders (:data:`rloss.data.io.IMAGE_EXTENSIONS`).
IMAGE_SUFFIXES: tuple[str, ...] = IMAGE_EXTENSIONS

__all__ = [
    "IMAGE_SUFFIXES",
    "MODEL_FILE",
    "RunDir",
    "TrainResult",
    "TrainingInterrupted",
    "_json_safe",
    "_torch_save_atomic",
    "crf_refine",
    "evaluate",
    "format_iou_table",
    "load_model",
    "load_weights",
    "normalize_image",
    "predict",
    "predict_probs",
    "read_checkpoint",
    "summary",
    "train",
    "write_json_atomic",
]
