"""A sweep's cells: the grid, cell ids, resolved configs, shards and groups.

Also the names of a sweep's files and of its table's columns, shared by the
runner (`invjax._src.sweep`, which describes the sweep file and the folders)
and the table (`invjax._src.sweep_table`).
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
import os
import re
import sys
import types
from typing import Any, Iterable, Mapping, Sequence

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


# --- building a sweep ---------------------------------------------------------


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


def load_module(
    sweep: str | os.PathLike | types.ModuleType) -> types.ModuleType:
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
  base config after ``settings``, so ``--set num_seeds=3`` can size a grid.
  Keys are checked against the base config, so a typo is an error rather
  than a silently unswept run.

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
