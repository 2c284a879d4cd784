"""Mergeable statistics: masked moments with Chan et al.'s parallel merge.

All measures keep O(activation size) state per layer and combine partial
statistics with the pairwise update of Chan, Golub & LeVeque (1979):

    n = n_a + n_b,  δ = μ_b − μ_a,
    μ = μ_a + δ·n_b/n,   M2 = M2_a + M2_b + δ²·n_a·n_b/n.

Each block's own mean and M2 come from one read of the block as sums of
data shifted close to their mean (Chan et al.'s "shifted data" form; see
`block_moments`). A `Moments` keeps that shift and the mean's small offset
from it apart, so merges subtract nearby shifts exactly (Sterbenz) instead
of rounding means of large magnitude: accumulating in float32 stays
accurate to ~1e-6 relative without float64, also for activations far from
zero (`tests/test_engine.py` checks offset/σ up to 1e6).

Masks select, never multiply: a masked-out row (padding, another class, a
sample with non-finite activations) never reaches a sum, so a NaN there
cannot leak into the statistics (NaN · 0 is NaN).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from invjax._src import numerics

Array = jax.Array

# Longest axis that `weighted_sum` unrolls on accelerators: compile time
# grows with it, and past it XLA's own reduction moves as few bytes
# (benchmarks/results/reductions.md).
_UNROLL = 16
# Slices added per iteration of `weighted_sum`'s loop on CPU: fewer kernel
# runs than one each, and the slices stay in cache between its sums.
_CPU_UNROLL = 8


class Moments(NamedTuple):
  """Count, mean and sum of squared deviations (M2), broadcast over units.

  The mean is kept as ``shift + offset``: ``shift`` lies among the data
  (`block_shift`) and ``offset`` is the small distance of the mean from it,
  so that the mean of data far from zero loses nothing to rounding before
  the final sum (`mean`).

  ``count`` has the shape of ``offset`` with the reduced axis removed, or is
  a scalar when all units share one count.
  """
  count: Array
  offset: Array
  m2: Array
  shift: Array

  @property
  def mean(self) -> Array:
    return self.shift + self.offset


def zeros_moments(shape, dtype=jnp.float32, count_shape=()) -> Moments:
  return Moments(jnp.zeros(count_shape, dtype), jnp.zeros(shape, dtype),
                 jnp.zeros(shape, dtype), jnp.zeros(shape, dtype))


def weighted_sum(x: Array, weights: Array, axis: int,
                 fn: Callable[[Array], Any] = lambda s: s) -> Any:
  """Σ_k w_k · fn(x[..., k, ...]) along `axis`, for an elementwise `fn`.

  Entries with w_k = 0 are left out (selected away, so a NaN there does not
  reach the sum).

  ``fn`` may return a tuple of arrays (several sums from one read of ``x``)
  and may close over arrays shaped like one slice.

  How the sum is written depends on the backend, so that each reads ``x``
  once (the measurements: benchmarks/results/reductions.md):
  on accelerators an axis of at most `_UNROLL` entries is summed slice by
  slice (an elementwise expression XLA fuses into the consumer) and a
  longer one is a plain reduction of ``fn(x) * w``; on CPU a loop over the
  axis that adds `_CPU_UNROLL` slices per iteration into sums of one
  slice's shape, where XLA:CPU's own reductions over the axis, and products
  with the weight vector (``fn(x)`` masked and written out first), are
  several times slower.
  `lax.platform_dependent` picks the branch when the program is lowered, so
  one traced function serves every backend.
  """
  w = weights.astype(x.dtype)

  def reduce(x, w):
    if x.shape[axis] <= _UNROLL:
      return accumulate(x, w, True)
    # The weights broadcast along x's axis.
    w = w.reshape(tuple(w.shape[0] if i == axis else 1
                        for i in range(x.ndim)))
    return jax.tree.map(
        lambda v: jnp.sum(jnp.where(w > 0, v * w, 0), axis=axis), fn(x))

  def accumulate(x, w, unroll):
    def body(k, acc):
      terms = fn(jax.lax.dynamic_index_in_dim(x, k, axis, keepdims=False))
      return jax.tree.map(lambda a, v: jnp.where(w[k] > 0, a + w[k] * v, a),
                          acc, terms)
    slice_shape = jax.ShapeDtypeStruct(x.shape[:axis] + x.shape[axis + 1:],
                                       x.dtype)
    zeros = jax.tree.map(lambda v: jnp.zeros(v.shape, v.dtype),
                         jax.eval_shape(fn, slice_shape))
    return jax.lax.fori_loop(0, x.shape[axis], body, zeros, unroll=unroll)

  def loop(x, w):
    return accumulate(x, w, max(1, min(x.shape[axis], _CPU_UNROLL)))

  return jax.lax.platform_dependent(x, w, cpu=loop, default=reduce)


def head_size(length: int) -> int:
  """k: how many leading entries of an axis of `length` set a shift."""
  return int(min(8, max(1, length // 8)))


def block_shift(x: Array, weights: Array, axis: int) -> Array:
  """The shift c of `block_moments`: the first valid entry x_f moved by the
  mean offset of the valid entries among the first k from it.

  So sparse units (x_f a lone outlier) do not cancel, yet a row that is
  constant over its valid entries has d = 0 exactly, whichever entries are
  masked (in a stratified run each class shifts by its own samples). Reading
  k ≤ L/8 entries costs ≤ 1/8 read. 0 when no entry is valid.
  """
  w = weights.astype(x.dtype)
  k = head_size(x.shape[axis])
  valid = w > 0
  first = jnp.argmax(valid)       # 0 when none is valid
  x0 = jax.lax.dynamic_index_in_dim(x, first, axis, keepdims=True)
  head_w = jax.lax.slice_in_dim(w, 0, k)
  head = jax.lax.slice_in_dim(x, 0, k, axis=axis) - x0
  offset = weighted_sum(head, head_w, axis) / jnp.maximum(jnp.sum(head_w), 1)
  shift = jnp.where(jnp.any(valid), jnp.squeeze(x0, axis) + offset, 0)
  return jax.lax.stop_gradient(shift)


def moments_from_sums(n: Array, shift: Array, s1: Array, s2: Array) -> Moments:
  """Moments from n and the sums s1 = Σd, s2 = Σd² of d = x − shift."""
  md = s1 / jnp.maximum(n, 1)
  return Moments(n, md, jnp.maximum(s2 - s1 * md, 0), shift)


# Each thread's open `shared_moments` scopes (``.open``), innermost last:
# each maps (id(x), id(weights), axis) to (x, weights, moments); holding x
# and weights keeps their ids from being reused while the scope is open.
# Per thread, so that a trace in one thread never sees another's arrays.
_SHARED = threading.local()


def _open_scopes() -> list[dict]:
  if not hasattr(_SHARED, "open"):
    _SHARED.open = []
  return _SHARED.open


@contextlib.contextmanager
def shared_moments():
  """A scope in which `block_moments` of the same arrays is computed once.

  Measures reading the same block trace the same statistics: NV's sample
  variance and ANOVA both take the column moments of the tile. XLA merges
  identical expressions but not identical loops (`weighted_sum` on CPU), so
  each copy would be compiled and run. The engine opens this scope around
  the measures' reduces of one block (`units.update`); inside it a call
  with the same ``x`` and ``weights`` objects and axis returns the first
  call's moments. Arrays are matched by identity, so a scope must not
  outlive the trace that opened it.
  """
  scopes = _open_scopes()
  scopes.append({})
  try:
    yield
  finally:
    scopes.pop()


def block_moments(x: Array, weights: Array, axis: int) -> Moments:
  """Masked moments of `x` along `axis` from one read of shifted data.

  From the sums of d = x − c for a shift c near the mean (`block_shift`):
  M2 = Σd² − (Σd)²/n loses only ~eps·(1 + (μ − c)²/σ²) relative in
  float32.

  Args:
    x: array of any shape.
    weights: (x.shape[axis],) 0/1 weights (the validity mask).
    axis: the axis reduced.

  Returns:
    Moments with that axis removed; count is a scalar.
  """
  scopes = _open_scopes()
  shared = scopes[-1] if scopes else {}
  key = (id(x), id(weights), axis)
  if key in shared:
    return shared[key][2]
  w = weights.astype(x.dtype)
  shift = block_shift(x, w, axis)
  # In the reduction branch the closure sees x's full shape: put the reduced
  # axis back into the slice-shaped shift.
  at = lambda v, s: v if s.ndim == v.ndim else jnp.expand_dims(v, axis)

  def shifted_powers(s):
    d = s - at(shift, s)
    return d, d * d

  # One read of x for both sums (one fused reduction on accelerators).
  s1, s2 = weighted_sum(x, w, axis, shifted_powers)
  moments = moments_from_sums(jnp.sum(w), shift, s1, s2)
  if scopes:
    shared[key] = (x, weights, moments)
  return moments


def merge_moments(a: Moments, b: Moments) -> Moments:
  """Chan's parallel merge, in a's shifted coordinates.

  b's mean offset is moved to a's shift as (c_b − c_a) + o_b: both shifts
  lie among the same data, so their difference is exact when they are
  within a factor of two of each other (Sterbenz), and the offsets stay
  small. An empty side leaves the other unchanged, exactly (also when its
  fields hold garbage).
  """
  n = a.count + b.count
  a_empty, b_empty = a.count <= 0, b.count <= 0
  frac_b = b.count / jnp.where(n > 0, n, 1)
  delta = (b.shift - a.shift) + b.offset - a.offset
  offset = a.offset + delta * frac_b
  m2 = a.m2 + b.m2 + delta * delta * a.count * frac_b
  pick = lambda x_a, x_b, merged: jnp.where(
      a_empty, x_b, jnp.where(b_empty, x_a, merged))
  return Moments(n, pick(a.offset, b.offset, offset),
                 pick(a.m2, b.m2, m2), pick(a.shift, b.shift, a.shift))


def variance(m: Moments, ddof: int) -> Array:
  """M2 / (n − ddof); 0 where n − ddof ≤ 0 (a single observation varies by 0).

  This matches tmeasures' Welford, which returns zeros for n ≤ 1.
  """
  dof = m.count - ddof
  return jnp.where(dof > 0, m.m2 / jnp.where(dof > 0, dof, 1), 0)


# Kept here for the measures that call `stats.safe_sqrt`; it lives in numerics.
safe_sqrt = numerics.safe_sqrt


class RunningMean(NamedTuple):
  """A count and a mean, merged as n-weighted averages (no large sums)."""
  count: Array
  mean: Array


def zeros_mean(shape, dtype=jnp.float32) -> RunningMean:
  return RunningMean(jnp.zeros((), dtype), jnp.zeros(shape, dtype))


def merge_mean(a: RunningMean, b: RunningMean) -> RunningMean:
  """n-weighted average; an empty side leaves the other unchanged, exactly."""
  n = a.count + b.count
  frac_b = b.count / jnp.where(n > 0, n, 1)
  merged = a.mean + (b.mean - a.mean) * frac_b
  return RunningMean(n, jnp.where(a.count <= 0, b.mean,
                                  jnp.where(b.count <= 0, a.mean, merged)))


def block_mean(x: Array, weights: Array, axis: int = 0) -> RunningMean:
  w = weights.astype(x.dtype)
  n = jnp.sum(w)
  mean = weighted_sum(x, w, axis) / jnp.maximum(n, 1)
  return RunningMean(n, mean)


# tmeasures' rule, for the measures that call `stats.safe_divide`; it lives in
# numerics.
safe_divide = numerics.tmeasures_divide
