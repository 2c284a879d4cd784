"""Sweeps (`invjax.sweep`, `invjax sweep`): cells, shards, resume, one table.

The oracle for every way of running a sweep (all at once, in shards, cell by
cell or in seed groups, killed with SIGKILL and rerun) is the table of one
uninterrupted in-process run: all must be equal but for the runtime column.
The sweep is tests/digits_sweep.py (2 seeds x 2 rotation sets, a tiny CNN
measured on 16 digits).
"""

import os
import pathlib
import signal
import subprocess
import sys
import types

import numpy as np
import pandas as pd
import pytest

import invjax
from invjax import cli
from invjax import sweep
from invjax._src import sweep_cells as sweep_impl

REPO = pathlib.Path(__file__).resolve().parents[1]
SWEEP_FILE = str(REPO / "tests" / "digits_sweep.py")


def _counted(monkeypatch, tmp_path, name="counter.txt"):
  """A fresh counter file the sweep's run() appends one line per cell to."""
  path = tmp_path / name
  monkeypatch.setenv("DIGITS_SWEEP_COUNTER", str(path))
  return path


def _lines(path):
  return path.read_text().splitlines() if path.exists() else []


def _same_table(a, b):
  """Equal tables up to row order and the runtime column."""
  def norm(t):
    t = t.drop(columns="runtime_s")
    return t.sort_values(["cell", "result", "result_index",
                          "layer_index"]).reset_index(drop=True)
  pd.testing.assert_frame_equal(norm(a), norm(b))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """One uninterrupted run of the whole sweep, in this process."""
  out = tmp_path_factory.mktemp("reference")
  os.environ.pop("DIGITS_SWEEP_COUNTER", None)
  table = sweep.run(SWEEP_FILE, out, progress=False)
  return out, table


# --- building blocks -----------------------------------------------------------


def test_product_order():
  grid = sweep.product(seed=range(2), transform=["rotation", "scale"])
  assert grid == [{"seed": 0, "transform": "rotation"},
                  {"seed": 0, "transform": "scale"},
                  {"seed": 1, "transform": "rotation"},
                  {"seed": 1, "transform": "scale"}]
  with pytest.raises(ValueError, match="no values"):
    sweep.product(seed=[])
  with pytest.raises(ValueError, match="list or range"):
    sweep.product(transform="rotation")


def test_cell_ids_stable_and_distinct():
  cell = {"seed": 0, "transform": "rotation"}
  # Pinned: ids name folders of finished sweeps, so they must never change.
  assert sweep.cell_id(cell) == "seed=0_transform=rotation-d5a0396f"
  assert sweep.cell_id({"transform": "rotation", "seed": 0}) == \
      sweep.cell_id(cell)
  assert sweep.cell_id({"seed": np.int64(0), "transform": "rotation"}) == \
      sweep.cell_id(cell)
  grid = sweep.product(seed=range(5), lr=[1e-3, 1e-2, 1], tag=["a b", "a_b"])
  ids = [sweep.cell_id(c) for c in grid]
  assert len(set(ids)) == len(ids)
  assert sweep.cell_id({"lr": 1}) != sweep.cell_id({"lr": 1.0})
  long = sweep.cell_id({"name": "x" * 500})
  assert len(long) <= 60 + 9 and all(ch not in long for ch in "/ ")


@pytest.mark.parametrize("text, match", [
    ("2/2", "0 <= i < n"), ("-1/2", "0 <= i < n"), ("0/0", "n >= 1"),
    ("a/b", "i/n"), ("1", "i/n"), ("", "i/n")])
def test_bad_shard(text, match):
  with pytest.raises(ValueError, match=match):
    sweep.parse_shard(text)


def test_shard_selects_k_mod_n():
  assert sweep.parse_shard(" 1 / 3 ") == (1, 3)
  cells = sweep.cells(SWEEP_FILE)
  assert [c.index for c in sweep.shard_cells(cells, "1/3")] == [1]
  assert [c.index for c in sweep.shard_cells(cells, (0, 3))] == [0, 3]


def _module(sweep_list, base=None, **extra):
  m = types.ModuleType("bad_sweep")
  m.get_config = lambda: dict(base or {"seed": 0, "lr": 0.1})
  m.get_sweep = lambda: sweep_list
  m.run = lambda config, outdir: {}
  for k, v in extra.items():
    setattr(m, k, v)
  return m


