"""Sweeps: many runs of one experiment, resumable, sharded, one tidy table.

A sweep file is a Python file in big_vision's style:

    def get_config():            # the base config, a dict
      return dict(seed=0, transform="rotation", steps=300)

    def get_sweep():             # one dict of overrides per cell
      return invjax.sweep.product(seed=range(5), transform=["rotation", "scale"])
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

import ast
import copy
import hashlib
import importlib
import importlib.util
import inspect
import itertools
import json
import math
import os
import re
import sys
import time
import traceback
import types
from typing import Any, Iterable, Mapping, Sequence

from invjax._src import files
from invjax._src.result import MeasureResult
from invjax._src.result import load_result

CELLS = "cells"
CONFIG_FILE = "config.json"
DONE_FILE = "DONE"
RESULTS_DIR = "results"
TABLE_FILE = "results.parquet"
_FORMAT = "invjax-sweep-cell-1"

# The table's own columns, after the swept keys; a swept key may not take one
# of these names (it would overwrite it).
COLUMNS = ("cell", "result", "result_index", "measure", "settings", "layer",
           "layer_index", "relative_depth", "value", "nonfinite_samples",
           "zero_division", "runtime_s")


# --- building a sweep -----------------------------------------------------------


def product(**axes: Iterable[Any]) -> list[dict[str, Any]]:
  """The grid of every combination of the given values, one dict per cell.

  Cells come in `itertools.product` order: the first keyword varies slowest
  and the last fastest, so ``product(seed=range(2), transform=["a", "b"])``
  is ``[{seed: 0, transform: "a"}, {seed: 0, transform: "b"}, {seed: 1,
  transform: "a"}, {seed: 1, transform: "b"}]``. Concatenate lists of
  products for sweeps that are not one grid.

  Raises:
    ValueError: no axes, or an axis without values.
  """
  if not axes:
    raise ValueError("product needs at least one keyword, e.g. "
                     "product(seed=range(3))")
  values = {}
  for key, vals in axes.items():
    if isinstance(vals, (str, bytes)) or not isinstance(vals, Iterable):
      raise ValueError(f"product: {key}= must be a list or range of values, "
                       f"got {vals!r}")
    values[key] = list(vals)
    if not values[key]:
      raise ValueError(f"product: {key}= has no values")
  return [dict(zip(values, combo))
          for combo in itertools.product(*values.values())]


def _plain(value: Any, where: str) -> Any:
  """``value`` as plain JSON data (NumPy scalars to Python, tuples to lists)."""
  if isinstance(value, (bool, str)) or value is None:
    return value
  if isinstance(value, int):
    return int(value)
  if isinstance(value, float):
    return float(value)
  kind = getattr(getattr(value, "dtype", None), "kind", None)
  if kind is not None and getattr(value, "ndim", None) == 0:  # NumPy scalars
    if kind == "b":
      return bool(value)
    if kind in "iu":
      return int(value)
    if kind == "f":
      return float(value)
  if isinstance(value, (list, tuple)):
    return [_plain(v, where) for v in value]
  if isinstance(value, Mapping):
    return {str(k): _plain(v, where) for k, v in value.items()}
  raise ValueError(f"{where}: {value!r} ({type(value).__name__}) is not a "
                   "number, string, bool, None, list or dict; sweep values "
                   "must be plain data so that cell ids are stable")


def _canonical(overrides: Mapping[str, Any]) -> str:
  return json.dumps(_plain(dict(overrides), "overrides"), sort_keys=True,
                    separators=(",", ":"), allow_nan=True)


def _slug_value(value: Any) -> str:
  if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
    return repr(value)  # 1.0, not 1: a float and an int are distinct cells
  if isinstance(value, (list, dict)):
    return json.dumps(value, sort_keys=True, separators=(",", ":"))
  return str(value)


def cell_id(overrides: Mapping[str, Any], *, max_slug: int = 60) -> str:
  """A stable, readable, file-name-safe id of one cell's overrides.

  ``{"transform": "rotation", "seed": 0}`` becomes
  ``"seed=0_transform=rotation-1a2b3c4d"``: ``key=value`` pairs (keys
  sorted) joined by ``_`` and squeezed into ``[A-Za-z0-9._=-]``, cut
  to ``max_slug`` characters, then the first 8 hex digits of the SHA-256 of
  the overrides' canonical JSON. The hash makes ids distinct even where the
  slug is cut or squeezes two values alike ("a b" and "a_b"); it depends
  only on the overrides (not on their order, not on the base config), so
  the same cell has the same id on every host and every rerun.
  """
  plain = _plain(dict(overrides), "overrides")
  digest = hashlib.sha256(_canonical(plain).encode()).hexdigest()[:8]
  parts = [f"{k}={_slug_value(plain[k])}" for k in sorted(plain)]
  slug = re.sub(r"[^A-Za-z0-9._=-]+", "_", "_".join(parts))
  slug = slug.strip("._-")[:max_slug].rstrip("._-") or "base"
  return f"{slug}-{digest}"


def parse_shard(text: str | Sequence[int]) -> tuple[int, int]:
  """``"i/n"`` (or ``(i, n)``) as ``(i, n)``, with 0 <= i < n.

  Raises:
    ValueError: not of that form, n < 1, or i outside [0, n).
  """
  if isinstance(text, str):
    m = re.fullmatch(r"\s*(-?\d+)\s*/\s*(-?\d+)\s*", text)
    if not m:
      raise ValueError(f"--shard must be i/n with integers 0 <= i < n (e.g. "
                       f"0/4), got {text!r}")
    i, n = int(m.group(1)), int(m.group(2))
  else:
    try:
      i, n = (int(v) for v in text)
    except (TypeError, ValueError):
      raise ValueError(f"shard must be (i, n) with integers 0 <= i < n, got "
                       f"{text!r}") from None
  if n < 1:
    raise ValueError(f"shard i/n needs n >= 1 shards, got n = {n}")
  if not 0 <= i < n:
    raise ValueError(f"shard i/n needs 0 <= i < n, got i = {i} with n = {n} "
                     f"(shards are numbered 0..{n - 1}, as Slurm's "
                     "SLURM_ARRAY_TASK_ID with --array=0-{n - 1})")
  return i, n


def parse_set(items: Iterable[str]) -> dict[str, Any]:
  """``--set key=value`` items: Python literals, else strings.

  ``true``/``false``/``none`` (any case) are True, False and None.

  Raises:
    ValueError: an item without ``=`` or with an empty key.
  """
  out = {}
  for item in items:
    if "=" not in item:
      raise ValueError(f"--set expects key=value, got {item!r}")
    key, text = (s.strip() for s in item.split("=", 1))
    if not key:
      raise ValueError(f"--set expects key=value, got {item!r} (no key)")
    lowered = text.lower()
    if lowered in ("true", "false", "none", "null"):
      out[key] = {"true": True, "false": False}.get(lowered)
      continue
    try:
      out[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      out[key] = text
  return out


# --- the sweep module ---------------------------------------------------------


def _import_file(path: str) -> types.ModuleType:
  """Imports a sweep file once per version of it (path and mtime).

  Importing it again would define its model classes anew, and JAX would
  compile every program again for the "new" model; a file changed since
  is imported afresh.
  """
  # A name per path: two sweep files with one base name stay apart.
  name = "invjax_sweep_" + hashlib.sha256(path.encode()).hexdigest()[:12]
  mtime = os.stat(path).st_mtime_ns
  module = sys.modules.get(name)
  if module is not None and getattr(module, "__invjax_mtime__", None) == mtime:
    return module
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  module.__invjax_mtime__ = mtime
  sys.modules[name] = module  # dataclasses and pickling look it up
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
  return module


def load_module(sweep: str | os.PathLike | types.ModuleType) -> types.ModuleType:
  """The sweep module: a module object, a path to a ``.py`` file, or a name.

  Raises:
    ValueError: no such file, or the module lacks ``get_config``,
      ``get_sweep`` or ``run``.
  """
  if isinstance(sweep, types.ModuleType):
    module = sweep
  else:
    text = os.fspath(sweep)
    if text.endswith(".py") or os.sep in text:
      if not os.path.isfile(text):
        raise ValueError(f"no sweep file at {text}")
      module = _import_file(os.path.abspath(text))
    else:
      module = importlib.import_module(text)
  missing = [f for f in ("get_config", "get_sweep", "run")
             if not callable(getattr(module, f, None))]
  if missing:
    raise ValueError(f"sweep {getattr(module, '__file__', module.__name__)} "
                     f"does not define {', '.join(missing)}(); a sweep file "
                     "defines get_config(), get_sweep() and run(config, "
                     "outdir)")
  return module


def _set_key(config: dict, key: str, value: Any, where: str) -> None:
  """config[key] = value; ``a.b`` sets config["a"]["b"] (nested dicts)."""
  *path, last = key.split(".")
  node = config
  for part in path:
    if not isinstance(node.get(part), dict):
      raise ValueError(f"{where}: {key!r} names no nested dict {part!r} of "
                       "the base config")
    node = node[part]
  if last not in node:
    known = ", ".join(sorted(node))
    raise ValueError(f"{where}: {key!r} is not a key of the base config "
                     f"(get_config() has: {known}); add it to get_config()")
  node[last] = copy.deepcopy(value)


def _get_key(config: Mapping[str, Any], key: str) -> Any:
  node: Any = config
  for part in key.split("."):
    node = node[part]
  return node


class Cell:
  """One cell of a sweep: its position, overrides, id and resolved config."""

  def __init__(self, index: int, overrides: dict[str, Any],
               config: dict[str, Any]):
    self.index = index
    self.overrides = overrides
    self.id = cell_id(overrides)
    self.config = config

  def __repr__(self) -> str:
    return f"Cell({self.index}, {self.id})"


def cells(sweep: Any, settings: Mapping[str, Any] | None = None) -> list[Cell]:
  """The sweep's cells, in ``get_sweep()`` order, with resolved configs.

  Each config is ``get_config()``, then ``settings`` (``--set``), then the
  cell's overrides. A ``get_sweep(config)`` that takes an argument gets the
  base config after ``settings``, so ``--set num_seeds=3`` can size a grid. Keys are checked against the base config, so a typo is
  an error rather than a silently unswept run.

  Raises:
    ValueError: ``get_sweep()`` is not a non-empty list of dicts, an
      override or setting names a key the base config lacks, a setting sets
      a swept key, or two cells have the same overrides.
  """
  module = load_module(sweep)
  base = module.get_config()
  if not isinstance(base, Mapping):
    raise ValueError(f"get_config() must return a dict, got "
                     f"{type(base).__name__}")
  base = copy.deepcopy(dict(base))
  for key, value in (settings or {}).items():
    _set_key(base, key, value, "--set")
  # get_sweep(config) may read the base config (after --set): a grid whose
  # size is a setting, e.g. num_seeds.
  takes_config = bool(inspect.signature(module.get_sweep).parameters)
  grid = (module.get_sweep(copy.deepcopy(base)) if takes_config else
          module.get_sweep())
  if isinstance(grid, Mapping) or not isinstance(grid, Sequence):
    raise ValueError("get_sweep() must return a list of override dicts, got "
                     f"{type(grid).__name__}")
  if not grid:
    raise ValueError("get_sweep() returned no cells")
  swept = set()
  out, seen = [], {}
  for k, overrides in enumerate(grid):
    if not isinstance(overrides, Mapping):
      raise ValueError(f"get_sweep()[{k}] must be a dict of overrides, got "
                       f"{overrides!r}")
    overrides = _plain(dict(overrides), f"get_sweep()[{k}]")
    for key in overrides:
      if key in COLUMNS:
        raise ValueError(f"get_sweep()[{k}]: swept key {key!r} is the name "
                         f"of a column of the results table {COLUMNS}; "
                         "rename it")
    swept.update(overrides)
    config = copy.deepcopy(base)
    for key, value in overrides.items():
      _set_key(config, key, value, f"get_sweep()[{k}]")
    cell = Cell(k, overrides, config)
    if cell.id in seen:
      raise ValueError(f"get_sweep()[{k}] and get_sweep()[{seen[cell.id]}] "
                       f"have the same overrides {overrides}; every cell "
                       "must differ")
    seen[cell.id] = k
    out.append(cell)
  clash = sorted(swept & set(settings or {}))
  if clash:
    raise ValueError(f"--set {', '.join(clash)}: swept by get_sweep(), so "
                     "each cell sets its own value")
  return out


def shard_cells(all_cells: Sequence[Cell],
                shard: str | Sequence[int] = (0, 1)) -> list[Cell]:
  """The cells of shard i of n: those at positions k with k mod n = i."""
  i, n = parse_shard(shard)
  return [c for c in all_cells if c.index % n == i]


def groups(selected: Sequence[Cell], module: types.ModuleType | None = None
           ) -> list[list[Cell]]:
  """Cells that differ only in ``seed``, as groups, in order of first cell.

  Without a ``run_group`` in ``module``, or for cells whose config sets
  ``ensemble: False``, every cell is a group of its own.
  """
  grouped = module is not None and callable(getattr(module, "run_group",
                                                    None))
  out: dict[str, list[Cell]] = {}
  for c in selected:
    if grouped and c.config.get("ensemble", True) is not False:
      key = _canonical({k: v for k, v in c.overrides.items() if k != "seed"})
    else:
      key = f"single:{c.id}"
    out.setdefault(key, []).append(c)
  return list(out.values())


# --- a cell's files -------------------------------------------------------------


def cell_dir(out: str | os.PathLike, cell: Cell | str) -> str:
  return os.path.join(os.fspath(out), CELLS,
                      cell.id if isinstance(cell, Cell) else cell)


def _jsonable(value: Any) -> Any:
  """Plain data for config.json; other objects by their repr."""
  try:
    return _plain(value, "config")
  except ValueError:
    if isinstance(value, (list, tuple)):
      return [_jsonable(v) for v in value]
    if isinstance(value, Mapping):
      return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)


def _record(cell: Cell) -> dict[str, Any]:
  return {"format": _FORMAT, "id": cell.id, "index": cell.index,
          "overrides": cell.overrides, "config": _jsonable(cell.config)}


def _read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


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


# --- running --------------------------------------------------------------------


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


def write(table: Any, out: str | os.PathLike) -> str:
  """Writes ``table`` to ``out/results.parquet`` atomically; returns the path."""
  path = os.path.join(os.fspath(out), TABLE_FILE)
  os.makedirs(os.fspath(out), exist_ok=True)
  with files.atomic_open(path, "wb") as f:
    table.to_parquet(f, index=False)
  return path


def collect(out: str | os.PathLike):
  """Rebuilds ``out/results.parquet`` from the cells' files; returns it."""
  table = load(out)
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


