"""Quiroga et al.'s variance measures, from one pass of mergeable moments.

For one activation a, write A_ij = a(t_j(x_i)) for samples i = 1..n and
transformations j = 1..m (the "ST matrix"), and s(·) for the row statistic
(`statistic="variance"`: the variance with `ddof`; `"std"`: its square root).

* Transformation variance  TV = (1/n) Σ_i s_j(A_ij)   (spread over each orbit)
* Sample variance          SV = (1/m) Σ_j s_i(A_ij)   (spread over the data)
* Normalized variance      NV = TV / SV               (0: invariant)

The same-equivariance forms use B_ij = t_j⁻¹(f(t_j(x_i))) in place of A_ij:
each feature map is mapped back by the inverse transformation first.

References:
  Quiroga, Torrents-Barrena, Lanzarini, Puig. "Measuring (in)variances in
  convolutional networks", CACIC 2019 / JCS&T 20(1) 2020; "Invariance and
  same-equivariance measures for convolutional neural networks", CLEI
  Electron. J. 24(1) 2021; "Transformational measures ..." arXiv 2310.17404.

tmeasures (PyPI) averages per-row *standard deviations* with ddof=1, so
``statistic="std", ddof=1`` reproduces its numbers; the default here is the
papers' variance with ddof=1. A row of one value (n = 1 or m = 1) has
statistic 0, as in tmeasures. NV divides with `safe_divide`: 0/0 → 1, x/0 → inf
(values up to ``zero_tolerance`` count as 0; default 0).

TV and SV come out of the same tile: TV from per-sample moments over the
transformation axis, SV from per-transformation moments over samples merged
across batches (Chan), so NV needs one pass where tmeasures makes two.
XLA still reads each tile twice for them (its reductions over samples and over
transformations are separate kernels); NV's ``implementation="pallas"`` reads
it once (`fused_sums`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from invjax._src import base
from invjax._src import fused_sums
from invjax._src import stats
from invjax._src.measures import combinators

_STATISTICS = ("variance", "std")
_IMPLEMENTATIONS = ("xla", "pallas")


def _check(statistic: str, ddof: int, zero_tolerance: float = 0.0,
           implementation: str = "xla") -> None:
  if implementation not in _IMPLEMENTATIONS:
    raise ValueError(f"implementation must be one of {_IMPLEMENTATIONS}, got "
                     f"{implementation!r}")
  if statistic not in _STATISTICS:
    raise ValueError(
        f"statistic must be one of {_STATISTICS}, got {statistic!r}")
  if not isinstance(ddof, int) or isinstance(ddof, bool) or ddof < 0:
    raise ValueError(f"ddof must be a non-negative int, got {ddof!r}")
  if (isinstance(zero_tolerance, bool) or
      not isinstance(zero_tolerance, (int, float)) or
      not 0 <= zero_tolerance < float("inf")):
    raise ValueError("zero_tolerance must be a finite number ≥ 0, got "
                     f"{zero_tolerance!r}")


def _row_statistic(m: stats.Moments, statistic: str, ddof: int) -> jax.Array:
  var = stats.variance(m, ddof)
  return stats.safe_sqrt(var) if statistic == "std" else var


class TVState(NamedTuple):
  orbit: stats.Moments          # per sample of the current batch: (B, *shape)
  samples: stats.RunningMean    # mean over samples of the orbit statistic


class TVPartial(NamedTuple):
  orbit: stats.Moments | None   # the orbit moments so far; None: whole orbit
  samples: stats.RunningMean    # the batch's mean orbit statistic


class ColumnMoments(NamedTuple):
  columns: stats.Moments        # per transformation: (Tp, *shape)


def _ones(ndim: int) -> tuple[int, ...]:
  return (1,) * ndim


def _per_unit(count: jax.Array, like: jax.Array) -> jax.Array:
  """A count shared by all units, with the units' (singleton) axes."""
  return jnp.reshape(count, count.shape + _ones(like.ndim - count.ndim))


