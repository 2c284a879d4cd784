"""Reproducible experiments of the invariance papers, one file each.

    invjax experiment --list
    invjax experiment mnist_rotation_augmentation            # < 5 min, 2 CPUs
    invjax experiment random_init_stability --smoke --out /tmp/r

Each module (big_vision style) defines ``get_config(smoke=False,
**overrides)`` and ``run(config, outdir) -> summary``; its docstring gives
the command, the expected runtime and the paper's finding. `_runner` makes
the run directory and records the config, git commit, library versions,
seeds, metrics, results (.npz), figures and a Markdown table. Committed
CPU-scale results live in ``experiments/results/<name>/``.
"""

from experiments._runner import get_experiment
from experiments._runner import names
from experiments._runner import run_experiment

__all__ = ("get_experiment", "names", "run_experiment")
