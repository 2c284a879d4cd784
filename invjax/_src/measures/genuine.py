"""Moskalev et al.'s "genuine invariance" metrics, as this library defines them.

The paper names three metrics — predictive distribution invariance, logit
invariance and saliency invariance similarity — but neither its body nor any
code was available (``amoskalev/ginvariance`` holds only a README). The
formulas below are therefore *our operationalization* of those names, not
confirmed against the paper:

* Predictive invariance (`predictive_invariance`): the generalized
  Jensen–Shannon divergence of the orbit's predictive distributions,

      PI(x) = (1/|G|) Σ_g KL( p(g·x) ‖ p̄(x) ),  p = softmax(z),
      p̄(x) = (1/|G|) Σ_g p(g·x),

  averaged over samples (nats; 0: invariant). It is ``geed(distance="kl")``
  under another name. Also reported divided by its upper bound log|G|
  (``"normalized"``, in [0, 1]; 0 when |G| = 1).
* Logit invariance (`logit_invariance`): the share of the orbit's logit
  energy that is spread around the orbit mean,

      LI(x) = Σ_g ‖z(g·x) − z̄(x)‖² / Σ_g ‖z(g·x)‖²,  z̄ = (1/|G|) Σ_g z(g·x),

  averaged over samples; in [0, 1], 0: invariant, 1: the orbit mean is 0.
  An orbit of all-zero logits counts as invariant (0).
* Saliency invariance similarity (`saliency_invariance`):

      SIS(x) = mean_{g≠h} cos( g⁻¹·s(g·x), h⁻¹·s(h·x) ),  s(x) = ∇ₓ z_ŷ(x),

  the input-gradient saliency of the class ŷ predicted for the untransformed
  image, each map brought back to the common (untransformed) orientation by
  the inverse transformation; 1: the model attends to the same pixels in
  every orientation. For pixel permutations (`rot90`, `flips`) g⁻¹·s(g·x)
  equals ∇ₓ[z_ŷ(g·x)] exactly, so an invariant model scores 1; interpolating
  warps add interpolation and padding error.

Saliency invariance is not a streaming `Measure` (it lives in
`invjax.saliency`): a `Measure` sees only captured activations, and s(g·x)
is an input gradient of the network, so it needs ``apply_fn`` and
``params`` and one backward pass per transformed image.

The two output metrics are streaming `Measure`s: apply them to the logits
layer (``layers="logits"`` for `invjax.models`); the softmax is over the
last axis and logit norms are over the whole activation. Their ``values``
are the scalar broadcast to the activation shape, and the scalar is also
returned under the measure's name. Both handle transformation chunks exactly.

Reference:
  Moskalev, Sepliarskaia, Bekkers, Smeulders. "On genuine invariance learning
  without weight-tying", TAG-ML workshop at ICML 2023.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import base
from invjax._src import numerics
from invjax._src import sources
from invjax._src import stats
from invjax._src.measures import orbit as orbit_lib

Array = jax.Array


def predictive_invariance() -> base.Measure:
  """Generalized JSD of the orbit's softmax outputs, averaged over samples.

  Returns:
    A `Measure`; ``finalize`` gives ``"predictive_invariance"`` (nats, 0:
    invariant), ``"normalized"`` (divided by log|G|) and ``"values"``.
  """

  def extras(value, num_t):
    log_t = jnp.log(jnp.maximum(num_t, 1.0))
    # JSD ≤ log|G|; with one element there is nothing to vary: 0.
    return {"normalized": jnp.where(log_t > 0,
                                    value / jnp.where(log_t > 0, log_t, 1), 0)}

  return orbit_lib.orbit_measure(
      "predictive_invariance", orbit_lib.centroid_orbit("kl"),
      key="predictive_invariance", settings=(), extras=extras)


def _ratio(num: Array, den: Array) -> Array:
  # num ≤ den always; 0/0 (all-zero logits) is perfectly invariant: 0, and
  # anything over a zero (or NaN) denominator is 0 too, as it always was.
  return numerics.safe_divide(num, den, zero_over_zero=0.0,
                              nonzero_over_zero=0.0, propagate_nan=False)


def _logit_orbit() -> orbit_lib.Orbit:
  wsum = orbit_lib.orbit_sum

  def direct(x, w, ident):
    del ident
    zbar = wsum(x, w) / jnp.sum(w)
    num = wsum(orbit_lib.sq_norm(x - zbar[:, None]), w)
    den = wsum(orbit_lib.sq_norm(x), w)
    return _ratio(num, den), zbar

  def zeros(b, m, k):
    return jnp.zeros(()), jnp.zeros((b, m, k)), jnp.zeros((b,))

  def accumulate(x, w, ident):
    del ident
    return jnp.sum(w), wsum(x, w), wsum(orbit_lib.sq_norm(x), w)

  def reduce(acc, ident):
    del ident
    count, z_sum, sq = acc
    count = jnp.maximum(count, 1)
    zbar = z_sum / count
    # Σ_g ‖z_g − z̄‖² = Σ_g ‖z_g‖² − |G|·‖z̄‖², clipped against rounding.
    num = jnp.maximum(sq - count * orbit_lib.sq_norm(zbar), 0.0)
    return _ratio(num, sq), zbar

  return orbit_lib.Orbit(direct, zeros, accumulate, reduce)


def logit_invariance() -> base.Measure:
  """Σ_g‖z(g·x) − z̄(x)‖² / Σ_g‖z(g·x)‖², averaged over samples.

  Returns:
    A `Measure`; ``finalize`` gives ``"logit_invariance"`` (in [0, 1], 0:
    invariant) and ``"values"``.
  """
  return orbit_lib.orbit_measure("logit_invariance", _logit_orbit(),
                                 key="logit_invariance", settings=())


# ----------------------------------------------------------------------------
# Saliency invariance similarity.
# ----------------------------------------------------------------------------


def _check_images(images: Any) -> Array:
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}")
  return images


def aligned_saliency(apply_fn: Callable[[Any, Array], Array], params: Any,
                     images: Array, transformations: Any, *,
                     labels: Array | None = None) -> Array:
  """Saliency maps of every orbit element, in the untransformed orientation.

  g⁻¹·∇_{g·x} z_ŷ(g·x) for every sample x and element g: the gradient of the
  class-ŷ logit with respect to the *transformed* input, mapped back by the
  inverse transformation (`TransformationSet.apply_inverse`).

  Args:
    apply_fn: ``apply_fn(params, images (N, H, W, C)) -> logits (N, K)``; the
      samples must not interact (eval mode: no batch statistics).
    params: its parameters.
    images: (B, H, W, C) images.
    transformations: a TransformationSet of T elements.
    labels: (B,) classes to explain; default: argmax of the logits of the
      untransformed images, so every orbit element explains the same class.

  Returns:
    (B, T, H, W, C) saliency maps.
  """
  images = _check_images(images)
  b, h, w, c = images.shape
  t = len(transformations)
  if labels is None:
    labels = jnp.argmax(apply_fn(params, images), axis=-1)
  x = transformations.orbit(images).reshape((b * t, h, w, c))
  y = jnp.repeat(jnp.asarray(labels, jnp.int32), t)

  def total_logit(inputs):
    z = apply_fn(params, inputs)
    # Samples are independent, so the gradient of the sum is the per-sample
    # gradient: one backward pass for the whole batch.
    return jnp.sum(jnp.take_along_axis(z, y[:, None], axis=1))

  s = jax.grad(total_logit)(x).reshape((b, t, h, w, c))
  return transformations.unorbit(s, (h, w))


def saliency_invariance(apply_fn: Callable[[Any, Array], Array], params: Any,
                        images: Array, transformations: Any, *,
                        labels: Array | None = None,
                        absolute: bool = False) -> Array:
  """SIS(x) = mean_{g≠h} cos(g⁻¹·s(g·x), h⁻¹·s(h·x)) for each sample.

  The cosine is over the whole flattened (H, W, C) map; two zero maps have
  similarity 1, a zero and a nonzero map 0. Cost: one forward and one
  backward pass of B·T images.

  Args:
    apply_fn, params, images, transformations, labels: as `aligned_saliency`.
    absolute: compare |s| (the usual saliency visualization) rather than the
      signed gradients.

  Returns:
    (B,) similarities in [−1, 1] (in [0, 1] with ``absolute``); 1: the
    saliency is the same in every orientation. Take ``.mean()`` for a batch.
  """
  t = len(transformations)
  if t < 2:
    raise ValueError("saliency_invariance needs at least 2 transformations")
  maps = aligned_saliency(apply_fn, params, images, transformations,
                          labels=labels)
  v = maps.reshape(maps.shape[:2] + (-1,))
  if absolute:
    v = jnp.abs(v)
  n = stats.safe_sqrt(jnp.sum(v * v, axis=-1))                    # (B, T)
  u = v / jnp.where(n > 0, n, 1)[..., None]
  gram = jnp.einsum("btd,bsd->bts", u, u,
                    precision=jax.lax.Precision.HIGHEST)
  zero = n <= 0
  gram = jnp.where(zero[:, :, None] & zero[:, None, :], 1.0, gram)
  off_diagonal = 1.0 - jnp.eye(t, dtype=gram.dtype)
  return jnp.sum(gram * off_diagonal, axis=(1, 2)) / (t * (t - 1))


def saliency_invariance_dataset(apply_fn: Callable[[Any, Array], Array],
                                params: Any, images: Any, transformations: Any,
                                *, labels: Any = None, batch_size: int = 64,
                                absolute: bool = False) -> float:
  """The mean `saliency_invariance` over a dataset, in batches.

  The last partial batch is padded (with copies of the first image) and the
  padding left out of the mean, so the value does not depend on
  ``batch_size``. One compilation per call.

  Args:
    apply_fn, params, transformations, absolute: as `saliency_invariance`.
    images: (N, H, W, C) images (NumPy or JAX).
    labels: optional (N,) classes; default: the predicted ones.
    batch_size: images per step (each costs T forward and backward passes).

  Returns:
    The mean SIS over the N images.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[0] == 0:
    raise ValueError(f"images must be a non-empty (N, H, W, C) array, got "
                     f"shape {images.shape}")
  if not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  n = images.shape[0]
  b = min(int(batch_size), n)
  has_labels = labels is not None
  labels = (np.zeros((n,), np.int32) if not has_labels else
            np.asarray(labels, np.int32))

  @jax.jit
  def step(params, x, y, ts):
    return saliency_invariance(apply_fn, params, x, ts,
                               labels=y if has_labels else None,
                               absolute=absolute)

  total = 0.0
  for (x, y), mask in sources.padded_batches((images, labels), b):
    sis = np.asarray(step(params, x, y, transformations), np.float64)
    total += float(sis[mask].sum())
  return total / n