def _tv(statistic: str, ddof: int) -> combinators.Statistic:
  """The transformation variance, streamed."""

  def init(spec: base.LayerSpec) -> TVState:
    shape = (spec.batch_size,) + spec.shape
    orbit = stats.zeros_moments(shape, count_shape=_ones(len(shape)))
    mean = stats.zeros_mean(spec.shape)
    return TVState(orbit, mean._replace(count=_per_unit(mean.count,
                                                        mean.mean)))

  def reduce(state: TVState, block: base.Block) -> TVPartial:
    x = block.x.astype(jnp.float32)
    chunk = stats.block_moments(x, block.t_mask, axis=1)
    chunk = chunk._replace(count=_per_unit(chunk.count, chunk.offset))
    if block.whole_orbit:
      orbit, kept = chunk, None
    else:
      # Transformation chunks of one batch are merged into the orbit
      # moments; the first chunk starts afresh.
      orbit = kept = jax.tree.map(lambda c, m: jnp.where(block.first, c, m),
                                  chunk, stats.merge_moments(state.orbit,
                                                             chunk))
    per_sample = _row_statistic(orbit, statistic, ddof)      # (B, *shape)
    mean = stats.block_mean(per_sample, block.mask, axis=0)
    return TVPartial(kept, mean._replace(count=_per_unit(mean.count,
                                                         mean.mean)))

  def fold(state: TVState, partial: TVPartial,
           block: base.Block) -> TVState:
    orbit = state.orbit if partial.orbit is None else partial.orbit
    folded = stats.merge_mean(state.samples, partial.samples)
    samples = jax.tree.map(lambda f, s: jnp.where(block.last, f, s), folded,
                           state.samples)
    return TVState(orbit, samples)

  def merge(a: TVState, b: TVState) -> TVState:
    return TVState(b.orbit, stats.merge_mean(a.samples, b.samples))

  def finalize(state: TVState, spec: base.LayerSpec) -> jax.Array:
    del spec
    return state.samples.mean

  return combinators.unitwise_statistic(init, reduce, fold, merge, finalize)


def _fold_columns(state: ColumnMoments, chunk: stats.Moments,
                  start) -> ColumnMoments:
  """Merges a chunk's (Tc, *shape) column moments into the columns from start.

  The chunk's columns are consecutive and inside the padded state: a slice
  and an in-place update, not a gather and a scatter (slow on TPU).
  """
  tc = chunk.offset.shape[0]
  old = jax.tree.map(
      lambda v: jax.lax.dynamic_slice_in_dim(v, start, tc), state.columns)
  chunk = chunk._replace(count=jnp.broadcast_to(chunk.count, old.count.shape))
  new = stats.merge_moments(old, chunk)
  cols = jax.tree.map(
      lambda v, n: jax.lax.dynamic_update_slice_in_dim(v, n, start, 0),
      state.columns, new)
  return ColumnMoments(cols)


def valid_columns(spec: base.LayerSpec) -> jax.Array:
  """(Tp,) bool: False for the padding transformations of a layer's state."""
  return jnp.arange(spec.num_padded_transformations) < spec.num_transformations


def column_moments() -> combinators.Statistic:
  """Chan moments of each transformation's column A_·j over the samples.

  The block shared by the sample variance (one row statistic per column)
  and ANOVA (the columns are its groups). Merged across batches; the
  padding transformations' columns are `valid_columns`' False rows.

  Returns:
    A `combinators.Statistic` over `ColumnMoments`: count (Tp, 1, ...),
    mean and M2 (Tp, *shape) per column. Its ``finalize`` returns the state
    itself: each user reads what it needs.
  """

  def init(spec: base.LayerSpec) -> ColumnMoments:
    tp, ones = spec.num_padded_transformations, _ones(len(spec.shape))
    # The count keeps singleton unit axes so it broadcasts against the means.
    return ColumnMoments(stats.zeros_moments((tp,) + spec.shape,
                                             count_shape=(tp,) + ones))

  def reduce(state: ColumnMoments, block: base.Block) -> stats.Moments:
    del state
    x = block.x.astype(jnp.float32)
    chunk = stats.block_moments(x, block.mask, axis=0)        # (Tc, *shape)
    count = jnp.broadcast_to(chunk.count, chunk.offset.shape[:1])
    return chunk._replace(count=_per_unit(count, chunk.offset))

  def fold(state: ColumnMoments, chunk: stats.Moments,
           block: base.Block) -> ColumnMoments:
    return _fold_columns(state, chunk, block.t_index[0])

  def merge(a: ColumnMoments, b: ColumnMoments) -> ColumnMoments:
    return ColumnMoments(stats.merge_moments(a.columns, b.columns))

  return combinators.unitwise_statistic(init, reduce, fold, merge,
                                        lambda state, spec: state)


