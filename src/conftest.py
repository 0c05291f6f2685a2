"""Doctest collection of ``src/rloss`` (``--doctest-modules``, see pyproject.toml).

Every module under ``src/rloss`` is imported for collection (the ``train``
modules need the ``train`` extra). Examples may use ``torch`` without
importing it (most import it anyway, to read as complete snippets).
"""

from __future__ import annotations

import pytest
import torch

#: Modules whose docstring examples are not run, each with the reason.
#: (Empty: every example in the package runs.)
collect_ignore: list[str] = []


@pytest.fixture(autouse=True)
def _doctest_namespace(doctest_namespace: dict) -> None:
    """``torch`` in every example's namespace, and a fixed seed for reproducible output."""
    doctest_namespace["torch"] = torch
    torch.manual_seed(0)
