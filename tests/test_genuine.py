"""Genuine-invariance metrics: NumPy references, closed forms, the engine."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src import engine
from invjax._src import transforms as tr
from invjax._src.measures import genuine
from invjax._src.measures.geed import geed

N, H, W, C, K = 13, 6, 6, 2, 5


def _softmax(z):
  e = np.exp(z - z.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def reference_jsd(z):
  """(N, T, K) logits -> mean over samples of H(p̄) − mean_g H(p_g)."""
  p = _softmax(np.asarray(z, np.float64))
  entropy = lambda q: -np.sum(q * np.log(q), axis=-1)
  return np.mean(entropy(p.mean(axis=1)) - entropy(p).mean(axis=1))


def reference_logit_invariance(z):
  z = np.asarray(z, np.float64).reshape(z.shape[:2] + (-1,))
  out = []
  for orbit in z:
    spread = sum(np.sum((zg - orbit.mean(axis=0))**2) for zg in orbit)
    energy = sum(np.sum(zg**2) for zg in orbit)
    out.append(spread / energy if energy > 0 else 0.0)
  return np.mean(out)


@pytest.mark.parametrize("shape", [(K,), (2, 3, K)])
def test_block_matches_reference(shape):
  z = np.random.default_rng(0).normal(size=(7, 4) + shape).astype(np.float32)
  z *= 2
  pi, li, kl = jax.jit(lambda z: (genuine.predictive_invariance()(z),
                                  genuine.logit_invariance()(z),
                                  geed(distance="kl")(z)))(z)
  if len(shape) == 1:
    np.testing.assert_allclose(pi["predictive_invariance"], reference_jsd(z),
                               rtol=1e-5)
  # The JSD is G-EED with the KL distance under another name.
  np.testing.assert_allclose(pi["predictive_invariance"], kl["geed"],
                             rtol=1e-6)
  np.testing.assert_allclose(pi["normalized"],
                             pi["predictive_invariance"] / np.log(4),
                             rtol=1e-6)
  np.testing.assert_allclose(li["logit_invariance"],
                             reference_logit_invariance(z), rtol=1e-5)
  for out in (pi, li):
    assert out["values"].shape == shape


def test_edge_cases():
  @jax.jit
  def run(z, one):
    return (genuine.logit_invariance()(z)["logit_invariance"],
            genuine.predictive_invariance()(z)["predictive_invariance"],
            genuine.predictive_invariance()(one)["normalized"])

  z = np.zeros((3, 4, K), np.float32)
  one = np.random.default_rng(1).normal(size=(3, 1, K)).astype(np.float32)
  li, pi, normalized_single = (float(v) for v in run(z, one))
  assert li == 0.0                  # all-zero logits: invariant, not 0/0
  assert pi == pytest.approx(0.0, abs=1e-7)
  assert normalized_single == 0.0   # |G| = 1: nothing varies
  # An orbit whose logits cancel out has its whole energy as spread.
  cancel = np.stack([np.ones(K), -np.ones(K)])[None].astype(np.float32)
  li = jax.jit(lambda z: genuine.logit_invariance()(z))(cancel)
  assert float(li["logit_invariance"]) == pytest.approx(1.0)


def test_grad_matches_finite_differences():
  rng = np.random.default_rng(2)
  z = jnp.asarray(rng.normal(size=(3, 4, K)), jnp.float32)
  v = jnp.asarray(rng.normal(size=z.shape), jnp.float32)
  f = jax.jit(lambda z: genuine.predictive_invariance()(z)[
      "predictive_invariance"] + genuine.logit_invariance()(z)[
          "logit_invariance"])
  g = jax.jit(jax.grad(f))(z)
  eps = 1e-2
  fd = (f(z + eps * v) - f(z - eps * v)) / (2 * eps)
  np.testing.assert_allclose(jnp.vdot(g, v), fd, rtol=2e-2, atol=1e-4)
  g0 = jax.jit(jax.grad(f))(jnp.ones((2, 4, K)))
  assert np.all(np.isfinite(g0))


# ---------------------------------------------------------------------------
# Networks.
# ---------------------------------------------------------------------------


def _params(seed=0):
  rng = np.random.default_rng(seed)
  return {"k3": jnp.asarray(rng.normal(size=(3, 3, C, 4)), jnp.float32),
          "k1": jnp.asarray(rng.normal(size=(1, 1, C, 4)), jnp.float32),
          "dense": jnp.asarray(rng.normal(size=(4, K)), jnp.float32),
          "linear": jnp.asarray(rng.normal(size=(H * W * C, K)) / 10,
                                jnp.float32)}


def _conv(x, k):
  return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO",
                                                         "NHWC"))


def _cnn(params, x):
  """Not rot90-invariant: a 3×3 conv, tanh, global mean, dense."""
  return jnp.tanh(_conv(x, params["k3"])).mean(axis=(1, 2)) @ params["dense"]


def _pointwise(params, x):
  """rot90- and flip-invariant: global mean of pointwise features."""
  return jnp.tanh(_conv(x, params["k1"])).mean(axis=(1, 2)) @ params["dense"]


def _c4_average(fn):
  return lambda p, x: sum(fn(p, jnp.rot90(x, k, axes=(1, 2)))
                          for k in range(4)) / 4


def _linear(params, x):
  return x.reshape(x.shape[0], -1) @ params["linear"]


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).uniform(size=(N, H, W, C)).astype(
      np.float32)


def _orbit_logits(fn, images, ts):
  x = jax.vmap(ts.apply)(jnp.asarray(images))
  z = fn(_params(), x.reshape((-1,) + x.shape[2:]))
  return np.asarray(z).reshape(x.shape[:2] + z.shape[1:])


@pytest.mark.parametrize("batch_size,chunk", [(5, 3), (1, None)])
def test_engine_matches_reference(images, batch_size, chunk):
  ts = tr.flips()
  model = lambda x: {"logits": _cnn(_params(), x)}
  pi, li = engine.measure(model, images, ts,
                          [genuine.predictive_invariance(),
                           genuine.logit_invariance()],
                          batch_size=batch_size, transform_chunk=chunk)
  z = _orbit_logits(_cnn, images, ts)
  np.testing.assert_allclose(pi.per_layer["logits"], reference_jsd(z),
                             rtol=2e-5)
  np.testing.assert_allclose(pi.extras["logits"]["normalized"],
                             reference_jsd(z) / np.log(4), rtol=2e-5)
  np.testing.assert_allclose(li.per_layer["logits"],
                             reference_logit_invariance(z), rtol=2e-5)


def test_closed_form_invariant_models(images):
  ts = tr.rot90()
  model = lambda x: {"pointwise": _pointwise(_params(), x),
                     "c4": _c4_average(_cnn)(_params(), x),
                     "cnn": _cnn(_params(), x)}
  pi, li = engine.measure(model, images, ts,
                          [genuine.predictive_invariance(),
                           genuine.logit_invariance()], batch_size=4)
  for res in (pi, li):
    assert res.per_layer["pointwise"] == pytest.approx(0, abs=1e-6)
    assert res.per_layer["c4"] == pytest.approx(0, abs=1e-6)
    assert res.per_layer["cnn"] > 1e-4


# ---------------------------------------------------------------------------
# Saliency invariance.
# ---------------------------------------------------------------------------


def _cos(a, b):
  a, b = a.ravel(), b.ravel()
  return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def test_saliency_of_a_linear_model(images):
  # z = W·vec(x): the saliency of class y is W[:, y] wherever x is, so the
  # aligned map of rotation k is rot90(W_y, −k), and SIS is a closed form.
  params = _params()
  ts = tr.rot90()
  x = images[:3]
  w = np.asarray(params["linear"], np.float64).reshape(H, W, C, K)
  labels = np.asarray(_linear(params, jnp.asarray(x))).argmax(axis=-1)
  sis = np.asarray(jax.jit(lambda p, x: genuine.saliency_invariance(
      _linear, p, x, ts))(params, x))
  sis_abs = np.asarray(jax.jit(lambda p, x: genuine.saliency_invariance(
      _linear, p, x, ts, absolute=True))(params, x))
  for i, y in enumerate(labels):
    maps = [np.rot90(w[..., y], -k, axes=(0, 1)) for k in range(4)]
    pairs = [(g, h) for g in range(4) for h in range(4) if g != h]
    expected = np.mean([_cos(maps[g], maps[h]) for g, h in pairs])
    np.testing.assert_allclose(sis[i], expected, rtol=1e-5, atol=1e-6)
    expected_abs = np.mean([_cos(np.abs(maps[g]), np.abs(maps[h]))
                            for g, h in pairs])
    np.testing.assert_allclose(sis_abs[i], expected_abs, rtol=1e-5)


@pytest.mark.parametrize("ts", [tr.rot90(), tr.flips()], ids=["rot90",
                                                              "flips"])
def test_aligned_saliency_is_gradient_of_the_transformed_model(images, ts):
  # For pixel permutations g⁻¹·s(g·x) = ∇ₓ[z_y(g·x)]: an independent path.
  params, x = _params(), jnp.asarray(images[:2])
  labels = jnp.array([1, 3])
  maps = jax.jit(lambda p, x: genuine.aligned_saliency(
      _cnn, p, x, ts, labels=labels))(params, x)

  @jax.jit
  def direct(x):
    def one(img, y, row):
      f = lambda im: _cnn(params, ts.action.forward(row, im)[None])[0, y]
      return jax.grad(f)(img)
    return jax.vmap(lambda img, y: jax.vmap(lambda r: one(img, y, r))(
        ts.parameters))(x, labels)

  np.testing.assert_allclose(maps, direct(x), rtol=1e-5, atol=1e-7)


def test_saliency_closed_forms(images):
  ts = tr.rot90()
  params = _params()

  @jax.jit
  def run(p, x):
    return (genuine.saliency_invariance(_c4_average(_cnn), p, x, ts),
            genuine.saliency_invariance(_pointwise, p, x, ts),
            genuine.saliency_invariance(_cnn, p, x, ts))

  c4, pointwise, cnn = run(params, jnp.asarray(images[:4]))
  np.testing.assert_allclose(c4, 1.0, atol=1e-5)       # invariant models
  np.testing.assert_allclose(pointwise, 1.0, atol=1e-5)
  assert np.all(np.asarray(cnn) < 0.99)
  # Differentiable with respect to the weights (double backprop).
  g = jax.jit(jax.grad(lambda p: genuine.saliency_invariance(
      _cnn, p, jnp.asarray(images[:2]), ts).mean()))(params)
  assert all(np.all(np.isfinite(v)) for v in jax.tree.leaves(g))
  assert float(jnp.abs(g["k3"]).max()) > 0


def test_saliency_dataset_helper(images):
  ts = tr.flips()
  params = _params()
  per_sample = np.asarray(jax.jit(lambda p, x: genuine.saliency_invariance(
      _cnn, p, x, ts))(params, jnp.asarray(images)))
  for b in (4, 13, 64):
    value = genuine.saliency_invariance_dataset(_cnn, params, images, ts,
                                                batch_size=b)
    assert value == pytest.approx(per_sample.mean(), rel=1e-5)
  labels = np.arange(N) % K
  with_labels = genuine.saliency_invariance_dataset(
      _cnn, params, images, ts, labels=labels, batch_size=5)
  expected = jax.jit(lambda p, x: genuine.saliency_invariance(
      _cnn, p, x, ts, labels=labels))(params, jnp.asarray(images))
  assert with_labels == pytest.approx(float(expected.mean()), rel=1e-5)


def test_saliency_needs_two_transformations(images):
  with pytest.raises(ValueError, match="at least 2"):
    genuine.saliency_invariance(_cnn, _params(), images[:2], tr.identity(1))
