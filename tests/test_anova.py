"""ANOVA measures vs a hand-written float64 one-way ANOVA and scipy's F law."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from invjax._src import base
from invjax._src import engine
from invjax._src import transforms as tr
from invjax._src.measures import anova

N, H, W, C = 11, 6, 6, 2
_KERNEL = np.random.default_rng(1).normal(size=(3, 3, C, 3)).astype(np.float32)


def _model(images):
  """A pointwise map (rotation moves its positions) and its C4-invariant
  global average."""
  pointwise = jnp.tanh(images @ jnp.asarray(_KERNEL[1, 1]))
  return {"pointwise": pointwise, "gap": pointwise.mean(axis=(1, 2))}


@pytest.fixture(scope="module")
def images():
  # A left-to-right ramp under the noise: rotations move it, so the
  # per-position means of spatial maps depend on the transformation.
  noise = np.random.default_rng(0).uniform(size=(N, H, W, C))
  return (noise + np.linspace(-1, 1, W)[None, None, :, None]).astype(
      np.float32)


def _reference(a):
  """One-way ANOVA over axis 1 (groups) of a (n, m, *shape) float64 array."""
  n, m = a.shape[:2]
  group = a.mean(axis=0)                                 # u_j
  grand = group.mean(axis=0)                             # u
  ssb = n * np.sum((group - grand) ** 2, axis=0)
  ssw = np.sum((a - group[None]) ** 2, axis=(0, 1))
  d1, d2 = m - 1, m * (n - 1)
  f = (ssb / d1) / (ssw / d2)
  return f, sps.f.sf(f, d1, d2)


def _call(measure, x):
  """Measure.__call__ under jit: one compilation instead of many eager ops."""
  return jax.jit(lambda v: measure(v))(x)


def _close_p(actual, expected, rtol):
  np.testing.assert_allclose(actual, expected, rtol=rtol, atol=1e-30)


def _effects(rng, n, m, units):
  """Samples with a transformation effect of growing size per unit."""
  x = rng.normal(size=(n, m, units))
  x += np.linspace(0, 1.2, units) * rng.normal(size=(1, m, units))
  return x.astype(np.float32)


def test_block_matches_reference():
  rng = np.random.default_rng(3)
  x = _effects(rng, 9, 5, 12).reshape(9, 5, 3, 2, 2)
  f_ref, p_ref = _reference(x.astype(np.float64))
  settings = [(0.05, False), (0.05, True), (0.2, True)]
  measures = [anova.anova_f()] + [anova.anova(alpha=a, bonferroni=b)
                                  for a, b in settings]
  out, *tests = jax.jit(lambda v: [m(v) for m in measures])(x)
  np.testing.assert_allclose(out["values"], f_ref, rtol=1e-5)
  _close_p(out["p_value"], p_ref, rtol=1e-4)
  assert p_ref.min() < 1e-4 and p_ref.max() > 0.1     # a real spread

  for (alpha, bonferroni), rejected in zip(settings, tests):
    level = alpha / p_ref.size if bonferroni else alpha
    assert np.min(np.abs(p_ref / level - 1)) > 1e-3   # no borderline unit
    np.testing.assert_array_equal(rejected["values"],
                                  (p_ref <= level).astype(np.float32))
    np.testing.assert_allclose(rejected["f"], f_ref, rtol=1e-5)
  # Bonferroni is stricter here: some units are rejected only without it.
  assert tests[1]["values"].sum() < tests[0]["values"].sum()


@pytest.mark.parametrize("batch_size,chunk", [(4, None), (5, 3), (16, None)])
def test_streamed_matches_reference(images, batch_size, chunk):
  ts = tr.rot90()
  f, test = engine.measure(_model, images, ts,
                           [anova.anova_f(), anova.anova(alpha=0.01)],
                           batch_size=batch_size, transform_chunk=chunk)
  x = jax.vmap(ts.apply)(jnp.asarray(images))
  acts = _model(x.reshape((-1,) + x.shape[2:]))
  for layer, a in acts.items():
    a = np.asarray(a, np.float64).reshape((N, 4) + a.shape[1:])
    f_ref, p_ref = _reference(a)
    if layer == "gap":
      # C4-invariant: the group means agree up to float32 summation order.
      assert np.max(f.per_activation[layer]) < 1e-6
      np.testing.assert_allclose(f.extras[layer]["p_value"], 1.0, atol=1e-4)
      continue
    np.testing.assert_allclose(f.per_activation[layer], f_ref, rtol=1e-4)
    _close_p(f.extras[layer]["p_value"], p_ref, rtol=1e-3)
    level = 0.01 / a[0, 0].size
    borderline = np.abs(p_ref / level - 1) < 1e-2
    np.testing.assert_array_equal(test.per_activation[layer][~borderline],
                                  p_ref[~borderline] <= level)
  # No unit of an invariant layer is flagged; the moving ramp flags most
  # positions of the pointwise map.
  assert test.per_layer["gap"] == 0.0
  assert test.per_layer["pointwise"] > 0.5


def test_closed_forms():
  rng = np.random.default_rng(4)
  x = rng.normal(size=(6, 3, 4)).astype(np.float32)
  x[:, :, 0] = 1.5                                   # constant unit
  x[:, :, 1] = np.arange(3.0)[None]                  # set by t alone
  x[:, :, 2] = x[:, :1, 2]                           # invariant: F = 0
  out = _call(anova.anova(), x)
  np.testing.assert_array_equal(out["f"][:3], [1.0, np.inf, 0.0])
  np.testing.assert_array_equal(out["p_value"][:3], [1.0, 0.0, 1.0])
  np.testing.assert_array_equal(out["values"][:3], [0, 1, 0])
  # One transformation or one sample: no test is possible, p = 1.
  np.testing.assert_array_equal(_call(anova.anova(), x[:, :1])["p_value"], 1)
  one = _call(anova.anova(), x[:1])
  np.testing.assert_array_equal(one["p_value"], 1.0)
  np.testing.assert_array_equal(one["values"], 0.0)


def test_large_dof_accuracy():
  """float32 p-values stay within 2 % of scipy at d2 = 5·10⁴ (documented)."""
  rng = np.random.default_rng(5)
  x = _effects(rng, 2001, 25, 6)
  x[..., 0] = rng.normal(size=(2001, 25))            # the null
  f_ref, p_ref = _reference(x.astype(np.float64))
  out = _call(anova.anova_f(), x)
  np.testing.assert_allclose(out["values"], f_ref, rtol=1e-4)
  keep = p_ref > 1e-30
  _close_p(out["p_value"][keep], p_ref[keep], rtol=2e-2)


def test_merge_equals_single_stream():
  x = _effects(np.random.default_rng(6), 10, 4, 3)
  m = anova.anova_f()
  spec = base.LayerSpec("l", (3,), jnp.float32, 4, 4, 5)

  def run(xs):
    block = base.Block(x=xs, mask=jnp.ones(5, bool), t_index=jnp.arange(4),
                       t_mask=jnp.ones(4, bool), first=jnp.array(True),
                       last=jnp.array(True))
    return m.update(m.init(spec), block)

  merged = jax.jit(lambda u, v: m.finalize(m.merge(run(u), run(v)), spec))(
      x[:5], x[5:])
  whole = _call(m, x)
  np.testing.assert_allclose(merged["values"], whole["values"], rtol=1e-5)
  np.testing.assert_allclose(merged["p_value"], whole["p_value"], rtol=1e-4)


def test_bad_settings():
  for alpha in (0.0, 1.0, 1.5):
    with pytest.raises(ValueError, match="alpha"):
      anova.anova(alpha=alpha)
  assert anova.anova().key != anova.anova(bonferroni=False).key
