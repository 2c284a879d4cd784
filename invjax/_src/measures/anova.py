"""One-way ANOVA per activation, with the transformations as the groups.

For one activation a, write A_ij = a(t_j(x_i)) for samples i = 1..n and
transformations j = 1..m. Each transformation is a group of n observations:

    u_j = (1/n) Σ_i A_ij                    (group means)
    u   = (1/m) Σ_j u_j                     (grand mean)
    SSB = Σ_j n (u_j − u)²                  (between groups, m − 1 dof)
    SSW = Σ_ij (A_ij − u_j)²                (within groups, m(n − 1) dof)
    F   = (SSB / (m − 1)) / (SSW / (m (n − 1)))

Under the null hypothesis "the transformation has no effect on the mean of
the activation" (and the usual normal, equal-variance assumptions) F follows
an F(d1 = m − 1, d2 = m(n − 1)) distribution, so the p-value is

    p = P(F(d1, d2) > F) = 1 − I_x(d1/2, d2/2),   x = d1 F / (d1 F + d2),

with I the regularized incomplete beta function. F = 0 for a unit whose group
means are all equal (invariant in the mean); large F means the transformation
explains much of the activation's variation.

The state is exactly the sample variance's (`variance.column_moments`): Chan
moments per transformation column, merged over sample batches. Group j's
(count, mean, M2) give n_j, u_j and its within-group sum of squares, so the
whole test takes **one pass** (tmeasures' NumPy ANOVA makes two, updating per
sample in Python).

Division rules (`stats.safe_divide` on the mean squares): a constant unit
(SSB = SSW = 0) gets F = 1 (0/0 → 1) and, as it cannot show any effect,
p = 1; SSW = 0 < SSB (every group constant, groups differ: the transformation
alone sets the unit) gives F = inf, p = 0. Without degrees of freedom
(m = 1 or n = 1) no test is possible: F uses mean squares set to 0 and p = 1.

References:
  Quiroga, Torrents-Barrena, Lanzarini, Puig. "Measuring (in)variances in
  convolutional networks", CACIC 2019 / JCS&T 20(1) 2020 (ANOVA measure);
  tmeasures `np/anova.py`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
from jax.scipy import special

from invjax._src import base
from invjax._src import stats
from invjax._src.measures import variance


def _p_value_dtype() -> Any:
  # float32 p-values lose accuracy for large d2 (XLA's incomplete beta takes
  # lgamma of ~d2/2, whose float32 ulp becomes visible): about 0.5 % relative
  # near F = 1 at d2 = 5·10⁴. With jax_enable_x64 they are float64.
  return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def f_statistic(columns: stats.Moments, valid: jax.Array):
  """F, its p-value and the degrees of freedom from per-group moments.

  Args:
    columns: Moments with a leading group axis: count (G, 1, ...), mean and
      M2 (G, *shape).
    valid: (G,) bool, False for groups to ignore (padding transformations).

  Returns:
    (F, p_value, d1, d2): F and p shaped like one activation; the degrees
    of freedom d1 = G' − 1 and d2 = n_total − G' (G' non-empty groups),
    shaped like the counts (broadcast against F).
  """
  w = valid.astype(columns.offset.dtype)
  w = w.reshape(w.shape + (1,) * (columns.offset.ndim - 1))
  n_j = columns.count * w                            # (G, 1, ...) group sizes
  total = jnp.sum(n_j, axis=0)
  groups = jnp.sum((n_j > 0).astype(n_j.dtype), axis=0)
  # Group means relative to the first group's, from the shifted form:
  # differences of nearby shifts are exact, so SSB keeps its precision for
  # activations far from 0. Means equal in float32 count as equal (XLA may
  # round the offsets of identical groups differently by an ulp), so an
  # invariant unit gets SSB = 0 exactly.
  means = jnp.where(
      columns.mean == columns.mean[:1], 0,
      (columns.shift - columns.shift[:1]) + (columns.offset -
                                             columns.offset[:1]))
  means = jnp.where(n_j > 0, means, 0)
  grand = jnp.sum(n_j * means, axis=0) / jnp.maximum(total, 1)
  ssb = jnp.sum(n_j * (means - grand) ** 2, axis=0)
  ssw = jnp.sum(columns.m2 * w, axis=0)
  # Per unit (broadcast where the units share their counts): a stratified
  # or unit-wise state may count each unit's samples apart.
  d1, d2 = groups - 1, total - groups
  has_dof = (d1 > 0) & (d2 > 0)
  msb = jnp.where(d1 > 0, ssb / jnp.maximum(d1, 1), 0)
  msw = jnp.where(d2 > 0, ssw / jnp.maximum(d2, 1), 0)
  f = stats.safe_divide(msb, msw)

  # p = 1 − I_x(d1/2, d2/2) with x = d1 F/(d1 F + d2), evaluated as the
  # complementary I_y(d2/2, d1/2), y = d2/(d1 F + d2) = 1 − x: the subtraction
  # would round every p below ~1e-7 to 0 and Bonferroni needs exactly those.
  dt = _p_value_dtype()
  fd, d1f, d2f = f.astype(dt), d1.astype(dt), d2.astype(dt)
  finite = jnp.isfinite(fd)
  # F = inf gives y = 0, so p = 0; guards keep the unused branches finite.
  denom = jnp.maximum(d1f * jnp.where(finite, fd, 0) + d2f, 1)
  y = jnp.where(finite, d2f / denom, 0)
  p = special.betainc(jnp.maximum(d2f, 1) / 2, jnp.maximum(d1f, 1) / 2, y)
  # No test without degrees of freedom, and a constant unit shows no effect.
  constant = (msb <= 0) & (msw <= 0)
  p = jnp.where(has_dof & ~constant, p, 1)
  return f, p, d1, d2


def _measure(name: str, finalize, settings) -> base.Measure:
  # The state is the sample variance's: Chan moments per transformation, the
  # groups of the test.
  columns = variance.column_moments()
  # d1 = m − 1 and d2 = m(n − 1) must be positive, else p = 1 everywhere:
  # every unit would pass as invariant.
  check = base.size_check(name, min_samples=2, min_transformations=2,
                          why="the F test's degrees of freedom")
  return base.Measure(name=name, init=columns.init, update=columns.update,
                      merge=columns.merge, finalize=finalize,
                      settings=settings, check=check,
                      unitwise=columns.unitwise)


def _layer_units(spec: base.LayerSpec):
  """D, the activation count of each unit's layer (one layer: a number)."""
  if not spec.layer_sizes:
    return math.prod(spec.shape)
  # Several layers side by side (`base.Unitwise`): D per unit, written as
  # broadcasts so that no (F,) constant enters the program.
  return jnp.concatenate([jnp.full((d,), d, jnp.float32)
                          for d in spec.layer_sizes])


def anova_f() -> base.Measure:
  """One-way ANOVA F statistic per activation, transformations as groups.

  F = (SSB/(m − 1)) / (SSW/(m(n − 1))) over the n × m matrix A_ij (see the
  module docstring). 0 for a unit invariant in the mean; ≈ 1 when the
  transformation explains no more than noise would; large when it matters.
  One pass, from the same per-transformation moments as `sample_variance`.

  Returns:
    A `Measure` whose ``values`` are F (shaped like one activation) and which
    also returns ``"p_value"``, P(F(m − 1, m(n − 1)) > F).
  """
  def finalize(state, spec):
    f, p, _, _ = f_statistic(state.columns, variance.valid_columns(spec))
    return {"values": f, "p_value": p}

  return _measure("anova_f", finalize, ())


def anova(*, alpha: float = 0.01, bonferroni: bool = True) -> base.Measure:
  """ANOVA test per activation: 1.0 where "no effect" is rejected, else 0.0.

  Each activation's null hypothesis (the transformation does not change its
  mean) is rejected when its `anova_f` p-value is ≤ the significance level:
  ``alpha / D`` with ``bonferroni`` (D = number of activations in the layer,
  so the family-wise error rate of the layer is ≤ alpha), else ``alpha``. The
  per-layer mean of the values is the fraction of units found *not*
  invariant.

  Unlike tmeasures' ``ANOVAInvariance(alpha=0.99)``, which passes the
  *confidence* 0.99 and divides it by D (so its critical values collapse and
  nearly every unit is flagged), invjax takes the significance level alpha
  and divides that.

  Args:
    alpha: significance level in (0, 1).
    bonferroni: divide alpha by the layer's number of activations.

  Returns:
    A `Measure` whose ``values`` are 0/1 per activation; ``"f"`` and
    ``"p_value"`` are returned too.
  """
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must be a significance level in (0, 1), got "
                     f"{alpha!r}")

  def finalize(state, spec):
    f, p, _, _ = f_statistic(state.columns, variance.valid_columns(spec))
    level = alpha / _layer_units(spec) if bonferroni else alpha
    return {"values": (p <= level).astype(jnp.float32), "f": f, "p_value": p}

  return _measure("anova", finalize,
                  base.settings_tuple(alpha=float(alpha),
                                      bonferroni=bool(bonferroni)))
