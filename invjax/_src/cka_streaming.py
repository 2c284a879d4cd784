"""Streaming CKA: mergeable accumulators and a dataset-scale `dataset_cka`.

Two `CKAAccumulator`s (init / update / merge / finalize, in the style of
optax transforms) stream CKA over batches:

* `linear_cka_accumulator`: exact linear CKA. It keeps the (co)variances
  C_xx, C_yy, C_yx, merged with Chan, Golub & LeVeque's (1979) pairwise
  update, so the value equals `linear_cka` on all rows for any batch size.
* `minibatch_cka_accumulator`: Nguyen et al.'s (2021) minibatch CKA, the
  size-weighted mean of per-batch unbiased HSICs; it depends on the batch
  size.

`dataset_cka` runs a dataset through two feature functions and one of these
accumulators inside one compiled program (`lax.scan` over batches). The
per-batch maths and the degenerate-input rule (a constant representation
gives 0) are those of `cka`.

Why CKA is not a `Measure`: a `Measure` streams a statistic of one layer's
(B, T, ...) tile of one network, per unit or per layer, through
`invjax.measure`. CKA compares two representations of the same samples (two
networks, two layers, or a layer before and after a transformation), and its
exact streamed state is the d_x × d_y cross-covariance, which for conv
layers does not fit beside the engine's per-layer states (25,088² floats for
one 28×28×32 map). So it has its own accumulator, with the same
init/update/merge/finalize shape, and its values become a `MeasureResult`
through `similarity.as_result` for saving, plots and sweep tables.

References:
  Kornblith, Norouzi, Lee, Hinton. "Similarity of Neural Network
  Representations Revisited", ICML 2019.
  Nguyen, Raghu, Kornblith. "Do Wide and Deep Networks Learn the Same
  Things?", ICLR 2021.
  Chan, Golub, LeVeque. "Updating Formulae and a Pairwise Algorithm for
  Computing Sample Variances", 1979.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from invjax._src import cka
from invjax._src import numerics

Array = jax.Array
Model = Callable[[Array], Array]


# ---------------------------------------------------------------------------
# Streaming accumulators.
# ---------------------------------------------------------------------------


class LinearCKAState(NamedTuple):
  """Mergeable sufficient statistics of exact linear CKA.

  Attributes:
    count: () number of samples seen.
    mean_x: (d_x,) running mean of x.
    mean_y: (d_y,) running mean of y.
    cxx: (d_x, d_x) Σᵢ (xᵢ − x̄)(xᵢ − x̄)ᵀ.
    cyy: (d_y, d_y) Σᵢ (yᵢ − ȳ)(yᵢ − ȳ)ᵀ.
    cyx: (d_y, d_x) Σᵢ (yᵢ − ȳ)(xᵢ − x̄)ᵀ.
  """
  count: Array
  mean_x: Array
  mean_y: Array
  cxx: Array
  cyy: Array
  cyx: Array


class MinibatchCKAState(NamedTuple):
  """Size-weighted sums of per-batch unbiased HSICs.

  Attributes:
    weight: () Σ_b n_b over batches with n_b ≥ 4.
    hsic_xy: () Σ_b n_b · HSIC_u(K_b, L_b).
    hsic_xx: () Σ_b n_b · HSIC_u(K_b, K_b).
    hsic_yy: () Σ_b n_b · HSIC_u(L_b, L_b).
    num_batches: () number of batches that contributed.
  """
  weight: Array
  hsic_xy: Array
  hsic_xx: Array
  hsic_yy: Array
  num_batches: Array


class CKAAccumulator(NamedTuple):
  """Pure functions of a streaming CKA, in the style of optax transforms.

      state = acc.init(d_x, d_y)
      state = acc.update(state, x_batch, y_batch)   # (b, ...) arrays
      state = acc.merge(state_a, state_b)           # e.g. across devices
      value = acc.finalize(state)                   # scalar CKA

  `update` takes an optional (b,) 0/1 `mask` for padded batches.
  """
  init: Callable[..., Any]
  update: Callable[..., Any]
  merge: Callable[[Any, Any], Any]
  finalize: Callable[[Any], Array]


def _batch_pair(x, y, mask, name) -> None:
  """Validates one batch: (b, ...) arrays x, y and an optional (b,) mask."""
  x = jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))
  y = jax.ShapeDtypeStruct(jnp.shape(y), jnp.result_type(y))
  if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
    raise ValueError(
        f"{name}: x and y batches must share a leading sample axis; got "
        f"shapes {x.shape} and {y.shape}.")
  if mask is not None and jnp.shape(mask) != (x.shape[0],):
    raise ValueError(f"{name}: mask must have shape ({x.shape[0]},); got "
                     f"{jnp.shape(mask)}.")


# Module-level jits: compiled programs are shared by all accumulator objects.
@jax.jit
def _linear_update(state, x, y, mask):
  """Folds one (optionally masked) batch into a `LinearCKAState`."""
  dtype = state.cxx.dtype
  x = cka.rows(x, dtype)
  y = cka.rows(y, dtype)
  if mask is None:
    count = jnp.asarray(x.shape[0], dtype)
  else:
    count = jnp.sum(jnp.asarray(mask).astype(dtype))
  xc = cka.center(x, mask)
  yc = cka.center(y, mask)
  # Batch mean = shift row + mean of the shifted rows; recovered as x − xc
  # on any kept row, so a constant column keeps an exactly constant mean.
  row = 0 if mask is None else jnp.argmax(mask)
  batch = LinearCKAState(count, x[row] - xc[row], y[row] - yc[row],
                         cka.dot(xc.T, xc), cka.dot(yc.T, yc),
                         cka.dot(yc.T, xc))
  return _linear_merge(state, batch)


@jax.jit
def _linear_merge(a: LinearCKAState, b: LinearCKAState) -> LinearCKAState:
  n = a.count + b.count
  # Counts: 0/0 only when both sides are empty, and then nothing moves (0);
  # otherwise an exact no-op when either side is empty.
  frac_b = numerics.safe_divide(b.count, n, zero_over_zero=0.0,
                                nonzero_over_zero=0.0, propagate_nan=False)
  dx = b.mean_x - a.mean_x
  dy = b.mean_y - a.mean_y
  scale = a.count * frac_b  # n_a n_b / n
  return LinearCKAState(
      count=n,
      mean_x=a.mean_x + dx * frac_b,
      mean_y=a.mean_y + dy * frac_b,
      cxx=a.cxx + b.cxx + scale * jnp.outer(dx, dx),
      cyy=a.cyy + b.cyy + scale * jnp.outer(dy, dy),
      cyx=a.cyx + b.cyx + scale * jnp.outer(dy, dx))


@jax.jit
def _linear_finalize(state: LinearCKAState) -> Array:
  return cka.cka_from_covariances(state.cxx, state.cyy, state.cyx)


@jax.jit
def _minibatch_update(state, x, y, mask):
  """Adds one batch's size-weighted unbiased HSICs to the state."""
  dtype = state.weight.dtype
  x = cka.rows(x, dtype)
  y = cka.rows(y, dtype)
  # No unit rescaling here: batches must share one scale to be averaged.
  h = cka.unbiased_linear_hsics(x, y, mask, rescale=False)
  if mask is None:
    n = jnp.asarray(x.shape[0], dtype)
  else:
    n = jnp.sum(jnp.asarray(mask).astype(dtype))
  w = jnp.where(n >= cka.MIN_UNBIASED_N, n, 0)
  return MinibatchCKAState(
      weight=state.weight + w,
      hsic_xy=state.hsic_xy + w * h.xy,
      hsic_xx=state.hsic_xx + w * h.xx,
      hsic_yy=state.hsic_yy + w * h.yy,
      num_batches=state.num_batches + (w > 0).astype(dtype))