# --- the table ------------------------------------------------------------------


def _column_value(value: Any) -> Any:
  # Lists and dicts as JSON text: one parquet type per column.
  if isinstance(value, (list, dict)):
    return json.dumps(value, sort_keys=True)
  return value


def _cell_rows(directory: str, record: dict, done: dict,
               swept: Sequence[str]) -> list[dict[str, Any]]:
  config = record.get("config", {})
  keys = {}
  for key in swept:
    try:
      keys[key] = _column_value(record["overrides"][key]
                                if key in record["overrides"]
                                else _get_key(config, key))
    except (KeyError, TypeError):
      keys[key] = None
  rows = []
  for order, entry in enumerate(done["results"]):
    path = os.path.join(directory, entry["file"])
    r = load_result(path)
    depth_den = max(len(r.layers) - 1, 1)
    settings = json.dumps(_jsonable(r.settings), sort_keys=True)
    for li, layer in enumerate(r.layers):
      rows.append({
          **keys, "cell": record["id"], "result": entry["name"],
          "result_index": int(entry["index"]), "measure": r.measure,
          "settings": settings, "layer": layer, "layer_index": li,
          "relative_depth": 100.0 * li / depth_den,
          "value": float(r.per_layer[layer]),
          "nonfinite_samples": int(r.nonfinite_samples.get(layer, 0)),
          "zero_division": int(r.zero_division.get(layer, 0)),
          "runtime_s": float(done.get("runtime_s", math.nan)),
          "_index": int(record.get("index", 0)), "_order": order})
  return rows


