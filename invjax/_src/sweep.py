"""Sweeps: many runs of one experiment, resumable, sharded, one tidy table.

A sweep file is a Python file in big_vision's style:

    def get_config():            # the base config, a dict
      return dict(seed=0, transform="rotation", steps=300)

    def get_sweep():             # one dict of overrides per cell
      return invjax.sweep.product(seed=range(5),
                                  transform=["rotation", "scale"])
    # or get_sweep(config), sized by the base config after --set

    def run(config, outdir):     # one cell: {name: MeasureResult or [results]}
      ...

and optionally ``run_group(configs, outdirs)``, which runs cells that differ
only in ``seed`` together (an ensemble in one program) and returns one
``{name: result}`` dict per cell.

The runner (`run`) gives every cell a stable id from its overrides (a readable
slug and a short hash, `cell_id`) and a folder ``out/cells/<id>/``:

    config.json    the cell's overrides and resolved config (written first)
    results/       its MeasureResults (`MeasureResult.save`)
    DONE           the completion marker, written last and atomically: it
                   lists the result files and the runtime
    error.txt      the traceback, when the cell's run raised
    ...            whatever the sweep's run writes (checkpoints, logs)

A cell with ``DONE`` is skipped on a rerun (nothing trained or measured); a
cell without it runs again with the same folder, so training resumes from
its checkpoints (`invjax.train.fit(..., workdir=)`) and a measurement from its
workdir (`invjax.measure(..., workdir=, checkpoint_every=)`). Nothing but the
cells' folders is needed to rebuild the table (`load`), so shards written by
different hosts into one shared folder give one table.
"""

from __future__ import annotations

import copy
import json
import os
import re
import time
import traceback
import types
from typing import Any, Mapping, Sequence

from invjax._src import files
from invjax._src.result import MeasureResult
from invjax._src.sweep_cells import _FORMAT
from invjax._src.sweep_cells import _jsonable
from invjax._src.sweep_cells import CELLS
from invjax._src.sweep_cells import Cell
from invjax._src.sweep_cells import cells
from invjax._src.sweep_cells import CONFIG_FILE
from invjax._src.sweep_cells import DONE_FILE
from invjax._src.sweep_cells import groups
from invjax._src.sweep_cells import load_module
from invjax._src.sweep_cells import parse_shard
from invjax._src.sweep_cells import RESULTS_DIR
from invjax._src.sweep_cells import shard_cells
from invjax._src.sweep_table import _read_json
from invjax._src.sweep_table import load
from invjax._src.sweep_table import write


# --- a cell's files -----------------------------------------------------------


def cell_dir(out: str | os.PathLike, cell: Cell | str) -> str:
  return os.path.join(os.fspath(out), CELLS,
                      cell.id if isinstance(cell, Cell) else cell)


def _record(cell: Cell) -> dict[str, Any]:
  return {"format": _FORMAT, "id": cell.id, "index": cell.index,
          "overrides": cell.overrides, "config": _jsonable(cell.config)}


def is_complete(out: str | os.PathLike, cell: Cell | str) -> bool:
  """Whether the cell's completion marker is there."""
  return os.path.isfile(os.path.join(cell_dir(out, cell), DONE_FILE))


def _check_same_config(out: str, cell: Cell) -> None:
  """A cell folder from another config must not be reused silently."""
  path = os.path.join(cell_dir(out, cell), CONFIG_FILE)
  if not os.path.isfile(path):
    return
  try:
    stored = _read_json(path)
  except (OSError, ValueError):
    return  # damaged: rewritten when the cell (re)runs
  if not isinstance(stored, dict):
    return
  new = _record(cell)["config"]
  old = stored.get("config")
  if old != new:
    keys = sorted(k for k in set(old or {}) | set(new)
                  if (old or {}).get(k, "<absent>") != new.get(k, "<absent>"))
    raise ValueError(
        f"cell {cell.id} in {out} was run with another config (differs in "
        f"{', '.join(keys) or 'its layout'}); its results would mix two "
        "settings. Use another --out, or delete that cell's folder to redo it")


def _result_items(results: Any, where: str
                  ) -> list[tuple[str, int, MeasureResult]]:
  """[(name, index, result)] of ``{name: result or [results]}``."""
  if not isinstance(results, Mapping):
    raise ValueError(f"{where} must return a dict {{name: MeasureResult or "
                     f"[MeasureResults]}}, got {type(results).__name__}")
  items = []
  for name, value in results.items():
    if not isinstance(name, str) or not name:
      raise ValueError(f"{where}: result names must be non-empty strings, "
                       f"got {name!r}")
    many = isinstance(value, (list, tuple))
    for i, r in enumerate(value if many else [value]):
      if not isinstance(r, MeasureResult):
        raise ValueError(f"{where}: result {name!r}"
                         f"{f'[{i}]' if many else ''} is a "
                         f"{type(r).__name__}, not a MeasureResult")
      items.append((name, i, r))
  return items


