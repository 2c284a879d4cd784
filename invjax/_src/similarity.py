"""Representational similarity: CKA (biased, RBF, unbiased, streaming) and STIR.

Centered kernel alignment compares two representations X (n × d_x) and
Y (n × d_y) of the same n inputs through their Gram matrices K and L:

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)).

* `linear_cka`: biased HSIC with K = XXᵀ. After column-centering X and Y it
  reduces to the feature-space form ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F), which costs
  O(n·d²) and never forms an n × n matrix.
* `rbf_cka`: biased HSIC, HSIC = tr(KHLH)/(n−1)², with RBF kernels.
* `unbiased_cka`: Song et al.'s unbiased HSIC_u (Nguyen et al. 2021).
* `linear_cka_accumulator` / `minibatch_cka_accumulator`: mergeable
  streaming versions; `dataset_cka` runs a dataset through two feature
  functions inside one compiled program.
* `stir` / `invert_representation`: Nanda et al.'s STIR, which measures
  CKA on inputs that one model cannot tell apart.

Degenerate inputs. A representation that is constant over the samples
(after centering it is exactly zero) has HSIC 0 with everything, so CKA is
0/0. Every CKA here returns **0** in that case: a constant representation
carries no information about the inputs, so it shares none with the other
representation. The value is exact (see `_center`), differentiable (the
gradient is 0, never NaN) and keeps STIR averages finite. Note that this
makes CKA(c, c) = 0 for a constant c, not 1.

References:
  Kornblith, Norouzi, Lee, Hinton. "Similarity of Neural Network
  Representations Revisited", ICML 2019.
  Gretton, Bousquet, Smola, Schölkopf. "Measuring Statistical Dependence
  with Hilbert-Schmidt Norms", ALT 2005.
  Song, Smola, Gretton, Bedo, Borgwardt. "Feature Selection via Dependence
  Maximization", JMLR 13, 2012.
  Nguyen, Raghu, Kornblith. "Do Wide and Deep Networks Learn the Same
  Things?", ICLR 2021.
  Nanda, Speicher, Kolling, Dickerson, Gummadi, Weller. "Measuring
  Representational Robustness of Neural Networks Through Shared
  Invariances", ICML 2022.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from invjax._src import numerics

Array = jax.Array
Model = Callable[[Array], Array]
Similarity = Callable[[Array, Array], Array]

# CKA sums many products; on accelerators the default matmul precision
# (bf16 passes / TF32) would cost several digits.
_dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)

# The unbiased estimator divides by n(n−3) and (n−1)(n−2).
_MIN_UNBIASED_N = 4


# ---------------------------------------------------------------------------
# Small numerical helpers.
# ---------------------------------------------------------------------------


def _safe_divide(num: Array, den: Array) -> Array:
  """num / den where den > 0, else 0, with finite gradients everywhere."""
  # CKA's rule (module docstring): a constant representation (zero
  # denominator) shares nothing, 0, whatever the numerator, NaN included.
  return numerics.safe_divide(num, den, zero_over_zero=0.0,
                              nonzero_over_zero=0.0, propagate_nan=False)


def _safe_norm(v: Array, axis: int) -> Array:
  return numerics.safe_sqrt(jnp.sum(v * v, axis=axis))


def _compute_dtype(*arrays) -> Any:
  # At least float32: CKA of bf16/int features is still computed accurately.
  return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def _rows(a: Array, dtype) -> Array:
  """(n, ...) → (n, prod(...)): one flattened representation per sample."""
  return a.reshape(a.shape[0], -1).astype(dtype)


def _check_pair(x, y, *, min_n: int, name: str) -> None:
  """Validates the shapes of a pair of representations (n, ...)."""
  x = jax.ShapeDtypeStruct(jnp.shape(x), jnp.result_type(x))
  y = jax.ShapeDtypeStruct(jnp.shape(y), jnp.result_type(y))
  if x.ndim == 0 or y.ndim == 0:
    raise ValueError(
        f"{name}: x and y need a leading sample axis (n, ...); got shapes "
        f"{x.shape} and {y.shape}.")
  if x.shape[0] != y.shape[0]:
    raise ValueError(
        f"{name}: x and y must have the same number of samples (rows); got "
        f"n={x.shape[0]} for x {x.shape} and n={y.shape[0]} for y {y.shape}.")
  if x.shape[0] < min_n:
    raise ValueError(
        f"{name} needs at least {min_n} samples; got n={x.shape[0]}.")


def _as_matrices(x: Array, y: Array) -> tuple[Array, Array]:
  """x, y as (n, d) matrices of one floating dtype (at least float32)."""
  dtype = _compute_dtype(x, y)
  return _rows(jnp.asarray(x), dtype), _rows(jnp.asarray(y), dtype)


def _center(x: Array, weights: Array | None = None) -> Array:
  """Column-centres x (n, d), optionally over the rows with weight 1 only.

  The data are first shifted by one of their own rows. This changes nothing
  mathematically, but a constant column then becomes exactly zero (the
  float mean of n identical values need not round back to that value), so
  the zero-denominator convention above holds exactly; it also reduces
  cancellation when features have a large offset.

  Args:
    x: (n, d) array.
    weights: optional (n,) 0/1 mask; masked rows come back as zeros.

  Returns:
    The centred (n, d) array.
  """
  if weights is None:
    x = x - x[:1]
    return x - jnp.mean(x, axis=0, keepdims=True)
  w = weights.astype(x.dtype)[:, None]
  x = (x - x[jnp.argmax(weights)][None]) * w
  count = jnp.maximum(jnp.sum(w), 1)
  return (x - jnp.sum(x, axis=0, keepdims=True) / count) * w


def _unit_scale(x: Array) -> Array:
  """Divides x by max|x| so that the 4th powers in CKA cannot overflow.

  CKA is invariant to isotropic scaling, so CKA(x / s) = CKA(x) and its
  gradient is exact with s held constant (hence stop_gradient).
  """
  s = jax.lax.stop_gradient(jnp.max(jnp.abs(x), initial=0.0))
  return x / jnp.where(s > 0, s, 1)


# ---------------------------------------------------------------------------
# Linear CKA, feature-space form.
# ---------------------------------------------------------------------------


def _cka_from_covariances(cxx: Array, cyy: Array, cyx: Array) -> Array:
  """‖C_yx‖²_F / (‖C_xx‖_F ‖C_yy‖_F) for (co)variance-like matrices."""
  # Normalising each matrix by the largest entry of its own covariance keeps
  # every term O(1): |C_yx[i, j]|² ≤ C_yy[i, i]·C_xx[j, j] (Cauchy–Schwarz).
  sx = jax.lax.stop_gradient(jnp.max(jnp.abs(cxx), initial=0.0))
  sy = jax.lax.stop_gradient(jnp.max(jnp.abs(cyy), initial=0.0))
  sx = jnp.where(sx > 0, sx, 1)
  sy = jnp.where(sy > 0, sy, 1)
  num = jnp.sum(jnp.square(cyx / jnp.sqrt(sx * sy)))
  den = _safe_norm((cxx / sx).ravel(), 0) * _safe_norm((cyy / sy).ravel(), 0)
  return _safe_divide(num, den)


def linear_cka(x: Array, y: Array) -> Array:
  r"""Linear CKA (biased HSIC) in its feature-space form.

  With X, Y column-centred (HX, HY, H = I − 11ᵀ/n):

      CKA(X, Y) = ‖YᵀX‖²_F / (‖XᵀX‖_F · ‖YᵀY‖_F),

  which equals tr(KHLH) / sqrt(tr(KHKH) tr(LHLH)) for K = XXᵀ, L = YYᵀ
  (Kornblith et al. 2019, "linear CKA"). The cost is O(n·(d_x + d_y)²)
  time and O((d_x + d_y)²) memory; no n × n matrix is formed.

  The value lies in [0, 1], is 1 for Y = XQ·c (Q orthogonal, c ≠ 0) and is
  invariant to orthogonal transforms and isotropic scaling of either input.
  A constant representation (zero denominator) gives 0; see the module
  docstring.

  Args:
    x: (n, ...) array; each row is flattened to one d_x-vector.
    y: (n, ...) array with the same n; d_y may differ from d_x.

  Returns:
    Scalar CKA in the promoted floating dtype (at least float32).

  Raises:
    ValueError: if x and y differ in n, or n < 2.
  """
  _check_pair(x, y, min_n=2, name="linear_cka")
  return _linear_cka(x, y)


# Jitted cores: one compiled program per shape instead of op-by-op dispatch;
# they inline when the caller is itself traced.
@jax.jit
def _linear_cka(x: Array, y: Array) -> Array:
  x, y = _as_matrices(x, y)
  xc = _unit_scale(_center(x))
  yc = _unit_scale(_center(y))
  return _cka_from_covariances(_dot(xc.T, xc), _dot(yc.T, yc), _dot(yc.T, xc))


# ---------------------------------------------------------------------------
# Gram-matrix CKA: RBF (biased) and unbiased.
# ---------------------------------------------------------------------------


def _squared_distances(x: Array) -> Array:
  """(n, n) squared Euclidean distances with an exactly zero diagonal."""
  # Distances are translation invariant; centring first reduces the
  # cancellation in |a|² + |b|² − 2a·b. The unit scaling cancels against the
  # median-heuristic bandwidth, so the kernel is unchanged.
  x = _unit_scale(_center(x))
  g = _dot(x, x.T)
  sq = jnp.diagonal(g)
  d = jnp.maximum(sq[:, None] + sq[None, :] - 2 * g, 0)
  return d * (1 - jnp.eye(x.shape[0], dtype=x.dtype))


_MEDIANS = ("lower", "mean")


def _median_nonzero(d: Array, median: str) -> Array:
  """Median of the nonzero off-diagonal entries of a symmetric d; 1 if none.

  Each pair appears twice in the full matrix, so over the m pairs i < j the
  lower median (index ⌊(m−1)/2⌋ of the sorted values) equals torch.median
  over all 2m nonzero entries, and the mean of the two middle values equals
  np.median over them; the upper triangle halves the sort.
  """
  rows, cols = jnp.triu_indices(d.shape[0], k=1)
  v = d[rows, cols]
  count = jnp.sum(v > 0)
  v = jnp.sort(jnp.where(v > 0, v, jnp.inf))
  lower = v[jnp.maximum(count - 1, 0) // 2]
  mid = lower if median == "lower" else (lower + v[count // 2]) / 2
  # No nonzero distance means all rows are equal: K = 11ᵀ centres to 0 for
  # any bandwidth, so any positive σ² gives the documented CKA of 0.
  return jnp.where(count > 0, mid, 1)


def _rbf_gram(x: Array, sigma_scale: float, median: str) -> Array:
  """exp(−‖xᵢ − xⱼ‖² / (2σ²)), σ² = sigma_scale² · median of nonzero d²."""
  d = _squared_distances(x)
  sigma2 = _median_nonzero(d, median) * sigma_scale**2
  return jnp.exp(-d / (2 * sigma2))


def _center_gram(k: Array) -> Array:
  """HKH without forming H: subtract row and column means, add the mean."""
  return (k - jnp.mean(k, axis=0, keepdims=True)
          - jnp.mean(k, axis=1, keepdims=True) + jnp.mean(k))


def _biased_gram_cka(k: Array, l: Array) -> Array:
  """tr(KHLH) / sqrt(tr(KHKH) tr(LHLH)) = ⟨HKH, HLH⟩_F / (‖HKH‖ ‖HLH‖)."""
  kc = _center_gram(k)
  lc = _center_gram(l)
  den = _safe_norm(kc.ravel(), 0) * _safe_norm(lc.ravel(), 0)
  return _safe_divide(jnp.sum(kc * lc), den)


def rbf_cka(x: Array, y: Array, *, sigma_scale: float = 1.0,
            median: str = "lower") -> Array:
  r"""RBF-kernel CKA with the biased HSIC (Kornblith et al. 2019, Sec. 3).

      K_ij = exp(−‖xᵢ − xⱼ‖² / (2σ_x²)),
      σ_x = sigma_scale · sqrt(median{‖xᵢ − xⱼ‖² : i ≠ j, ‖xᵢ − xⱼ‖ > 0}),
      CKA = tr(KHLH) / sqrt(tr(KHKH) tr(LHLH)),  H = I − 11ᵀ/n,

  with L and σ_y built the same way from y. The bandwidth is chosen
  separately for x and y, as in Kornblith et al.'s code and Nanda et al.'s
  `kernel_CKA`; its dependence on the data is differentiated through.
  Builds n × n matrices: O(n²(d_x + d_y)) time, O(n²) memory. A constant
  representation gives 0.

  The median of an even number m of pairs is ambiguous. ``"lower"`` (the
  default) takes the lower middle value, as ``torch.median`` does in Nanda
  et al.'s ``kernel_CKA`` (``stir/CKA_pytorch.py``, over the nonzero
  entries of the distance matrix), so STIR's RBF numbers are reproduced;
  ``"mean"`` averages the two middle values (``np.median``), a difference
  in CKA that shrinks as n grows (6e-4 at n = 5 and 2e-5 at n = 40 on the
  tests' data; it vanishes when m is odd). Kornblith et al.'s ``gram_rbf``
  instead takes ``np.median`` over all n² entries, the zero diagonal included,
  which gives a smaller bandwidth that neither rule reproduces.

  Args:
    x: (n, ...) array, rows flattened.
    y: (n, ...) array with the same n.
    sigma_scale: multiplies the median-heuristic bandwidth.
    median: ``"lower"`` or ``"mean"``, for an even number of pairs.

  Returns:
    Scalar CKA.

  Raises:
    ValueError: if x and y differ in n, or n < 2, or sigma_scale ≤ 0, or
      median is not one of the two rules.
  """
  if not sigma_scale > 0:
    raise ValueError(f"rbf_cka: sigma_scale must be > 0; got {sigma_scale}.")
  if median not in _MEDIANS:
    raise ValueError(f"rbf_cka: median must be one of {_MEDIANS}; got "
                     f"{median!r}.")
  _check_pair(x, y, min_n=2, name="rbf_cka")
  return _rbf_cka(x, y, sigma_scale, median)


@functools.partial(jax.jit, static_argnames="median")
def _rbf_cka(x: Array, y: Array, sigma_scale: Array, median: str) -> Array:
  x, y = _as_matrices(x, y)
  return _biased_gram_cka(_rbf_gram(x, sigma_scale, median),
                          _rbf_gram(y, sigma_scale, median))


def hsic_unbiased(k: Array, l: Array, weights: Array | None = None) -> Array:
  r"""Song et al.'s (2012) unbiased HSIC estimator from Gram matrices.

      HSIC_u(K, L) = [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n−1)(n−2))
                      − 2/(n−2) · 1ᵀK̃L̃1] / (n(n−3)),

  where K̃, L̃ are K, L with their diagonals set to zero; K and L are used as
  given, not centred. (Nanda et al.'s `MinibatchCKA` centres K before zeroing
  the diagonal; that happens to give the same value, because the estimator
  is exactly invariant to K → K + fᵢ + fⱼ, of which HKH − K is an instance.
  Their prefactor, written /n·(n−3), is a real deviation: it cancels in CKA
  only when every batch has the same size.) HSIC_u is an unbiased estimate
  of the population HSIC, so it can be slightly negative for small n.

  Args:
    k: (n, n) Gram matrix.
    l: (n, n) Gram matrix.
    weights: optional (n,) 0/1 mask; rows and columns with weight 0 are
      dropped and n becomes the number of kept rows (for padded batches).

  Returns:
    Scalar HSIC_u; 0 when fewer than 4 rows are kept.

  Raises:
    ValueError: for non-square or mismatched matrices, or n < 4 without a mask.
  """
  k = jnp.asarray(k)
  l = jnp.asarray(l)
  if k.ndim != 2 or k.shape[0] != k.shape[1] or k.shape != l.shape:
    raise ValueError(
        "hsic_unbiased: k and l must be square Gram matrices of one shape; got "
        f"{k.shape} and {l.shape}.")
  if weights is None and k.shape[0] < _MIN_UNBIASED_N:
    raise ValueError(
        f"hsic_unbiased needs n ≥ {_MIN_UNBIASED_N} samples (it divides by "
        f"n(n−3)); got n={k.shape[0]}.")
  return _hsic_unbiased(k, l, weights)


@jax.jit
def _hsic_unbiased(k: Array, l: Array, weights: Array | None) -> Array:
  dtype = _compute_dtype(k, l)
  k = k.astype(dtype)
  l = l.astype(dtype)
  off = 1 - jnp.eye(k.shape[0], dtype=dtype)
  if weights is None:
    n = jnp.asarray(k.shape[0], dtype)
  else:
    w = weights.astype(dtype)
    off = off * w[:, None] * w[None, :]
    n = jnp.sum(w)
  kt = k * off
  lt = l * off
  trace = jnp.sum(kt * lt.T)  # tr(K̃L̃) without the matrix product
  sum_k = jnp.sum(kt)
  sum_l = jnp.sum(lt)
  k_l = _dot(jnp.sum(kt, axis=0), jnp.sum(lt, axis=1))  # 1ᵀK̃ · L̃1
  valid = n >= _MIN_UNBIASED_N
  n = jnp.where(valid, n, _MIN_UNBIASED_N)  # keeps the masked-out case finite
  value = (trace + sum_k * sum_l / ((n - 1) * (n - 2))
           - 2 * k_l / (n - 2)) / (n * (n - 3))
  return jnp.where(valid, value, 0)


class _Hsic3(NamedTuple):
  xy: Array
  xx: Array
  yy: Array


def _unbiased_linear_hsics(x: Array, y: Array, weights: Array | None = None,
                           *, rescale: bool = True) -> _Hsic3:
  """HSIC_u(K,L), HSIC_u(K,K), HSIC_u(L,L) for linear kernels K=XXᵀ, L=YYᵀ."""
  # HSIC_u is exactly invariant to translating the features: K → K + fᵢ + fⱼ
  # is annihilated by the estimator (it equals ⟨U(K), U(L)⟩/(n(n−3)) with U
  # the U-centring of Song et al./Székely & Rizzo, and U kills fᵢ + fⱼ). So
  # centring here is only for conditioning; it does not change the value.
  # `rescale` multiplies the three HSICs by different constants, which cancel
  # in CKA (and guard against overflow) but not in averages across batches.
  xc = _center(x, weights)
  yc = _center(y, weights)
  if rescale:
    xc = _unit_scale(xc)
    yc = _unit_scale(yc)
  k = _dot(xc, xc.T)
  l = _dot(yc, yc.T)
  return _Hsic3(_hsic_unbiased(k, l, weights),
                _hsic_unbiased(k, k, weights), _hsic_unbiased(l, l, weights))


def _cka_from_hsics(xy: Array, xx: Array, yy: Array) -> Array:
  # HSIC_u(K, K) estimates ‖C_xx‖² ≥ 0 but can dip below 0 at tiny n; such a
  # representation is treated like a constant one (CKA 0) instead of NaN.
  ok = (xx > 0) & (yy > 0)
  den = jnp.sqrt(jnp.where(ok, xx, 1)) * jnp.sqrt(jnp.where(ok, yy, 1))
  return jnp.where(ok, xy / den, 0)


def unbiased_cka(x: Array, y: Array) -> Array:
  r"""Linear CKA with the unbiased HSIC estimator (Nguyen et al. 2021).

      CKA_u = HSIC_u(K, L) / sqrt(HSIC_u(K, K) · HSIC_u(L, L)),
      K = XXᵀ, L = YYᵀ,

  with HSIC_u from `hsic_unbiased` (Song et al. 2012). Its HSIC terms are
  unbiased, so unlike `linear_cka` it does not drift towards 1 for unrelated
  features when n is small relative to d (the ratio itself is only
  approximately unbiased). It is not confined to [0, 1]: unrelated features
  give values scattered around 0. Builds n × n Gram matrices; for large datasets use
  `minibatch_cka_accumulator`. Returns 0 when either self-HSIC_u is ≤ 0
  (a constant representation gives exactly 0).

  Args:
    x: (n, ...) array, rows flattened.
    y: (n, ...) array with the same n.

  Returns:
    Scalar unbiased CKA.

  Raises:
    ValueError: if x and y differ in n, or n < 4.
  """
  _check_pair(x, y, min_n=_MIN_UNBIASED_N, name="unbiased_cka")
  return _unbiased_cka(x, y)


@jax.jit
def _unbiased_cka(x: Array, y: Array) -> Array:
  x, y = _as_matrices(x, y)
  return _cka_from_hsics(*_unbiased_linear_hsics(x, y))


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
  x = _rows(x, dtype)
  y = _rows(y, dtype)
  if mask is None:
    count = jnp.asarray(x.shape[0], dtype)
  else:
    count = jnp.sum(jnp.asarray(mask).astype(dtype))
  xc = _center(x, mask)
  yc = _center(y, mask)
  # Batch mean = shift row + mean of the shifted rows; recovered as x − xc
  # on any kept row, so a constant column keeps an exactly constant mean.
  row = 0 if mask is None else jnp.argmax(mask)
  batch = LinearCKAState(count, x[row] - xc[row], y[row] - yc[row],
                         _dot(xc.T, xc), _dot(yc.T, yc), _dot(yc.T, xc))
  return _linear_merge(state, batch)


@jax.jit
def _linear_merge(a: LinearCKAState, b: LinearCKAState) -> LinearCKAState:
  n = a.count + b.count
  frac_b = _safe_divide(b.count, n)  # exact no-op when either side is empty
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
  return _cka_from_covariances(state.cxx, state.cyy, state.cyx)


@jax.jit
def _minibatch_update(state, x, y, mask):
  """Adds one batch's size-weighted unbiased HSICs to the state."""
  dtype = state.weight.dtype
  x = _rows(x, dtype)
  y = _rows(y, dtype)
  # No unit rescaling here: batches must share one scale to be averaged.
  h = _unbiased_linear_hsics(x, y, mask, rescale=False)
  if mask is None:
    n = jnp.asarray(x.shape[0], dtype)
  else:
    n = jnp.sum(jnp.asarray(mask).astype(dtype))
  w = jnp.where(n >= _MIN_UNBIASED_N, n, 0)
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
  return _cka_from_hsics(state.hsic_xy, state.hsic_xx, state.hsic_yy)


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
    if mask is None and x.shape[0] < _MIN_UNBIASED_N:
      raise ValueError(
          "minibatch_cka_accumulator.update: the unbiased HSIC needs at least "
          f"{_MIN_UNBIASED_N} samples per batch; got a batch of {x.shape[0]}.")
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
  if kind == "minibatch_unbiased" and batch_size < _MIN_UNBIASED_N:
    raise ValueError(
        f"dataset_cka('minibatch_unbiased') needs batch_size ≥ "
        f"{_MIN_UNBIASED_N} (the unbiased HSIC divides by n(n−3)); got "
        f"{batch_size}.")
  min_n = _MIN_UNBIASED_N if kind == "minibatch_unbiased" else 2
  if n < min_n:
    raise ValueError(f"dataset_cka({kind!r}) needs at least {min_n} samples; "
                     f"got n={n}.")
  batch_size = min(batch_size, n)
  num_scanned = n // batch_size
  if kind == "minibatch_unbiased" and 0 < n % batch_size < _MIN_UNBIASED_N:
    num_scanned -= 1  # the last full batch absorbs the short remainder
  head_n = num_scanned * batch_size

  def spec(tree, b):
    return jax.tree.map(
        lambda a: jax.ShapeDtypeStruct((b,) + a.shape[1:], a.dtype), tree)

  fx_shape = jax.eval_shape(fx, spec(images, batch_size))
  fy_shape = jax.eval_shape(fy, spec(images, batch_size))
  dim_x = math.prod(fx_shape.shape[1:])
  dim_y = math.prod(fy_shape.shape[1:])
  dtype = _compute_dtype(fx_shape.dtype, fy_shape.dtype)

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