@jax.jit
def _minibatch_merge(a: MinibatchCKAState,
                     b: MinibatchCKAState) -> MinibatchCKAState:
  return jax.tree.map(jnp.add, a, b)


@jax.jit
def _minibatch_finalize(state: MinibatchCKAState) -> Array:
  # The common 1/Σn_b cancels in the ratio.
  return cka.cka_from_hsics(state.hsic_xy, state.hsic_xx, state.hsic_yy)


def linear_cka_accumulator() -> CKAAccumulator:
  r"""Exact streaming linear CKA: the same value as `linear_cka` on all rows.

  Linear CKA only needs the (co)variances C_xx, C_yy, C_yx of the whole
  dataset. Each batch contributes its own mean and centred co-moments, and
  batches are combined with the pairwise update of Chan, Golub & LeVeque
  (1979):

      n = n_a + n_b,  δ = μ_b − μ_a,
      C = C_a + C_b + (n_a n_b / n) · δ_y δ_xᵀ.

  This holds the same information as accumulating XᵀX, YᵀY, YᵀX and the
  column sums, but avoids the float32 cancellation of XᵀX − n·μμᵀ when
  features have a large mean (ReLU features do). The result does not depend
  on the batch size or order up to rounding. State is O((d_x + d_y)²).

  Returns:
    A `CKAAccumulator`; `init(d_x, d_y, dtype=jnp.float32)` takes the
    flattened feature sizes.
  """

  def init(dim_x: int, dim_y: int, dtype=jnp.float32) -> LinearCKAState:
    z = lambda *s: jnp.zeros(s, dtype)  # noqa: E731
    return LinearCKAState(z(), z(dim_x), z(dim_y), z(dim_x, dim_x),
                          z(dim_y, dim_y), z(dim_y, dim_x))

  def update(state: LinearCKAState, x: Array, y: Array,
             mask: Array | None = None) -> LinearCKAState:
    _batch_pair(x, y, mask, "linear_cka_accumulator.update")
    return _linear_update(state, x, y, mask)

  return CKAAccumulator(init, update, _linear_merge, _linear_finalize)


