"""Tests for invjax.similarity: CKA variants, streaming CKA and STIR.

Every CKA is checked against an independent float64 NumPy reference that
builds the n × n Gram matrices and H = I − 11ᵀ/n explicitly, and the unbiased
HSIC formula is itself checked against its definition as a U-statistic.
"""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invjax
from invjax import similarity as sim
import references

# ---------------------------------------------------------------------------
# NumPy references (float64, explicit n × n matrices).
# ---------------------------------------------------------------------------


def _np_lower_median(v):
  """torch.median's rule: the lower of the two middle values."""
  return np.sort(v)[(v.size - 1) // 2]


def _np_rbf_gram(x, sigma_scale, median="lower"):
  x = references.rows(x)
  n = x.shape[0]
  d = np.zeros((n, n))
  for i in range(n):
    for j in range(n):
      d[i, j] = np.sum((x[i] - x[j]) ** 2)
  # Both triangles, as Nanda et al.'s kernel_CKA takes KX[KX != 0].
  off = d[~np.eye(n, dtype=bool)]
  off = off[off > 0]
  mid = _np_lower_median(off) if median == "lower" else np.median(off)
  sigma = sigma_scale * np.sqrt(mid)
  return np.exp(-d / (2 * sigma**2))


def np_rbf_cka(x, y, sigma_scale=1.0, median="lower"):
  return references.cka_from_grams(_np_rbf_gram(x, sigma_scale, median),
                                   _np_rbf_gram(y, sigma_scale, median),
                                   references.hsic_biased)


def np_hsic_unbiased(k, l):
  """Song et al. (2012)'s closed form, with explicitly zeroed diagonals."""
  n = k.shape[0]
  kt = k - np.diag(np.diag(k))
  lt = l - np.diag(np.diag(l))
  one = np.ones(n)
  return (np.trace(kt @ lt)
          + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
          - 2 / (n - 2) * (one @ kt @ lt @ one)) / (n * (n - 3))


def np_hsic_ustatistic(k, l):
  """HSIC_u by its definition: the mean of h over all 4-subsets (Song 2012)."""
  n = k.shape[0]
  total = 0.0
  for quad in itertools.combinations(range(n), 4):
    h = 0.0
    for t, u, v, w in itertools.permutations(quad):
      h += k[t, u] * l[t, u] + k[t, u] * l[v, w] - 2 * k[t, u] * l[t, v]
    total += h / 24
  return total / math.comb(n, 4)


def np_unbiased_cka(x, y):
  x, y = references.rows(x), references.rows(y)
  return references.cka_from_grams(x @ x.T, y @ y.T, np_hsic_unbiased)


def _related_pair(seed, n=40, dx=12, dy=9, shape_x=None):
  """x and a noisy nonlinear function of it, with different widths."""
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, dx)) + 0.3
  y = np.tanh(x @ rng.normal(size=(dx, dy))) + 0.5 * rng.normal(size=(n, dy))
  if shape_x is not None:
    x = x.reshape((n,) + shape_x)
  return x, y


def _random_orthogonal(rng, d):
  q, r = np.linalg.qr(rng.normal(size=(d, d)))
  return q * np.sign(np.diag(r))


# ---------------------------------------------------------------------------
# Agreement with the references.
# ---------------------------------------------------------------------------


_CASES = [
    (sim.linear_cka, references.linear_cka),
    (sim.rbf_cka, np_rbf_cka),
    (sim.unbiased_cka, np_unbiased_cka),
]


@pytest.mark.parametrize("fn,reference", _CASES)
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_numpy_reference_float64(fn, reference, seed):
  x, y = _related_pair(seed, shape_x=(3, 4))  # rows are flattened
  expected = reference(x, y)
  with jax.enable_x64(True):
    got = fn(jnp.asarray(x), jnp.asarray(y))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(float(got), expected, rtol=1e-9)


