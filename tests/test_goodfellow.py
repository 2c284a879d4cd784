"""Goodfellow firing-rate measure vs float64 NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from invjax._src import base
from invjax._src import engine
from invjax._src import transforms as tr
from invjax._src.measures import goodfellow as gf

N, H, W, C = 11, 6, 6, 2
_KERNEL = np.random.default_rng(1).normal(size=(3, 3, C, 3)).astype(np.float32)


def _model(images):
  """A ReLU map (mostly 0: ties at the minimum) and a dense layer."""
  conv = jnp.tanh(jax.lax.conv_general_dilated(
      images, jnp.asarray(_KERNEL), (1, 1), "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC")))
  return {"relu": jax.nn.relu(conv - 0.6),
          "dense": jnp.tanh(conv.mean(axis=(1, 2)) @ jnp.ones((3, 2)))}


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).uniform(size=(N, H, W, C)).astype(np.float32)


def _call(measure, x, identity):
  """Measure.__call__ under jit: one compilation instead of many eager ops."""
  return jax.jit(lambda v, i: measure(v, untransformed=i))(x, identity)


def _threshold(identity, kind, alpha):
  """Reference τ from the untransformed activations (n, *shape)."""
  if kind == "normal":
    return identity.mean(0) + identity.std(0, ddof=1) * sps.norm.ppf(alpha)
  return np.quantile(identity, alpha, axis=0)


def _rates(identity, acts, tau, conditional):
  """G and L at threshold τ, from explicit loops over samples."""
  n, m = acts.shape[:2]
  fires = identity > tau
  g = fires.mean(0)
  if not conditional:
    return g, (acts > tau).mean((0, 1))
  num, den = np.zeros(tau.shape), np.zeros(tau.shape)
  for i in range(n):
    num += fires[i] * np.mean([acts[i, j] > tau for j in range(m)], axis=0)
    den += fires[i]
  return g, np.where(den > 0, num / np.maximum(den, 1), 0)


def _check(out, identity, acts, *, kind, alpha, conditional, bins=256,
           rtol=1e-5):
  """τ against its reference; G, L, GF exactly at the measure's own τ."""
  tau = np.asarray(out["threshold"], np.float64)
  ref = _threshold(identity, kind, alpha)
  if kind == "normal":
    np.testing.assert_allclose(tau, ref, rtol=rtol, atol=rtol)
  else:
    width = (identity.max(0) - identity.min(0)) / bins
    assert np.all(np.abs(tau - ref) <= width * (1 + 1e-4) + 1e-6)
  g, l = _rates(identity, acts, tau, conditional)
  np.testing.assert_allclose(out["denominator"], g, rtol=1e-6)
  np.testing.assert_allclose(out["numerator"], l, rtol=1e-6)
  with np.errstate(divide="ignore", invalid="ignore"):   # safe_divide rules
    gf_ref = np.where(g > 0, l / np.where(g > 0, g, 1),
                      np.where(l > 0, np.inf, 1.0))
  np.testing.assert_allclose(out["values"], gf_ref, rtol=1e-5)


def _block_data(rng, n=40, m=3):
  ident = rng.normal(size=(n, 5)).astype(np.float32)
  ident[:, 0] = np.maximum(ident[:, 0] - 1.5, 0)     # mostly 0 (ReLU)
  ident[:, 1] = np.minimum(ident[:, 1], 0.2)         # ties at the maximum
  acts = ident[:, None] + 0.5 * rng.normal(size=(n, m, 5)).astype(np.float32)
  return ident, acts


@pytest.mark.parametrize("kind", ["normal", "quantile"])
@pytest.mark.parametrize("conditional", [False, True])
def test_block_matches_reference(kind, conditional):
  ident, acts = _block_data(np.random.default_rng(3))
  alpha = 0.8
  out = _call(gf.goodfellow(threshold=kind, alpha=alpha,
                            conditional=conditional), acts, ident)
  _check(out, ident.astype(np.float64), acts.astype(np.float64), kind=kind,
         alpha=alpha, conditional=conditional)
  assert 0 < np.sum(out["numerator"])                  # rates are exercised
  if kind == "quantile":
    # Ties: the 0.8-quantile of a unit that is 0 on > 80 % of the data is 0
    # exactly, and that of a unit at its maximum on > 20 % is that maximum.
    assert np.mean(ident[:, 0] == 0) > alpha and out["threshold"][0] == 0.0
    assert out["threshold"][1] == np.float32(0.2)


def test_quantile_resolution():
  """Within one bin width of np.quantile for a few bin counts and levels."""
  x = np.random.default_rng(4).standard_gamma(1.5, size=(301, 1, 6))
  x = x.astype(np.float32)
  for bins, alpha in [(8, 0.5), (64, 0.9), (256, 0.99)]:
    out = _call(gf.goodfellow(threshold="quantile", alpha=alpha, bins=bins),
                x, x[:, 0])
    ref = np.quantile(x[:, 0].astype(np.float64), alpha, axis=0)
    width = (x.max((0, 1)) - x.min((0, 1))) / bins
    assert np.all(np.abs(out["threshold"] - ref) <= width * (1 + 1e-4))


