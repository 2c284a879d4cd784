"""Quiroga et al.'s distance measures: euclidean distances of feature maps.

Each *feature map* is one vector: for an activation of shape (..., C) (channels
last, e.g. (h, w, c)), channel c of one sample is the vector of its h·w values;
for a dense layer (f,) every unit is its own 1-D vector. With v_ij the vector
of sample i under transformation j (optionally L2-normalized first,
``normalize=True``) and d the euclidean distance:

* Transformation distance  TD = (1/n) Σ_i  mean_{j<k} d(v_ij, v_ik)
  (all m(m − 1)/2 pairs of each sample's orbit: exact)
* Sample distance          SD = (1/m) Σ_j  mean_{pairs i≠k} d(v_ij, v_kj)
* Normalized distance      ND = TD / SD   (safe_divide: 0/0 → 1, x/0 → inf)

The values are per feature map (shape (C,)), broadcast over the activation's
shape, so ``per_feature_map`` gives the channel value and the per-feature-map
ratio of ND equals TD_c / SD_c.

**The sample-pair estimator.** The mean distance between *all* n(n − 1)/2
sample pairs needs every sample's activations at once. tmeasures only pairs
samples within a batch, so its SD depends on the batch size. invjax pairs each
sample with the ``window`` samples that precede it in dataset order (among
the samples measured: within a class when stratified) and averages over all
those pairs, keeping a ring of the last ``window`` samples per transformation
in the state. So

* the pairs, and so the result, are the same for every batch size (exactly,
  up to float rounding) and every transformation chunk;
* with ``window ≥ n − 1`` they are all pairs: SD is then exactly the all-pairs
  mean;
* for exchangeable (e.g. shuffled) data each pair is a draw of two different
  samples, so SD is an unbiased estimate of the all-pairs mean for any
  window W (over random orders of a fixed dataset its mean is exactly the
  all-pairs mean). Its variance is about 4ζ₁/n + (ζ₂ − 2ζ₁)/(nW), against
  4ζ₁/n for all pairs (ζ₂: variance of one pair's distance; ζ₁: variance of
  its mean given one of the two samples; ζ₂ ≥ 2ζ₁). The default W = 8 adds
  (ζ₂/ζ₁ − 2)/32 to it, e.g. +6 % for ζ₂ = 4ζ₁, for a state of 8 samples'
  orbits per layer; W = 1 (consecutive pairs) is the cheapest.

TD needs every pair of one orbit, so with ``transform_chunk`` the orbit of
the current batch is kept in the state, (B, T, *shape) per layer: the memory
of one unchunked tile of that layer.

Same-equivariance (``same_equivariance=True``): the same on
B_ij = t_j⁻¹(f(t_j(x_i))), feature maps mapped back by the inverse
transformation (spatial layers only).

References:
  Quiroga, Torrents-Barrena, Lanzarini, Puig. "Invariance and
  same-equivariance measures for convolutional neural networks", CLEI
  Electron. J. 24(1) 2021 (distance measures); tmeasures `np/aggregation.py`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp

from invjax._src import base
from invjax._src import stats
from invjax._src.measures import combinators


def _layout(shape: tuple[int, ...]) -> tuple[int, int]:
  """(S, C): vector length and number of feature maps of one activation."""
  if not shape:
    return 1, 1
  if len(shape) == 1:
    return 1, shape[0]
  return math.prod(shape[:-1]), shape[-1]


def _prepare(x: jax.Array, lead: int, normalize: bool) -> jax.Array:
  """float32 activations (*lead, *shape), each feature map L2-normalized."""
  x = x.astype(jnp.float32)
  if not normalize:
    return x
  v = _vectors(x, lead)
  norm = stats.safe_sqrt(jnp.sum(v * v, axis=-2, keepdims=True))
  # A zero vector stays zero (it has no direction).
  v = jnp.where(norm > 0, v / jnp.where(norm > 0, norm, 1), 0)
  return v.reshape(x.shape)


def _vectors(x: jax.Array, lead: int) -> jax.Array:
  """(*lead, *shape) → (*lead, S, C) feature-map vectors (a free reshape)."""
  return x.reshape(x.shape[:lead] + _layout(x.shape[lead:]))


def _distance(u: jax.Array, v: jax.Array) -> jax.Array:
  """Euclidean distance over the vector axis (-2): (..., S, C) → (..., C).

  Differences are taken directly (not via |u|² + |v|² − 2u·v, which cancels
  to ~1e-3·|u| in float32), so identical maps are exactly 0 apart; safe_sqrt
  keeps the gradient finite there.
  """
  d = u - v
  return stats.safe_sqrt(jnp.sum(d * d, axis=-2))


def _broadcast(per_map: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  return jnp.broadcast_to(per_map, shape) if shape else per_map.reshape(())


class TDState(NamedTuple):
  orbit: jax.Array              # (B, T, *shape) orbits of the current batch
  samples: stats.RunningMean    # mean over samples of the orbit distance (C,)


class SDState(NamedTuple):
  ring: jax.Array               # (W, T, *shape): last W samples, per column
  ring_valid: jax.Array         # (W,) bool, valid entries right-aligned
  columns: stats.RunningMean    # per column: pair count (T, 1), mean (T, C)


def _orbit_sums(v: jax.Array) -> jax.Array:
  """Σ over the m(m − 1)/2 pairs j < k of d(v_j, v_k), per sample.

  Args:
    v: (B, m, S, C).

  Returns:
    (B, C).
  """
  m = v.shape[1]
  if m < 2:
    return jnp.zeros((v.shape[0], v.shape[-1]), v.dtype)

  # Cyclic offsets o = 1..⌊m/2⌋ visit every unordered pair {j, j+o mod m}
  # exactly once, except o = m/2 (m even), which visits each twice: m(m−1)/2
  # distances, with no pair computed twice and one orbit of memory per step.
  def body(o, acc):
    d = _distance(v, jnp.roll(v, -o, axis=1)).sum(axis=1)
    return acc + jnp.where(2 * o == m, 0.5, 1.0) * d

  init = jnp.zeros((v.shape[0], v.shape[-1]), v.dtype)
  return jax.lax.fori_loop(1, m // 2 + 1, body, init)


def _td(normalize: bool) -> combinators.Statistic:
  """The transformation distance, streamed; per feature map, broadcast."""

  def init(spec: base.LayerSpec) -> TDState:
    # Only the T real transformations get a row: writes from padding rows of
    # the last chunk fall outside and are dropped, so m below is static.
    orbit = jnp.zeros((spec.batch_size, spec.num_transformations) + spec.shape)
    return TDState(orbit, stats.zeros_mean(_layout(spec.shape)[1:]))

  def update(state: TDState, block: base.Block) -> TDState:
    x = _prepare(block.x, 2, normalize)
    orbit = state.orbit.at[:, block.t_index].set(x, mode="drop")
    m = orbit.shape[1]

    def fold(samples):
      per_sample = _orbit_sums(_vectors(orbit, 2)) / max(m * (m - 1) // 2, 1)
      return stats.merge_mean(samples,
                              stats.block_mean(per_sample, block.mask, 0))

    # Only the last chunk of a batch completes the orbit. `last` is shared by
    # all classes of a stratified run, so under vmap this stays a branch.
    samples = jax.lax.cond(block.last, fold, lambda s: s, state.samples)
    return TDState(orbit, samples)

  def merge(a: TDState, b: TDState) -> TDState:
    return TDState(b.orbit, stats.merge_mean(a.samples, b.samples))

  def finalize(state: TDState, spec: base.LayerSpec) -> jax.Array:
    return _broadcast(state.samples.mean, spec.shape)

  return combinators.Statistic(init, update, merge, finalize)


def _sd(normalize: bool, window: int) -> combinators.Statistic:
  """The sample distance (windowed pairs), streamed; broadcast likewise."""

  def init(spec: base.LayerSpec) -> SDState:
    c, t = _layout(spec.shape)[1], spec.num_transformations
    ring = jnp.zeros((window, t) + spec.shape)
    columns = stats.RunningMean(jnp.zeros((t, 1)), jnp.zeros((t, c)))
    return SDState(ring, jnp.zeros((window,), bool), columns)

  def update(state: SDState, block: base.Block) -> SDState:
    x = _prepare(block.x, 2, normalize)                      # (B, Tc, *shape)
    idx = block.t_index
    # Padding columns read a clipped (real) column and their writes are
    # dropped, so they never touch the statistics.
    ring = jnp.take(state.ring, idx, axis=1, mode="clip")    # (W, Tc, ...)
    seq = jnp.concatenate([ring, x], axis=0)                 # (W+B, Tc, ...)
    ok = jnp.concatenate([state.ring_valid, block.mask])
    # Valid entries first, in dataset order: compacted rank r pairs with
    # ranks r − 1 … r − W, whatever the batch boundaries and masks.
    order = jnp.argsort(~ok, stable=True)
    comp = seq[order]
    vec = _vectors(comp, 2)                                   # (W+B, Tc, S, C)
    total = jnp.sum(ok)
    old = jnp.sum(state.ring_valid)      # ring entries: already paired
    rank = jnp.arange(seq.shape[0])
    # Rank r is a new sample when old ≤ r < total; its partner r − o exists
    # when r ≥ o (it may be in the ring or earlier in this batch).
    new = (rank >= old) & (rank < total)

    def body(o, carry):
      sums, count = carry
      w = (new & (rank >= o)).astype(jnp.float32)
      d = _distance(vec, jnp.roll(vec, o, axis=0))            # (W+B, Tc, C)
      # Select, not multiply: masked samples may hold NaN.
      d = jnp.where(w[:, None, None] > 0, d, 0)
      sums = sums + jnp.einsum("r,rtc->tc", w, d,
                               precision=jax.lax.Precision.HIGHEST)
      return sums, count + jnp.sum(w)

    zeros = (jnp.zeros(vec.shape[1:2] + vec.shape[-1:]), jnp.zeros(()))
    sums, count = jax.lax.fori_loop(1, window + 1, body, zeros)
    batch = stats.RunningMean(
        jnp.broadcast_to(count, (idx.shape[0], 1)),
        sums / jnp.maximum(count, 1))
    cols = state.columns
    merged = stats.merge_mean(
        jax.tree.map(lambda a: jnp.take(a, idx, axis=0, mode="clip"), cols),
        batch)
    cols = jax.tree.map(lambda a, b: a.at[idx].set(b, mode="drop"), cols,
                        merged)
    # The ring keeps the last W valid samples (right-aligned).
    keep = total - window + jnp.arange(window)
    new_ring = jnp.take(comp, jnp.maximum(keep, 0), axis=0)
    ring = state.ring.at[:, idx].set(new_ring, mode="drop")
    # Validity is per sample, shared by all columns: it may only change once
    # the last chunk of the batch has read the old ring.
    ring_valid = jnp.where(block.last, keep >= 0, state.ring_valid)
    return SDState(ring, ring_valid, cols)

  def merge(a: SDState, b: SDState) -> SDState:
    # b holds the later samples; pairs across the a/b boundary are not formed
    # (the union of both pair sets is still a valid estimate).
    return SDState(b.ring, b.ring_valid,
                   stats.merge_mean(a.columns, b.columns))

  def finalize(state: SDState, spec: base.LayerSpec) -> jax.Array:
    return _broadcast(jnp.mean(state.columns.mean, axis=0), spec.shape)

  return combinators.Statistic(init, update, merge, finalize)


def _check(normalize: bool, window: int) -> None:
  if not isinstance(normalize, bool):
    raise ValueError(f"normalize must be a bool, got {normalize!r}")
  if not isinstance(window, int) or isinstance(window, bool) or window < 1:
    raise ValueError(f"window must be a positive int, got {window!r}")


def _measure(kind: str, normalize: bool, window: int,
             same_equivariance: bool) -> base.Measure:
  _check(normalize, window)
  name = {"td": "transformation_distance", "sd": "sample_distance",
          "nd": "normalized_distance"}[kind]
  if same_equivariance:
    name += "_same_equivariance"
  settings = {"normalize": normalize}
  if kind != "td":
    settings["window"] = window
  # One transformation has no pairs (TD = 0, "invariant"); one sample none
  # either (SD = 0).
  check = base.size_check(name, min_samples=1 if kind == "td" else 2,
                          min_transformations=1 if kind == "sd" else 2,
                          why="distances need pairs")
  common = dict(settings=base.settings_tuple(**settings),
                requires=base.Requirements(inverse=same_equivariance),
                check=check)
  td, sd = _td(normalize), _sd(normalize, window)
  if kind == "td":
    return combinators.single(name, td, **common)
  if kind == "sd":
    return combinators.single(name, sd, **common)
  return combinators.ratio(name, td, sd, divide=stats.safe_divide, **common)


def transformation_distance(*, normalize: bool = False,
                            same_equivariance: bool = False) -> base.Measure:
  """Transformation distance TD = (1/n) Σ_i mean_{j<k} d(v_ij, v_ik).

  The mean euclidean distance between the feature maps of all m(m − 1)/2
  pairs of transformations of one sample, averaged over samples (exact).

  Args:
    normalize: L2-normalize every feature-map vector first (for dense units,
      1-D vectors, this keeps only the sign).
    same_equivariance: measure B_ij = t_j⁻¹(f(t_j(x_i))) (spatial layers).

  Returns:
    A `Measure`; ``values`` per feature map, broadcast to the activation
    shape.
  """
  return _measure("td", normalize, 1, same_equivariance)


def sample_distance(*, normalize: bool = False, window: int = 8,
                    same_equivariance: bool = False) -> base.Measure:
  """Sample distance SD = (1/m) Σ_j mean over sample pairs d(v_ij, v_kj).

  Pairs are each sample with the ``window`` samples before it in dataset
  order: the same pairs for every batch size, all pairs when
  ``window ≥ n − 1`` (see the module docstring).

  Args:
    normalize: as `transformation_distance`.
    window: samples each sample is paired with (state: window orbits).
    same_equivariance: as `transformation_distance`.
  """
  return _measure("sd", normalize, window, same_equivariance)


def normalized_distance(*, normalize: bool = False, window: int = 8,
                        same_equivariance: bool = False) -> base.Measure:
  """Normalized distance ND = safe_divide(TD, SD) (Quiroga et al., 2021).

  0 when every orbit collapses to one point; ≈ 1 when transformations move a
  feature map as far as changing the sample does. ``finalize`` also returns
  TD (``numerator``) and SD (``denominator``). One pass.

  Args: as `sample_distance`.
  """
  return _measure("nd", normalize, window, same_equivariance)


def distance_invariance(*, normalize: bool = False,
                        window: int = 8) -> base.Measure:
  """NDI: `normalized_distance` of the activations f(t_j(x_i)).

  Args: as `sample_distance`.
  """
  return normalized_distance(normalize=normalize, window=window)


def distance_same_equivariance(*, normalize: bool = False,
                               window: int = 8) -> base.Measure:
  """NDSE: `normalized_distance` of t_j⁻¹(f(t_j(x_i))).

  0 when the layer commutes with the transformations. Spatial layers only.

  Args: as `sample_distance`.
  """
  return normalized_distance(normalize=normalize, window=window,
                             same_equivariance=True)
