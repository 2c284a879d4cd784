"""Distance measures vs float64 NumPy references with explicit pair loops."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src import base
from invjax._src import engine
from invjax._src import transforms as tr
from invjax._src.measures import distance as dm

N, H, W, C = 11, 6, 6, 2
_KERNEL = np.random.default_rng(1).normal(size=(3, 3, C, 3)).astype(np.float32)


def _model(images):
  """A 3×3 conv (not C4-equivariant) and the global average of a pointwise
  map (C4-invariant)."""
  conv = jnp.tanh(jax.lax.conv_general_dilated(
      images, jnp.asarray(_KERNEL), (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC")))
  pointwise = jnp.tanh(images @ jnp.asarray(_KERNEL[1, 1]))
  return {"conv": conv, "gap": pointwise.mean(axis=(1, 2))}


def _call(measure, x):
  """Measure.__call__ under jit: one compilation instead of many eager ops."""
  return jax.jit(lambda v: measure(v))(x)


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).uniform(size=(N, H, W, C)).astype(np.float32)


def _activations(model, images, ts, inverse=False):
  """{layer: (N, T, *shape) float64}, every transformed activation."""
  x = jax.vmap(ts.apply)(jnp.asarray(images))
  n, t = x.shape[:2]
  out = {}
  for name, a in model(x.reshape((n * t,) + x.shape[2:])).items():
    a = a.reshape((n, t) + a.shape[1:])
    if inverse:
      if a.ndim != 5:
        continue
      a = jnp.stack([ts.apply_inverse(a[i], input_shape=(H, W))
                     for i in range(n)])
    out[name] = np.asarray(a, np.float64)
  return out


def _vectors(a, normalize):
  """(n, t, *shape) → (n, t, S, C): one vector per feature map."""
  shape = a.shape[2:]
  s, c = (1, shape[0]) if len(shape) == 1 else (int(np.prod(shape[:-1])),
                                                  shape[-1])
  v = a.reshape(a.shape[:2] + (s, c))
  if normalize:
    norm = np.linalg.norm(v, axis=2, keepdims=True)
    v = np.where(norm > 0, v / np.where(norm > 0, norm, 1), 0)
  return v


def _outputs(result, layer):
  return dict(values=result.per_activation[layer], **result.extras[layer])


def _reference(a, *, window, normalize=False):
  """TD over all orbit pairs; SD over sample pairs 0 < i − k ≤ window."""
  v = _vectors(a, normalize)
  n, t = v.shape[:2]
  dist = lambda p, q: np.sqrt(np.sum((p - q) ** 2, axis=0))
  td = np.zeros(v.shape[-1])
  for i in range(n):
    pairs = [dist(v[i, j], v[i, k]) for j, k in itertools.combinations(
        range(t), 2)]
    td += (np.mean(pairs, axis=0) if pairs else 0) / n
  sd = np.zeros(v.shape[-1])
  for j in range(t):
    pairs = [dist(v[i, j], v[k, j]) for i in range(n) for k in range(n)
             if 0 < i - k <= window]
    sd += (np.mean(pairs, axis=0) if pairs else 0) / t
  return td, sd


def _check(out, a, *, window, normalize=False, rtol=2e-5):
  """finalize outputs vs the reference, broadcast over the activation."""
  td, sd = _reference(a, window=window, normalize=normalize)
  shape = a.shape[2:]
  num, den = np.asarray(out["numerator"]), np.asarray(out["denominator"])
  assert num.shape == den.shape == shape
  scale = np.max(sd)
  np.testing.assert_allclose(num, np.broadcast_to(td, shape), rtol=rtol,
                             atol=rtol * scale)
  np.testing.assert_allclose(den, np.broadcast_to(sd, shape), rtol=rtol,
                             atol=rtol * scale)
  with np.errstate(divide="ignore", invalid="ignore"):   # safe_divide rules
    ratio = np.where(den > 0, num / den, np.where(num > 0, np.inf, 1.0))
  np.testing.assert_allclose(out["values"], ratio, rtol=1e-5)


@pytest.mark.parametrize("shape,normalize", [((5,), False), ((3, 4, 2), True),
                                             ((3, 4, 2), False)])
def test_block_all_pairs(shape, normalize):
  x = np.random.default_rng(3).normal(size=(9, 4) + shape).astype(np.float32)
  out = _call(dm.normalized_distance(window=8, normalize=normalize), x)
  _check(out, x.astype(np.float64), window=8, normalize=normalize)


def test_parts_alone():
  x = np.random.default_rng(3).normal(size=(7, 3, 2, 2, 3)).astype(np.float32)
  out = _call(dm.normalized_distance(window=4), x)
  td = _call(dm.transformation_distance(), x)["values"]
  sd = _call(dm.sample_distance(window=4), x)["values"]
  np.testing.assert_allclose(td, out["numerator"], rtol=1e-6)
  np.testing.assert_allclose(sd, out["denominator"], rtol=1e-6)


@pytest.mark.parametrize("batch_size,chunk", [(1, None), (4, 3), (16, None)])
def test_streamed_is_batch_size_independent(images, batch_size, chunk):
  """The same pairs whatever the batch size: all pairs with window ≥ N − 1."""
  ts = tr.rot90()
  every, narrow = engine.measure(
      _model, images, ts,
      [dm.distance_invariance(window=N - 1),
       dm.normalized_distance(window=2, normalize=True)],
      batch_size=batch_size, transform_chunk=chunk)
  for layer, a in _activations(_model, images, ts).items():
    _check(_outputs(every, layer), a, window=N - 1)
    _check(_outputs(narrow, layer), a, window=2, normalize=True)
  # The global average of an equivariant map is C4-invariant: each orbit
  # collapses up to float32 summation order.
  gap = every.extras["gap"]
  assert np.max(gap["numerator"]) < 1e-4 * np.min(gap["denominator"])
  assert every.per_layer["gap"] < 1e-4 < 0.1 < every.per_layer["conv"]
  # Per feature map: the channel's TD / SD.
  conv = every.extras["conv"]
  np.testing.assert_allclose(every.per_feature_map["conv"],
                             conv["numerator"][0, 0] /
                             conv["denominator"][0, 0], rtol=1e-6)


def test_same_equivariance(images):
  ts = tr.rot90()
  model = lambda x: {"input": x, "conv": _model(x)["conv"],
                     "gap": _model(x)["gap"]}
  nd = engine.measure(model, images, ts,
                      dm.distance_same_equivariance(window=3), batch_size=4,
                      transform_chunk=3)
  # t⁻¹(t(x)) = x exactly: every orbit is one point.
  np.testing.assert_array_equal(nd.extras["input"]["numerator"], 0.0)
  np.testing.assert_array_equal(nd.per_activation["input"], 0.0)
  # A SAME-padded conv with a generic kernel is not C4-equivariant.
  inverted = _activations(model, images, ts, inverse=True)
  _check(_outputs(nd, "conv"), inverted["conv"], window=3)
  assert nd.per_layer["conv"] > 0.01
  assert "gap" in nd.notes and "gap" not in nd.per_layer


def test_stratified_pairs_within_class(images):
  labels = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0])
  ts = tr.rot90()
  model = lambda x: {"conv": _model(x)["conv"]}
  nd = engine.measure(model, images, ts, dm.normalized_distance(window=2),
                      batch_size=4, labels=labels, stratify=True)
  acts = _activations(model, images, ts)["conv"]
  for c in (0, 1):
    _check(_outputs(nd.per_class[c], "conv"), acts[labels == c], window=2)


@pytest.mark.parametrize("window", [1, 8])
def test_windowed_estimate_is_unbiased(window):
  """Over random orders, the mean of SD_window is the all-pairs mean."""
  rng = np.random.default_rng(4)
  n = 120
  x = rng.standard_gamma(2.0, size=(n, 2, 3)).astype(np.float32)
  _, all_pairs = _reference(x.astype(np.float64), window=n)
  sd = jax.jit(lambda v: dm.sample_distance(window=window)(v)["values"])
  draws = np.stack([np.asarray(sd(x[rng.permutation(n)]))
                    for _ in range(40)])
  err = np.abs(draws.mean(0) - all_pairs)
  assert np.all(err < 4 * draws.std(0, ddof=1) / np.sqrt(len(draws)) + 1e-6)
  # Single orders are already close: relative error of a few percent.
  assert np.all(np.abs(draws - all_pairs) < 0.15 * all_pairs)


def test_closed_forms():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(6, 1, 4, 4, 2)).astype(np.float32)
  # Identical transformations: orbits are points, TD = 0 so ND = 0.
  out = _call(dm.normalized_distance(), np.repeat(x, 3, axis=1))
  np.testing.assert_array_equal(out["numerator"], 0.0)
  np.testing.assert_array_equal(out["values"], 0.0)
  # One transformation: no orbit pairs at all.
  np.testing.assert_array_equal(
      _call(dm.transformation_distance(), x)["values"], 0.0)
  # Identical samples: SD = 0, so ND = x/0 = inf, or 0/0 = 1 for a unit that
  # is also constant over the transformations (unit 0).
  same = np.repeat(rng.normal(size=(1, 3, 4)), 5, axis=0).astype(np.float32)
  same[..., 0] = 2.0
  out = _call(dm.normalized_distance(), same)
  np.testing.assert_array_equal(out["denominator"], 0.0)
  np.testing.assert_array_equal(out["values"], [1.0, np.inf, np.inf, np.inf])
  # normalize: scaling a feature map changes nothing.
  y = rng.normal(size=(5, 3, 4, 4, 2)).astype(np.float32)
  scale = rng.uniform(0.5, 2.0, size=(5, 3, 1, 1, 2)).astype(np.float32)
  nd = jax.jit(lambda v: dm.normalized_distance(normalize=True)(v))
  a = nd(y)
  b = nd(y * scale)
  np.testing.assert_allclose(a["values"], b["values"], rtol=1e-5)


def test_gradient_is_finite_at_zero_distance():
  x = np.random.default_rng(6).normal(size=(5, 1, 3, 3, 2)).astype(np.float32)
  x = np.concatenate([x, x, x + 0.5], axis=1)        # two identical columns
  loss = lambda v: dm.normalized_distance(window=2)(v)["values"].sum()
  g = jax.jit(jax.grad(loss))(jnp.asarray(x))
  assert np.all(np.isfinite(g)) and np.any(g != 0)


def test_merge_keeps_pairs_of_each_part():
  x = np.random.default_rng(7).normal(size=(10, 3, 4)).astype(np.float32)
  m = dm.normalized_distance(window=9)
  spec = base.LayerSpec("l", (4,), jnp.float32, 3, 3, 5)

  def run(xs):
    block = base.Block(x=xs, mask=jnp.ones(5, bool), t_index=jnp.arange(3),
                          t_mask=jnp.ones(3, bool), first=jnp.array(True),
                          last=jnp.array(True))
    return m.update(m.init(spec), block)

  merged = jax.jit(lambda u, v: m.finalize(m.merge(run(u), run(v)), spec))(
      x[:5], x[5:])
  a, b = x[:5].astype(np.float64), x[5:].astype(np.float64)
  td_a, sd_a = _reference(a, window=9)
  td_b, sd_b = _reference(b, window=9)
  np.testing.assert_allclose(merged["numerator"], (td_a + td_b) / 2,
                             rtol=1e-5)
  # Equal pair counts (10 each): the merged SD is the mean of the parts.
  np.testing.assert_allclose(merged["denominator"], (sd_a + sd_b) / 2,
                             rtol=1e-5)


def test_bad_settings():
  with pytest.raises(ValueError, match="window"):
    dm.normalized_distance(window=0)
  with pytest.raises(ValueError, match="normalize"):
    dm.distance_invariance(normalize="l2")
  assert dm.distance_invariance().key == dm.normalized_distance().key
  m = dm.distance_same_equivariance()
  assert m.requires.inverse
  assert m.name == "normalized_distance_same_equivariance"
