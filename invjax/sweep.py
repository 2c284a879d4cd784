"""Sweeps: many cells of one experiment, resumable and sharded, one table.

    # my_sweep.py
    def get_config():
      return dict(seed=0, transform="rotation", steps=300)
    def get_sweep():
      return invjax.sweep.product(seed=range(5),
                                  transform=["rotation", "scale"])
    def run(config, outdir):
      ...                                  # train and measure one cell
      return {"nv": result}

    invjax.sweep.run("my_sweep.py", "runs/my_sweep", shard=(0, 1))
    table = invjax.sweep.load("runs/my_sweep")   # pandas: one row per layer

See `invjax._src.sweep` for the folder layout and the rules.
"""

from invjax._src.sweep import is_complete
from invjax._src.sweep import run
from invjax._src.sweep import status
from invjax._src.sweep_cells import cell_id
from invjax._src.sweep_cells import cells
from invjax._src.sweep_cells import groups
from invjax._src.sweep_cells import load_module
from invjax._src.sweep_cells import parse_set
from invjax._src.sweep_cells import parse_shard
from invjax._src.sweep_cells import product
from invjax._src.sweep_cells import shard_cells
from invjax._src.sweep_table import collect
from invjax._src.sweep_table import load

__all__ = (
    "cell_id",
    "cells",
    "collect",
    "groups",
    "is_complete",
    "load",
    "load_module",
    "parse_set",
    "parse_shard",
    "product",
    "run",
    "shard_cells",
    "status",
)