@pytest.mark.parametrize("fn,reference", _CASES)
def test_matches_numpy_reference_float32(fn, reference):
  x, y = _related_pair(2)
  got = fn(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(float(got), reference(x, y), rtol=1e-5)


def test_linear_cka_large_offset_float32():
  # Features with a large mean: the naive XᵀX − nμμᵀ would lose every digit.
  x, y = _related_pair(3, n=60)
  x = x + 1e3
  got = sim.linear_cka(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
  np.testing.assert_allclose(float(got), references.linear_cka(x, y),
                             rtol=1e-4)


def test_rbf_sigma_scale_matches_reference():
  x, y = _related_pair(4)
  with jax.enable_x64(True):
    for scale in (0.5, 2.0):
      got = sim.rbf_cka(jnp.asarray(x), jnp.asarray(y), sigma_scale=scale)
      np.testing.assert_allclose(float(got), np_rbf_cka(x, y, scale),
                                 rtol=1e-9)
  # The bandwidth matters: a different scale gives a different value.
  assert abs(np_rbf_cka(x, y, 0.5) - np_rbf_cka(x, y, 2.0)) > 1e-3


def _np_stir_kernel_cka(x, y):
  """Nanda et al.'s kernel_CKA (stir/CKA_pytorch.py) in NumPy float64.

  Their Gram matrices: squared distances diag(G) − G + (diag(G) − G)ᵀ from
  G = XXᵀ, σ² = torch.median of the nonzero entries (the lower middle value
  of an even count), HKH with a dense H.
  """
  def gram(a):
    g = a @ a.T
    d = np.diag(g)[:, None] - g
    d = d + d.T
    return np.exp(-d / (2 * _np_lower_median(d[d != 0])))

  def hsic(k, l):
    h = np.eye(k.shape[0]) - 1 / k.shape[0]
    return np.sum((h @ k @ h) * (h @ l @ h))

  k, l = gram(x), gram(y)
  return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


@pytest.mark.parametrize("n", [5, 40])
def test_rbf_median_matches_stir_kernel_cka(n):
  """An even number of pairs (10, 780), whose two middle values differ."""
  x, y = _related_pair(21, n=n)
  assert n * (n - 1) // 2 % 2 == 0
  with jax.enable_x64(True):
    got = sim.rbf_cka(jnp.asarray(x), jnp.asarray(y))
    mean = sim.rbf_cka(jnp.asarray(x), jnp.asarray(y), median="mean")
  np.testing.assert_allclose(float(got), _np_stir_kernel_cka(x, y),
                             rtol=1e-9)
  np.testing.assert_allclose(float(mean), np_rbf_cka(x, y, median="mean"),
                             rtol=1e-9)
  # The rule matters at this n: np.median's average is not STIR's value.
  assert abs(float(got) - float(mean)) > 1e-6
  with pytest.raises(ValueError, match="median"):
    sim.rbf_cka(x, y, median="upper")


def test_hsic_unbiased_formula_is_the_ustatistic():
  rng = np.random.default_rng(5)
  x = rng.normal(size=(7, 3))
  y = rng.normal(size=(7, 2)) + x[:, :2]
  k, l = x @ x.T, np.exp(-np.sum((y[:, None] - y[None]) ** 2, -1))
  expected = np_hsic_ustatistic(k, l)
  np.testing.assert_allclose(np_hsic_unbiased(k, l), expected, rtol=1e-10)
  with jax.enable_x64(True):
    got = sim.hsic_unbiased(jnp.asarray(k), jnp.asarray(l))
    np.testing.assert_allclose(float(got), expected, rtol=1e-10)


def test_hsic_unbiased_mask_drops_rows():
  rng = np.random.default_rng(6)
  x, y = rng.normal(size=(10, 4)), rng.normal(size=(10, 3))
  keep = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 1], bool)
  k, l = x @ x.T, y @ y.T
  with jax.enable_x64(True):
    got = sim.hsic_unbiased(jnp.asarray(k), jnp.asarray(l), jnp.asarray(keep))
    expected = np_hsic_unbiased(k[keep][:, keep], l[keep][:, keep])
    np.testing.assert_allclose(float(got), expected, rtol=1e-10)
    # Fewer than four kept rows: no estimate, reported as 0 (not NaN).
    few = jnp.asarray(np.arange(10) < 3)
    assert float(sim.hsic_unbiased(jnp.asarray(k), jnp.asarray(l), few)) == 0


