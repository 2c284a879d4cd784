"""The sweep's tidy table, rebuilt from the cells' folders alone.

`load` reads every complete cell's files, so shards written by different
hosts into one shared folder give one table; `write` and `collect` store it
as ``out/results.parquet``.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Sequence

from invjax._src import files
from invjax._src.result import load_result
from invjax._src.sweep_cells import _get_key
from invjax._src.sweep_cells import _jsonable
from invjax._src.sweep_cells import CELLS
from invjax._src.sweep_cells import COLUMNS
from invjax._src.sweep_cells import CONFIG_FILE
from invjax._src.sweep_cells import DONE_FILE
from invjax._src.sweep_cells import TABLE_FILE


# --- the table ----------------------------------------------------------------


def _read_json(path: str) -> Any:
  with open(path, encoding="utf-8") as f:
    return json.load(f)


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


def write(table: Any, out: str | os.PathLike) -> str:
  """Writes ``table`` to ``out/results.parquet`` atomically.

  Returns:
    The file's path.
  """
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
