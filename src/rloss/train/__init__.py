"""Training, evaluation and prediction on Lightning (``pip install rloss[train]``).

- :mod:`rloss.train.config` — YAML recipes, overrides, validation;
- :mod:`rloss.train.models` — smp networks and the paper's DeepLab-LargeFOV,
  DeepLab-v2 (ASPP) and MSC;
- :mod:`rloss.train.module` — the LightningModule (loss, SGD/poly, mIoU);
- :mod:`rloss.train.datamodule` — the LightningDataModule;
- :mod:`rloss.train.api` — ``train``, ``load_model``, ``evaluate``, ``predict``;
- :mod:`rloss.train.commands` — ``rloss train``, ``rloss eval``, ``rloss predict``.

Importing this package is light; Lightning and smp load with the submodules.
"""

__all__ = ["api", "commands", "config", "datamodule", "models", "module"]