@pytest.mark.parametrize("batch_size,chunk", [(4, None), (5, 3), (16, None)])
def test_streamed_matches_reference(images, batch_size, chunk):
  ts = tr.rotation([0.0, 30.0, 90.0, 200.0])
  normal, quantile = engine.measure(
      _model, images, ts,
      [gf.goodfellow(alpha=0.9),
       gf.goodfellow(threshold="quantile", alpha=0.75, conditional=True,
                     bins=64)],
      batch_size=batch_size, transform_chunk=chunk)
  x = jax.vmap(ts.apply)(jnp.asarray(images))
  acts = _model(x.reshape((-1,) + x.shape[2:]))
  ident = _model(jnp.asarray(images))
  for layer, a in acts.items():
    a = np.asarray(a, np.float64).reshape((N, 4) + a.shape[1:])
    i = np.asarray(ident[layer], np.float64)
    out = lambda r: dict(values=r.per_activation[layer], **r.extras[layer])
    _check(out(normal), i, a, kind="normal", alpha=0.9, conditional=False,
           rtol=1e-4)
    _check(out(quantile), i, a, kind="quantile", alpha=0.75,
           conditional=True, bins=64)
  assert np.all(quantile.extras["relu"]["threshold"] >= 0)


def test_identity_transforms(images):
  """t = id: transformed and untransformed fire alike, so L = G, GF = 1."""
  normal, quantile, conditional = engine.measure(
      _model, images, tr.identity(3),
      [gf.goodfellow(alpha=0.7), gf.goodfellow(threshold="quantile"),
       gf.goodfellow(alpha=0.7, conditional=True)], batch_size=4,
      transform_chunk=2)
  for layer in normal.layers:
    for r in (normal, quantile):
      np.testing.assert_array_equal(r.extras[layer]["numerator"],
                                    r.extras[layer]["denominator"])
      np.testing.assert_array_equal(r.per_activation[layer], 1.0)
    # Conditioned on firing, the whole orbit fires: L = 1 (0 if never).
    c = conditional.extras[layer]
    np.testing.assert_array_equal(c["numerator"],
                                  (c["denominator"] > 0).astype(float))
  assert np.any(conditional.extras["relu"]["denominator"] > 0)


def test_stratified_thresholds_per_class(images):
  labels = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 1, 0])
  model = lambda x: {"relu": _model(x)["relu"]}
  ts = tr.rot90()
  normal, quantile = engine.measure(
      model, images, ts,
      [gf.goodfellow(alpha=0.6), gf.goodfellow(threshold="quantile",
                                               alpha=0.6, bins=32)],
      batch_size=4, labels=labels, stratify=True)
  x = jax.vmap(ts.apply)(jnp.asarray(images))
  acts = np.asarray(model(x.reshape((-1,) + x.shape[2:]))["relu"],
                    np.float64).reshape((N, 4, H, W, 3))
  ident = np.asarray(model(jnp.asarray(images))["relu"], np.float64)
  for c in (0, 1):
    sel = labels == c
    for r, kind, bins in [(normal, "normal", 256), (quantile, "quantile", 32)]:
      rc = r.per_class[c]
      _check(dict(values=rc.per_activation["relu"], **rc.extras["relu"]),
             ident[sel], acts[sel], kind=kind, alpha=0.6, conditional=False,
             bins=bins, rtol=1e-4)


@pytest.mark.parametrize("kind", ["normal", "quantile"])
def test_merge_per_pass_equals_single_stream(kind):
  """Two halves run each pass from the same state, then merge (as devices
  would): the result equals one stream over all samples."""
  ident, acts = _block_data(np.random.default_rng(5), n=10)
  m = gf.goodfellow(threshold=kind, alpha=0.7, conditional=True)
  spec = base.LayerSpec("l", (5,), jnp.float32, 3, 3, 5)

  def run():
    state = m.init(spec)
    for p in range(m.requires.passes):
      parts = [m.update(state, base.Block(
          x=acts[s], mask=jnp.ones(5, bool), t_index=jnp.arange(3),
          t_mask=jnp.ones(3, bool), first=jnp.array(True),
          last=jnp.array(True), untransformed=ident[s], pass_index=p))
               for s in (slice(0, 5), slice(5, 10))]
      state = m.end_pass(m.merge(*parts), p)
    return m.finalize(state, spec)

  merged = jax.jit(run)()
  whole = _call(m, acts, ident)
  for k in ("values", "numerator", "denominator", "threshold"):
    np.testing.assert_allclose(merged[k], whole[k], rtol=1e-6)


def test_needs_identity():
  m = gf.goodfellow()
  assert m.requires.untransformed and m.requires.passes == 2
  assert gf.goodfellow(threshold="quantile").requires.passes == 3
  with pytest.raises(ValueError, match="untransformed"):
    m(np.zeros((3, 2, 4), np.float32))


def test_bad_settings():
  with pytest.raises(ValueError, match="threshold"):
    gf.goodfellow(threshold="percentile")
  for alpha in (0.0, 1.0):
    with pytest.raises(ValueError, match="alpha"):
      gf.goodfellow(alpha=alpha)
  with pytest.raises(ValueError, match="bins"):
    gf.goodfellow(threshold="quantile", bins=0)