def minibatch_cka_accumulator() -> CKAAccumulator:
  r"""Minibatch CKA of Nguyen et al. (2021, Eq. 2–3) with unbiased HSIC.

  For batches b = 1..B with linear Grams K_b = X_b X_bᵀ, L_b = Y_b Y_bᵀ:

      CKA_mb = H̄(K, L) / sqrt(H̄(K, K) · H̄(L, L)),
      H̄(K, L) = Σ_b n_b HSIC_u(K_b, L_b) / Σ_b n_b.

  Each HSIC_u is unbiased for the population HSIC whatever n_b, so every
  weighting keeps the average unbiased; weighting by batch size gives each
  sample the same say and approximates inverse-variance weighting
  (Var HSIC_u ∝ 1/n_b), so a short last batch counts for less instead of
  as much as a full one. With equal batches this is Nguyen et al.'s plain
  mean. Unlike `linear_cka_accumulator` the value depends on the batch
  size (the estimator only sees within-batch pairs). A batch needs n_b ≥ 4;
  a masked batch with fewer than 4 kept rows is skipped (weight 0).

  Returns:
    A `CKAAccumulator`; `init(d_x, d_y, dtype=jnp.float32)` ignores the
    feature sizes (kept for a uniform signature).
  """

  def init(dim_x: int = 0, dim_y: int = 0,
           dtype=jnp.float32) -> MinibatchCKAState:
    del dim_x, dim_y  # the state is five scalars whatever the widths
    z = jnp.zeros((), dtype)
    return MinibatchCKAState(z, z, z, z, z)

  def update(state: MinibatchCKAState, x: Array, y: Array,
             mask: Array | None = None) -> MinibatchCKAState:
    _batch_pair(x, y, mask, "minibatch_cka_accumulator.update")
    if mask is None and x.shape[0] < cka.MIN_UNBIASED_N:
      raise ValueError(
          "minibatch_cka_accumulator.update: the unbiased HSIC needs at least "
          f"{cka.MIN_UNBIASED_N} samples per batch; got a batch of "
          f"{x.shape[0]}.")
    return _minibatch_update(state, x, y, mask)

  return CKAAccumulator(init, update, _minibatch_merge, _minibatch_finalize)


_ACCUMULATORS = {
    "linear": linear_cka_accumulator,
    "minibatch_unbiased": minibatch_cka_accumulator,
}