def _sv(statistic: str, ddof: int) -> combinators.Statistic:
  """The sample variance: the mean row statistic of the column moments."""

  def finalize(state: ColumnMoments, spec: base.LayerSpec) -> jax.Array:
    per_column = _row_statistic(state.columns, statistic, ddof)  # (Tp, *shape)
    valid = valid_columns(spec)
    w = valid.astype(per_column.dtype)
    w = w.reshape(w.shape + (1,) * (per_column.ndim - 1))
    return jnp.sum(per_column * w, axis=0) / jnp.sum(valid)

  return column_moments()._replace(finalize=finalize)


def _fused_nv_update(statistic: str, ddof: int, xla_update):
  """NV's update from one read of the tile (`fused_sums`), when it can.

  The kernel gives TV's per-sample statistics summed over samples, so it
  needs the whole orbit in one tile (one transformation chunk), and it
  indexes with int32 (tiles under 2³¹ entries); otherwise ``xla_update``
  runs. Merging into the state is the XLA update's maths.
  """

  def sums(x, w_b, w_t, shift, interpret):
    return fused_sums.tile_sums(x, w_b, w_t, shift, statistic=statistic,
                                ddof=ddof, head=stats.head_size(x.shape[1]),
                                interpret=interpret)

  def update(state: combinators.RatioState,
             block: base.Block) -> combinators.RatioState:
    tv, sv = state
    x = block.x.astype(jnp.float32)
    b, tc = x.shape[:2]
    if tc != sv.columns.offset.shape[0] or x.size >= 2**31:
      return xla_update(state, block)
    flat = x.reshape((b, tc, -1))
    w_b = block.mask.astype(jnp.float32)
    w_t = block.t_mask.astype(jnp.float32)
    shift = stats.block_shift(flat, w_b, axis=0)                 # (Tc, F)
    tv_sum, s1, s2 = jax.lax.platform_dependent(
        flat, w_b, w_t, shift, cuda=lambda *a: sums(*a, False),
        default=lambda *a: sums(*a, True))
    n = jnp.sum(w_b)
    unit = lambda v: v.reshape((tc,) + x.shape[2:])
    chunk = stats.moments_from_sums(n, unit(shift), unit(s1), unit(s2))
    sv = _fold_columns(sv, chunk, block.t_index[0])
    mean = (tv_sum / jnp.maximum(n, 1)).reshape(x.shape[2:])
    samples = stats.merge_mean(tv.samples,
                               stats.RunningMean(_per_unit(n, mean), mean))
    return combinators.RatioState(TVState(tv.orbit, samples), sv)

  return update


def _measure(name, kind, statistic, ddof, needs_inverse, zero_tolerance=0.0,
             implementation="xla") -> base.Measure:
  _check(statistic, ddof, zero_tolerance, implementation)
  ratio = ({"zero_tolerance": float(zero_tolerance),
            "implementation": implementation} if kind == "nv" else {})
  settings = base.settings_tuple(statistic=statistic, ddof=ddof, **ratio)
  # A row statistic over ≤ ddof values has no degrees of freedom: TV would
  # be 0 ("invariant") and SV 0 (NV inf) whatever the network does.
  need = ddof + 1
  check = base.size_check(
      name, min_samples=need if kind != "tv" else 1,
      min_transformations=need if kind != "sv" else 1, why=f"ddof={ddof}")
  # XLA's partitioner cannot split the Pallas kernel: it would gather every
  # tile onto each device.
  requires = base.Requirements(inverse=needs_inverse,
                               shardable=implementation != "pallas")
  common = dict(settings=settings, requires=requires, check=check)
  tv, sv = _tv(statistic, ddof), _sv(statistic, ddof)
  if kind == "tv":
    return combinators.single(name, tv, **common)
  if kind == "sv":
    return combinators.single(name, sv, **common)
  measure = combinators.ratio(
      name, tv, sv,
      divide=lambda num, den: stats.safe_divide(num, den, zero_tolerance),
      **common)
  if implementation == "pallas":
    measure = measure._replace(
        update=_fused_nv_update(statistic, ddof, measure.update),
        unitwise=None)
  return measure