# ---------------------------------------------------------------------------
# STIR.
# ---------------------------------------------------------------------------


class InversionResult(NamedTuple):
  """Output of `invert_representation`.

  Attributes:
    x: inputs x′ with the shape of the targets, each the best iterate found.
    loss: (n,) relative loss ‖m(x′ᵢ) − m(xᵢ)‖₂ / ‖m(xᵢ)‖₂ of those iterates.
  """
  x: Array
  loss: Array


class StirResult(NamedTuple):
  """STIR in both directions plus the plain representational similarity.

  Attributes:
    m2_given_m1: STIR(m2 | m1): m1 is inverted, similarity measured on m2.
    m1_given_m2: STIR(m1 | m2): m2 is inverted, similarity measured on m1.
    cka: S(m1(X), m2(X)), the ordinary similarity of the two models.
  """
  m2_given_m1: Array
  m1_given_m2: Array
  cka: Array


_INITS = ("noise", "mixed")


@functools.partial(jax.jit, static_argnames=("num_seeds", "init"))
def _initial_points(x: Array, key: Array, *, num_seeds: int,
                    init: str) -> Array:
  """(num_seeds, n, ...) starting points x′⁽⁰⁾ for inverting the batch x.

  Kept apart from the inversion so that its compiled program (the PRNG is
  slow to compile on CPU) is shared by every model of the same input shape.
  """
  keys = jax.random.split(key, num_seeds)
  if init == "noise":
    # Nanda et al.'s 'super-noise': N(0, I) per image, not clipped before the
    # first gradient step.
    return jax.vmap(lambda k: jax.random.normal(k, x.shape, x.dtype))(keys)
  # "mixed": start each sample from another real image of the batch.
  # Nanda et al. reverse the batch, which for odd n starts the middle sample
  # at its own target; a random cyclic shift in 1..n−1 never does, and
  # gives different seeds different starts.
  shifts = jax.vmap(lambda k: jax.random.randint(k, (), 1, x.shape[0]))(keys)
  return jax.vmap(lambda s: jnp.roll(x, s, axis=0))(shifts)


