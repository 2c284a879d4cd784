"""Ensembles: K networks that differ only in their parameters, one program.

The oracle of an ensemble measurement is each member measured alone.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import invjax
from invjax import measures as ms
from invjax import transforms as tr
from invjax._src import capture

K = 3


def _apply(params, images):
  h = jnp.tanh(images @ params["w"])                     # (B, H, W, 4)
  return {"map": h, "vec": h.mean(axis=(1, 2))}


def _weights():
  return np.random.default_rng(0).normal(size=(K, 2, 4)).astype(np.float32)


@pytest.mark.parametrize("stratify", [False, True])
def test_an_ensemble_measurement_equals_each_member_alone(stratify):
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(40, 6, 6, 2)).astype(np.float32)
  y = rng.choice([0, 1], size=40)
  families = [ms.normalized_variance(), ms.goodfellow(), ms.geed()]
  w = _weights()
  kw = dict(batch_size=8, labels=y, stratify=stratify)
  ensemble = capture.Activations(apply=_apply, params={"w": w}, key="ens",
                                 members=K)
  together = invjax.measure(ensemble, x, tr.rot90(), families, **kw)
  assert len(together) == K
  for i in range(K):
    alone = invjax.measure(
        capture.Activations(apply=_apply, params={"w": w[i]}, key="one"),
        x, tr.rot90(), families, **kw)
    for a, b in zip(together[i], alone):
      for layer in b.per_activation:
        np.testing.assert_array_equal(a.per_activation[layer],
                                      b.per_activation[layer])
      if stratify:
        for c in b.per_class:
          np.testing.assert_array_equal(a.per_class[c].per_activation["map"],
                                        b.per_class[c].per_activation["map"])


def test_an_ensemble_needs_the_members_axis_on_every_parameter():
  x = np.zeros((8, 4, 4, 2), np.float32)
  bad = capture.Activations(apply=_apply, params={"w": _weights()[0]},
                            key="bad", members=K)
  with pytest.raises(ValueError, match="leading axis of 3"):
    invjax.measure(bad, x, tr.rot90(), ms.normalized_variance())


# ---------------------------------------------------------------------------
# Capture: ensembles from Linen variables, NNX modules and functions.
# ---------------------------------------------------------------------------

import json  # pylint: disable=g-import-not-at-top,wrong-import-position
import os  # pylint: disable=g-import-not-at-top,wrong-import-position

import flax.linen as nn  # pylint: disable=g-import-not-at-top
import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
from flax import nnx as flax_nnx  # pylint: disable=g-import-not-at-top

from invjax import data  # pylint: disable=g-import-not-at-top
from invjax import models  # pylint: disable=g-import-not-at-top
from invjax import train as T  # pylint: disable=g-import-not-at-top

SEEDS = (0, 1, 2)


@pytest.fixture(autouse=True)
def _fast_rng_compile():
  # As in test_train.py: classic threefry compiles Flax's initializers
  # ~10x faster on CPU (both are deterministic).
  with jax.threefry_partitionable(False):
    yield


@pytest.fixture(scope="module")
def digits():
  x, y = data.load_digits()
  x, y = data.stratified_subset(x, y, 300, seed=0)
  return x[:200], y[:200], x[200:], y[200:]


def _model():
  return models.SimpleConv(channels=4, fc=16)


def _member(tree, i):
  return jax.tree.map(lambda v: v[i], tree)


def _assert_close(a, b, tol=1e-5):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for p, q in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(p), np.asarray(q), rtol=tol,
                               atol=tol)


def _assert_results_close(together, alone, tol=1e-5):
  assert len(together) == len(alone)
  for a, b in zip(together, alone):
    assert list(a.per_activation) == list(b.per_activation)
    for layer in b.per_activation:
      np.testing.assert_allclose(a.per_activation[layer],
                                 b.per_activation[layer], rtol=tol, atol=tol)


class _TinyLinen(nn.Module):

  @nn.compact
  def __call__(self, x, train=False):
    del train
    h = nn.relu(nn.Conv(3, (3, 3), name="conv")(x))
    return nn.Dense(4, name="head")(h.mean(axis=(1, 2)))


def test_linen_ensemble_measures_each_member_alone():
  # NV (one pass) and GEED (its own statistics) of K networks, one
  # program, against each member measured alone.
  x = np.random.default_rng(3).uniform(size=(24, 8, 8, 1)).astype(np.float32)
  stacked = jax.vmap(lambda k: _TinyLinen().init(k, x[:1]))(
      jax.random.split(jax.random.PRNGKey(5), K))
  acts = invjax.capture.linen(_TinyLinen(), stacked, ensemble=True)
  assert acts.members == K
  assert "46 parameters each, ensemble of 3" in repr(acts)
  one = invjax.capture.linen(_TinyLinen(), _member(stacked, 0))
  assert acts.layer_names(x[:2]) == one.layer_names(x[:2])
  out = acts(x[:2])                                 # (K, B, ...) per layer
  for name, v in one(x[:2]).items():
    assert out[name].shape == (K,) + v.shape
    np.testing.assert_allclose(out[name][0], v, rtol=1e-5, atol=1e-6)
  families = [ms.normalized_variance(), ms.geed()]
  together = invjax.measure(acts, x, tr.rot90(), families, batch_size=8)
  assert len(together) == K
  for i in range(K):
    alone = invjax.measure(
        invjax.capture.linen(_TinyLinen(), _member(stacked, i)), x,
        tr.rot90(), families, batch_size=8)
    _assert_results_close(together[i], alone)


class _Tiny(flax_nnx.Module):

  def __init__(self, rngs):
    self.conv = flax_nnx.Conv(1, 3, (3, 3), rngs=rngs)
    self.head = flax_nnx.Linear(3, 2, rngs=rngs)

  def __call__(self, x):
    h = flax_nnx.relu(self.conv(x))
    return self.head(h.mean(axis=(1, 2)))


def test_nnx_and_function_ensembles_measure_each_member_alone():
  x = np.random.default_rng(2).uniform(size=(16, 6, 6, 1)).astype(np.float32)

  # NNX's idiom: a module created under nnx.vmap, its state stacked.
  @flax_nnx.split_rngs(splits=K)
  @flax_nnx.vmap(in_axes=(0,), out_axes=0)
  def create(rngs):
    return _Tiny(rngs)

  stacked = create(flax_nnx.Rngs(0))
  members = [_Tiny(flax_nnx.Rngs(s)) for s in range(K)]
  nv = ms.normalized_variance()
  alone = [invjax.measure(invjax.capture.nnx(m), x, tr.rot90(), nv,
                          batch_size=8) for m in members]
  from_list = invjax.capture.nnx(members, ensemble=True)
  assert from_list.members == K
  _assert_results_close(
      invjax.measure(from_list, x, tr.rot90(), nv, batch_size=8), alone)
  from_vmap = invjax.capture.nnx(stacked, ensemble=True)
  assert from_vmap.members == K
  assert "3 each" not in repr(from_vmap)             # 3·3·3 + 3 + 3·2 + 2
  assert "38 parameters each, ensemble of 3" in repr(from_vmap)
  graphdef, state = flax_nnx.split(stacked)
  for i, res in enumerate(invjax.measure(from_vmap, x, tr.rot90(), nv,
                                         batch_size=8)):
    one = flax_nnx.merge(graphdef, _member(state, i))
    _assert_results_close([res], [invjax.measure(
        invjax.capture.nnx(one), x, tr.rot90(), nv, batch_size=8)])

  # A pure function of (params, images).
  w = {"w": _weights()}
  fn_acts = invjax.capture.function(_apply, w, ensemble=True)
  together = invjax.measure(fn_acts, x[..., [0, 0]], tr.rot90(),
                            ms.anova_f(), batch_size=8,
                            labels=np.arange(16) % 2)
  for i in range(K):
    one = invjax.measure(invjax.capture.function(_apply, {"w": w["w"][i]}),
                         x[..., [0, 0]], tr.rot90(), ms.anova_f(),
                         batch_size=8, labels=np.arange(16) % 2)
    _assert_results_close([together[i]], [one])


def test_bad_stacked_parameters_are_a_clear_error():
  single = _TinyLinen().init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 1)))
  with pytest.raises(ValueError, match="not an ensemble's stacked"):
    invjax.capture.linen(_TinyLinen(), single, ensemble=True)
  with pytest.raises(ValueError, match=r"leading axis of 3.*\['b'\] \(2, 4\)"):
    invjax.capture.function(
        _apply, {"w": _weights(), "v": _weights(), "b": np.zeros((2, 4))},
        ensemble=True)
  with pytest.raises(ValueError, match="no arrays"):
    invjax.capture.function(_apply, {}, ensemble=True)

  class Other(_Tiny):

    def __init__(self, rngs):
      super().__init__(rngs)
      self.head = flax_nnx.Linear(3, 5, rngs=rngs)

  with pytest.raises(ValueError, match="one structure"):
    invjax.capture.nnx([_Tiny(flax_nnx.Rngs(0)), Other(flax_nnx.Rngs(1))],
                       ensemble=True)
  with pytest.raises(ValueError, match="not an ensemble's stacked"):
    invjax.capture.nnx(_Tiny(flax_nnx.Rngs(0)), ensemble=True)


# ---------------------------------------------------------------------------
# Training: fit(seeds=...) is K fit(seed=s) runs in one program.
# ---------------------------------------------------------------------------


BASE = dict(steps=20, batch_size=16, learning_rate=3e-3, schedule="constant",
            log_every=5, checkpoint_every=10)


def _read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


def test_fit_with_seeds_equals_each_seed_alone(digits):
  x, y, xt, yt = digits
  # SGD: Adam's m/√v turns the round-off of a vmapped kernel (~1e-7) into
  # ~1e-5 steps where gradients are tiny; SGD keeps it at round-off.
  cfg = T.TrainConfig(**{**BASE, "steps": 6, "log_every": 3,
                         "augment": tr.rot90(), "optimizer": "sgd",
                         "learning_rate": 0.05})
  lines = []
  ens = T.fit(_model(), cfg, x, y, seeds=SEEDS, eval_data=(xt, yt),
              callback=lines.append)
  assert ens.step == 6
  for leaf in jax.tree.leaves((ens.variables, ens.opt_state)):
    assert leaf.shape[0] == K
  evals = T.evaluate(_model(), ens.variables, xt, yt, ensemble=True)
  for i, s in enumerate(SEEDS):
    one_lines = []
    one = T.fit(_model(), T.TrainConfig(**{**cfg.__dict__, "seed": s}), x, y,
                eval_data=(xt, yt), callback=one_lines.append)
    _assert_close(_member(ens.variables, i), one.variables)
    _assert_close(_member(ens.opt_state, i), one.opt_state)
    assert evals[i] == T.evaluate(_model(), one.variables, xt, yt)
    for a, b in zip(lines, one_lines):
      assert a["step"] == b["step"] and a["lr"] == b["lr"]
      for k in ("loss", "ce", "batch_accuracy", "grad_norm"):
        np.testing.assert_allclose(a[k][i], b[k], rtol=1e-5)
    assert lines[-1]["eval_accuracy"][i] == one_lines[-1]["eval_accuracy"]


def test_fit_seeds_are_checked(digits):
  x, y, _, _ = digits
  cfg = T.TrainConfig(**BASE)
  for seeds, match in [((), "empty"), ((1, 1), "repeats"), ((0, -1), ">= 0"),
                       ("01", "sequence of ints")]:
    with pytest.raises(ValueError, match=match):
      T.fit(_model(), cfg, x, y, seeds=seeds)
  with pytest.raises(ValueError, match="both cfg.seed=3 and seeds"):
    T.fit(_model(), T.TrainConfig(**{**BASE, "seed": 3}), x, y, seeds=(0, 1))
  single = _model().init(jax.random.PRNGKey(0), x[:1])
  with pytest.raises(ValueError, match="leading axis of 2"):
    T.fit(_model(), cfg, x, y, seeds=(0, 1), variables=single)


_KILLED_ENSEMBLE = """
import os, signal, sys
import jax
jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_threefry_partitionable", False)
from invjax import data, models, train as T
x, y = data.load_digits()
x, y = data.stratified_subset(x, y, 300, seed=0)