def test_bad_sweeps_error_clearly(tmp_path):
  with pytest.raises(ValueError, match="'sed' is not a key"):
    sweep.cells(_module([{"sed": 1}]))
  with pytest.raises(ValueError, match="same overrides"):
    sweep.cells(_module([{"seed": 1}, {"seed": 1}]))
  with pytest.raises(ValueError, match="swept by get_sweep"):
    sweep.cells(_module([{"seed": 1}]), {"seed": 3})
  with pytest.raises(ValueError, match="column of the results table"):
    sweep.cells(_module([{"value": 1}], base={"value": 0}))
  with pytest.raises(ValueError, match="plain data"):
    sweep.cells(_module([{"seed": object()}]))
  with pytest.raises(ValueError, match="no cells"):
    sweep.cells(_module([]))
  with pytest.raises(ValueError, match="does not define run"):
    m = _module([{"seed": 1}])
    del m.run
    sweep.load_module(m)
  with pytest.raises(ValueError, match="not a MeasureResult"):
    sweep.run(_module([{"seed": 1}], run=lambda c, d: {"nv": 1.0}),
              tmp_path, progress=False)
  assert not sweep.is_complete(tmp_path, sweep.cell_id({"seed": 1}))


def test_get_sweep_may_size_its_grid_from_the_base_config():
  m = _module([], base={"seed": 0, "num_seeds": 2})
  m.get_sweep = lambda config: sweep.product(
      seed=range(config["num_seeds"]))
  assert [c.overrides for c in sweep.cells(m)] == [{"seed": 0}, {"seed": 1}]
  assert len(sweep.cells(m, {"num_seeds": 3})) == 3


def test_groups_by_everything_but_seed():
  module = sweep.load_module(SWEEP_FILE)
  cells = sweep.cells(module)
  assert [[c.index for c in g] for g in sweep.groups(cells, module)] == \
      [[0, 2], [1, 3]]
  alone = sweep.cells(module, {"ensemble": False})
  assert [[c.index for c in g] for g in sweep.groups(alone, module)] == \
      [[0], [1], [2], [3]]


# --- the acceptance tests --------------------------------------------------------


def test_table_columns(reference):
  out, table = reference
  assert list(table.columns) == ["seed", "transform"] + list(sweep_impl.COLUMNS)
  # 4 cells x (nv + both[0] + both[1]) x 3 layers.
  assert len(table) == 4 * 3 * 3
  assert set(table["measure"]) == {"normalized_variance",
                                   "transformation_variance"}
  row = table[(table["seed"] == 1) & (table["transform"] == "small") &
              (table["result"] == "both") & (table["result_index"] == 1) &
              (table["layer"] == "conv2")].iloc[0]
  cell = pathlib.Path(out, "cells", row["cell"])
  r = invjax.load_result(cell / "results" / "002-both-1.npz")
  assert r.measure == "transformation_variance"
  assert row["value"] == r.per_layer["conv2"]
  assert row["layer_index"] == 1 and row["relative_depth"] == 50.0
  pd.testing.assert_frame_equal(pd.read_parquet(out / "results.parquet"),
                                table)
  pd.testing.assert_frame_equal(sweep.load(out), table)


def test_shards_rerun_and_ensembles_give_one_table(reference, tmp_path,
                                                   monkeypatch):
  _, ref = reference
  counter = _counted(monkeypatch, tmp_path)
  shared = tmp_path / "shared"
  sweep.run(SWEEP_FILE, shared, shard=(0, 2), progress=False)
  part = sweep.load(shared)
  assert sorted(set(part["cell"])) == sorted(
      c.id for c in sweep.shard_cells(sweep.cells(SWEEP_FILE), (0, 2)))
  sweep.run(SWEEP_FILE, shared, shard="1/2", progress=False)
  _same_table(sweep.load(shared), ref)
  _same_table(sweep.collect(shared), ref)
  _same_table(pd.read_parquet(shared / "results.parquet"), ref)
  # Shard 0/2 holds seeds 0 and 1 of "quarter": one group, one call.
  assert _lines(counter)[:3] == ["group seed=0 transform=quarter",
                                 "group seed=1 transform=quarter",
                                 "run seed=0 transform=quarter"]
  assert sum(l.startswith("run") for l in _lines(counter)) == 4

  # A completed sweep runs no cell again.
  before = _lines(counter)
  _same_table(sweep.run(SWEEP_FILE, shared, progress=False), ref)
  assert _lines(counter) == before

  # One run per cell (ensemble: False) gives the same table.
  single = tmp_path / "single"
  sweep.run(SWEEP_FILE, single, settings={"ensemble": False},
            progress=False)
  new = _lines(counter)[len(before):]
  assert len(new) == 4 and all(l.startswith("run") for l in new)
  _same_table(sweep.load(single), ref)

  # Another config in the same folder is refused, not mixed in.
  with pytest.raises(ValueError, match="another config"):
    sweep.run(SWEEP_FILE, single, settings={"num_images": 8},
              progress=False)


