"""Shared machinery of the experiments: configs, run directories, records.

A run directory holds everything needed to check or redo a run:

    config.json        the resolved config (after presets, smoke mode, --set)
    environment.json   git commit, library versions, seeds, command, runtime
    metrics.json       the experiment's summary numbers
    results.md         the Markdown tables, the finding, the exact command
    *.png, *.npz       figures (and an experiment's own extra files)
    cells/<id>/        one folder per sweep cell (`invjax.sweep`): its
                       config.json, DONE, results/*.npz (MeasureResults,
                       `invjax.load_result`) and checkpoints/<m>/, the
                       training workdir of model <m> (Orbax checkpoints and
                       metrics.jsonl; a rerun with the same --out resumes)
    results.parquet    the sweep's table, one row per cell, result and layer
                       (`invjax.sweep.load(outdir)` rebuilds it)
    train_logs/<m>.jsonl  a copy of each model's training metrics

An experiment is a sweep with one or more cells: each module defines
``get_config(smoke=False, **overrides)``, ``get_sweep(config=None)`` (its
cells' overrides), ``run(config, outdir)`` (one cell, as `invjax sweep`
calls it), ``run_cell(config, outdir)`` (one cell with a resolved config)
and ``summarize(config, table, outdir)`` (the tables, findings and metrics
of results.md, from the cells' results); ``run_group`` and
``run_group_cells`` (its resolved twin) where cells that differ only in
``seed`` run as one ensemble. `run_experiment` resolves the
config (presets, smoke mode, ``--set``), runs the cells with
`invjax.sweep.run` into the run directory, then summarizes them; the same
file runs under ``invjax sweep experiments/<name>.py --out DIR``.

Results written for the repository (``keep_checkpoints=False``) drop the
checkpoints and keep the logs; ``compact_results`` (the default) stores each
result's per-feature-map values in place of the per-activation arrays, which
keeps a result file at a few kB instead of a few MB.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import functools
import importlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import types
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

EXPERIMENTS_DIR = pathlib.Path(__file__).resolve().parent
REPO_ROOT = EXPERIMENTS_DIR.parent

# name -> module, in the order `invjax experiment --list` prints them.
REGISTRY = {
    "mnist_rotation_augmentation": "experiments.mnist_rotation_augmentation",
    "random_init_stability": "experiments.random_init_stability",
    "architectures_cifar10": "experiments.architectures_cifar10",
    "genuine_invariance": "experiments.genuine_invariance",
    "shared_invariance": "experiments.shared_invariance",
    "design_vs_training": "experiments.design_vs_training",
    "seeds_vs_shift": "experiments.seeds_vs_shift",
    "pretrained_init": "experiments.pretrained_init",
    "spectral_decay": "experiments.spectral_decay",
    "shared_invariance_matrix": "experiments.shared_invariance_matrix",
}

# Keys every config has; the runner and `fit` read them.
COMMON = dict(
    seed=0,                 # base seed: model i of a run uses seed + i
    data_dir=None,          # None: $INVJAX_DATA, else ../shared/data
    keep_checkpoints=True,  # False: delete checkpoints/ at the end
    compact_results=True,   # per-feature-map arrays only in the .npz files
    # tqdm bars on stderr while training and measuring (`progress`:
    # run_experiment(quiet=True), i.e. --quiet, turns them off too).
    progress=True,
)

# Smoke settings shared by the digit experiments. Equal models, batch sizes
# and step counts share compiled programs within one process (the train step,
# the initializer, the measure program), which is most of a smoke run's time.
SMOKE_DIGITS = dict(dataset="digits", n_train=200, n_measure=16, channels=4,
                    fc=8, steps=10, batch_size=32, measure_batch_size=16)

_VERBOSE = [True]


def log(message: str) -> None:
  """Prints a progress line (silenced by ``run_experiment(quiet=True)``)."""
  if _VERBOSE[0]:
    print(message, flush=True)


def progress(config: Mapping[str, Any]) -> bool:
  """Whether to show tqdm bars: ``config.progress``, and not quiet."""
  return bool(config.get("progress", True)) and _VERBOSE[0]


# ----------------------------------------------------------------------------
# Registry and configs.
# ----------------------------------------------------------------------------


def names() -> list[str]:
  """The registered experiment names."""
  return list(REGISTRY)


def get_experiment(name: str):
  """The module of experiment ``name``.

  Raises:
    ValueError: ``name`` is not registered (the message lists the names).
  """
  if name not in REGISTRY:
    raise ValueError(f"unknown experiment {name!r}; available: "
                     f"{', '.join(REGISTRY)}")
  return importlib.import_module(REGISTRY[name])


class Config(dict):
  """A dict whose keys are also attributes (a small ml_collections stand-in).

  Plain JSON-able values only, so ``json.dumps(config)`` is the record.
  """

  def __getattr__(self, key: str) -> Any:
    try:
      return self[key]
    except KeyError:
      raise AttributeError(key) from None

  def __setattr__(self, key: str, value: Any) -> None:
    self[key] = value


def _coerce(key: str, value: Any, default: Any) -> Any:
  """Converts an override to the type of its default (ints stay ints...)."""
  if default is None or value is None:
    return value
  if isinstance(default, bool):
    if isinstance(value, str):
      if value.lower() in ("true", "1", "yes"):
        return True
      if value.lower() in ("false", "0", "no"):
        return False
    if not isinstance(value, (bool, np.bool_)):
      raise ValueError(f"config key {key!r} takes a bool, got {value!r}")
    return bool(value)
  if isinstance(default, int):
    if isinstance(value, float) and value.is_integer():
      value = int(value)
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
      raise ValueError(f"config key {key!r} takes an int, got {value!r}")
    return int(value)
  if isinstance(default, float):
    if not isinstance(value, (int, float, np.number)) or isinstance(value,
                                                                    bool):
      raise ValueError(f"config key {key!r} takes a number, got {value!r}")
    return float(value)
  if isinstance(default, (list, tuple)):
    if not isinstance(value, (list, tuple)):
      value = [value]
    return list(value)
  if isinstance(default, str) and not isinstance(value, str):
    raise ValueError(f"config key {key!r} takes a string, got {value!r}")
  return value


def make_config(defaults: Mapping[str, Any], *, smoke: bool,
                smoke_settings: Mapping[str, Any],
                presets: Mapping[str, Mapping[str, Any]] | None = None,
                overrides: Mapping[str, Any] | None = None) -> Config:
  """Resolves a config: defaults, a preset, smoke mode, then overrides.

  Args:
    defaults: the experiment's keys and their "CPU full" values (merged with
      `COMMON`).
    smoke: apply ``smoke_settings`` (tiny data, few steps, small widths).
    smoke_settings: the smoke-mode values.
    presets: named sets of values, chosen by ``overrides["preset"]`` (e.g.
      ``"gpu"`` for the paper-scale settings).
    overrides: ``key=value`` settings; unknown keys are an error.

  Returns:
    The resolved `Config`, with ``smoke`` and ``preset`` recorded.

  Raises:
    ValueError: an unknown key or preset, or a value of the wrong type.
  """
  base = dict(COMMON)
  base.update(copy.deepcopy(dict(defaults)))
  overrides = dict(overrides or {})
  presets = dict(presets or {})
  preset = overrides.pop("preset", "cpu")
  if preset != "cpu" and preset not in presets:
    raise ValueError(f"unknown preset {preset!r}; available: "
                     f"{', '.join(['cpu', *presets])}")
  layers = [presets.get(preset, {})]
  if smoke:
    layers.append(smoke_settings)
  layers.append(overrides)
  for layer in layers:
    for key, value in layer.items():
      if key not in base:
        raise ValueError(f"unknown config key {key!r}; known keys: "
                         f"{', '.join(sorted(base))}")
      base[key] = _coerce(key, value, base[key])
  return Config(base, smoke=bool(smoke), preset=preset)


def check_choice(config: Mapping[str, Any], key: str,
                 choices: Sequence[Any]) -> None:
  """Raises ValueError unless ``config[key]`` is one of ``choices``."""
  if config[key] not in choices:
    raise ValueError(f"{key} must be one of {list(choices)}, got "
                     f"{config[key]!r}")


def digit_config(defaults: Mapping[str, Any], *, smoke: bool,
                 smoke_settings: Mapping[str, Any],
                 presets: Mapping[str, Mapping[str, Any]],
                 overrides: Mapping[str, Any]) -> Config:
  """`make_config` for the experiments on digits or MNIST (`load_digit_data`).

  ``dataset`` must be "digits" or "mnist"; MNIST measures the papers' 1,000
  test images unless ``n_measure`` is set.
  """
  overrides = dict(overrides)
  if overrides.get("dataset") == "mnist" and "n_measure" not in overrides:
    overrides["n_measure"] = 1000
  config = make_config(defaults, smoke=smoke, smoke_settings=smoke_settings,
                       presets=presets, overrides=overrides)
  check_choice(config, "dataset", ("digits", "mnist"))
  return config


def parse_set(items: Iterable[str]) -> dict[str, Any]:
  """Parses ``--set key=value`` items: Python literals, else strings.

  Raises:
    ValueError: an item without ``=``.
  """
  out = {}
  for item in items:
    if "=" not in item:
      raise ValueError(f"--set expects key=value, got {item!r}")
    key, text = item.split("=", 1)
    key = key.strip()
    text = text.strip()
    if text.lower() in ("true", "false", "none", "null"):
      value = {"true": True, "false": False}.get(text.lower())
    else:
      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError):
        value = text
    out[key] = value
  return out


# ----------------------------------------------------------------------------
# Data.
# ----------------------------------------------------------------------------


def data_dir(config: Mapping[str, Any]) -> pathlib.Path:
  """``config["data_dir"]``, else ``$INVJAX_DATA``, else ``../shared/data``."""
  if config.get("data_dir"):
    return pathlib.Path(config["data_dir"])
  if os.environ.get("INVJAX_DATA"):
    return pathlib.Path(os.environ["INVJAX_DATA"])
  return REPO_ROOT.parent / "shared" / "data"


def load_digit_data(config: Mapping[str, Any]):
  """Train and measurement data for the MNIST-like experiments.

  ``digits``: scikit-learn's 1,797 digits at 28×28; a stratified
  ``n_measure`` of them are held out for measuring, the rest (at most
  ``n_train``) train. ``mnist``: ``n_train`` stratified training images and
  ``n_measure`` stratified test images. Images stay in [0, 1], so the
  zero padding of rotations matches the black background.

  Returns:
    ``(train_x, train_y, test_x, test_y)`` NumPy arrays.
  """
  from invjax import data  # pylint: disable=g-import-not-at-top
  dataset, seed = config["dataset"], config["data_seed"]
  n_train, n_measure = config["n_train"], config["n_measure"]
  if dataset == "digits":
    x, y = data.load_digits()
    test = data.stratified_indices(y, n_measure, seed=seed)
    rest = np.setdiff1d(np.arange(len(y)), test)
    if n_train and n_train < len(rest):
      rest = rest[data.stratified_indices(y[rest], n_train, seed=seed + 1)]
    return x[rest], y[rest], x[test], y[test]
  if dataset == "mnist":
    root = data_dir(config)
    tx, ty = data.load_mnist("train", data_dir=root, download=False)
    if n_train and n_train < len(ty):
      tx, ty = data.stratified_subset(tx, ty, n_train, seed=seed + 1)
    vx, vy = data.load_mnist("test", data_dir=root, download=False)
    vx, vy = data.stratified_subset(vx, vy, n_measure, seed=seed)
    return tx, ty, vx, vy
  raise ValueError(f"dataset must be 'digits' or 'mnist', got {dataset!r}")


# ----------------------------------------------------------------------------
# Training.
# ----------------------------------------------------------------------------


def fit(model, config: Mapping[str, Any], images, labels, *, outdir, label: str,
        seed: int | None = None, augment=None, regularizer=None,
        steps: int | None = None, seeds: Sequence[int] | None = None,
        variables=None, loss_fn=None,
        learning_rate: float | None = None, schedule: str | None = None,
        optimizer: str = "adam", momentum: float = 0.9):
  """Trains ``model`` with `invjax.train.fit` in ``outdir/checkpoints/label``.

  ``seeds`` instead of ``seed`` trains an ensemble, one member per seed, as
  one vmapped program (`invjax.train.fit(..., seeds=)`). ``variables``
  starts from those weights instead of ``model.init`` (fine-tuning a
  pretrained model; with ``seeds``, stacked); the seed still sets the batch
  order and the per-step keys. ``loss_fn``: ``(logits, labels) -> scalar``
  instead of the cross-entropy. ``learning_rate`` and ``schedule`` default to
  the config's; ``optimizer`` and ``momentum`` are
  `invjax.train.TrainConfig`'s.

  Returns:
    The trained variables (with ``seeds``: stacked, leading axis K).
  """
  import invjax.train as T  # pylint: disable=g-import-not-at-top
  steps = int(config["steps"] if steps is None else steps)
  cfg = T.TrainConfig(
      steps=steps, batch_size=int(config["batch_size"]),
      learning_rate=float(config["learning_rate"] if learning_rate is None
                          else learning_rate),
      schedule=schedule or config.get("schedule", "cosine"),
      optimizer=optimizer, momentum=float(momentum),
      seed=0 if seeds is not None else int(seed),
      augment=augment, regularizer=regularizer,
      log_every=max(1, min(50, steps)))
  workdir = pathlib.Path(outdir) / "checkpoints" / label
  t0 = time.perf_counter()
  extra = {} if seeds is None else {"seeds": [int(s) for s in seeds]}
  if variables is not None:
    extra["variables"] = variables
  state = T.fit(model, cfg, images, labels, workdir=str(workdir),
                progress=progress(config), loss_fn=loss_fn, **extra)
  which = f"seed {seed}" if seeds is None else f"seeds {list(seeds)}"
  log(f"  trained {label} ({type(model).__name__}, {steps} steps, {which}) "
      f"in {time.perf_counter() - t0:.1f}s")
  return state.variables


def evaluate(model, variables, images, labels, transformations=None, *,
             ensemble: bool = False) -> dict | list[dict]:
  """`invjax.train.evaluate` with plain-float outputs (a list per member
  with ``ensemble``)."""
  import invjax.train as T  # pylint: disable=g-import-not-at-top
  out = T.evaluate(model, variables, images, labels,
                   transformations=transformations, ensemble=ensemble)
  if ensemble:
    return [{k: float(v) for k, v in o.items()} for o in out]
  return {k: float(v) for k, v in out.items()}


def not_output(name: str) -> bool:
  """Layer filter: every layer but ``"output"`` (the network's return value,
  listed by `capture.linen` when it is not a layer's own output)."""
  return name != "output"


# ----------------------------------------------------------------------------
# Experiments as sweeps.
# ----------------------------------------------------------------------------

# A cell's own small records (accuracies, parameter counts) beside its
# results: `summarize` reads them back, so a rerun that skips finished cells
# still has them.
CELL_RECORD = "cell.json"


def resolve(get_config, config: Mapping[str, Any]) -> Config:
  """A cell's config as ``get_config`` resolves it: presets, smoke mode.

  `invjax sweep FILE --set key=value` sets keys of ``get_config()`` (the CPU
  defaults) without applying a preset or smoke mode; this redoes the
  resolution: ``get_config(smoke=config["smoke"], preset=config["preset"],
  **explicit)``, where ``explicit`` are the keys whose value differs from
  ``get_config()``'s (so a preset's or smoke mode's value wins over a
  ``--set`` to the CPU default, the one case this cannot tell apart).
  """
  base = get_config()
  explicit = {k: v for k, v in config.items()
              if k not in ("smoke", "preset") and (k not in base or
                                                  base[k] != v)}
  return get_config(smoke=bool(config.get("smoke", False)),
                    preset=config.get("preset", "cpu"), **explicit)


def as_sweep(module, config: Config) -> types.ModuleType:
  """Experiment ``module`` with the resolved ``config`` as a sweep module.

  Its ``get_config`` returns ``config``, its ``get_sweep`` the cells of
  ``module.get_sweep(config)`` (which may depend on it: ``num_seeds``,
  ``architectures``), and its ``run``/``run_group`` hand each cell's config
  on as resolved (a cell overrides swept keys only).
  """
  sweep = types.ModuleType(f"{module.__name__}__sweep")
  sweep.__file__ = getattr(module, "__file__", None)
  sweep.get_config = lambda: config
  sweep.get_sweep = lambda: module.get_sweep(config)
  sweep.run = lambda c, outdir: module.run_cell(Config(c), outdir)
  if callable(getattr(module, "run_group_cells", None)):
    sweep.run_group = lambda cs, outdirs: module.run_group_cells(
        [Config(c) for c in cs], outdirs)
  return sweep


def run_cells(module, config: Config, outdir) -> Any:
  """Runs the experiment's unfinished cells into ``outdir``; its table."""
  from invjax import sweep  # pylint: disable=g-import-not-at-top
  return sweep.run(as_sweep(module, config), outdir,
                   progress=progress(config))


def cell_ids(module, config: Config) -> list[str]:
  """The ids of the experiment's cells, in `get_sweep` order."""
  from invjax import sweep  # pylint: disable=g-import-not-at-top
  return [c.id for c in sweep.cells(as_sweep(module, config))]


def cell_path(outdir, cell: str) -> pathlib.Path:
  """A cell's folder, ``outdir/cells/<id>`` (the layout of `invjax.sweep`)."""
  return pathlib.Path(outdir) / "cells" / cell


def cell_results(outdir, cell: str) -> dict[str, list]:
  """``{name: [MeasureResult, ...]}`` of one finished cell of ``outdir``.

  The cell's DONE marker lists its result files in the order ``run``
  returned them.
  """
  import invjax  # pylint: disable=g-import-not-at-top
  directory = cell_path(outdir, cell)
  done = json.loads((directory / "DONE").read_text())
  out: dict[str, list] = {}
  for entry in done["results"]:
    out.setdefault(entry["name"], []).append(
        invjax.load_result(directory / entry["file"]))
  return out


def write_cell_record(outdir, record: Mapping[str, Any]) -> None:
  """Writes a cell's `CELL_RECORD` (JSON) in its folder ``outdir``."""
  _write_json(pathlib.Path(outdir) / CELL_RECORD, record)


def read_cell_record(outdir, cell: str) -> dict:
  """The `CELL_RECORD` of cell ``cell`` of run directory ``outdir``."""
  return json.loads((cell_path(outdir, cell) / CELL_RECORD).read_text())


def maybe_compact(result, config: Mapping[str, Any]):
  """``compact(result)`` unless ``config.compact_results`` is False."""
  return compact(result) if config.get("compact_results", True) else result


# One-cell experiments: the whole former ``run`` is the cell. It writes its
# files in the cell's folder, its summary in CELL_RECORD, and returns its
# MeasureResults (under "results"); `whole_summary` copies the figures and
# files up to the run directory, where results.md lists them.


def whole_cell(experiment, config: Config, outdir) -> dict:
  """Runs ``experiment(config, outdir) -> summary`` as one cell."""
  summary = dict(experiment(config, outdir))
  results = summary.pop("results", {})
  write_cell_record(outdir, summary)
  return {name: maybe_compact(r, config) for name, r in results.items()}


def whole_summary(module, config: Config, outdir) -> dict:
  """The summary of a one-cell experiment; its files copied to ``outdir``."""
  (cell,) = cell_ids(module, config)
  directory = cell_path(outdir, cell)
  for path in sorted(directory.iterdir()):
    if path.is_file() and path.suffix in (".npz", ".png"):
      shutil.copyfile(path, pathlib.Path(outdir) / path.name)
  return read_cell_record(outdir, cell)


# ----------------------------------------------------------------------------
# Records.
# ----------------------------------------------------------------------------


def _fm_mean(a: np.ndarray) -> np.ndarray:
  return a.mean(axis=tuple(range(a.ndim - 1))) if a.ndim >= 2 else a


def compact(result):
  """A copy of a MeasureResult keeping per-feature-map values only.

  ``per_activation`` becomes ``per_feature_map`` and every extra its mean
  over spatial positions; ``per_layer`` and ``per_feature_map`` are exact.
  """
  per_fm = {l: np.asarray(v) for l, v in result.per_feature_map.items()}
  extras = {l: {k: _fm_mean(np.asarray(v)) for k, v in e.items()}
            for l, e in result.extras.items()}
  settings = dict(result.settings,
                  compact="per_activation holds per-feature-map values")
  per_class = None
  if result.per_class is not None:
    per_class = {c: compact(r) for c, r in result.per_class.items()}
  return dataclasses.replace(result, per_activation=dict(per_fm),
                             per_feature_map=per_fm, extras=extras,
                             settings=settings, per_class=per_class)


def save_result(outdir, name: str, result, config: Mapping[str, Any]) -> str:
  """Saves a MeasureResult as ``outdir/name.npz``; returns the file name."""
  if config.get("compact_results", True):
    result = compact(result)
  path = pathlib.Path(outdir) / f"{name}.npz"
  result.save(path)
  return path.name


def save_figure(outdir, name: str, fig) -> str:
  """Saves a matplotlib figure as ``outdir/name.png`` and closes it."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  path = pathlib.Path(outdir) / f"{name}.png"
  fig.savefig(path, dpi=80, bbox_inches="tight")
  plt.close(fig)
  return path.name


def fmt(value: Any, digits: int = 4) -> str:
  """A table cell: floats to ``digits`` significant digits."""
  if isinstance(value, (float, np.floating)):
    if not np.isfinite(value):
      return str(float(value))
    return f"{float(value):.{digits}g}"
  return str(value)


def table(title: str, header: Sequence[str], rows: Sequence[Sequence[Any]]
          ) -> dict:
  """A summary table ``{"title", "header", "rows"}``, cells as text."""
  return {"title": title, "header": list(header),
          "rows": [[fmt(c) for c in row] for row in rows]}


def markdown(tab: Mapping[str, Any]) -> str:
  lines = [f"### {tab['title']}", "",
           "| " + " | ".join(tab["header"]) + " |",
           "|" + "|".join("---" for _ in tab["header"]) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in tab["rows"]]
  return "\n".join(lines) + "\n"


def _git_commit() -> str | None:
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=10,
                         check=False)
  except (OSError, subprocess.SubprocessError):
    return None
  if out.returncode != 0:
    return None
  return out.stdout.strip() or None


def environment() -> dict:
  """Git commit and library versions (None for anything unavailable)."""
  versions = {}
  for package, module in (("jax", "jax"), ("jaxlib", "jaxlib"),
                          ("flax", "flax"), ("optax", "optax"),
                          ("dm-pix", "dm_pix"), ("numpy", "numpy"),
                          ("invjax", "invjax")):
    try:
      versions[package] = getattr(importlib.import_module(module),
                                  "__version__", None)
    except ImportError:
      versions[package] = None
  import jax  # pylint: disable=g-import-not-at-top
  return {"git_commit": _git_commit(), "versions": versions,
          "python": sys.version.split()[0],
          "devices": [str(d) for d in jax.devices()]}


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating, float)):
    return float(x) if np.isfinite(x) else str(float(x))
  if isinstance(x, np.ndarray):
    return _jsonable(x.tolist())
  return x


def _write_json(path: pathlib.Path, obj: Any) -> None:
  path.write_text(json.dumps(_jsonable(obj), indent=2, sort_keys=True) + "\n")


def command_line(name: str, *, smoke: bool, out: Any, overrides: Mapping
                 ) -> str:
  """The `invjax experiment` command that reproduces a run."""
  parts = ["invjax", "experiment", name]
  if smoke:
    parts.append("--smoke")
  if out is not None:
    parts += ["--out", str(out)]
  for key, value in overrides.items():
    parts += ["--set", f"{key}={value!r}" if isinstance(value, str) and
              " " in value else f"{key}={value}"]
  return " ".join(parts)


def default_outdir(name: str) -> pathlib.Path:
  stamp = time.strftime("%Y%m%d-%H%M%S")
  path = EXPERIMENTS_DIR / "runs" / name / stamp
  i = 1
  while path.exists():
    path = EXPERIMENTS_DIR / "runs" / name / f"{stamp}-{i}"
    i += 1
  return path


def write_results_md(outdir: pathlib.Path, name: str, module, config,
                     summary: Mapping[str, Any], env: Mapping[str, Any],
                     command: str, runtime_s: float) -> str:
  """Writes results.md: tables and finding first, provenance last."""
  doc = (module.__doc__ or "").strip().splitlines()
  lines = [f"# {name}", ""]
  if doc:
    lines += [doc[0], ""]
  if config.get("smoke"):
    lines += ["*Smoke mode: tiny data and few steps; the numbers only show "
              "that the pipeline runs.*", ""]
  for tab in summary.get("tables", []):
    lines.append(markdown(tab))
  if summary.get("findings"):
    lines.append("### Finding\n")
    lines += [f"* {f}" for f in summary["findings"]]
    lines.append("")
  files = sorted(p.name for p in outdir.iterdir()
                 if p.suffix in (".npz", ".png"))
  lines += ["### Files", "", ", ".join(f"`{f}`" for f in files), ""]
  cells = outdir / "cells"
  if cells.is_dir():
    ids = sorted(p.name for p in cells.iterdir() if p.is_dir())
    lines += [f"Sweep cells ({len(ids)}; results in `cells/<id>/results/`, "
              "the table in `results.parquet`, "
              "`invjax.sweep.load(DIR)`): "
              + ", ".join(f"`{i}`" for i in ids), ""]
  # Provenance last: everything above it is deterministic for a seed.
  lines += ["## Provenance", "",
            f"* command: `{command}`",
            f"* git commit: `{env.get('git_commit')}`",
            "* versions: " + ", ".join(f"{k} {v}" for k, v in
                                       env["versions"].items()),
            f"* devices: {', '.join(env['devices'])}",
            f"* runtime: {runtime_s:.0f} s", ""]
  text = "\n".join(lines)
  (outdir / "results.md").write_text(text)
  return text


def checkpoint_dirs(outdir) -> list[pathlib.Path]:
  """The training workdirs of a run: ``checkpoints/<m>`` in the run
  directory and in each cell's folder."""
  outdir = pathlib.Path(outdir)
  roots = [outdir / "checkpoints"] + sorted(outdir.glob("cells/*/checkpoints"))
  return [p for root in roots if root.is_dir()
          for p in sorted(root.iterdir()) if p.is_dir()]


def _collect_train_logs(outdir: pathlib.Path, keep_checkpoints: bool) -> None:
  logs = outdir / "train_logs"
  for workdir in checkpoint_dirs(outdir):
    metrics = workdir / "metrics.jsonl"
    if metrics.is_file():
      logs.mkdir(exist_ok=True)
      shutil.copyfile(metrics, logs / f"{workdir.name}.jsonl")
  if not keep_checkpoints:
    for root in {p.parent for p in checkpoint_dirs(outdir)}:
      shutil.rmtree(root)


def run_experiment(name: str, *, smoke: bool = False, out: Any = None,
                   seed: int | None = None, dataset: str | None = None,
                   overrides: Mapping[str, Any] | None = None,
                   quiet: bool = False, command: str | None = None,
                   compile_cache: bool = True
                   ) -> tuple[pathlib.Path, dict]:
  """Runs one experiment and records it.

  The experiment's cells run as a sweep (`invjax.sweep.run`) into ``out``
  (cells finished by an earlier run into the same ``out`` are skipped), and
  its ``summarize`` turns their results into the tables, findings and
  metrics of results.md.

  Args:
    name: a registered experiment (see `names`).
    smoke: tiny, fast settings (a test that the pipeline runs end to end).
    out: output directory; default ``experiments/runs/<name>/<timestamp>``.
    seed: overrides ``config.seed``.
    dataset: overrides ``config.dataset``.
    overrides: other ``key=value`` settings (``preset="gpu"`` selects the
      paper-scale settings where an experiment has them).
    quiet: no progress lines, and no progress bars (whatever
      ``config.progress`` says).
    command: the command line to record (default: reconstructed).
    compile_cache: keep compiled programs in JAX's persistent cache in the
      user's cache directory (`invjax.enable_compile_cache`), so that a rerun
      loads them instead of compiling; ``$INVJAX_NO_COMPILE_CACHE=1`` turns
      it off too. Once on, it stays on for the rest of the process.

  Returns:
    ``(outdir, summary)``; the summary also holds ``"markdown"``, the text of
    results.md.
  """
  module = get_experiment(name)
  if compile_cache:
    from invjax._src import compile_cache as cache_lib  # pylint: disable=g-import-not-at-top
    cache_lib.enable_unless_disabled()
  overrides = dict(overrides or {})
  if seed is not None:
    overrides["seed"] = seed
  if dataset is not None:
    overrides["dataset"] = dataset
  config = module.get_config(smoke=smoke, **overrides)
  outdir = pathlib.Path(out) if out is not None else default_outdir(name)
  outdir.mkdir(parents=True, exist_ok=True)
  if command is None:
    command = command_line(name, smoke=smoke, out=out, overrides=overrides)
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  previous = _VERBOSE[0]
  _VERBOSE[0] = not quiet
  try:
    env = environment()
    _write_json(outdir / "config.json", config)
    log(f"{name}: writing to {outdir}")
    t0 = time.perf_counter()
    # The cells (each skipped when finished in an earlier run), then the
    # summary from their results.
    table = run_cells(module, config, outdir)
    summary = dict(module.summarize(config, table, outdir))
    runtime = time.perf_counter() - t0
    _collect_train_logs(outdir, config.get("keep_checkpoints", True))
    env.update(command=command, runtime_s=runtime,
               seeds=summary.get("seeds", [config["seed"]]),
               smoke=bool(smoke), preset=config.get("preset"))
    _write_json(outdir / "environment.json", env)
    _write_json(outdir / "metrics.json", summary.get("metrics", {}))
    summary["markdown"] = write_results_md(outdir, name, module, config,
                                           summary, env, command, runtime)
  finally:
    _VERBOSE[0] = previous
  return outdir, summary


# ----------------------------------------------------------------------------
# Cached datasets for experiments whose cells share them.
# ----------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def cached_digit_data(dataset: str, root: str, data_seed: int, n_train: int,
                      n_measure: int):
  """`load_digit_data` by value, cached per process (cells share it)."""
  return load_digit_data(dict(
      dataset=dataset, data_dir=root, data_seed=data_seed, n_train=n_train,
      n_measure=n_measure))


@functools.lru_cache(maxsize=4)
def cifar10_28(root: str, data_seed: int, n_train: int, n_measure: int,
               colour: bool = False):
  """CIFAR-10's test batch at 28×28 in [0, 1], split, cached per process.

  ``n_measure`` class-stratified images are held out (seed ``data_seed``)
  and at most ``n_train`` of the rest train (seed ``data_seed + 1``), as
  `architectures_cifar10` splits the one batch available. Grey is ITU-R 601
  luma (as `genuine_invariance`), one channel; ``colour`` keeps RGB.

  Returns:
    ``(train_x, train_y, measure_x, measure_y)``.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from invjax import data  # pylint: disable=g-import-not-at-top
  x, y = data.load_cifar10("test", data_dir=root, download=False)
  if not colour:
    x = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
  x = np.asarray(jax.image.resize(x, (len(x), 28, 28, x.shape[-1]),
                                  "linear")).clip(0.0, 1.0)
  test = data.stratified_indices(y, n_measure, seed=data_seed)
  rest = np.setdiff1d(np.arange(len(y)), test)
  if n_train and n_train < len(rest):
    rest = rest[data.stratified_indices(y[rest], n_train, seed=data_seed + 1)]
  return x[rest], y[rest], x[test], y[test]
