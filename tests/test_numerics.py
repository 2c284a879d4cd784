"""Tests for invjax._src.numerics: the division rules and their NumPy twin."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src import numerics

_VALUES = [0.0, 1e-13, 0.5, -0.5, 2.0, np.inf, np.nan]


def _pairs():
  a, b = zip(*itertools.product(_VALUES, _VALUES))
  return np.array(a), np.array(b)


def _reference(a, b, zero_over_zero, nonzero_over_zero, tol, propagate_nan):
  out = []
  for x, y in zip(a, b):
    if propagate_nan and (np.isnan(x) or np.isnan(y)):
      out.append(np.nan)
    elif y > tol:
      out.append(x / y)
    else:
      out.append(nonzero_over_zero if x > tol else zero_over_zero)
  return np.array(out)


@pytest.mark.parametrize("rule", [
    dict(zero_over_zero=1.0),                          # tmeasures
    dict(zero_over_zero=1.0, zero_tolerance=1e-12),
    dict(zero_over_zero=0.0, nonzero_over_zero=0.0, propagate_nan=False),
])
def test_rules_match_reference_in_jax_and_numpy(rule):
  a, b = _pairs()
  with np.errstate(invalid="ignore"):   # inf/inf in the reference
    expected = _reference(a, b, rule["zero_over_zero"],
                          rule.get("nonzero_over_zero", np.inf),
                          rule.get("zero_tolerance", 0.0),
                          rule.get("propagate_nan", True))
  np.testing.assert_array_equal(numerics.np_safe_divide(a, b, **rule),
                                expected)
  got = numerics.safe_divide(jnp.asarray(a, jnp.float32),
                             jnp.asarray(b, jnp.float32), **rule)
  np.testing.assert_allclose(got, expected.astype(np.float32), rtol=1e-6)
  assert numerics.np_safe_divide(a, b, **rule).dtype == np.float64


def test_gradients_are_finite_at_zero():
  grad = jax.grad(lambda n, d: numerics.safe_divide(n, d, zero_over_zero=1.0),
                  argnums=(0, 1))
  assert all(np.isfinite(g) for g in grad(0.0, 0.0))
  assert jax.grad(numerics.safe_sqrt)(0.0) == 0.0
  assert numerics.safe_sqrt(jnp.nan) == 0.0
