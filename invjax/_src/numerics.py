"""Division and square root that stay finite, and differentiable, at zero.

Ratio measures (NV, ND, GF, ANOVA's F, CKA, logit invariance) all divide by
something that is exactly zero for a constant unit or representation, and
they disagree, on purpose, about what 0/0 means. One function holds the
division; each caller states its rule where it divides:

    safe_divide(a, b) = a / b                  if b > t,
                        zero_over_zero         if b ≤ t and a ≤ t,
                        nonzero_over_zero      if b ≤ t and a > t,

with t = ``zero_tolerance``. tmeasures' rule (Quiroga et al., "Measuring
(in)variances in Convolutional Networks", 2018) is zero_over_zero = 1,
nonzero_over_zero = +inf: a unit that varies neither across transformations
nor across samples is as invariant as it is varied. CKA (Kornblith et al.,
ICML 2019) and logit invariance use 0 for both: a constant representation
shares no information, an all-zero orbit does not vary.

Both functions are gradient-safe: the untaken branch never divides by zero or
takes the square root of 0, so `jax.grad` is 0 there instead of NaN (a NaN in
the untaken branch of `jnp.where` would still poison the gradient).
`np_safe_divide` is the same rule in NumPy, for host arrays in float64
(`jax.numpy` computes in float32 unless x64 is enabled), and
`tmeasures_divide` fixes tmeasures' rule (the variance and distance ratios).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array


def _divide(xp, numerator, denominator, zero_over_zero, nonzero_over_zero,
            zero_tolerance, propagate_nan):
  """The rule for an array namespace xp (jax.numpy or numpy)."""
  positive = denominator > zero_tolerance
  # Dividing by 1 where the denominator is ~0 keeps the untaken branch, and
  # so the gradient, finite.
  ratio = numerator / xp.where(positive, denominator, 1)
  zero_case = xp.where(numerator > zero_tolerance, nonzero_over_zero,
                       zero_over_zero).astype(ratio.dtype)
  out = xp.where(positive, ratio, zero_case)
  if not propagate_nan:
    return out
  # NaN compares false, so without this a NaN denominator would take the
  # zero-denominator rule and hide the NaN.
  return xp.where(xp.isnan(numerator) | xp.isnan(denominator), xp.nan, out)


def safe_divide(numerator: Array, denominator: Array, *,
                zero_over_zero: float,
                nonzero_over_zero: float = math.inf,
                zero_tolerance: float = 0.0,
                propagate_nan: bool = True) -> Array:
  """numerator / denominator with an explicit rule for a zero denominator.

  Elementwise, with t = ``zero_tolerance``:

  * denominator > t: numerator / denominator;
  * denominator ≤ t and numerator ≤ t: ``zero_over_zero``;
  * denominator ≤ t and numerator > t: ``nonzero_over_zero``.

  tmeasures' rule (Quiroga et al. 2018) is ``zero_over_zero=1`` with the
  default +inf; CKA's (Kornblith et al. 2019) is 0 for both. A t > 0 treats
  round-off as zero: on GPUs a unit that is constant in exact arithmetic can
  come out with a variance of ~1e-15 instead of 0.

  Args:
    numerator: array.
    denominator: array broadcastable against numerator.
    zero_over_zero: the value of 0/0 (keyword-only and required, so every
      caller says which rule it follows).
    nonzero_over_zero: the value of x/0 for x > t.
    zero_tolerance: t; denominators and numerators ≤ t count as zero.
    propagate_nan: if True, a NaN in either input gives NaN. If False, NaN
      compares false: a NaN denominator takes the zero-denominator rule and
      a NaN numerator over a zero denominator gives ``zero_over_zero``.

  Returns:
    The elementwise quotient in the dtype of numerator / denominator; its
    gradient is finite wherever the inputs are.
  """
  return _divide(jnp, numerator, denominator, zero_over_zero,
                 nonzero_over_zero, zero_tolerance, propagate_nan)


def np_safe_divide(numerator: np.ndarray, denominator: np.ndarray, *,
                   zero_over_zero: float,
                   nonzero_over_zero: float = math.inf,
                   zero_tolerance: float = 0.0,
                   propagate_nan: bool = True) -> np.ndarray:
  """`safe_divide` in NumPy, for host arrays; float64 stays float64.

  Args and Returns as `safe_divide`.
  """
  # inf/inf in the taken branch is NaN, as in jax; only the warning goes.
  with np.errstate(divide="ignore", invalid="ignore"):
    return _divide(np, np.asarray(numerator), np.asarray(denominator),
                   zero_over_zero, nonzero_over_zero, zero_tolerance,
                   propagate_nan)


def tmeasures_divide(numerator: Array, denominator: Array,
                     zero_tolerance: float = 0.0) -> Array:
  """tmeasures' division rule, elementwise and gradient-safe.

  With t = ``zero_tolerance`` (0: tmeasures' rule exactly):

  * denominator > t: numerator / denominator;
  * denominator ≤ t and numerator ≤ t: 1 (0/0: as invariant as it is varied);
  * denominator ≤ t and numerator > t: +inf.

  A t > 0 treats round-off as zero: on GPUs a unit that is constant in exact
  arithmetic can come out with a variance of ~1e-15 instead of 0.

  A NaN anywhere propagates as NaN (tmeasures would return the numerator).
  This is `safe_divide` with tmeasures' rule.
  """
  # 0/0 → 1: a unit that varies neither across transformations nor across
  # samples is as invariant as it is varied (tmeasures, Quiroga et al.).
  return safe_divide(numerator, denominator, zero_over_zero=1.0,
                     zero_tolerance=zero_tolerance)


def safe_sqrt(x: Array) -> Array:
  """sqrt with a zero (not infinite) gradient at 0, so `jax.grad` stays finite.

  sqrt(x) for x > 0, else 0 (so also 0 for x < 0 and for NaN).
  """
  positive = x > 0
  return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1)), 0)