def _invert(model: Model, x: Array, x0: Array, step_size: Array, steps: Array,
            input_range: tuple[float, float] | None) -> InversionResult:
  """Normalised gradient descent on the relative representation loss."""
  n = x.shape[0]
  lo, hi = (-jnp.inf, jnp.inf) if input_range is None else input_range
  # Broadcast a per-sample (n,) vector against the input shape.
  per_sample = lambda v: v.reshape((n,) + (1,) * (x.ndim - 1))  # noqa: E731
  target = jax.lax.stop_gradient(model(x).reshape(n, -1))
  target_norm = jnp.maximum(_safe_norm(target, 1),
                            jnp.finfo(target.dtype).tiny)

  def losses(z):
    return _safe_norm(model(z).reshape(n, -1) - target, 1) / target_norm

  def total(z):
    l = losses(z)
    # Samples are independent, so the gradient of the sum holds each
    # sample's own gradient (for models without cross-batch interaction).
    return jnp.sum(l), l

  grad_fn = jax.grad(total, has_aux=True)

  def keep_best(z, l, best_z, best_l):
    better = l < best_l
    return jnp.where(per_sample(better), z, best_z), jnp.where(better, l,
                                                                best_l)

  def body(i, carry):
    z, best_z, best_l = carry
    g, l = grad_fn(z)
    # Iterate 0 is the unclipped seed; only in-range iterates may be kept.
    cand_l = jnp.where(i > 0, l, jnp.inf)
    best_z, best_l = keep_best(z, cand_l, best_z, best_l)
    g_norm = _safe_norm(g.reshape(n, -1), 1)
    direction = g / per_sample(jnp.where(g_norm > 0, g_norm, 1))
    z = jnp.clip(z - step_size * direction, lo, hi)
    return z, best_z, best_l

  z0 = jnp.clip(x0, lo, hi)
  carry = (x0, z0, losses(z0))
  # `steps` is traced (a while loop), so other step counts do not recompile.
  z, best_z, best_l = jax.lax.fori_loop(0, steps, body, carry)
  # The last iterate has not been scored yet (with 0 steps it is the seed).
  final_l = jnp.where(steps > 0, losses(z), jnp.inf)
  best_z, best_l = keep_best(z, final_l, best_z, best_l)
  return InversionResult(best_z, best_l)


