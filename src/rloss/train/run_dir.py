"""The run folder: one object that knows its files and the run's status.

Layout written by :func:`rloss.train.fit.train`::

    RUN/config.yaml             resolved recipe (with the class names)
    RUN/checkpoints/last.ckpt   Lightning checkpoint, every epoch and at the end (resume)
    RUN/checkpoints/best-*.ckpt best val mIoU so far
    RUN/model.pt                weights + config only (for load_model/eval/predict)
    RUN/logs/tensorboard/       TensorBoard events
    RUN/logs/csv/metrics.csv    every logged value (csv-resume-<n>/ for the n-th resume)
    RUN/metrics.json            status, final metrics and per-epoch history (atomic)

``metrics.json["status"]`` is ``"running"`` while training (rewritten every epoch),
``"done"`` when :func:`~rloss.train.fit.train` returned and ``"interrupted"`` after
Ctrl-C; :meth:`RunDir.status` is ``None`` when there is no ``metrics.json`` yet.

>>> import tempfile
>>> run = RunDir(tempfile.mkdtemp())
>>> run.status(), run.is_done(), run.has_checkpoint(), run.load_history()
(None, False, False, [])
>>> _ = run.write_metrics({"miou": 0.5}, status="done", history=[{"epoch": 0}])
>>> run.status(), run.load_history()
('done', [{'epoch': 0}])
>>> run.is_done()  # done also needs model.pt
False
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from rloss.train.checkpoint import MODEL_FILE, write_json_atomic
from rloss.train.config import write_yaml_atomic

__all__ = ["STATUSES", "RunDir", "resolve_checkpoint"]

#: Values of ``metrics.json["status"]``.
STATUSES: tuple[str, ...] = ("running", "done", "interrupted")


@dataclass(frozen=True)
class RunDir:
    """A training run folder (nothing is created until something is written).

    Args:
        root: the folder (``~`` is expanded).
    """

    root: Path

    def __init__(self, root: str | Path) -> None:
        object.__setattr__(self, "root", Path(root).expanduser())

    # ------------------------------------------------------------------ files
    @property
    def config_yaml(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last_ckpt(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def model_file(self) -> Path:
        return self.root / MODEL_FILE

    @property
    def metrics_json(self) -> Path:
        return self.root / "metrics.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def weights(self) -> Path:
        """The file that holds the run's network: ``model.pt``, else ``last.ckpt``.

        Raises:
            FileNotFoundError: neither exists (names the folder).
        """
        for path in (self.model_file, self.last_ckpt):
            if path.is_file():
                return path
        raise FileNotFoundError(
            f"run folder {str(self.root)!r} holds neither {MODEL_FILE} nor checkpoints/last.ckpt"
        )

    def best_ckpts(self) -> list[Path]:
        """The ``best-*.ckpt`` files, sorted by name."""
        return sorted(self.checkpoints.glob("best-*.ckpt")) if self.checkpoints.is_dir() else []

    def csv_version(self, resuming: bool) -> str:
        """``csv`` for a new run; ``csv-resume-<n>`` for the n-th resume (Lightning's CSV
        logger would otherwise replace the earlier rows)."""
        if not resuming or not (self.logs / "csv").exists():
            return "csv"
        n = 1
        while (self.logs / f"csv-resume-{n}").exists():
            n += 1
        return f"csv-resume-{n}"

    # ----------------------------------------------------------------- status
    def has_checkpoint(self) -> bool:
        """Whether a run was started here (``last.ckpt`` exists)."""
        return self.last_ckpt.is_file()

    def read_metrics(self) -> dict[str, Any]:
        """``metrics.json`` as a dict (``{}`` when missing or unreadable)."""
        try:
            data = json.loads(self.metrics_json.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def status(self) -> str | None:
        """``"running"``, ``"done"``, ``"interrupted"`` or ``None`` (no metrics yet)."""
        value = self.read_metrics().get("status")
        return value if value in STATUSES else None

    def is_done(self) -> bool:
        """The run finished (``metrics.json`` says ``done``) and ``model.pt`` exists."""
        return self.status() == "done" and self.model_file.is_file()

    def load_history(self) -> list[dict[str, Any]]:
        """Per-epoch history from ``metrics.json`` (``[]`` when there is none)."""
        history = self.read_metrics().get("history") or []
        return [dict(h) for h in history if isinstance(h, Mapping)]

    def saved_config(self) -> dict[str, Any] | None:
        """The resolved recipe in ``config.yaml`` (``None`` when missing or unreadable)."""
        try:
            data = yaml.safe_load(self.config_yaml.read_text())
        except (OSError, yaml.YAMLError):
            return None
        return data if isinstance(data, dict) else None

    # ---------------------------------------------------------------- writing
    def write_metrics(
        self,
        metrics: Mapping[str, Any],
        *,
        status: str,
        history: Sequence[Mapping[str, Any]] = (),
    ) -> Path:
        """Write ``metrics.json`` atomically: ``{"status", **metrics, "history"}``."""
        if status not in STATUSES:
            raise ValueError(f"status: expected one of {list(STATUSES)}, got {status!r}")
        self.root.mkdir(parents=True, exist_ok=True)
        data = {"status": status, **dict(metrics), "history": list(history)}
        return write_json_atomic(data, self.metrics_json)

    def write_config(self, config: Mapping[str, Any]) -> Path:
        """Write ``config.yaml`` atomically."""
        self.root.mkdir(parents=True, exist_ok=True)
        return write_yaml_atomic(config, self.config_yaml)


def resolve_checkpoint(checkpoint: str | Path) -> Path:
    """``checkpoint`` itself, or for a run folder the file with its weights
    (:meth:`RunDir.weights`)."""
    path = Path(checkpoint).expanduser()
    return RunDir(path).weights() if path.is_dir() else path
