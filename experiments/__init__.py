"""Reproducible experiments of the invariance papers, one file each.

    invjax experiment --list
    invjax experiment mnist_rotation_augmentation            # < 5 min, 2 CPUs
    invjax experiment random_init_stability --smoke --out /tmp/r
    invjax sweep experiments/random_init_stability.py --out /tmp/s

Each module (big_vision style) defines ``get_config(smoke=False,
**overrides)`` and is a sweep of one or more cells (`invjax.sweep`):
``get_sweep()``, ``run(config, outdir)`` for one cell (optionally
``run_group`` for cells that differ only in seed) and ``summarize(config,
table, outdir) -> summary``; its docstring gives the command, the expected
runtime and the paper's finding. `_runner` makes the run directory, runs the
cells into it and records the config, git commit, library versions, seeds,
metrics, the cells' results (.npz, ``results.parquet``), figures and a
Markdown table; ``invjax sweep experiments/<name>.py --out DIR`` runs the
cells alone. Committed CPU-scale results live in
``experiments/results/<name>/``.
"""

from experiments._runner import get_experiment
from experiments._runner import names
from experiments._runner import run_experiment

__all__ = ("get_experiment", "names", "run_experiment")
