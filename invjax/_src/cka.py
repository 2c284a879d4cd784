"""Closed-form CKA: linear (feature space), RBF and unbiased (HSIC_u).

Centered kernel alignment compares two representations X (n × d_x) and
Y (n × d_y) of the same n inputs through their Gram matrices K and L:

    CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) · HSIC(L, L)).

* `linear_cka`: biased HSIC with K = XXᵀ. After column-centering X and Y it
  reduces to the feature-space form ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F), which costs
  O(n·d²) and never forms an n × n matrix.
* `rbf_cka`: biased HSIC, HSIC = tr(KHLH)/(n−1)², with RBF kernels.
* `unbiased_cka`: Song et al.'s unbiased HSIC_u (Nguyen et al. 2021).

The streaming versions (`cka_streaming`) and STIR (`stir`) build on the
helpers here (`center`, `cka_from_covariances`, `unbiased_linear_hsics`, ...).

Degenerate inputs. A representation that is constant over the samples
(after centering it is exactly zero) has HSIC 0 with everything, so CKA is
0/0. Every CKA here returns **0** in that case: a constant representation
carries no information about the inputs, so it shares none with the other
representation. The value is exact (see `center`), differentiable (the
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
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from invjax._src import numerics

Array = jax.Array

# CKA sums many products; on accelerators the default matmul precision
# (bf16 passes / TF32) would cost several digits.
dot = functools.partial(jnp.matmul, precision=jax.lax.Precision.HIGHEST)

# The unbiased estimator divides by n(n−3) and (n−1)(n−2).
MIN_UNBIASED_N = 4


# ---------------------------------------------------------------------------
# Small numerical helpers (the unprefixed ones are shared with cka_streaming
# and stir).
# ---------------------------------------------------------------------------


def _safe_divide(num: Array, den: Array) -> Array:
  """num / den where den > 0, else 0, with finite gradients everywhere."""
  # CKA's rule (module docstring): a constant representation (zero
  # denominator) shares nothing, 0, whatever the numerator, NaN included.
  return numerics.safe_divide(num, den, zero_over_zero=0.0,
                              nonzero_over_zero=0.0, propagate_nan=False)


def safe_norm(v: Array, axis: int) -> Array:
  """‖v‖₂ along axis; its gradient at 0 is 0 instead of NaN."""
  return numerics.safe_sqrt(jnp.sum(v * v, axis=axis))


def compute_dtype(*arrays) -> Any:
  # At least float32: CKA of bf16/int features is still computed accurately.
  return jnp.promote_types(jnp.result_type(*arrays), jnp.float32)


def rows(a: Array, dtype) -> Array:
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
  dtype = compute_dtype(x, y)
  return rows(jnp.asarray(x), dtype), rows(jnp.asarray(y), dtype)


def center(x: Array, weights: Array | None = None) -> Array:
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


def cka_from_covariances(cxx: Array, cyy: Array, cyx: Array) -> Array:
  """‖C_yx‖²_F / (‖C_xx‖_F ‖C_yy‖_F) for (co)variance-like matrices."""
  # Normalising each matrix by the largest entry of its own covariance keeps
  # every term O(1): |C_yx[i, j]|² ≤ C_yy[i, i]·C_xx[j, j] (Cauchy–Schwarz).
  sx = jax.lax.stop_gradient(jnp.max(jnp.abs(cxx), initial=0.0))
  sy = jax.lax.stop_gradient(jnp.max(jnp.abs(cyy), initial=0.0))
  sx = jnp.where(sx > 0, sx, 1)
  sy = jnp.where(sy > 0, sy, 1)
  num = jnp.sum(jnp.square(cyx / jnp.sqrt(sx * sy)))
  den = safe_norm((cxx / sx).ravel(), 0) * safe_norm((cyy / sy).ravel(), 0)
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
  xc = _unit_scale(center(x))
  yc = _unit_scale(center(y))
  return cka_from_covariances(dot(xc.T, xc), dot(yc.T, yc), dot(yc.T, xc))


# ---------------------------------------------------------------------------
# Gram-matrix CKA: RBF (biased) and unbiased.
# ---------------------------------------------------------------------------


def _squared_distances(x: Array) -> Array:
  """(n, n) squared Euclidean distances with an exactly zero diagonal."""
  # Distances are translation invariant; centring first reduces the
  # cancellation in |a|² + |b|² − 2a·b. The unit scaling cancels against the
  # median-heuristic bandwidth, so the kernel is unchanged.
  x = _unit_scale(center(x))
  g = dot(x, x.T)
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
  den = safe_norm(kc.ravel(), 0) * safe_norm(lc.ravel(), 0)
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
  if weights is None and k.shape[0] < MIN_UNBIASED_N:
    raise ValueError(
        f"hsic_unbiased needs n ≥ {MIN_UNBIASED_N} samples (it divides by "
        f"n(n−3)); got n={k.shape[0]}.")
  return _hsic_unbiased(k, l, weights)


@jax.jit
def _hsic_unbiased(k: Array, l: Array, weights: Array | None) -> Array:
  dtype = compute_dtype(k, l)
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
  k_l = dot(jnp.sum(kt, axis=0), jnp.sum(lt, axis=1))  # 1ᵀK̃ · L̃1
  valid = n >= MIN_UNBIASED_N
  n = jnp.where(valid, n, MIN_UNBIASED_N)  # keeps the masked-out case finite
  value = (trace + sum_k * sum_l / ((n - 1) * (n - 2))
           - 2 * k_l / (n - 2)) / (n * (n - 3))
  return jnp.where(valid, value, 0)


class _Hsic3(NamedTuple):
  xy: Array
  xx: Array
  yy: Array


def unbiased_linear_hsics(x: Array, y: Array, weights: Array | None = None,
                           *, rescale: bool = True) -> _Hsic3:
  """HSIC_u(K,L), HSIC_u(K,K), HSIC_u(L,L) for linear kernels K=XXᵀ, L=YYᵀ."""
  # HSIC_u is exactly invariant to translating the features: K → K + fᵢ + fⱼ
  # is annihilated by the estimator (it equals ⟨U(K), U(L)⟩/(n(n−3)) with U
  # the U-centring of Song et al./Székely & Rizzo, and U kills fᵢ + fⱼ). So
  # centring here is only for conditioning; it does not change the value.
  # `rescale` multiplies the three HSICs by different constants, which cancel
  # in CKA (and guard against overflow) but not in averages across batches.
  xc = center(x, weights)
  yc = center(y, weights)
  if rescale:
    xc = _unit_scale(xc)
    yc = _unit_scale(yc)
  k = dot(xc, xc.T)
  l = dot(yc, yc.T)
  return _Hsic3(_hsic_unbiased(k, l, weights),
                _hsic_unbiased(k, k, weights), _hsic_unbiased(l, l, weights))


def cka_from_hsics(xy: Array, xx: Array, yy: Array) -> Array:
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
  _check_pair(x, y, min_n=MIN_UNBIASED_N, name="unbiased_cka")
  return _unbiased_cka(x, y)


@jax.jit
def _unbiased_cka(x: Array, y: Array) -> Array:
  x, y = _as_matrices(x, y)
  return cka_from_hsics(*unbiased_linear_hsics(x, y))
