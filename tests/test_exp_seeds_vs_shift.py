"""The seeds_vs_shift experiment in smoke mode, checked in float64.

One smoke run (digits and CIFAR grey, 2 seeds, rotation and translation
sets); the recorded Welch tests, gap / spread ratios and seed spreads are
recomputed in float64 (Welch's t and p by hand, with SciPy's t
distribution) from the sweep's table (`invjax.sweep.load`), itself checked
against the cells' result files.
"""

import json
import pathlib
import sys

import numpy as np
import pytest
from scipy import stats

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

import invjax  # pylint: disable=g-import-not-at-top
from experiments import _runner  # pylint: disable=g-import-not-at-top

NAME = "seeds_vs_shift"
exp = _runner.get_experiment(NAME)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """``(outdir, summary)`` of one smoke run."""
  cifar = _runner.data_dir({}) / "cifar10"
  if not any(cifar.glob("cifar-10-*")):
    pytest.skip(f"CIFAR-10 test batch not found in {cifar}")
  out = tmp_path_factory.mktemp(NAME)
  return _runner.run_experiment(NAME, smoke=True, out=out, quiet=True)


def _values(table, label: str, layer: str) -> np.ndarray:
  """Per-seed NV of group ``dataset/regime/set`` at ``layer`` (float64)."""
  dataset, regime, name = label.split("/")
  augment = "none" if regime == "plain" else name
  rows = table[(table["dataset"] == dataset) & (table["augment"] == augment)
               & (table["result"] == f"nv_{name}")
               & (table["layer"] == layer)].sort_values("seed")
  return rows["value"].to_numpy(np.float64)


def test_table_and_files(run):
  outdir, summary = run
  config = json.loads((outdir / "config.json").read_text())
  table = invjax.sweep.load(outdir)
  assert {"dataset", "augment", "seed", "cell", "result", "layer",
          "value"} <= set(table.columns)
  cells = table[["dataset", "augment", "seed"]].drop_duplicates()
  expected = {(d, a, s) for d in config["datasets"]
              for a in config["augmentations"]
              for s in range(config["num_seeds"])}
  assert set(map(tuple, cells.to_numpy().tolist())) == expected
  assert set(table["result"]) == {f"nv_{n}" for n in config["sets"]}
  # Every cell measures every layer under every set, with finite NV.
  per_cell = table.groupby(["cell", "result"])["layer"].count()
  assert per_cell.nunique() == 1 and per_cell.iloc[0] >= 10
  assert np.isfinite(table["value"]).all()
  # The table is the cells' results.
  for cell in table["cell"].unique()[:2]:
    for name, (result,) in _runner.cell_results(outdir, cell).items():
      mine = table[(table["cell"] == cell) & (table["result"] == name)]
      np.testing.assert_array_equal(
          mine["value"], [result.per_layer[l] for l in result.layers])
  for d in config["datasets"]:
    for regime in ("plain", "augmented"):
      assert (outdir / f"seed_spread_{d}_{regime}.png").is_file()
  md = (outdir / "results.md").read_text()
  assert md == summary["markdown"] and md.startswith(f"# {NAME}")


def test_welch_and_ratios_recomputed(run):
  outdir, _ = run
  table = invjax.sweep.load(outdir)
  metrics = json.loads((outdir / "metrics.json").read_text())
  kinds = {c["kind"] for c in metrics["comparisons"]}
  assert kinds == {"dataset", "set"}
  checked = 0
  for comparison in metrics["comparisons"]:
    for layer, rec in comparison["per_layer"].items():
      a = _values(table, comparison["a"], layer)
      b = _values(table, comparison["b"], layer)
      assert a.size == b.size == 2
      va, vb = a.var(ddof=1), b.var(ddof=1)
      # Welch's t and Welch–Satterthwaite degrees of freedom, by hand.
      se2 = va / a.size + vb / b.size
      t = (a.mean() - b.mean()) / np.sqrt(se2)
      df = se2 ** 2 / ((va / a.size) ** 2 / (a.size - 1)
                       + (vb / b.size) ** 2 / (b.size - 1))
      p = 2 * stats.t.sf(abs(t), df)
      np.testing.assert_allclose(rec["statistic"], t, rtol=1e-9)
      np.testing.assert_allclose(rec["pvalue"], p, rtol=1e-7, atol=1e-12)
      spread = np.sqrt((va + vb) / 2)
      np.testing.assert_allclose(rec["spread"], spread, rtol=1e-12)
      np.testing.assert_allclose(rec["ratio"],
                                 abs(a.mean() - b.mean()) / spread,
                                 rtol=1e-12)
      checked += 1
  assert checked >= 20


def test_seed_spread_and_verdict(run):
  outdir, summary = run
  config = json.loads((outdir / "config.json").read_text())
  table = invjax.sweep.load(outdir)
  metrics = json.loads((outdir / "metrics.json").read_text())
  labels = [f"{d}/plain/{n}" for d in config["datasets"]
            for n in config["sets"]]
  labels += [f"{d}/augmented/{a}" for d in config["datasets"]
             for a in config["augmentations"] if a != "none"]
  cvs = []
  for layer, entry in metrics["per_layer"].items():
    groups = [_values(table, label, layer) for label in labels]
    cv = [g.std(ddof=1) / abs(g.mean()) for g in groups]
    np.testing.assert_allclose(entry["seed_std"],
                               np.median([g.std(ddof=1) for g in groups]),
                               rtol=1e-12)
    np.testing.assert_allclose(entry["seed_cv"], np.median(cv), rtol=1e-12)
    cvs += cv
  np.testing.assert_allclose(metrics["median_seed_cv"], np.median(cvs),
                             rtol=1e-12)
  # The verdict follows from the recorded per-layer fractions.
  layers = list(metrics["per_layer"])
  by = {k: [l for l in layers
            if metrics["per_layer"][l][k]["fraction_significant"] > 0.5]
        for k in ("dataset", "set")}
  assert by["dataset"] == metrics["layers_by_dataset"]
  assert by["set"] == metrics["layers_by_set"]
  last = summary["findings"][-1]
  assert last.endswith(metrics["verdict"])
  assert metrics["verdict"] in ("held.", "did not hold.") or (
      metrics["verdict"].startswith("partly: "))
  assert metrics["expected_held"] == (metrics["verdict"] == "held.")


def test_config_checks():
  with pytest.raises(ValueError, match="num_seeds"):
    exp.get_config(num_seeds=1)
  with pytest.raises(ValueError, match="sets"):
    exp.get_config(sets=["rotation", "shear"])
  with pytest.raises(ValueError, match="augmentations"):
    exp.get_config(sets=["rotation", "scale"], augmentations=["affine"])
  config = exp.get_config(smoke=True)
  assert len(exp.get_sweep(config)) == 8
  for name in exp.SETS:
    n = 8 if name == "affine" else config.num_transformations
    assert len(exp.transformation_set(name, config)) == n
