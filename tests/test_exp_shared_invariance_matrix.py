"""shared_invariance_matrix in smoke mode, checked against float64 NumPy.

One smoke run (three models and the pairs cell); the checks recompute the
recorded STIR and CKA values from the representations the run saved, the
claims' statistics from the sweep table, and the losses by hand.
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

# pylint: disable=g-import-not-at-top,wrong-import-position
import invjax
from experiments import _runner
from experiments import shared_invariance_matrix as exp
import references
# pylint: enable=g-import-not-at-top,wrong-import-position

NAME = "shared_invariance_matrix"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  out = tmp_path_factory.mktemp(NAME)
  outdir, summary = _runner.run_experiment(NAME, smoke=True, out=out,
                                           quiet=True)
  return outdir, summary, invjax.sweep.load(outdir)


def _pairs_dir(outdir):
  (path,) = outdir.glob("cells/model=pairs-*")
  return path


def test_table_cells_and_columns(run):
  outdir, _, table = run
  config = exp.get_config(smoke=True)
  names = config.models
  assert {"model", "cell", "result", "layer", "value"} <= set(table.columns)
  assert list(table["model"].unique()) == names + ["pairs"]
  for m in names:
    rows = table[table["model"] == m]
    assert list(rows["result"]) == ["accuracy"] and list(rows["layer"]) == [m]
    assert 0 <= rows["value"].item() <= 1
  pairs = table[table["model"] == "pairs"]
  stir = pairs[pairs["result"] == "stir"]
  assert list(stir["layer"]) == [f"{b}|{a}" for a in names for b in names]
  cka = pairs[pairs["result"] == "linear_cka"]
  assert len(cka) == len(names) * (len(names) - 1) // 2
  assert list(pairs[pairs["result"] == "inversion_loss"]["layer"]) == names
  # Similarities of centred features lie in [0, 1].
  assert np.all(stir["value"].between(-1e-6, 1 + 1e-6))
  assert np.all(cka["value"].between(-1e-6, 1 + 1e-6))
  # The summary's matrices are the table's, and stir_matrix.npz holds them.
  metrics = json.loads((outdir / "metrics.json").read_text())
  saved = np.load(outdir / "stir_matrix.npz")
  assert list(saved["models"]) == names
  np.testing.assert_allclose(np.asarray(metrics["stir"]), saved["stir"],
                             rtol=1e-12)
  for layer, v in zip(stir["layer"], stir["value"]):
    b, a = layer.split("|")     # layer "b|a" = STIR(b | a): row a, column b
    assert saved["stir"][names.index(a), names.index(b)] == pytest.approx(
        v, abs=1e-12)
  assert list(outdir.glob("stir_matrix.png"))


def test_stir_and_cka_recomputed_in_float64(run):
  outdir, _, table = run
  names = exp.get_config(smoke=True).models
  feats = np.load(_pairs_dir(outdir) / "features.npz")
  value = dict(zip(table["result"] + ":" + table["layer"], table["value"]))
  for a in names:
    for b in names:
      # STIR(b | a) = CKA(b(X), b(X′_a)) with X′_a the inversion of a.
      ref = references.linear_cka(feats[f"{b}@X"], feats[f"{b}@{a}"])
      assert value[f"stir:{b}|{a}"] == pytest.approx(ref, abs=1e-4)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      ref = references.linear_cka(feats[f"{a}@X"], feats[f"{b}@X"])
      assert value[f"linear_cka:{a}|{b}"] == pytest.approx(ref, abs=1e-4)


def test_saved_features_are_the_trained_models(run):
  import invjax.train as T  # pylint: disable=g-import-not-at-top
  outdir, _, _ = run
  config = exp.get_config(smoke=True)
  _, test_x, _ = exp.load_data(config)
  feats = np.load(_pairs_dir(outdir) / "features.npz")
  for name in ("cnn_a", "gcnn_a"):
    (workdir,) = outdir.glob(f"cells/model={name}-*/checkpoints/{name}")
    model = exp.build(name, config)[0]
    variables = T.load_checkpoint(str(workdir)).variables
    np.testing.assert_allclose(
        np.asarray(exp.features(model, variables)(test_x)),
        feats[f"{name}@X"], rtol=1e-5, atol=1e-6)


def test_claims_recomputed_from_the_table(run):
  outdir, summary, table = run
  config = exp.get_config(smoke=True)
  names = config.models
  metrics = json.loads((outdir / "metrics.json").read_text())
  stir = {}
  for layer, v in zip(table["layer"][table["result"] == "stir"],
                      table["value"][table["result"] == "stir"]):
    stir[tuple(layer.split("|"))] = v     # (b, a): STIR(b | a)
  within = [stir[b, a] for a in ("cnn_a", "cnn_b")
            for b in ("cnn_a", "cnn_b") if a != b]
  across = [stir[b, a] for a, b in (("cnn_a", "gcnn_a"), ("gcnn_a", "cnn_a"),
                                    ("cnn_b", "gcnn_a"), ("gcnn_a", "cnn_b"))]
  claims = metrics["claims"]
  arch, loss = claims["architecture"], claims["loss"]
  assert arch["mean_same"] == pytest.approx(np.mean(within), abs=1e-12)
  assert arch["mean_different"] == pytest.approx(np.mean(across), abs=1e-12)
  assert arch["pvalue"] == pytest.approx(stats.ttest_ind(
      within, across, equal_var=False, alternative="greater").pvalue)
  assert loss["mean_same"] == pytest.approx(np.mean(within), abs=1e-12)
  # The smoke models share one loss: no pair to decide the loss claim by.
  assert loss["n_different"] == 0 and np.isnan(float(loss["pvalue"]))
  assert not loss["held"]
  asym = max(abs(stir[a, b] - stir[b, a]) for a in names for b in names)
  assert claims["asymmetry"]["max"] == pytest.approx(asym, abs=1e-12)
  assert claims["asymmetry"]["held"] == (asym > 0.05)
  last = summary["findings"][-1]
  verdict = last.split(") ", 1)[1]
  assert verdict in ("held.", "did not hold.") or verdict.startswith(
      "partly: ")
  assert metrics["expected_held"] == (verdict == "held.")
  md = (outdir / "results.md").read_text()
  assert md == summary["markdown"] and last in md


def test_losses():
  logits = np.array([[2.0, -1.0, 0.5], [0.0, 1.0, 3.0]], np.float32)
  labels = np.array([0, 2])
  onehot = np.eye(3)[labels]
  z = logits.astype(np.float64)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  smooth = onehot * 0.9 + 0.1 / 3
  ls = exp.loss_function("label_smoothing", 0.1)
  assert float(ls(logits, labels)) == pytest.approx(
      -(smooth * logp).sum(-1).mean(), rel=1e-6)
  se = exp.loss_function("squared_error", 0.1)
  assert float(se(logits, labels)) == pytest.approx(
      ((z - onehot) ** 2).sum(-1).mean(), rel=1e-6)
  assert exp.loss_function("ce", 0.1) is None


def test_pairs_cell_needs_the_models(tmp_path):
  config = exp.get_config(smoke=True, model="pairs")
  with pytest.raises(ValueError, match="needs every model cell finished"):
    exp.trained_variables(config, tmp_path / "cells" / "model=pairs-x")