def transformation_variance(*, statistic: str = "variance",
                            ddof: int = 1) -> base.Measure:
  """Transformation variance TV = (1/n) Σ_i s_j(A_ij) (Quiroga et al.).

  Args:
    statistic: ``"variance"`` or ``"std"`` (tmeasures: ``"std"``).
    ddof: delta degrees of freedom of the row statistic (tmeasures: 1).

  Returns:
    A `Measure` whose ``values`` have the activation's shape.
  """
  return _measure("transformation_variance", "tv", statistic, ddof, False)


def sample_variance(*, statistic: str = "variance",
                    ddof: int = 1) -> base.Measure:
  """Sample variance SV = (1/m) Σ_j s_i(A_ij) (Quiroga et al.).

  Args: as `transformation_variance`.
  """
  return _measure("sample_variance", "sv", statistic, ddof, False)


def normalized_variance(*, statistic: str = "variance", ddof: int = 1,
                        zero_tolerance: float = 0.0,
                        implementation: str = "xla") -> base.Measure:
  """Normalized variance NV = safe_divide(TV, SV) (Quiroga et al.).

  0 means invariant, ≈1 means transformations move the unit as much as the
  data does. ``finalize`` also returns TV (``numerator``) and SV
  (``denominator``), so per-feature-map values are the ratio of spatial means
  (tmeasures' ``AverageFeatureMaps``). One pass over the data.

  Args:
    statistic: as `transformation_variance`.
    ddof: as `transformation_variance`.
    zero_tolerance: TV and SV at or below it count as 0 in the division
      (0/0 → 1, x/0 → inf), in the units of the statistic. 0 (the default)
      is tmeasures' rule; on GPUs a small value (e.g. 1e-12 for variances
      of O(1) activations) keeps units that are constant up to round-off at
      NV = 1, as on CPU.
    implementation: ``"xla"`` (default) or ``"pallas"``: TV's and SV's sums
      from one read of each tile by a Pallas (Triton) kernel on CUDA GPUs
      (`fused_sums`), where XLA reads it twice; the same values to float32
      round-off. Experimental: one device (no ``mesh``), no gradients, one
      transformation chunk per orbit (else the XLA update runs); on other
      backends the kernel runs in Pallas' slow interpret mode (for tests).
  """
  return _measure("normalized_variance", "nv", statistic, ddof, False,
                  zero_tolerance, implementation)


def transformation_variance_same_equivariance(
    *, statistic: str = "variance", ddof: int = 1) -> base.Measure:
  """TV of B_ij = t_j⁻¹(f(t_j(x_i))): 0 when the layer is same-equivariant."""
  return _measure("transformation_variance_same_equivariance", "tv",
                  statistic, ddof, True)


def sample_variance_same_equivariance(
    *, statistic: str = "variance", ddof: int = 1) -> base.Measure:
  """SV of B_ij = t_j⁻¹(f(t_j(x_i)))."""
  return _measure("sample_variance_same_equivariance", "sv", statistic, ddof,
                  True)


def normalized_variance_same_equivariance(
    *, statistic: str = "variance", ddof: int = 1, zero_tolerance: float = 0.0,
    implementation: str = "xla") -> base.Measure:
  """NV of B_ij = t_j⁻¹(f(t_j(x_i))) (Quiroga et al., CLEI 2021).

  Args: as `normalized_variance`.
  """
  return _measure("normalized_variance_same_equivariance", "nv", statistic,
                  ddof, True, zero_tolerance, implementation)