def _complete_cells(out: str) -> list[tuple[str, dict, dict]]:
  root = os.path.join(out, CELLS)
  if not os.path.isdir(root):
    return []
  found = []
  for name in sorted(os.listdir(root)):
    directory = os.path.join(root, name)
    done_path = os.path.join(directory, DONE_FILE)
    if not os.path.isfile(done_path):
      continue
    try:
      record = _read_json(os.path.join(directory, CONFIG_FILE))
      done = _read_json(done_path)
    except (OSError, ValueError) as e:
      raise ValueError(f"cell folder {directory} is marked done but its "
                       f"config.json or DONE cannot be read ({e}); delete "
                       "the folder to rerun the cell") from None
    found.append((directory, record, done))
  return found


def load(out: str | os.PathLike):
  """The sweep's tidy table, rebuilt from the cells' files in ``out``.

  One row per (cell, result name, layer) of every complete cell: each swept
  key as a column of its name (the cell's value; its config's value where
  another cell swept the key and this one did not), then ``cell`` (its id),
  ``result`` (the name ``run`` gave it) and ``result_index`` (its position
  in a list of results, else 0), ``measure``, ``settings`` (the result's
  settings as JSON), ``layer``, ``layer_index``, ``relative_depth`` (0-100 %
  of the model's layers), ``value`` (``result.per_layer[layer]``, the
  layer's mean), ``nonfinite_samples``, ``zero_division`` and ``runtime_s``
  (the cell's wall time; a group's cells each get an equal share). Rows are
  in sweep order, then in the order run returned the results, then layer.
  Incomplete cells are left out.

  Returns:
    A pandas DataFrame (empty, with the columns, when no cell is complete).
  """
  import pandas as pd  # pylint: disable=g-import-not-at-top
  out = os.fspath(out)
  found = _complete_cells(out)
  swept: dict[str, None] = {}
  for _, record, _ in sorted(found, key=lambda f: f[1].get("index", 0)):
    for key in record.get("overrides", {}):
      swept.setdefault(key, None)
  rows = []
  for directory, record, done in found:
    rows.extend(_cell_rows(directory, record, done, list(swept)))
  columns = list(swept) + list(COLUMNS)
  if not rows:
    return pd.DataFrame(columns=columns)
  table = pd.DataFrame(rows)
  table = table.sort_values(["_index", "_order", "layer_index"],
                            kind="stable")
  return table[columns].reset_index(drop=True)
