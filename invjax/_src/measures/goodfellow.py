"""Goodfellow et al.'s firing-rate invariance, with streamed thresholds.

A unit a *fires* on an input when a(x) > τ, with a per-unit threshold τ set
from the untransformed data so that the unit fires rarely (``alpha = 0.99``:
on about 1 % of the samples). With A_ij = a(t_j(x_i)):

    G  = (1/n) Σ_i 1[a(x_i) > τ]               global firing rate
    L  = (1/(n m)) Σ_ij 1[A_ij > τ]            local firing rate
    GF = L / G                                  (safe_divide: 0/0 → 1)

This unconditional form is tmeasures' (the default): GF compares how often
the unit fires on transformed and on untransformed inputs, 1 when the
transformations leave its firing rate unchanged, > 1 when they make it fire
more often.

``conditional=True`` is the original definition of Goodfellow et al. (2009):
L is averaged only over the inputs that make the unit fire, i.e. the orbits
of its "preferred stimuli":

    L = Σ_i 1[a(x_i) > τ] (1/m) Σ_j 1[A_ij > τ]  /  Σ_i 1[a(x_i) > τ]

the probability that the unit keeps firing along the orbit of an input that
makes it fire. Higher is more invariant: GF = 1/G (≈ 1/(1 − alpha)) for a
unit constant along every orbit, ≈ 1 when firing along an orbit is no more
likely than on a random input. L = 0 when the unit never fires on the data
(GF = safe_divide(0, 0) = 1). The paper's layer score (the mean over the top
20 % of units) is left to the user: the values are per unit.

Thresholds (from the n untransformed samples, ``Requirements.untransformed``):

* ``"normal"``: τ = μ + σ Φ⁻¹(alpha), with the mean μ and the ddof = 1
  standard deviation σ of the unit, as tmeasures' ``NormalPValueThreshold``.
  Two passes: moments, then rates.
* ``"quantile"``: τ = the empirical alpha-quantile (NumPy's default linear
  interpolation between order statistics). An exact streaming quantile needs
  all n values per unit, so three passes with O(bins × units) memory:
  (0) minimum and maximum; (1) a histogram of ``bins`` equal bins on
  [min, max] (plus exact counts of values equal to the minimum and the
  maximum); (2) rates. Each order statistic is placed inside its bin by the
  rank within the bin, so |τ − np.quantile| ≤ (max − min) / bins, and τ is
  exact when the quantile falls on a tie at the minimum or the maximum (a
  ReLU unit that is 0 on more than alpha of the data gets τ = 0 exactly). Any
  batch size works (tmeasures' ``PercentActivationThreshold`` assumes equal
  batches and keeps every value).

References:
  Goodfellow, Le, Saxe, Lee, Ng. "Measuring invariances in deep networks",
  NIPS 2009. Quiroga et al., tmeasures ``GoodfellowInvariance``.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.scipy import special

from invjax._src import base
from invjax._src import stats

_THRESHOLDS = ("normal", "quantile")


class QuantileStats(NamedTuple):
  """Untransformed-sample statistics for the empirical quantile."""
  count: jax.Array       # () int32
  low: jax.Array         # (*shape) minimum
  high: jax.Array        # (*shape) maximum
  hist: jax.Array        # (bins, *shape) int32, pass 1
  at_low: jax.Array      # (*shape) int32: values equal to the minimum
  at_high: jax.Array     # (*shape) int32: values equal to the maximum


class Rates(NamedTuple):
  """Firing counts (int32: exact, and merged by addition)."""
  global_fires: jax.Array     # (*shape)
  global_count: jax.Array     # (1, ...): shared by the units
  local_fires: jax.Array      # (*shape)
  local_count: jax.Array      # (*shape): per unit for the conditional form


class GoodfellowState(NamedTuple):
  summary: stats.Moments | QuantileStats   # of the untransformed samples
  threshold: jax.Array        # (*shape), set by end_pass
  rates: Rates
  stage: jax.Array            # int32: passes completed so far; (1, ...)
                              # (quantile: (), see end_pass)


def _weights(block: base.Block) -> jax.Array:
  # The untransformed activations come with every transformation chunk of a
  # batch; counting them on the first chunk only counts each sample once.
  return block.mask & block.first


def _identity(block: base.Block) -> jax.Array:
  if block.untransformed is None:
    raise ValueError(
        "goodfellow needs the untransformed activations: pass untransformed= "
        "(B, *shape) when calling the measure on a block")
  return block.untransformed.astype(jnp.float32)


def _bin_width(q: QuantileStats, bins: int):
  low = jnp.where(q.count > 0, q.low, 0)
  width = jnp.where(q.high > q.low, (q.high - q.low) / bins, 0)
  return low, width


def _histogram_update(q: QuantileStats, v: jax.Array, w: jax.Array,
                      bins: int) -> QuantileStats:
  low, width = _bin_width(q, bins)
  pos = (v - low) / jnp.where(width > 0, width, 1)
  idx = jnp.clip(jnp.floor(pos), 0, bins - 1).astype(jnp.int32)
  idx = jnp.where(width > 0, idx, 0)
  b, units = v.shape[0], math.prod(v.shape[1:])
  # One scatter-add into the flattened (bins × units) table: a one-hot
  # comparison would need B × bins × units memory.
  flat = idx.reshape(b, units) * units + jnp.arange(units, dtype=jnp.int32)
  wi = jnp.broadcast_to(w[:, None], (b, units)).astype(jnp.int32)
  hist = q.hist.reshape(-1).at[flat.reshape(-1)].add(wi.reshape(-1))
  wx = w.reshape((b,) + (1,) * (v.ndim - 1))
  return q._replace(
      hist=hist.reshape(q.hist.shape),
      at_low=q.at_low + jnp.sum(wx & (v == q.low), axis=0, dtype=jnp.int32),
      at_high=q.at_high + jnp.sum(wx & (v == q.high), axis=0, dtype=jnp.int32))


def _order_statistic(q: QuantileStats, cum: jax.Array, k: jax.Array,
                     bins: int) -> jax.Array:
  """Estimate of the k-th smallest value (0-based) of every unit."""
  low, width = _bin_width(q, bins)
  # The bin holding rank k: the number of bins whose cumulative count ≤ k.
  b = jnp.minimum(jnp.sum(cum <= k, axis=0, dtype=jnp.int32), bins - 1)
  take = lambda a, i: jnp.take_along_axis(a, i[None], axis=0)[0]
  below = jnp.where(b > 0, take(cum, jnp.maximum(b - 1, 0)), 0)
  inside = jnp.maximum(take(q.hist, b), 1)
  # Spread the bin's values evenly over it: the error is below one bin width.
  est = low + width * (b + (k - below + 0.5) / inside)
  est = jnp.where(k < q.at_low, q.low, est)
  return jnp.where(k >= q.count - q.at_high, q.high, est)


def _quantile(q: QuantileStats, alpha: float, bins: int) -> jax.Array:
  n = q.count
  h = (jnp.maximum(n, 1) - 1).astype(jnp.float32) * alpha
  k0 = jnp.floor(h).astype(jnp.int32)
  k1 = jnp.minimum(k0 + 1, jnp.maximum(n - 1, 0))
  cum = jnp.cumsum(q.hist, axis=0)
  v0 = _order_statistic(q, cum, k0, bins)
  v1 = _order_statistic(q, cum, k1, bins)
  tau = v0 + (h - k0) * (v1 - v0)
  return jnp.where(n > 0, tau, 0)


def _rates_partial(block: base.Block, tau: jax.Array,
                   conditional: bool) -> Rates:
  """One block's firing counts (to add to the rates).

  Counted as weighted sums of 0/1 values (`stats.weighted_sum`), in
  float32, exact while a block holds fewer than 2²⁴ samples ×
  transformations, else in int32.
  """
  ident = _identity(block)
  x = block.x.astype(jnp.float32)
  w = _weights(block)
  b, tc = x.shape[:2]
  dtype = jnp.float32 if b * tc < 2**24 else jnp.int32
  fires = (ident > tau).astype(dtype)                       # (B, *shape)
  count = lambda v: jnp.round(v).astype(jnp.int32)
  g_fires = stats.weighted_sum(fires, w, 0)
  # Over each sample's orbit first, then over the samples.
  orbit_fires = stats.weighted_sum(
      x, block.t_mask, 1, lambda v: (v > tau).astype(dtype)).astype(dtype)
  n_t = jnp.sum(block.t_mask, dtype=jnp.int32)
  if conditional:
    # Only the orbits of firing samples count.
    l_fires = stats.weighted_sum(orbit_fires * fires, block.mask, 0)
    l_count = count(stats.weighted_sum(fires, block.mask, 0)) * n_t
  else:
    l_fires = stats.weighted_sum(orbit_fires, block.mask, 0)
    l_count = jnp.broadcast_to(jnp.sum(block.mask, dtype=jnp.int32) * n_t,
                               tau.shape)
  extra = (1,) * (ident.ndim - 1)
  g_count = jnp.sum(w, dtype=jnp.int32).reshape(extra)
  return Rates(count(g_fires), g_count, count(l_fires), l_count)


def goodfellow(*, threshold: str = "normal", alpha: float = 0.99,
               conditional: bool = False, bins: int = 256) -> base.Measure:
  """Goodfellow et al.'s invariance GF = L / G per unit (firing rates).

  See the module docstring for the formulas. τ is set per unit from the
  untransformed samples; G is their firing rate and L that of the
  transformed samples (of the firing samples' orbits with ``conditional``).

  Args:
    threshold: ``"normal"`` (τ = μ + σ Φ⁻¹(alpha), two passes) or
      ``"quantile"`` (the empirical alpha-quantile, three passes).
    alpha: the quantile level in (0, 1); units fire on about 1 − alpha of the
      untransformed data (Goodfellow et al.: 1 %).
    conditional: average L over the orbits of firing samples only (the
      paper's definition) instead of over all samples (tmeasures).
    bins: histogram bins of the quantile threshold (resolution
      (max − min)/bins; memory bins × activations int32 per layer).

  Returns:
    A `Measure` with ``values`` GF, ``numerator`` L, ``denominator`` G and
    ``threshold`` τ, each shaped like one activation.
  """
  if threshold not in _THRESHOLDS:
    raise ValueError(
        f"threshold must be one of {_THRESHOLDS}, got {threshold!r}")
  if not 0 < alpha < 1:
    raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
  if not isinstance(bins, int) or isinstance(bins, bool) or bins < 1:
    raise ValueError(f"bins must be a positive int, got {bins!r}")
  quantile = threshold == "quantile"
  rates_pass = 2 if quantile else 1

  def init(spec: base.LayerSpec) -> GoodfellowState:
    shape, ones = spec.shape, (1,) * len(spec.shape)
    zi = jnp.zeros(shape, jnp.int32)
    if quantile:
      st = QuantileStats(jnp.zeros((), jnp.int32),
                         jnp.full(shape, jnp.inf, jnp.float32),
                         jnp.full(shape, -jnp.inf, jnp.float32),
                         jnp.zeros((bins,) + shape, jnp.int32), zi, zi)
    else:
      st = stats.zeros_moments(shape, count_shape=ones)
    rates = Rates(zi, jnp.zeros(ones, jnp.int32), zi, zi)
    return GoodfellowState(st, jnp.zeros(shape, jnp.float32), rates,
                           jnp.zeros(() if quantile else ones, jnp.int32))

  def reduce(state: GoodfellowState, block: base.Block):
    """Normal thresholds: the block's moments (pass 0) or firing counts."""
    if block.pass_index == rates_pass:
      return _rates_partial(block, state.threshold, conditional)
    v = _identity(block)
    chunk = stats.block_moments(v, _weights(block), axis=0)
    return chunk._replace(count=jnp.reshape(chunk.count,
                                            (1,) * chunk.offset.ndim))

  def fold(state: GoodfellowState, partial,
           block: base.Block) -> GoodfellowState:
    if block.pass_index == rates_pass:
      return state._replace(rates=jax.tree.map(jnp.add, state.rates, partial))
    return state._replace(summary=stats.merge_moments(state.summary, partial))

  def update(state: GoodfellowState, block: base.Block) -> GoodfellowState:
    p = block.pass_index
    if not quantile or p == rates_pass:
      return fold(state, reduce(state, block), block)
    v, w = _identity(block), _weights(block)
    q = state.summary
    if p == 0:                                         # range
      wx = w.reshape(w.shape + (1,) * (v.ndim - 1))
      q = q._replace(
          count=q.count + jnp.sum(w, dtype=jnp.int32),
          low=jnp.minimum(q.low, jnp.min(jnp.where(wx, v, jnp.inf), axis=0)),
          high=jnp.maximum(q.high,
                           jnp.max(jnp.where(wx, v, -jnp.inf), axis=0)))
    else:                                              # histogram
      q = _histogram_update(q, v, w, bins)
    return state._replace(summary=q)

  def set_threshold(state: GoodfellowState) -> GoodfellowState:
    if quantile:
      return state._replace(threshold=_quantile(state.summary, alpha, bins))
    m = state.summary
    sigma = stats.safe_sqrt(stats.variance(m, 1))
    return state._replace(threshold=m.mean + sigma * special.ndtri(alpha))

  def end_pass(state: GoodfellowState, pass_index: int) -> GoodfellowState:
    state = state._replace(stage=state.stage + 1)
    if pass_index != rates_pass - 1:
      return state
    # A stratified run stacks one state per class (leading axes, visible on
    # the quantile's scalar count and stage) and may call end_pass on the
    # stack: map over them, since the histogram maths works along axis 0.
    # The normal threshold works unit by unit, stacked or not.
    fn = set_threshold
    for _ in range(state.stage.ndim if quantile else 0):
      fn = jax.vmap(fn)
    return fn(state)

  def merge(a: GoodfellowState, b: GoodfellowState) -> GoodfellowState:
    # Both sides ran the current pass (a.stage) on disjoint samples from the
    # same start, so the statistics of finished passes are shared (keep a's)
    # and only the current pass's are combined.
    def keep_if_done(done_pass, kept, combined):
      def pick(x, y):
        stage = a.stage.reshape(a.stage.shape + (1,) * (x.ndim - a.stage.ndim))
        return jnp.where(stage > done_pass, x, y)
      return jax.tree.map(pick, kept, combined)

    if quantile:
      qa, qb = a.summary, b.summary
      # hist/at_low/at_high are counted in pass 1 against the final range,
      # which both sides share, so they simply add.
      st = QuantileStats(qa.count + qb.count, jnp.minimum(qa.low, qb.low),
                         jnp.maximum(qa.high, qb.high), qa.hist + qb.hist,
                         qa.at_low + qb.at_low, qa.at_high + qb.at_high)
      first = keep_if_done(0, qa[:3], st[:3])
      second = keep_if_done(1, qa[3:], st[3:])
      st = QuantileStats(*first, *second)
    else:
      st = keep_if_done(0, a.summary, stats.merge_moments(a.summary, b.summary))
    rates = jax.tree.map(jnp.add, a.rates, b.rates)
    return GoodfellowState(st, a.threshold, rates, a.stage)

  def finalize(state: GoodfellowState, spec: base.LayerSpec):
    del spec
    r = state.rates
    g = r.global_fires / jnp.maximum(r.global_count, 1)
    l = r.local_fires / jnp.maximum(r.local_count, 1)
    g, l = g.astype(jnp.float32), l.astype(jnp.float32)
    return {"values": stats.safe_divide(l, g), "numerator": l,
            "denominator": g, "threshold": state.threshold}

  settings = base.settings_tuple(threshold=threshold, alpha=float(alpha),
                                 conditional=bool(conditional),
                                 **({"bins": bins} if quantile else {}))
  return base.Measure(name="goodfellow", init=init, update=update,
                      merge=merge, finalize=finalize, settings=settings,
                      requires=base.Requirements(
                          untransformed=True, passes=rates_pass + 1,
                          untransformed_passes=tuple(range(rates_pass))),
                      end_pass=end_pass,
                      unitwise=None if quantile else base.Unitwise(reduce,
                                                                   fold),
                      # τ = μ + σ·z needs σ (ddof 1); a quantile needs 1.
                      check=base.size_check(
                          "goodfellow", min_samples=1 if quantile else 2,
                          why="the threshold's standard deviation"))