@functools.partial(jax.jit, static_argnames=("model", "input_range"))
def _invert_seeds(model, x, x0s, step_size, steps, *, input_range):
  """Inverts the batch x from each of the k starts x0s (k, n, ...), vmapped."""
  return jax.vmap(
      lambda x0: _invert(model, x, x0, step_size, steps, input_range))(x0s)


def _check_inversion_args(x, steps, init, input_range, name):
  if isinstance(init, str) and init not in _INITS:
    raise ValueError(f"{name}: init must be one of {_INITS} or an array; got "
                     f"{init!r}.")
  if steps < 0:
    raise ValueError(f"{name}: steps must be ≥ 0; got {steps}.")
  if jnp.ndim(x) < 1 or x.shape[0] < 1:
    raise ValueError(f"{name}: x needs a leading sample axis; got {x.shape}.")
  if isinstance(init, str) and init == "mixed" and x.shape[0] < 2:
    raise ValueError(f"{name}: init='mixed' needs at least 2 samples.")
  if input_range is not None:
    lo, hi = input_range
    if not lo < hi:
      raise ValueError(f"{name}: input_range must satisfy lo < hi; got "
                       f"{input_range}.")
    return (float(lo), float(hi))
  return None


def invert_representation(model: Model, x: Array, *, key: Array | None = None,
                          steps: int = 1000, step_size: float = 0.5,
                          init: str | Array = "noise",
                          input_range: tuple[float, float] | None = (0., 1.)
                          ) -> InversionResult:
  r"""Finds inputs that `model` represents like x (Nanda et al. 2022, Sec. 3).

  For each sample solves, by projected normalised gradient descent,

      x′ᵢ = argmin_{x′ ∈ [lo, hi]^d} ‖m(x′) − m(xᵢ)‖₂ / ‖m(xᵢ)‖₂,
      x′ ← clip(x′ − step_size · gᵢ/‖gᵢ‖₂, lo, hi),

  starting from x′⁽⁰⁾ ~ N(0, I) per image (``init="noise"``), and keeps
  each sample's best iterate, as in the STIR code (1000 steps of size 0.5,
  `use_best=True`). The loop is one `lax.fori_loop` in one jitted program;
  `steps` and `step_size` are traced, so changing them does not recompile.
  Gradients are per sample because the loss is a sum over samples; models
  must not mix samples (e.g. batch-norm in training mode). Nanda et al.
  pass gradients straight through the last ReLU ("fake ReLU"); a model that
  wants this can use a `jax.custom_vjp` itself.

  Args:
    model: maps inputs (n, ...) to features (n, ...); hashable (it is a
      static argument of the compiled loop, so reuse one function object to
      avoid recompiling).
    x: (n, ...) target inputs.
    key: PRNG key for the starting points; not needed for an array init.
    steps: number of gradient steps.
    step_size: L2 length of each step in input space.
    init: ``"noise"`` (N(0, 1) per image), ``"mixed"`` (another image of the
      batch, by a random cyclic shift), or an array of x's shape.
    input_range: (lo, hi) box for the iterates, or None for no box.

  Returns:
    `InversionResult(x, loss)`: the best iterate per sample and its relative
    loss.

  Raises:
    ValueError: on a bad init, steps or range.
  """
  x = jnp.asarray(x)
  input_range = _check_inversion_args(x, steps, init, input_range,
                                      "invert_representation")
  if isinstance(init, str):
    if key is None:
      raise ValueError(f"invert_representation: init={init!r} needs a key.")
    x0s = _initial_points(x, key, num_seeds=1, init=init)
  else:
    x0 = jnp.asarray(init, x.dtype)
    if x0.shape != x.shape:
      raise ValueError("invert_representation: an array init must have x's "
                       f"shape {x.shape}; got {x0.shape}.")
    x0s = x0[None]
  result = _invert_seeds(model, x, x0s, jnp.asarray(step_size, x.dtype),
                         jnp.asarray(steps, jnp.int32),
                         input_range=input_range)
  return jax.tree.map(lambda a: a[0], result)


