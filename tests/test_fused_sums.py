"""The fused TV/SV kernel against float64 NumPy.

Compiled by Triton on a GPU, run in Pallas' interpret mode elsewhere.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src import fused_sums
from invjax._src import stats

_INTERPRET = jax.default_backend() != "gpu"


def _reference(x, w_b, w_t, shift, statistic, ddof):
  x = x.astype(np.float64)
  n_t = w_t.sum()
  mean = (x * w_t[None, :, None]).sum(1, keepdims=True) / max(n_t, 1)
  m2 = (w_t[None, :, None] * (x - mean)**2).sum(1)
  stat = m2 / (n_t - ddof) if n_t - ddof > 0 else np.zeros_like(m2)
  if statistic == "std":
    stat = np.sqrt(stat)
  d = x - shift[None]
  return ((stat * w_b[:, None]).sum(0), (w_b[:, None, None] * d).sum(0),
          (w_b[:, None, None] * d * d).sum(0))


# Sizes that are not powers of two (masked loads), a one-row tile, T = 1,
# and a tile split into several sample ranges.
@pytest.mark.parametrize("b,t,f,statistic,ddof", [
    (5, 3, 7, "variance", 1), (37, 16, 300, "std", 1), (1, 4, 5, "variance", 0),
    (9, 1, 33, "variance", 1), (600, 2, 3, "std", 0)])
def test_matches_reference(b, t, f, statistic, ddof):
  rng = np.random.default_rng(b * t)
  # An offset large against the spread: the shifted sums keep precision.
  x = (100 + rng.normal(size=(b, t, f))).astype(np.float32)
  w_b = np.ones(b, np.float32)
  w_b[b // 2 + 1:] = 0                       # padding rows come last
  w_t = np.ones(t, np.float32)
  w_t[max(1, t - 1):] = 0
  shift = np.asarray(stats.block_shift(jnp.asarray(x), jnp.asarray(w_b), 0))
  got = fused_sums.tile_sums(
      jnp.asarray(x), jnp.asarray(w_b), jnp.asarray(w_t), jnp.asarray(shift),
      statistic=statistic, ddof=ddof, head=stats.head_size(t),
      interpret=_INTERPRET)
  for g, want in zip(got, _reference(x, w_b, w_t, shift, statistic, ddof)):
    assert g.shape == want.shape
    np.testing.assert_allclose(np.asarray(g), want, rtol=1e-5,
                               atol=1e-5 * np.abs(want).max(initial=1))


def test_constant_orbits_give_zero_tv():
  # Every orbit constant: TV's shifted sums are exactly 0, not round-off.
  x = np.broadcast_to(np.linspace(-3, 7, 4 * 6, dtype=np.float32)
                      .reshape(4, 1, 6), (4, 5, 6))
  tv, _, _ = fused_sums.tile_sums(
      jnp.asarray(x), jnp.ones(4), jnp.ones(5), jnp.zeros((5, 6)),
      statistic="std", ddof=1, head=stats.head_size(5),
      interpret=_INTERPRET)
  np.testing.assert_array_equal(np.asarray(tv), 0.0)


def test_no_gradients_is_a_clear_error():
  x = jnp.ones((3, 2, 4))
  fn = lambda x: fused_sums.tile_sums(
      x, jnp.ones(3), jnp.ones(2), jnp.zeros((2, 4)), statistic="variance",
      ddof=1, head=1, interpret=_INTERPRET)[0].sum()
  with pytest.raises(ValueError, match="no gradients"):
    jax.grad(fn)(x)


def test_masked_rows_holding_nan_reach_no_sum():
  # A sample left out for non-finite activations (weight 0, anywhere in the
  # tile): selected away, not multiplied by 0.
  rng = np.random.default_rng(3)
  x = rng.normal(size=(7, 3, 5)).astype(np.float32)
  w_b = np.ones(7, np.float32)
  w_b[[0, 4]] = 0
  x[0, 1, 2], x[4] = np.nan, np.inf
  clean = np.where(w_b[:, None, None] > 0, x, 0)
  shift = np.asarray(stats.block_shift(jnp.asarray(x), jnp.asarray(w_b), 0))
  assert np.isfinite(shift).all()
  got = fused_sums.tile_sums(
      jnp.asarray(x), jnp.asarray(w_b), jnp.ones(3), jnp.asarray(shift),
      statistic="variance", ddof=1, head=stats.head_size(3),
      interpret=_INTERPRET)
  want = _reference(clean, w_b, np.ones(3), shift, "variance", 1)
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-6)