def test_unbiased_hsic_ignores_gram_centring():
  # HSIC_u annihilates K → K + f_i + f_j, so centring K first (as Nanda et
  # al.'s MinibatchCKA does) leaves it unchanged; only their n·(n−3) prefactor
  # is a real deviation.
  rng = np.random.default_rng(7)
  x, y = rng.normal(size=(12, 5)) + 2, rng.normal(size=(12, 4)) - 1
  k, l = x @ x.T, y @ y.T
  h = np.eye(12) - 1 / 12
  np.testing.assert_allclose(np_hsic_unbiased(h @ k @ h, h @ l @ h),
                             np_hsic_unbiased(k, l), rtol=1e-9)


# ---------------------------------------------------------------------------
# Closed forms and invariances.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [sim.linear_cka, sim.rbf_cka, sim.unbiased_cka])
def test_self_similarity_is_one(fn):
  x, _ = _related_pair(8)
  np.testing.assert_allclose(float(fn(x, x)), 1.0, rtol=1e-5)


@pytest.mark.parametrize("fn", [sim.linear_cka, sim.rbf_cka, sim.unbiased_cka])
def test_invariant_to_orthogonal_scaling_and_translation(fn):
  rng = np.random.default_rng(9)
  x, y = _related_pair(9)
  q = _random_orthogonal(rng, x.shape[1])
  base = float(fn(x, y))
  for x2 in (x @ q, 7.5 * x, 0.01 * x @ q + 3.0):
    np.testing.assert_allclose(float(fn(x2, y)), base, rtol=1e-4)
  # And Y = XQ·c is perfectly similar to X.
  np.testing.assert_allclose(float(fn(x, -2.0 * x @ q)), 1.0, rtol=1e-5)


def test_linear_cka_not_invariant_to_anisotropic_scaling():
  x, y = _related_pair(10)
  scaled = x * np.linspace(0.1, 3.0, x.shape[1])
  change = float(sim.linear_cka(scaled, y)) - float(sim.linear_cka(x, y))
  assert abs(change) > 1e-2


def test_independent_features_give_small_values():
  rng = np.random.default_rng(11)
  x, y = rng.normal(size=(400, 8)), rng.normal(size=(400, 6))
  # Biased linear CKA of independent data is ≈ sqrt(d_x d_y)/n-ish > 0.
  assert 0 <= float(sim.linear_cka(x, y)) < 0.05
  assert 0 <= float(sim.rbf_cka(x, y)) < 0.05
  # The unbiased estimate is centred on 0.
  assert abs(float(sim.unbiased_cka(x, y))) < 0.02
  # Related features are far from that.
  assert float(sim.linear_cka(x, x[:, :6] + 0.1 * y)) > 0.5


def test_unbiased_is_less_biased_than_biased_at_small_n():
  # With d ≫ n the biased estimator rates independent features as similar
  # (Kornblith et al. 2019, Fig. C.1 / Nguyen et al. 2021); HSIC_u does not.
  rng = np.random.default_rng(12)
  x, y = rng.normal(size=(20, 500)), rng.normal(size=(20, 500))
  assert float(sim.linear_cka(x, y)) > 0.5
  assert abs(float(sim.unbiased_cka(x, y))) < 0.1


# ---------------------------------------------------------------------------
# Degenerate inputs, errors, gradients, jit.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("fn", [sim.linear_cka, sim.rbf_cka, sim.unbiased_cka])
def test_constant_representation_gives_zero_and_zero_gradient(fn):
  # Shapes as in test_other_gradients_are_finite, to share compilations.
  _, y = _related_pair(17, n=16)
  y = jnp.asarray(y, jnp.float32)
  # 0.1 is not exactly representable; its column mean need not round back.
  const = jnp.full((16, 12), 0.1, jnp.float32)
  assert float(fn(const, y)) == 0.0
  assert float(fn(const, jnp.full((16, 9), -3.7, jnp.float32))) == 0.0
  assert float(fn(y[:, :4], const[:, :3])) == 0.0
  g = jax.grad(fn)(const, y)
  assert np.all(np.isfinite(g)) and float(jnp.max(jnp.abs(g))) == 0.0