def _cli(args, env, timeout=300):
  return subprocess.run([sys.executable, "-m", "invjax.cli", "sweep",
                         SWEEP_FILE] + args, cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def test_sigkill_mid_sweep_then_rerun(reference, tmp_path):
  """The command line, killed (SIGKILL) in the 3rd cell's run, then rerun."""
  _, ref = reference
  out = tmp_path / "killed"
  counter = tmp_path / "counter.txt"
  env = dict(os.environ, DIGITS_SWEEP_COUNTER=str(counter),
             DIGITS_SWEEP_KILL_AT="3",
             INVJAX_COMPILE_CACHE=str(tmp_path / "jax_cache"))
  env.pop("INVJAX_NO_COMPILE_CACHE", None)  # the rerun loads the programs
  killed = _cli(["--out", str(out), "--quiet"], env)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  # Group (seed 0, 1 of "quarter") finished; the 3rd run started "small".
  done = sorted(p.parent.name for p in out.glob("cells/*/DONE"))
  assert len(done) == 2 and all("quarter" in d for d in done)
  started = out / "cells" / sweep.cell_id({"seed": 0, "transform": "small"})
  assert (started / "config.json").exists()
  assert not (started / "DONE").exists()
  assert _lines(started / "attempts.txt") == ["attempt"]

  env.pop("DIGITS_SWEEP_KILL_AT")
  before = len(_lines(counter))
  rerun = _cli(["--out", str(out), "--quiet"], env)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert "4 of 4 cells complete" in rerun.stdout
  runs = [l for l in _lines(counter)[before:] if l.startswith("run")]
  assert runs == ["run seed=0 transform=small", "run seed=1 transform=small"]
  # The interrupted cell ran again in its own folder (so from its checkpoints).
  assert _lines(started / "attempts.txt") == ["attempt", "attempt"]
  _same_table(sweep.load(out), ref)
  _same_table(pd.read_parquet(out / "results.parquet"), ref)


def test_cli_list_shard_collect(tmp_path, monkeypatch, capsys):
  """`invjax sweep` in-process, on the sweep's fake (JAX-free) results."""
  counter = _counted(monkeypatch, tmp_path)
  out = str(tmp_path / "fake")
  base = ["sweep", SWEEP_FILE, "--out", out, "--set", "fake=True", "--quiet"]
  assert cli.main(base + ["--list"]) == 0
  listed = capsys.readouterr().out.splitlines()
  assert len(listed) == 5 and all(" todo " in l for l in listed[:4])
  assert "0 of 4 cells done" in listed[-1]

  assert cli.main(base + ["--shard", "1/2"]) == 0
  assert "2 of 4 cells complete" in capsys.readouterr().out
  assert cli.main(base + ["--list"]) == 0
  listed = capsys.readouterr().out.splitlines()
  assert [" done " in l for l in listed[:4]] == [False, True, False, True]
  assert cli.main(base + ["--shard", "0/2"]) == 0
  capsys.readouterr()
  assert len(_lines(counter)) == 4 + 4  # a line per run, per grouped cell
  os.remove(os.path.join(out, "results.parquet"))
  assert cli.main(base + ["--collect"]) == 0
  assert "4 of 4 cells complete" in capsys.readouterr().out
  table = pd.read_parquet(os.path.join(out, "results.parquet"))
  assert len(table) == 4 * 2 and set(table["layer"]) == {"conv1", "fc"}

  for bad in (["--shard", "2/2"], ["--shard", "x"], ["--set", "sed=1"]):
    with pytest.raises(SystemExit, match="invjax sweep: error"):
      cli.main(base + bad)
  with pytest.raises(SystemExit, match="no sweep file"):
    cli.main(["sweep", str(tmp_path / "missing.py"), "--out", out])


# --- figures ------------------------------------------------------------------


def test_sweep_figures(reference):
  _, table = reference
  nv = table[table["result"] == "nv"]
  fig = invjax.plot.sweep_curves(nv, facet="transform")
  axes = [ax for ax in fig.axes if ax.get_visible()]
  assert [ax.get_title() for ax in axes] == ["transform=quarter",
                                             "transform=small"]
  assert [len(ax.get_lines()) for ax in axes] == [2, 2]  # a curve per seed
  line = axes[0].get_lines()[0]
  expected = nv[(nv["transform"] == "quarter") & (nv["seed"] == 0)]["value"]
  np.testing.assert_allclose(line.get_ydata(), expected.to_numpy())

  fig = invjax.plot.sweep_spread(nv, over="seed", depth="relative")
  ax = fig.axes[0]
  assert len(ax.get_lines()) == 2  # one per transform, mean over seeds
  quarter = nv[nv["transform"] == "quarter"].groupby("layer_index")["value"]
  np.testing.assert_allclose(ax.get_lines()[0].get_ydata(),
                             quarter.mean().to_numpy())
  np.testing.assert_allclose(ax.get_lines()[0].get_xdata(), [0, 50, 100])

  with pytest.raises(ValueError, match="sweep_spread"):
    # Without the seed column, two cells fall on each transform's curve.
    invjax.plot.sweep_curves(nv.drop(columns="seed"), facet="transform")
  with pytest.raises(ValueError, match="not a column"):
    invjax.plot.sweep_spread(nv, over="sed")
  with pytest.raises(ValueError, match="not a sweep table"):
    invjax.plot.sweep_curves(nv.drop(columns="cell"))


def _fake_result(value):
  from invjax._src.result import MeasureResult  # pylint: disable=g-import-not-at-top
  return MeasureResult.from_outputs(
      "normalized_variance", {}, {"a": {"values": np.array([value])},
                                  "b": {"values": np.array([np.nan])}})


def test_failing_cells_uneven_sweeps_and_bad_groups(tmp_path):
  calls = []

  def run(config, outdir):
    calls.append(config["seed"])
    if config["lr"] == 0.5 and config.get("broken"):
      raise RuntimeError("diverged")
    return {"nv": _fake_result(config["seed"] + config["lr"])}

  # lr is swept in one cell only: the others' lr column holds their config's.
  grid = [{"seed": 0}, {"seed": 1}, {"seed": 1, "lr": 0.5}]
  broken = _module(grid, base={"seed": 0, "lr": 0.1, "broken": True},
                   run=run)
  with pytest.raises(RuntimeError, match="diverged"):
    sweep.run(broken, tmp_path, progress=False)
  failed = tmp_path / "cells" / sweep.cell_id(grid[2])
  assert "diverged" in (failed / "error.txt").read_text()
  assert [sweep.is_complete(tmp_path, sweep.cell_id(c)) for c in grid] == \
      [True, True, False]
  assert len(sweep.load(tmp_path)) == 2 * 2  # the complete cells only

  fixed = _module(grid, base={"seed": 0, "lr": 0.1, "broken": True},
                  run=run)
  fixed.run = lambda config, outdir: run({**config, "broken": False}, outdir)
  table = sweep.run(fixed, tmp_path, progress=False)
  assert calls == [0, 1, 1, 1]  # the failed cell alone ran again
  assert not (failed / "error.txt").exists()
  assert list(table["lr"]) == [0.1, 0.1, 0.1, 0.1, 0.5, 0.5]
  assert list(table["value"][::2]) == [0.1, 1.1, 1.5]
  assert table["value"][1::2].isna().all()

  wrong = _module([{"seed": 0}, {"seed": 1}],
                  run_group=lambda configs, outdirs: [{}])
  with pytest.raises(ValueError, match="must return a list of 2"):
    sweep.run(wrong, tmp_path / "wrong", progress=False)