def _finish_cell(out: str, cell: Cell, results: Any, runtime_s: float,
                 where: str) -> None:
  """Saves the results, then the DONE marker (last, atomically)."""
  items = _result_items(results, where)
  directory = cell_dir(out, cell)
  os.makedirs(os.path.join(directory, RESULTS_DIR), exist_ok=True)
  manifest = []
  for j, (name, i, r) in enumerate(items):
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:40]
    rel = os.path.join(RESULTS_DIR, f"{j:03d}-{safe}-{i}.npz")
    r.save(os.path.join(directory, rel))
    manifest.append({"name": name, "index": i, "file": rel})
  files.atomic_write_text(
      os.path.join(directory, DONE_FILE),
      json.dumps({"format": _FORMAT, "id": cell.id, "results": manifest,
                  "runtime_s": runtime_s}, indent=1))


def _start_cell(out: str, cell: Cell) -> str:
  directory = cell_dir(out, cell)
  os.makedirs(directory, exist_ok=True)
  files.atomic_write_text(os.path.join(directory, CONFIG_FILE),
                          json.dumps(_record(cell), indent=1))
  return directory


def _run_group(module: types.ModuleType, out: str, group: list[Cell]) -> None:
  """Runs one group's cells (``run_group`` or ``run``) and saves each."""
  dirs = [_start_cell(out, c) for c in group]
  configs = [copy.deepcopy(c.config) for c in group]
  t0 = time.perf_counter()
  try:
    if len(group) > 1 or (callable(getattr(module, "run_group", None)) and
                          group[0].config.get("ensemble", True) is not False):
      where = "run_group"
      per_cell = module.run_group(configs, dirs)
      if (not isinstance(per_cell, Sequence) or isinstance(per_cell, Mapping)
          or len(per_cell) != len(group)):
        raise ValueError(f"run_group got {len(group)} configs and must "
                         f"return a list of {len(group)} {{name: result}} "
                         f"dicts, one per config; got {per_cell!r:.200}")
    else:
      where = "run"
      per_cell = [module.run(configs[0], dirs[0])]
  except BaseException:
    for d in dirs:
      files.atomic_write_text(os.path.join(d, "error.txt"),
                              traceback.format_exc())
    raise
  # A group's cells ran together: each is charged an equal share.
  runtime = (time.perf_counter() - t0) / len(group)
  for c, results in zip(group, per_cell):
    _finish_cell(out, c, results, runtime, f"{where} (cell {c.id})")
    stale = os.path.join(cell_dir(out, c), "error.txt")
    if os.path.exists(stale):
      os.remove(stale)


# --- running ------------------------------------------------------------------


def run(sweep: Any, out: str | os.PathLike, *,
        shard: str | Sequence[int] = (0, 1),
        settings: Mapping[str, Any] | None = None, progress: bool = True,
        write_table: bool = True):
  """Runs the incomplete cells of a sweep (or of one shard of it).

  Args:
    sweep: a sweep module, the path of a sweep file, or a module name.
    out: the sweep's folder; cells go to ``out/cells/<id>/`` and the table
      to ``out/results.parquet``. Shards of one sweep share it.
    shard: ``(i, n)`` or ``"i/n"``: run only cells k with k mod n = i (one
      Slurm array task, one process per TPU VM).
    settings: base-config overrides for every cell (``--set``).
    progress: a tqdm bar over the shard's cells, on stderr.
    write_table: afterwards, rebuild ``results.parquet`` from every complete
      cell in ``out`` (with shards, the last to finish sees them all;
      ``collect`` rebuilds it at any time).

  Returns:
    The table (`load`) of every complete cell in ``out``.

  Raises:
    ValueError: a bad sweep or shard, or a cell folder in ``out`` made with
      another config. An error in a cell's run propagates (after writing
      ``error.txt`` in its folder); completed cells keep their results and
      a rerun continues with the rest.
  """
  module = load_module(sweep)
  out = os.fspath(out)
  selected = shard_cells(cells(module, settings), shard)
  for c in selected:
    _check_same_config(out, c)
  todo = [c for c in selected if not is_complete(out, c)]
  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    i, n = parse_shard(shard)
    bar = tqdm(total=len(selected), initial=len(selected) - len(todo),
               desc="sweep" if n == 1 else f"sweep {i}/{n}", unit="cell")
  try:
    for group in groups(todo, module):
      if bar is not None:
        bar.set_postfix_str(group[0].id if len(group) == 1 else
                            f"{group[0].id} +{len(group) - 1}")
      _run_group(module, out, group)
      if bar is not None:
        bar.update(len(group))
  finally:
    if bar is not None:
      bar.close()
  table = load(out)
  if write_table:
    write(table, out)
  return table


def status(sweep: Any, out: str | os.PathLike, *,
           shard: str | Sequence[int] = (0, 1),
           settings: Mapping[str, Any] | None = None
           ) -> list[tuple[Cell, str]]:
  """[(cell, "done" | "started" | "todo")] of a shard's cells in ``out``."""
  out = os.fspath(out)
  rows = []
  for c in shard_cells(cells(sweep, settings), shard):
    if is_complete(out, c):
      state = "done"
    elif os.path.isdir(cell_dir(out, c)):
      state = "started"
    else:
      state = "todo"
    rows.append((c, state))
  return rows