def test_constant_representation_in_streaming_accumulators():
  x = np.full((24, 3), 0.1)
  y = np.random.default_rng(14).normal(size=(24, 2))
  for kind in ("linear", "minibatch_unbiased"):
    value = sim.dataset_cka(lambda a: a[:, :3], lambda a: a[:, 3:],
                            np.concatenate([x, y], 1), batch_size=8, kind=kind)
    assert float(value) == 0.0, kind


def test_shape_errors():
  x = np.zeros((10, 3))
  with pytest.raises(ValueError, match="same number of samples"):
    sim.linear_cka(x, np.zeros((9, 3)))
  with pytest.raises(ValueError, match="same number of samples"):
    sim.unbiased_cka(x, np.zeros((11, 2)))
  with pytest.raises(ValueError, match="at least 4 samples"):
    sim.unbiased_cka(np.ones((3, 2)), np.ones((3, 2)))
  with pytest.raises(ValueError, match="at least 2 samples"):
    sim.linear_cka(np.ones((1, 2)), np.ones((1, 2)))
  with pytest.raises(ValueError, match="at least 2 samples"):
    sim.rbf_cka(np.ones((1, 2)), np.ones((1, 2)))
  with pytest.raises(ValueError, match="leading sample axis"):
    sim.linear_cka(np.float32(1.0), np.float32(1.0))
  with pytest.raises(ValueError, match="sigma_scale"):
    sim.rbf_cka(x, x, sigma_scale=0.0)
  with pytest.raises(ValueError, match="n ≥ 4"):
    sim.hsic_unbiased(np.eye(3), np.eye(3))
  with pytest.raises(ValueError, match="kind"):
    sim.cka_accumulator("cosine")
  with pytest.raises(ValueError, match="batch_size ≥ 4"):
    sim.dataset_cka(lambda a: a, lambda a: a, x, batch_size=3,
                    kind="minibatch_unbiased")
  acc = sim.minibatch_cka_accumulator()
  with pytest.raises(ValueError, match="at least 4 samples per batch"):
    acc.update(acc.init(), np.ones((3, 2)), np.ones((3, 2)))


def test_linear_cka_gradient_is_finite_and_correct():
  x, y = _related_pair(15, n=20, dx=5, dy=4)
  with jax.enable_x64(True):
    x, y = jnp.asarray(x), jnp.asarray(y)
    g = jax.grad(sim.linear_cka)(x, y)
    assert np.all(np.isfinite(g)) and float(jnp.max(jnp.abs(g))) > 0
    # Central finite difference along a random direction.
    v = jnp.asarray(np.random.default_rng(16).normal(size=x.shape))
    eps = 1e-6
    fd = (sim.linear_cka(x + eps * v, y) - sim.linear_cka(x - eps * v, y)) / (
        2 * eps)
    np.testing.assert_allclose(float(jnp.sum(g * v)), float(fd), rtol=1e-6)
    # Scale and translation invariance: no gradient along x or along 1cᵀ.
    np.testing.assert_allclose(float(jnp.sum(g * x)), 0.0, atol=1e-10)
    np.testing.assert_allclose(np.asarray(jnp.sum(g, axis=0)), 0.0, atol=1e-10)
  g32 = jax.grad(sim.linear_cka)(jnp.asarray(x, jnp.float32),
                                 jnp.asarray(y, jnp.float32))
  assert np.all(np.isfinite(g32))


@pytest.mark.parametrize("fn", [sim.rbf_cka, sim.unbiased_cka])
def test_other_gradients_are_finite(fn):
  x, y = _related_pair(17, n=16)
  g = jax.grad(fn)(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32))
  assert np.all(np.isfinite(g)) and float(jnp.max(jnp.abs(g))) > 0


@pytest.mark.parametrize("fn", [sim.linear_cka, sim.unbiased_cka])
def test_jit_matches_eager(fn):
  x, y = _related_pair(18)
  x, y = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  np.testing.assert_allclose(float(jax.jit(fn)(x, y)), float(fn(x, y)),
                             rtol=1e-6)


# ---------------------------------------------------------------------------
# Streaming accumulators and dataset_cka.
# ---------------------------------------------------------------------------


def _split_features(dx):
  return (lambda a: a[:, :dx]), (lambda a: a[:, dx:] ** 2)


