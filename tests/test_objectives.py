"""Invariance objectives: references, gradients and a small training run."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from invjax import capture
from invjax._src import objectives
from invjax._src import transforms as tr
from invjax._src.measures import genuine

H, W, C, K = 6, 6, 2, 5


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"k3": jnp.asarray(rng.normal(size=(3, 3, C, 4)), jnp.float32),
          "k1": jnp.asarray(rng.normal(size=(1, 1, C, 4)), jnp.float32),
          "dense": jnp.asarray(rng.normal(size=(4, K)), jnp.float32)}


def _conv(x, k):
  return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO",
                                                         "NHWC"))


def _cnn(params, x):
  return jnp.tanh(_conv(x, params["k3"])).mean(axis=(1, 2)) @ params["dense"]


def _pointwise(params, x):
  return jnp.tanh(_conv(x, params["k1"])).mean(axis=(1, 2)) @ params["dense"]


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).uniform(size=(7, H, W, C)).astype(
      np.float32)


def _softmax(z):
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def reference_error(z, kind):
  """(B, T, K) float64 orbit logits -> the batch-mean invariance error."""
  z = np.asarray(z, np.float64)
  per_sample = []
  for orbit in z:
    if kind == "logit_spread":
      per_sample.append(np.mean([np.sum((zg - orbit.mean(0))**2)
                                 for zg in orbit]))
    else:
      p = _softmax(orbit)
      pbar = p.mean(axis=0)
      per_sample.append(np.mean([np.sum(pg * np.log(pg / pbar)) for pg in p]))
  return np.mean(per_sample)


def _orbit(fn, images, ts, rows=None):
  rows = np.arange(len(ts)) if rows is None else rows
  x = np.stack([np.asarray(ts.apply(jnp.asarray(img)))[rows]
                for img in images])
  z = fn(_params(), jnp.asarray(x.reshape((-1,) + x.shape[2:])))
  return np.asarray(z).reshape(x.shape[:2] + (-1,))


def test_matches_reference(images):
  ts = tr.rot90()

  @jax.jit
  def run(p, x):
    return [objectives.invariance_error(_cnn, p, x, ts, kind=k)
            for k in ("logit_spread", "kl")]

  spread, kl = run(_params(), images)
  z = _orbit(_cnn, images, ts)
  np.testing.assert_allclose(spread, reference_error(z, "logit_spread"),
                             rtol=1e-5)
  np.testing.assert_allclose(kl, reference_error(z, "kl"), rtol=5e-5)
  assert float(spread) > 1e-3
  # An invariant network has no invariance error.
  zero = jax.jit(lambda p, x: [objectives.invariance_error(
      _pointwise, p, x, ts, kind=k) for k in ("logit_spread", "kl")])(
          _params(), images)
  np.testing.assert_allclose(zero, 0.0, atol=1e-7)


def test_random_subset(images):
  ts = tr.rotation([0.0, 45.0, 90.0, 135.0, 180.0])
  key = jax.random.PRNGKey(3)
  err, z = jax.jit(lambda p, x: objectives.invariance_error(
      _cnn, p, x, ts, key=key, num_samples=3, return_logits=True))(
          _params(), images)
  rows = np.asarray(jax.random.choice(key, 5, (3,), replace=False))
  assert len(set(rows.tolist())) == 3
  expected = _orbit(_cnn, images, ts, rows)
  np.testing.assert_allclose(z, expected, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(err, reference_error(expected, "logit_spread"),
                             rtol=1e-5)
  for kw in [dict(key=key), dict(num_samples=2), dict(key=key, num_samples=1),
             dict(key=key, num_samples=6)]:
    with pytest.raises(ValueError):
      objectives.invariance_error(_cnn, _params(), images, ts, **kw)
  with pytest.raises(ValueError, match="kind"):
    objectives.invariance_error(_cnn, _params(), images, ts, kind="l2")


@pytest.mark.parametrize("kind", ["logit_spread", "kl"])
def test_grad_matches_finite_differences(images, kind):
  ts = tr.rot90()
  f = jax.jit(lambda p: objectives.invariance_error(_cnn, p, images, ts,
                                                    kind=kind))
  p = _params()
  g = jax.jit(jax.grad(f))(p)
  v = jax.tree.map(lambda a: jnp.asarray(
      np.random.default_rng(1).normal(size=a.shape), a.dtype), p)
  eps = 1e-3
  shift = lambda s: jax.tree.map(lambda a, b: a + s * eps * b, p, v)
  fd = (f(shift(1)) - f(shift(-1))) / (2 * eps)
  directional = sum(jnp.vdot(a, b) for a, b in
                    zip(jax.tree.leaves(g), jax.tree.leaves(v)))
  np.testing.assert_allclose(directional, fd, rtol=2e-2)


def _layers(params, x):
  conv = jnp.tanh(_conv(x, params["k3"]))
  return {"conv": conv, "logits": conv.mean(axis=(1, 2)) @ params["dense"]}


def test_nv_penalty(images):
  ts = tr.rot90()
  acts = capture.Activations(apply=_layers, params=None)
  f = jax.jit(lambda p: objectives.nv_penalty(acts, p, images, ts, "conv"))
  value = f(_params())
  # Float64 reference: TV and SV (ddof = 1) of every unit, ratio of means.
  x = np.stack([np.asarray(ts.apply(jnp.asarray(img))) for img in images])
  a = np.asarray(_layers(_params(), jnp.asarray(
      x.reshape((-1,) + x.shape[2:])))["conv"], np.float64)
  a = a.reshape(x.shape[:2] + a.shape[1:])
  tv = a.var(axis=1, ddof=1).mean(axis=0)
  sv = a.var(axis=0, ddof=1).mean(axis=0)
  np.testing.assert_allclose(value, tv.mean() / sv.mean(), rtol=1e-4)
  g = jax.jit(jax.grad(f))(_params())
  assert np.all(np.isfinite(g["k3"])) and float(jnp.abs(g["k3"]).max()) > 0
  with pytest.raises(ValueError, match="nope"):
    objectives.nv_penalty(acts, _params(), images, ts, "nope")


class _BNNet(nn.Module):
  """Conv, batch norm (running statistics) and a head: two collections."""

  @nn.compact
  def __call__(self, x):
    x = nn.BatchNorm(use_running_average=True)(nn.Conv(4, (3, 3))(x))
    return nn.Dense(K)(jnp.tanh(x).mean(axis=(1, 2)))


def test_nv_penalty_takes_linen_params_or_variables(images):
  ts = tr.rot90()
  module = _BNNet()
  variables = module.init(jax.random.PRNGKey(0), images[:1])
  # Running statistics that are not the identity, so dropping them shows.
  variables = {"params": variables["params"], "batch_stats": {"BatchNorm_0": {
      "mean": jnp.linspace(-0.5, 0.5, 4), "var": jnp.linspace(0.5, 2.0, 4)}}}
  acts = capture.linen(module, variables)
  raw = variables["params"]
  by_variables = objectives.nv_penalty(acts, variables, images, ts,
                                       "BatchNorm_0")
  by_params = objectives.nv_penalty(acts, raw, images, ts, "BatchNorm_0")
  np.testing.assert_allclose(by_params, by_variables, rtol=1e-6)
  # Float64 reference from the layer's own output, running statistics kept.
  x = np.stack([np.asarray(ts.apply(jnp.asarray(img))) for img in images])
  a = np.asarray(acts(jnp.asarray(x.reshape((-1,) + x.shape[2:])))[
      "BatchNorm_0"], np.float64).reshape(x.shape[:2] + (H, W, 4))
  tv = a.var(axis=1, ddof=1).mean(axis=0)
  sv = a.var(axis=0, ddof=1).mean(axis=0)
  np.testing.assert_allclose(by_params, tv.mean() / sv.mean(), rtol=1e-4)

  # One loss, one tree: both objectives take the raw params.
  def loss(p):
    logits = lambda q, imgs: module.apply({**variables, "params": q}, imgs)
    return (objectives.invariance_error(logits, p, images, ts)
            + objectives.nv_penalty(acts, p, images, ts, "BatchNorm_0"))

  g = jax.jit(jax.grad(loss))(raw)
  assert jax.tree.structure(g) == jax.tree.structure(raw)
  k = g["Conv_0"]["kernel"]
  assert np.all(np.isfinite(k)) and float(jnp.abs(k).max()) > 0

  with pytest.raises(ValueError, match=r"'params' entry alone.*"
                     r"top-level keys \['Conv_0'\]"):
    objectives.nv_penalty(acts, {"Conv_0": raw["Conv_0"]}, images, ts,
                          "BatchNorm_0")


# ---------------------------------------------------------------------------
# Training with the regularizer makes a network more invariant.
# ---------------------------------------------------------------------------


class _Net(nn.Module):
  """A tiny CNN for 8×8 digits; nothing in it is rotation-invariant."""

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2))(x))
    return nn.Dense(10)(x.reshape((x.shape[0], -1)))


def _digits():
  datasets = pytest.importorskip("sklearn.datasets")
  d = datasets.load_digits()
  x = (d.images / 16.0).astype(np.float32)[..., None]       # (1797, 8, 8, 1)
  return x[:1200], d.target[:1200], x[1200:], d.target[1200:]


def _logits(params, images):
  return _Net().apply({"params": params}, images)


@jax.jit
def _train(lam, x, y):
  """300 Adam steps on rot90 orbits of batches of 32; λ weighs the error."""
  ts, tx = tr.rot90(), optax.adam(3e-3)
  params = _Net().init(jax.random.PRNGKey(0), x[:1])["params"]

  def loss(p, xb, yb):
    err, z = objectives.invariance_error(_logits, p, xb, ts,
                                         return_logits=True)
    # Cross-entropy over the whole orbit (augmentation), plus λ·error.
    ce = optax.softmax_cross_entropy_with_integer_labels(
        z, jnp.repeat(yb[:, None], z.shape[1], axis=1)).mean()
    return ce + lam * err

  def step(carry, i):
    p, opt = carry
    idx = jax.random.randint(jax.random.fold_in(jax.random.PRNGKey(1), i),
                             (32,), 0, x.shape[0])
    updates, opt = tx.update(jax.grad(loss)(p, x[idx], y[idx]), opt, p)
    return (optax.apply_updates(p, updates), opt), None

  (params, _), _ = jax.lax.scan(step, (params, tx.init(params)),
                                jnp.arange(300))
  return params


@jax.jit
def _evaluate(params, x):
  err, z = objectives.invariance_error(_logits, params, x, tr.rot90(),
                                       return_logits=True)
  return err, genuine.logit_invariance()(z)["logit_invariance"], z


def test_regularizer_reduces_invariance_error():
  x, y, x_test, y_test = _digits()
  scores = {}
  for lam in (0.0, 1.0):
    # One compilation: λ is traced.
    params = _train(jnp.float32(lam), jnp.asarray(x), jnp.asarray(y))
    err, scale_free, z = _evaluate(params, x_test)
    accuracy = float((np.asarray(z).argmax(-1) == y_test[:, None]).mean())
    scores[lam] = (float(err), float(scale_free), accuracy)
  (err0, li0, acc0), (err1, li1, acc1) = scores[0.0], scores[1.0]
  # Held-out orbits: the regularized network is clearly more invariant, also
  # by the scale-free logit invariance (it did not just shrink its logits),
  # and still classifies every orientation.
  assert err1 < 0.5 * err0, scores
  assert li1 < 0.5 * li0, scores
  assert acc1 > 0.6 and acc0 > 0.6, scores
