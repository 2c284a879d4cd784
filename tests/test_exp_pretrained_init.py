"""experiments/pretrained_init.py in smoke mode, checked from its files.

One smoke run (digits and CIFAR grey, two seeds, ten steps); the recorded
tests and ratios are recomputed in float64 from the per-layer values in
results.parquet, and the pairwise G-EED from the unnormalized one.
"""

import importlib
import json
import pathlib
import re
import sys

import numpy as np
import pytest
from scipy import stats

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

import invjax  # pylint: disable=wrong-import-position

# After the path insertion: the repository's `experiments` package.
_runner = importlib.import_module("experiments._runner")
exp = importlib.import_module("experiments.pretrained_init")

NAME = "pretrained_init"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp(NAME)
  return _runner.run_experiment(NAME, smoke=True, out=out, quiet=True)


def _logits(table, task, init, augment, result):
  """Per-seed values at the logits, in seed order (float64)."""
  rows = table[(table["task"] == task) & (table["init"] == init)
               & (table["augment"] == augment) & (table["result"] == result)
               & (table["layer"] == "logits")].sort_values("seed")
  return rows["value"].to_numpy(np.float64)


def _welch(a, b):
  """Welch's two-sided t-test, from its definition."""
  va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
  t = (a.mean() - b.mean()) / np.sqrt(va + vb)
  df = (va + vb) ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
  return t, 2 * stats.t.sf(abs(t), df)


def test_cells_and_table(run):
  import pandas as pd  # pylint: disable=g-import-not-at-top
  outdir, _ = run
  config = json.loads((outdir / "config.json").read_text())
  assert config["smoke"] and config["tasks"] == ["mnist"]
  table = invjax.sweep.load(outdir)
  assert table.equals(pd.read_parquet(outdir / "results.parquet"))
  seeds = list(range(config["num_seeds"]))
  cells = set(map(tuple, table[["task", "init", "augment", "seed"]]
                  .drop_duplicates().to_numpy().tolist()))
  expected = {("mnist", "source", "none", s) for s in seeds}
  expected |= {("mnist", i, a, s) for i in exp.INITS
               for a in config["augments"] for s in seeds}
  assert cells == expected
  assert set(table["result"]) == {f"{m}_{d}" for m in exp.MEASURES
                                  for d in exp.DISTS}
  # Equivariant G-EED only on the spatial layers; invariance on all.
  eq = set(table[table["result"] == "geed_eq_test"]["layer"])
  inv = set(table[table["result"] == "geed_test"]["layer"])
  assert "conv5_act" in eq and "logits" not in eq and "fc1" not in eq
  assert eq < inv and "logits" in inv and "output" not in inv
  assert (table["value"] >= 0).all()
  for cell in table["cell"].unique():
    record = _runner.read_cell_record(outdir, cell)
    assert 0 <= record["accuracy"]["accuracy"] <= 1
    assert ("pretrain_accuracy" in record) == ("init=random" not in cell)
  # One pretraining per seed, shared by the seed's cells, its log kept.
  logs = {p.stem for p in (outdir / "train_logs").glob("pretrain_*.jsonl")}
  assert logs == {f"pretrain_cifar_grey_seed{s}" for s in seeds}


def test_welch_effect_and_retention_recomputed(run):
  outdir, summary = run
  table = invjax.sweep.load(outdir)
  metrics = json.loads((outdir / "metrics.json").read_text())
  config = json.loads((outdir / "config.json").read_text())
  comparisons = metrics["comparisons"]
  assert len(comparisons) == len(config["augments"]) * len(exp.DISTS)
  n_sig = 0
  for key, c in comparisons.items():
    task, aug, dist = key.split("/")
    name = f"geed_pair_{dist}"
    pre = _logits(table, task, "pretrained", aug, name)
    rand = _logits(table, task, "random", aug, name)
    source = _logits(table, task, "source", "none", name)
    assert len(pre) == len(rand) == config["num_seeds"]
    t, p = _welch(pre, rand)
    assert c["statistic"] == pytest.approx(t, rel=1e-6)
    assert c["pvalue"] == pytest.approx(p, rel=1e-6)
    n_sig += p < config["alpha"]
    spread = np.sqrt((pre.var(ddof=1) + rand.var(ddof=1)) / 2)
    gap = pre.mean() - rand.mean()
    assert c["effect"] == pytest.approx(abs(gap) / spread, rel=1e-6)
    assert c["source_mean"] == pytest.approx(source.mean(), rel=1e-6)
    if aug == "none":
      assert c["retention"] == pytest.approx(
          gap / (source.mean() - rand.mean()), rel=1e-6)
  assert metrics["significant"] == n_sig
  last = summary["findings"][-1]
  verdict = re.search(r"\) (held\.|did not hold\.|partly: .*)$", last)
  assert verdict, last
  if n_sig == 0:
    assert verdict.group(1) == "did not hold."
  assert metrics["expected_held"] == (verdict.group(1) == "held.")
  md = (outdir / "results.md").read_text()
  assert md == summary["markdown"] and "| random init |" in md
  assert (outdir / "geed_pair_mnist.png").is_file()


def test_pairwise_geed_is_deviation_over_spread(run):
  outdir, _ = run
  table = invjax.sweep.load(outdir)
  for cell in table["cell"].unique()[:3]:
    results = _runner.cell_results(outdir, cell)
    for dist in exp.DISTS:
      (plain,) = results[f"geed_{dist}"]
      (pair,) = results[f"geed_pair_{dist}"]
      for layer in ("conv1", "fc1_act", "logits"):
        extras = pair.extras[layer]
        dev = np.float64(np.mean(extras["deviation"]))
        spread = np.float64(np.mean(extras["pairwise_distance"]))
        # The deviation is the unnormalized G-EED of the same images.
        assert dev == pytest.approx(plain.per_layer[layer], rel=1e-5)
        assert pair.per_layer[layer] == pytest.approx(dev / spread,
                                                      rel=1e-5)


def test_fine_tuning_starts_from_the_pretrained_weights(run, tmp_path):
  import jax  # pylint: disable=g-import-not-at-top
  import invjax.train as T  # pylint: disable=g-import-not-at-top
  outdir, _ = run
  config = exp.get_config(smoke=True)
  model = exp.build(config)
  x, y, _, _ = exp.load_task(config, "mnist")
  table = invjax.sweep.load(outdir)

  def final(init):
    (cell,) = table[(table["init"] == init) & (table["seed"] == 0)][
        "cell"].unique()
    return T.load_checkpoint(str(_runner.cell_path(outdir, cell)
                                 / "checkpoints" / f"mnist_{init}_none_seed0"
                                 )).variables

  pre = T.load_checkpoint(str(outdir / "checkpoints"
                              / "pretrain_cifar_grey_seed0")).variables
  # `_runner.fit(variables=)` from the pretrained weights retraces the
  # pretrained cell exactly (same program, batches and keys)...
  again = _runner.fit(model, config, x, y, outdir=tmp_path, label="again",
                      seed=0, variables=pre)
  leaves = [np.asarray(v) for v in jax.tree.leaves(again)]
  for a, b in zip(leaves, jax.tree.leaves(final("pretrained"))):
    np.testing.assert_allclose(a, np.asarray(b), rtol=1e-5, atol=1e-6)
  # ...and not the random cell, which started from model.init.
  assert not all(np.allclose(a, np.asarray(b)) for a, b in
                 zip(leaves, jax.tree.leaves(final("random"))))