def test_linear_dataset_cka_is_independent_of_batch_size():
  x, y = _related_pair(19, n=50)
  x = x + 5.0  # an offset the merge must handle
  data = np.concatenate([x, y], 1).astype(np.float32)
  fx, fy = _split_features(x.shape[1])
  expected = references.linear_cka(data[:, :12], data[:, 12:] ** 2)
  values = [float(sim.dataset_cka(fx, fy, data, batch_size=b))
            for b in (7, 16, 50)]
  np.testing.assert_allclose(values, expected, rtol=2e-5)
  np.testing.assert_allclose(values, values[0], rtol=2e-6)


def test_linear_accumulator_merge_and_mask():
  x, y = _related_pair(20, n=30)
  acc = sim.linear_cka_accumulator()
  s0 = acc.init(12, 9)
  a = acc.update(s0, x[:10], y[:10])
  b = acc.update(acc.update(s0, x[10:20], y[10:20]), x[20:], y[20:])
  merged = acc.finalize(acc.merge(a, b))
  np.testing.assert_allclose(float(merged), references.linear_cka(x, y),
                             rtol=1e-5)
  # Merging with an empty state is a no-op.
  np.testing.assert_allclose(float(acc.finalize(acc.merge(s0, a))),
                             float(acc.finalize(a)), rtol=1e-6)
  # A padded batch: masked rows (filled with garbage) are ignored.
  pad_x = np.concatenate([x[20:25], 1e3 * np.ones((5, 12))])
  pad_y = np.concatenate([y[20:25], -1e3 * np.ones((5, 9))])
  s = acc.update(acc.merge(a, acc.update(s0, x[10:20], y[10:20])), pad_x,
                 pad_y, mask=jnp.asarray(np.arange(10) < 5))
  np.testing.assert_allclose(float(acc.finalize(s)),
                             references.linear_cka(x[:25], y[:25]), rtol=1e-5)
  assert float(s.count) == 25


def _np_minibatch_cka(x, y, sizes, weights):
  hs = []
  start = 0
  for b in sizes:
    xb, yb = x[start:start + b], y[start:start + b]
    k, l = xb @ xb.T, yb @ yb.T
    hs.append((np_hsic_unbiased(k, l), np_hsic_unbiased(k, k),
               np_hsic_unbiased(l, l)))
    start += b
  hs = np.asarray(hs)
  mean = np.average(hs, axis=0, weights=weights)
  return mean[0] / np.sqrt(mean[1] * mean[2])


def test_minibatch_equal_batches_equal_hand_computed_mean():
  x, y = _related_pair(21, n=48)
  data = np.concatenate([x, y], 1)
  fx, fy = (lambda a: a[:, :12]), (lambda a: a[:, 12:])
  expected = _np_minibatch_cka(x, y, [16, 16, 16], weights=None)  # plain mean
  got = sim.dataset_cka(fx, fy, data, batch_size=16, kind="minibatch_unbiased")
  np.testing.assert_allclose(float(got), expected, rtol=1e-4)
  # It is a batch-level estimate: differs from the full-data unbiased CKA.
  assert abs(expected - np_unbiased_cka(x, y)) > 1e-3


def test_minibatch_short_last_batch_is_weighted_by_size():
  x, y = _related_pair(22, n=50)
  data = np.concatenate([x, y], 1)
  fx, fy = (lambda a: a[:, :12]), (lambda a: a[:, 12:])
  got = float(sim.dataset_cka(fx, fy, data, batch_size=20,
                              kind="minibatch_unbiased"))
  expected = _np_minibatch_cka(x, y, [20, 20, 10], weights=[20, 20, 10])
  unweighted = _np_minibatch_cka(x, y, [20, 20, 10], weights=None)
  np.testing.assert_allclose(got, expected, rtol=1e-4)
  assert abs(expected - unweighted) > 1e-3  # the weighting is visible
  # A remainder of 1–3 rows joins the last full batch: 16 + 16 + (16 + 2).
  got = float(sim.dataset_cka(fx, fy, data, batch_size=16,
                              kind="minibatch_unbiased"))
  expected = _np_minibatch_cka(x, y, [16, 16, 18], weights=[16, 16, 18])
  np.testing.assert_allclose(got, expected, rtol=1e-4)