def die(record):
  if record["step"] == 20:      # Before line 20 and checkpoint 20 exist.
    os.kill(os.getpid(), signal.SIGKILL)

T.fit(models.SimpleConv(channels=4, fc=16), T.TrainConfig(**eval(sys.argv[2])),
      x[:200], y[:200], workdir=sys.argv[1], callback=die, seeds=(0, 1))
"""


def test_sigkilled_ensemble_resumes_as_uninterrupted(digits, tmp_path):
  # As test_train's single-model kill: checkpoint at 12 (not a log step,
  # so the per-member step metrics travel in it), killed at step 20.
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  x, y, _, _ = digits
  settings = {**BASE, "checkpoint_every": 12}
  cfg = T.TrainConfig(**settings)
  full = T.fit(_model(), cfg, x, y, seeds=(0, 1), workdir=tmp_path / "full")
  strip = lambda ls: [{k: v for k, v in l.items() if k != "time"} for l in ls]
  proc = subprocess.run(
      [sys.executable, "-c", _KILLED_ENSEMBLE, str(tmp_path / "killed"),
       repr(settings)], capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == -9, proc.stderr[-2000:]
  assert os.listdir(tmp_path / "killed" / "checkpoints") == ["12"]
  assert [l["step"] for l in _read_metrics(tmp_path / "killed")] == [5, 10,
                                                                      15]
  resumed = T.fit(_model(), cfg, x, y, seeds=(0, 1),
                  workdir=tmp_path / "killed")
  assert resumed.step == 20
  for a, b in zip(jax.tree.leaves((full.variables, full.opt_state)),
                  jax.tree.leaves((resumed.variables, resumed.opt_state))):
    np.testing.assert_array_equal(a, b)
  assert (strip(_read_metrics(tmp_path / "killed")) ==
          strip(_read_metrics(tmp_path / "full")))
  assert len(_read_metrics(tmp_path / "full")[0]["loss"]) == 2
  loaded = T.load_checkpoint(tmp_path / "killed")
  assert jax.tree.structure(loaded.opt_state) == jax.tree.structure(
      full.opt_state)
  for a, b in zip(jax.tree.leaves((full.variables, full.opt_state)),
                  jax.tree.leaves((loaded.variables, loaded.opt_state))):
    np.testing.assert_array_equal(a, b)
  # Other seeds, or one model, are another run.
  with pytest.raises(ValueError, match="seeds"):
    T.fit(_model(), cfg, x, y, seeds=(0, 2), workdir=tmp_path / "killed")
  with pytest.raises(ValueError, match="seed"):
    T.fit(_model(), cfg, x, y, workdir=tmp_path / "killed")