_SIMILARITIES = {
    "linear": linear_cka,
    "rbf": rbf_cka,
    "unbiased": unbiased_cka,
}


def _resolve_similarity(similarity) -> Similarity:
  if callable(similarity):
    return similarity
  try:
    return _SIMILARITIES[similarity]
  except KeyError:
    raise ValueError(f"stir: similarity must be one of {sorted(_SIMILARITIES)} "
                     f"or a callable; got {similarity!r}.") from None


def _stir_direction(reference, other, x, key, step_size, steps, *, num_seeds,
                    init, input_range, batch_size, similarity):
  """STIR(other | reference): invert `reference`, compare on `other`."""
  n = x.shape[0]
  chunks = []
  for index, start in enumerate(range(0, n, batch_size)):
    batch = x[start:start + batch_size]
    x0s = _initial_points(batch, jax.random.fold_in(key, index),
                          num_seeds=num_seeds, init=init)
    chunks.append(_invert_seeds(reference, batch, x0s, step_size, steps,
                                input_range=input_range).x)
  x_inv = chunks[0] if len(chunks) == 1 else jnp.concatenate(chunks, axis=1)
  # (1/k) Σ_j S(m(X), m(X′_j)), one seed at a time to bound memory; `other`
  # is called as given (it may be jitted by the caller), and S is jitted.
  features = other(x)
  values = [similarity(features, other(x_j)) for x_j in x_inv]
  return jnp.mean(jnp.stack(values))