def test_minibatch_accumulator_mask_and_merge():
  x, y = _related_pair(23, n=24)
  acc = sim.minibatch_cka_accumulator()
  s0 = acc.init()
  a = acc.update(s0, x[:12], y[:12])
  # Second batch: 8 real rows padded to 12; a third batch with only 3 kept
  # rows is skipped (weight 0) rather than producing NaN.
  px = np.concatenate([x[12:20], np.ones((4, 12))])
  py = np.concatenate([y[12:20], np.ones((4, 9))])
  b = acc.update(s0, px, py, mask=jnp.asarray(np.arange(12) < 8))
  c = acc.update(s0, x[:12], y[:12], mask=jnp.asarray(np.arange(12) < 3))
  assert float(c.weight) == 0 and float(c.num_batches) == 0
  state = acc.merge(acc.merge(a, b), c)
  expected = _np_minibatch_cka(x, y, [12, 8], weights=[12, 8])
  np.testing.assert_allclose(float(acc.finalize(state)), expected, rtol=1e-4)
  assert float(state.num_batches) == 2


def test_dataset_cka_on_image_pytrees():
  rng = np.random.default_rng(24)
  images = {"a": rng.uniform(size=(21, 4, 4, 1)).astype(np.float32)}
  w = rng.normal(size=(16, 5)).astype(np.float32)
  fx = lambda t: t["a"]  # (b, 4, 4, 1) features, flattened per row
  fy = lambda t: jnp.tanh(t["a"].reshape(t["a"].shape[0], -1) @ w)
  full = sim.linear_cka(fx(images), fy(images))
  got = sim.dataset_cka(fx, fy, images, batch_size=8)
  np.testing.assert_allclose(float(got), float(full), rtol=1e-5)


# ---------------------------------------------------------------------------
# STIR.
# ---------------------------------------------------------------------------

_N_IMAGES = 32
_STEPS = 200
_STEP_SIZE = 0.1


def _models():
  rng = np.random.default_rng(25)
  w = jnp.asarray(2.0 * _random_orthogonal(rng, 64), jnp.float32)
  keep = jnp.asarray(np.arange(64) % 2 == 0, jnp.float32)

  def sees_all(images):  # injective: tanh of an invertible linear map
    return jnp.tanh(images.reshape(images.shape[0], -1) @ w)

  def sees_half(images):  # discards every other pixel
    return jnp.tanh((images.reshape(images.shape[0], -1) * keep) @ w)

  return sees_all, sees_half


_SEES_ALL, _SEES_HALF = _models()


@pytest.fixture(scope="module")
def images():
  rng = np.random.default_rng(26)
  return jnp.asarray(rng.uniform(size=(_N_IMAGES, 8, 8, 1)), jnp.float32)


@pytest.fixture(scope="module")
def asymmetric_stir(images):
  return sim.stir(_SEES_ALL, _SEES_HALF, images, key=jax.random.key(0),
                  steps=_STEPS, step_size=_STEP_SIZE)


def test_invert_representation_converges(images):
  inv = sim.invert_representation(_SEES_ALL, images, key=jax.random.key(1),
                                  steps=_STEPS, step_size=_STEP_SIZE)
  assert inv.x.shape == images.shape and inv.loss.shape == (_N_IMAGES,)
  assert float(jnp.min(inv.x)) >= 0 and float(jnp.max(inv.x)) <= 1
  assert float(jnp.max(inv.loss)) < 0.05
  # The reported loss is the loss of the returned iterate.
  target = _SEES_ALL(images)
  loss = jnp.linalg.norm(_SEES_ALL(inv.x) - target, axis=1) / jnp.linalg.norm(
      target, axis=1)
  np.testing.assert_allclose(np.asarray(inv.loss), np.asarray(loss),
                             rtol=1e-4, atol=1e-6)
  # The model is injective, so matching its features recovers the images.
  assert float(jnp.mean(jnp.abs(inv.x - images))) < 0.05
  # The best iterate is kept: more steps never end worse.
  short = sim.invert_representation(_SEES_ALL, images, key=jax.random.key(1),
                                    steps=20, step_size=_STEP_SIZE)
  assert np.all(np.asarray(inv.loss) <= np.asarray(short.loss) + 1e-6)


