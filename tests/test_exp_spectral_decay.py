"""The spectral_decay experiment: its sensitivity functions and a smoke run.

The sensitivity functions are checked on a linear model f(x) = W·vec(x) + b,
whose Jacobian is W at every x, against closed forms in NumPy float64; the
smoke run's recorded numbers are recomputed from the files it wrote.
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
from experiments import spectral_decay as exp  # pylint: disable=C0413

NAME = "spectral_decay"


def _linear(k=5, shape=(4, 4, 1), singular=(5.0, 3.0, 2.0, 1.0, 0.5),
            seed=0):
  """W (K, D) with the given singular values, b, and f as a JAX function."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  d = int(np.prod(shape))
  u, _ = np.linalg.qr(rng.standard_normal((k, k)))
  v, _ = np.linalg.qr(rng.standard_normal((d, k)))
  w = u @ np.diag(singular) @ v.T
  b = rng.standard_normal(k)
  w32, b32 = jnp.asarray(w, jnp.float32), jnp.asarray(b, jnp.float32)

  def fn(x):
    return x.reshape(x.shape[0], -1) @ w32.T + b32

  return w, b, fn, rng


def test_matched_noise_has_the_rotation_norm():
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(6, 4, 4, 1)).astype(np.float32)
  gx = np.rot90(x, 1, axes=(1, 2))
  noisy = exp.matched_noise(x, gx, np.random.default_rng(2))
  assert noisy.dtype == np.float32 and noisy.shape == x.shape
  want = np.linalg.norm((gx - x).reshape(6, -1).astype(np.float64), axis=1)
  got = np.linalg.norm((noisy - x).reshape(6, -1).astype(np.float64), axis=1)
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_relative_change_on_a_linear_model():
  w, b, fn, rng = _linear()
  x = rng.uniform(size=(7, 4, 4, 1))
  xp = x + 0.1 * rng.standard_normal(x.shape)
  got = np.asarray(exp.relative_change(fn, x.astype(np.float32),
                                       xp.astype(np.float32)))
  flat, flatp = x.reshape(7, -1), xp.reshape(7, -1)
  want = (np.linalg.norm((flatp - flat) @ w.T, axis=1)
          / np.linalg.norm(flat @ w.T + b, axis=1))
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_directional_norms_on_a_linear_model():
  # J = W, so ‖J u‖ = ‖W u‖ for each unit direction u.
  w, _, fn, rng = _linear()
  x = rng.uniform(size=(3, 4, 4, 1)).astype(np.float32)
  dirs = rng.standard_normal((4, 3, 4, 4, 1))
  got = np.asarray(exp.directional_norms(fn, x, dirs.astype(np.float32)))
  assert got.shape == (3, 4)
  u = dirs.reshape(4, 3, -1)
  u = u / np.linalg.norm(u, axis=-1, keepdims=True)
  want = np.linalg.norm(u @ w.T, axis=-1).T
  np.testing.assert_allclose(got, want, rtol=1e-4)


def test_top_singular_values_on_a_linear_model():
  # J = W at every image: its top singular values are W's (5, 3, 2, ...).
  w, _, fn, rng = _linear()
  x = rng.uniform(size=(3, 4, 4, 1)).astype(np.float32)
  init = rng.standard_normal((3, 3, 4, 4, 1)).astype(np.float32)
  got = np.asarray(exp.top_singular_values(fn, x, init, iterations=30))
  want = np.linalg.svd(w, compute_uv=False)[:3]
  np.testing.assert_allclose(got, np.tile(want, (3, 1)), rtol=1e-4)
  # Rayleigh–Ritz from any start: never above the true values.
  one = np.asarray(exp.top_singular_values(fn, x, init, iterations=0))
  assert np.all(one <= want * (1 + 1e-5))


def test_config_checks():
  with pytest.raises(ValueError, match="reg_weights needs 0"):
    exp.get_config(smoke=True, reg_weights=[0.3, 1.0])
  with pytest.raises(ValueError, match="num_seeds"):
    exp.get_config(smoke=True, num_seeds=1)
  cells = exp.get_sweep(exp.get_config())
  assert len(cells) == 2 * 5 + 2 and cells[-1] == dict(
      model="gcnn", reg_weight=0.0, seed=1)
  assert exp.get_config(preset="gpu").n_train == 60000


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  out = tmp_path_factory.mktemp(NAME)
  return _runner.run_experiment(NAME, smoke=True, out=out, quiet=True)


