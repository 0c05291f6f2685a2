"""The docstring examples of the training package run as written."""

from __future__ import annotations

import doctest
import importlib

import pytest

pytest.importorskip("lightning")
pytest.importorskip("segmentation_models_pytorch")

MODULES = [
    "rloss.data.transforms",
    "rloss.train.checkpoint",
    "rloss.train.config",
    "rloss.train.fit",
    "rloss.train.metrics",
    "rloss.train.run_dir",
]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0, result