def test_invert_representation_ignored_pixels_stay_at_the_start(images):
  start = jnp.full_like(images, 0.5)
  inv = sim.invert_representation(_SEES_HALF, images, init=start,
                                  steps=_STEPS, step_size=_STEP_SIZE)
  flat = np.asarray(inv.x).reshape(_N_IMAGES, -1)
  np.testing.assert_array_equal(flat[:, 1::2], 0.5)  # no gradient there
  assert float(jnp.max(inv.loss)) < 0.05


def test_stir_of_a_model_with_itself_is_near_one(images):
  result = sim.stir(_SEES_HALF, _SEES_HALF, images, key=jax.random.key(2),
                    steps=_STEPS, step_size=_STEP_SIZE)
  assert isinstance(result, sim.StirResult)
  assert float(result.m2_given_m1) > 0.95
  assert float(result.m1_given_m2) > 0.95
  np.testing.assert_allclose(float(result.cka), 1.0, rtol=1e-5)


def test_stir_asymmetry(images, asymmetric_stir):
  # Inverting the model that sees everything reproduces the images, so the
  # half-blind model agrees: STIR(half | all) ≈ 1. Inverting the half-blind
  # model leaves the ignored pixels at random values that the full model sees:
  # STIR(all | half) is much lower.
  result = asymmetric_stir
  assert float(result.m2_given_m1) > 0.95
  assert float(result.m1_given_m2) < float(result.m2_given_m1) - 0.2
  expected_cka = float(sim.linear_cka(_SEES_ALL(images), _SEES_HALF(images)))
  np.testing.assert_allclose(float(result.cka), expected_cka, rtol=1e-5)


def test_stir_without_optimisation_is_a_low_baseline(images, asymmetric_stir):
  # steps=0 scores the (clipped) random starts themselves (Nanda et al.'s
  # no_opt baseline), which must lie below the converged value.
  baseline = sim.stir(_SEES_ALL, _SEES_HALF, images, key=jax.random.key(0),
                      steps=0)
  assert float(baseline.m2_given_m1) < float(asymmetric_stir.m2_given_m1) - 0.3
  assert float(baseline.m1_given_m2) < float(asymmetric_stir.m1_given_m2)


def test_stir_options(images, asymmetric_stir):
  # Chunked inversion, several mixed starts and another similarity keep the
  # picture.
  chunked = sim.stir(_SEES_ALL, _SEES_HALF, images, key=jax.random.key(3),
                     steps=_STEPS, step_size=_STEP_SIZE, batch_size=16,
                     num_seeds=2, init="mixed", similarity="unbiased")
  assert float(chunked.m2_given_m1) > 0.95
  assert float(chunked.m1_given_m2) < float(chunked.m2_given_m1) - 0.2
  np.testing.assert_allclose(
      float(chunked.cka),
      float(sim.unbiased_cka(_SEES_ALL(images), _SEES_HALF(images))),
      rtol=1e-5)
  with pytest.raises(ValueError, match="similarity"):
    sim.stir(_SEES_ALL, _SEES_HALF, images, key=jax.random.key(0), steps=1,
             similarity="cosine")
  with pytest.raises(ValueError, match="init"):
    sim.stir(_SEES_ALL, _SEES_HALF, images, key=jax.random.key(0), steps=1,
             init="white")


def test_as_result_saves_and_tabulates(tmp_path):
  values = {"a|a": 1.0, "b|a": 0.25, "a|b": np.array([0.5, np.nan, 0.7])}
  res = sim.as_result("stir", values, settings={"steps": 10})
  assert res.layers == ["a|a", "b|a", "a|b"]
  assert res.per_layer["b|a"] == 0.25
  np.testing.assert_allclose(res.per_layer["a|b"], 0.6)
  assert res.settings == {"steps": 10}
  path = tmp_path / "stir.npz"
  res.save(path)
  back = invjax.load_result(path)
  assert back.per_layer == res.per_layer and back.measure == "stir"
  with pytest.raises(ValueError, match="at least one"):
    sim.as_result("stir", {})
  with pytest.raises(ValueError, match="non-empty strings"):
    sim.as_result("stir", {"": 1.0})
  with pytest.raises(ValueError, match="real numbers"):
    sim.as_result("stir", {"x": "high"})