def test_smoke_run(smoke):
  outdir, summary = smoke
  config = exp.get_config(smoke=True)
  weights, seeds = config.reg_weights, [0, 1]
  metrics = json.loads((outdir / "metrics.json").read_text())
  md = (outdir / "results.md").read_text()
  assert md == summary["markdown"] and md.startswith(f"# {NAME}")
  for f in ("sensitivity_vs_lambda.png", "jacobian_spectrum.png"):
    assert (outdir / f).stat().st_size > 1000

  # The table: one cell per (λ, seed) of the CNN and per G-CNN seed, each
  # with its nv, li and sensitivity results.
  table = invjax.sweep.load(outdir)
  assert {"model", "reg_weight", "seed", "cell", "result", "layer",
          "value"} <= set(table.columns)
  cells = table[["model", "reg_weight", "seed"]].drop_duplicates()
  assert sorted(map(tuple, cells.values.tolist())) == sorted(
      [("cnn", w, s) for w in weights for s in seeds]
      + [("gcnn", 0.0, s) for s in seeds])
  sens = table[table["result"] == "sensitivity"]
  assert set(sens["layer"]) == {"rot_rel", "noise_rel", "jvp_norm", "sigma1",
                                "sigma2", "logit_norm"}

  def value(model, w, s, layer, result="sensitivity"):
    row = table[(table["model"] == model) & (table["reg_weight"] == w)
                & (table["seed"] == s) & (table["result"] == result)
                & (table["layer"] == layer)]
    (v,) = row["value"]
    return float(v)

  # Spearman ρ(λ, m), recomputed in float64 from the table (ranks by hand).
  def spearman(a, b):
    ra, rb = stats.rankdata(a), stats.rankdata(b)
    return np.corrcoef(ra, rb)[0, 1]

  for q in exp.NON_GROUP:
    v = np.array([[value("cnn", w, s, q) for w in weights] for s in seeds])
    rec = metrics["spearman"][q]
    for i in range(len(seeds)):
      assert rec["per_seed"][i] == pytest.approx(spearman(weights, v[i]),
                                                 abs=1e-9)
    assert rec["pooled"] == pytest.approx(
        spearman(np.tile(weights, len(seeds)), v.ravel()), abs=1e-9)
    # Welch's t of the G-CNN against the λ = 0 CNN, by the formula.
    g = np.array([value("gcnn", 0.0, s, q) for s in seeds])
    c = v[:, 0]
    t = (g.mean() - c.mean()) / np.sqrt(g.var(ddof=1) / len(g)
                                        + c.var(ddof=1) / len(c))
    assert metrics["welch"][q]["statistic"] == pytest.approx(t, rel=1e-9)
  # LI of the G-CNN at the logits: exactly invariant.
  for s in seeds:
    assert value("gcnn", 0.0, s, "logits", "li") < 1e-6
    assert value("gcnn", 0.0, s, "rot_rel") < 1e-5

  # σ₁ of one CNN cell against its full Jacobian (jax.jacfwd, SVD in
  # float64): the power iteration's estimate is a lower bound and close.
  import invjax.train as T  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  (cell,) = table[(table["model"] == "cnn") & (table["reg_weight"] == 0.0)
                  & (table["seed"] == 0)]["cell"].unique()
  (workdir,) = (outdir / "cells" / cell / "checkpoints").iterdir()
  variables = T.load_checkpoint(str(workdir)).variables
  model = exp.build(exp.get_config(smoke=True, model="cnn"))
  _, _, test_x, _ = _runner.load_digit_data(config)
  x = test_x[:config.n_spectral]
  jac = np.asarray(jax.jacfwd(lambda im: model.apply(variables, im[None])[0])(
      x[0]), np.float64).reshape(10, -1)
  sigma = np.linalg.svd(jac, compute_uv=False)
  saved = _runner.cell_results(outdir, cell)["sensitivity"][0]
  got = np.asarray(saved.per_activation["sigma1"])[0]
  assert got == pytest.approx(sigma[0], rel=1e-3)
  per_image = {k: np.asarray(v, np.float64)
               for k, v in saved.per_activation.items()}
  assert saved.per_layer["sigma1"] == pytest.approx(
      per_image["sigma1"].mean(), rel=1e-12)
  # The scale-free (b) and (c) of the summary, from the per-image values.
  rec = metrics["cells"]["cnn/0/0"]
  norm = per_image["logit_norm"]
  assert rec["jvp_rel"] == pytest.approx(
      (per_image["jvp_norm"] / norm).mean(), rel=1e-12)
  assert rec["sigma1_rel"] == pytest.approx(
      (per_image["sigma1"] / norm[:config.n_spectral]).mean(), rel=1e-12)
  # ‖f(x)‖ of the same images, recomputed from the checkpoint.
  logits = np.asarray(model.apply(variables, test_x), np.float64)
  np.testing.assert_allclose(norm, np.linalg.norm(logits, axis=1),
                             rtol=1e-4)

  last = summary["findings"][-1]
  assert last.endswith(("held.", "did not hold.")) or "partly:" in last
  assert metrics["verdict"] in last