def stir(m1: Model, m2: Model, x: Array, *, key: Array, steps: int = 1000,
         step_size: float = 0.5, num_seeds: int = 1, init: str = "noise",
         input_range: tuple[float, float] | None = (0., 1.),
         similarity: str | Similarity = "linear",
         batch_size: int | None = None) -> StirResult:
  r"""Shared invariance STIR of Nanda et al. (ICML 2022), both directions.

      STIR(m2 | m1, X) = (1/k) Σ_{j=1..k} S(m2(X), m2(X′_j)),

  where X′_j holds, for every xᵢ ∈ X, an input that the *reference* model m1
  represents like xᵢ (found by `invert_representation` from the j-th random
  start) and S is a similarity, linear CKA by default. A high value means
  m2 shares m1's invariances: inputs m1 cannot tell apart, m2 cannot either.
  The measure is asymmetric; e.g. if m1 ignores part of its input, its
  inversions vary freely there and an m2 that uses that part sees them as
  different, so STIR(m2 | m1) is low while STIR(m1 | m2) may be high.

  The k seeds run in parallel (`vmap`) inside one compiled inversion per
  direction and batch; S is always computed over all n samples at once, even
  when the inversion is chunked (Nanda et al.'s code ends up scoring the last
  batch only when the loader's batch is smaller than the dataset). The k-seed
  average follows the paper's definition; their code uses k = 1.

  Args:
    m1: model (n, ...) → features (n, ...); hashable, reuse one object.
    m2: the second model, same contract.
    x: (n, ...) inputs X in `input_range`.
    key: PRNG key; the two directions and the seeds use independent keys.
    steps: gradient steps per inversion (Nanda et al.: 1000).
    step_size: L2 step length in input space (Nanda et al.: 0.5 for
      [0, 1] CIFAR/ImageNet images; smaller inputs need smaller steps).
    num_seeds: k random starts per sample, averaged.
    init: ``"noise"`` or ``"mixed"``; see `invert_representation`.
    input_range: (lo, hi) box for the inversions, or None.
    similarity: ``"linear"``, ``"rbf"``, ``"unbiased"`` or a callable
      (a, b) → scalar on (n, ...) features.
    batch_size: invert this many samples at a time (memory); None: all n.

  Returns:
    `StirResult(m2_given_m1, m1_given_m2, cka)` with cka = S(m1(X), m2(X)).

  Raises:
    ValueError: on bad arguments.
  """
  x = jnp.asarray(x)
  if not isinstance(init, str):
    raise ValueError("stir: init must be 'noise' or 'mixed'.")
  input_range = _check_inversion_args(x, steps, init, input_range, "stir")
  if num_seeds < 1:
    raise ValueError(f"stir: num_seeds must be ≥ 1; got {num_seeds}.")
  if batch_size is None:
    batch_size = x.shape[0]
  if batch_size < 1:
    raise ValueError(f"stir: batch_size must be ≥ 1; got {batch_size}.")
  if init == "mixed" and (x.shape[0] % batch_size or batch_size) < 2:
    raise ValueError("stir: init='mixed' needs every inversion batch to hold "
                     "at least 2 samples.")
  sim = _resolve_similarity(similarity)
  step_size = jnp.asarray(step_size, x.dtype)
  steps = jnp.asarray(steps, jnp.int32)
  key_12, key_21 = jax.random.split(key)
  kwargs = dict(num_seeds=num_seeds, init=init, input_range=input_range,
                batch_size=batch_size, similarity=sim)
  m2_given_m1 = _stir_direction(m1, m2, x, key_12, step_size, steps, **kwargs)
  m1_given_m2 = _stir_direction(m2, m1, x, key_21, step_size, steps, **kwargs)
  return StirResult(m2_given_m1, m1_given_m2, sim(m1(x), m2(x)))
