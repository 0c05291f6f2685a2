"""``rloss demo``: what the regularizer buys, offline, in minutes on a CPU.

The demo generates the built-in dataset (:func:`rloss.data.demo_scenes.generate_synthetic`:
textured shapes whose boundaries follow colour edges, with sparse scribbles) and trains
the same network with the same schedule three (or four) ways through
:func:`rloss.train.fit.train`:

(a) ``pce``: partial cross-entropy on the scribbles;
(b) ``densecrf``: pCE + the DenseCRF loss (the paper's two-phase recipe: phase 2
    fine-tunes the phase-1 pCE model with the regularizer added);
(c) ``full``: cross-entropy on the full masks (the upper bound);
(d) ``ncut`` (``--ncut``): pCE + the Normalized Cut loss, like (b).

Every method gets the same two phases (phase 1 from scratch, phase 2 fine-tuning at a
lower learning rate); (a) simply continues without a regularizer, so (a) and (b) differ
only by the loss.

It then writes a report folder ``OUT/report/``: ``results.md`` and ``results.json`` (mIoU
per method, labelled-pixel fraction, seconds per iteration, and the share of the
(a)→(c) gap closed by (b), ``(b − a) / (c − a)``), ``predictions.png`` (image / scribbles /
prediction per method / ground truth for a few val images), ``curves.png`` (training
loss and val mIoU per epoch), and ``gradient.png`` (the DenseCRF loss gradient on the
pCE model's prediction for one val image, see :func:`rloss.viz.densecrf_gradient_maps`).

Layout of ``OUT``: ``data/`` (the generated dataset), ``runs/<method>/`` (run folders of
:func:`~rloss.train.fit.train`), ``report/``, ``demo.json`` (the settings). A finished
run is reused and an interrupted one resumes from its last checkpoint, so re-running
the same command continues where it stopped; a folder holding a demo with other
settings is refused unless ``--overwrite``.

The package: :mod:`~rloss.demo.settings` (every hyper-parameter, :data:`DEFAULTS` and
:data:`QUICK`), :mod:`~rloss.demo.recipes` (the training recipe of each method),
:mod:`~rloss.demo.runner` (:func:`run_demo`: data, training, resume) and
:mod:`~rloss.demo.report` (tables and figures, through the library's own dataset,
inference and metric code). The command line is in :mod:`rloss.commands`.
"""

from __future__ import annotations

import argparse

from rloss.demo.recipes import demo_recipes
from rloss.demo.report import aggregate_results, gap_closed
from rloss.demo.runner import run_demo
from rloss.demo.settings import DEFAULTS, METHODS, QUICK, RUNS, demo_settings

__all__ = [
    "DEFAULTS",
    "METHODS",
    "QUICK",
    "RUNS",
    "aggregate_results",
    "demo_recipes",
    "demo_settings",
    "gap_closed",
    "register",
    "run_demo",
]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Deprecated: ``rloss demo`` is registered by :mod:`rloss.commands.demo`."""
    import warnings

    from rloss.commands.demo import register as _register

    warnings.warn(
        "rloss.demo.register is deprecated; the command lives in rloss.commands.demo",
        DeprecationWarning,
        stacklevel=2,
    )
    _register(subparsers)