def cka_accumulator(kind: str = "linear") -> CKAAccumulator:
  """Returns `linear_cka_accumulator()` or `minibatch_cka_accumulator()`.

  Args:
    kind: ``"linear"`` (exact, batch-size independent) or
      ``"minibatch_unbiased"`` (Nguyen et al. 2021).
  """
  try:
    return _ACCUMULATORS[kind]()
  except KeyError:
    raise ValueError(f"cka_accumulator: kind must be one of "
                     f"{sorted(_ACCUMULATORS)}; got {kind!r}.") from None


def dataset_cka(fx: Model, fy: Model, images: Any, *, batch_size: int,
                kind: str = "linear") -> Array:
  """CKA between two feature functions over a dataset, in one XLA program.

  The leading `batch_size`-sized batches are streamed with `lax.scan`
  (``fx`` and ``fy`` run inside the scan body, so only one batch of
  features is alive at a time); the remaining rows form one final batch.
  For ``kind="minibatch_unbiased"`` a remainder of 1–3 rows (too few for the
  unbiased HSIC) is merged into the last full batch, so every sample is
  used. The whole computation is jitted; because ``fx``/``fy`` are closed
  over, each call compiles afresh.

  Args:
    fx: maps a batch (b, ...) of inputs to features (b, ...).
    fy: the same for the second representation.
    images: an array (or pytree of arrays) with a leading axis of n samples.
    batch_size: samples per batch.
    kind: ``"linear"`` (exact; equals `linear_cka` on all features for any
      batch size) or ``"minibatch_unbiased"`` (see
      `minibatch_cka_accumulator`).

  Returns:
    Scalar CKA.

  Raises:
    ValueError: for a bad kind or batch size, or too few samples.
  """
  acc = cka_accumulator(kind)
  leaves = jax.tree.leaves(images)
  if not leaves:
    raise ValueError("dataset_cka: images is empty.")
  n = leaves[0].shape[0]
  if any(leaf.shape[0] != n for leaf in leaves):
    raise ValueError("dataset_cka: all leaves of images need the same n.")
  if batch_size < 1:
    raise ValueError(f"dataset_cka: batch_size must be ≥ 1; got {batch_size}.")
  if kind == "minibatch_unbiased" and batch_size < cka.MIN_UNBIASED_N:
    raise ValueError(
        f"dataset_cka('minibatch_unbiased') needs batch_size ≥ "
        f"{cka.MIN_UNBIASED_N} (the unbiased HSIC divides by n(n−3)); got "
        f"{batch_size}.")
  min_n = cka.MIN_UNBIASED_N if kind == "minibatch_unbiased" else 2
  if n < min_n:
    raise ValueError(f"dataset_cka({kind!r}) needs at least {min_n} samples; "
                     f"got n={n}.")
  batch_size = min(batch_size, n)
  num_scanned = n // batch_size
  if kind == "minibatch_unbiased" and 0 < n % batch_size < cka.MIN_UNBIASED_N:
    num_scanned -= 1  # the last full batch absorbs the short remainder
  head_n = num_scanned * batch_size

  def spec(tree, b):
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((b,) + a.shape[1:], a.dtype), tree)

  fx_shape = jax.eval_shape(fx, spec(images, batch_size))
  fy_shape = jax.eval_shape(fy, spec(images, batch_size))
  dim_x = math.prod(fx_shape.shape[1:])
  dim_y = math.prod(fy_shape.shape[1:])
  dtype = cka.compute_dtype(fx_shape.dtype, fy_shape.dtype)

  def step(state, batch):
    return acc.update(state, fx(batch), fy(batch)), None

  @jax.jit
  def run(images):
    state = acc.init(dim_x, dim_y, dtype)
    if num_scanned:
      head = jax.tree.map(
          lambda a: a[:head_n].reshape((num_scanned, batch_size) + a.shape[1:]),
          images)
      state, _ = jax.lax.scan(step, state, head)
    if head_n < n:
      tail = jax.tree.map(lambda a: a[head_n:], images)
      state = acc.update(state, fx(tail), fy(tail))
    return acc.finalize(state)

  return run(images)
