"""Training, evaluation and prediction on Lightning (``pip install rloss[train]``).

- :mod:`rloss.train.config` — typed recipes (:class:`~rloss.train.config.Recipe`), YAML
  loading, ``defaults:`` inheritance, overrides;
- :mod:`rloss.train.models` — the model registry: smp networks and the paper's
  DeepLab-LargeFOV, DeepLab-v2 (ResNet-101, VGG16) and MSC;
- :mod:`rloss.train.module` — the LightningModule (loss, SGD/poly, mIoU);
- :mod:`rloss.train.datamodule` — the LightningDataModule;
- :mod:`rloss.train.metrics` — confusion matrix and mIoU (validation and eval);
- :mod:`rloss.train.checkpoint` — reading checkpoints, ``load_model``;
- :mod:`rloss.train.run_dir` — the run folder (:class:`~rloss.train.run_dir.RunDir`);
- :mod:`rloss.train.inference` — normalisation, ``predict_probs``, ``predict``;
- :mod:`rloss.train.callbacks` — history and atomic checkpoint callbacks;
- :mod:`rloss.train.fit` — ``train``; :mod:`rloss.train.evaluation` — ``evaluate``;
- :mod:`rloss.train.api` — compatibility re-exports of the names above;
- :mod:`rloss.commands.train` — ``rloss train``, ``rloss eval``, ``rloss predict`` (the CLI).

Importing this package is light; Lightning and smp load with the submodules.
"""

__all__ = [
    "api",
    "callbacks",
    "checkpoint",
    "commands",
    "config",
    "datamodule",
    "evaluation",
    "fit",
    "inference",
    "metrics",
    "models",
    "module",
    "run_dir",
]
