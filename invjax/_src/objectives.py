"""Differentiable invariance objectives, to add to a training loss.

* `invariance_error`: Moskalev et al.'s invariance-error regularizer on the
  network's output over each training sample's orbit,

      logit_spread(x) = (1/|G|) Σ_g ‖f(g·x) − f̄(x)‖²,  f̄ = (1/|G|) Σ_g f(g·x),
      kl(x)           = (1/|G|) Σ_g KL( p(g·x) ‖ p̄(x) )  (generalized JSD),

  averaged over the batch; train with ``CE + λ·invariance_error``. For large
  groups a random subset of S = ``num_samples`` elements per step (from
  ``key``) estimates the logit spread with expectation
  (S−1)·|G| / (S·(|G|−1)) times the full-orbit value (a sample variance
  without replacement), which only rescales λ.
* `nv_penalty`: the normalized variance (Quiroga et al.) of one hidden layer
  on the current batch, through `engine.measure_block`.

Both take the parameters to differentiate with respect to. For a Linen model
that is usually the raw ``variables['params']`` tree (as `invjax.train` does):
`invariance_error` hands it to your ``logits_fn``, and `nv_penalty` puts it
back into the variables `capture.linen` was given; `nv_penalty` also takes
the whole variables dict.

Reference:
  Moskalev, Sepliarskaia, Bekkers, Smeulders. "On genuine invariance learning
  without weight-tying", TAG-ML workshop at ICML 2023 ("invariance error
  regularization"; the exact form used there was not available, see
  `invjax._src.measures.genuine`).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from invjax._src import capture_callable
from invjax._src import engine
from invjax._src import stats
from invjax._src.measures import orbit as orbit_lib
from invjax._src.measures import variance

Array = jax.Array

_KINDS = ("logit_spread", "kl")


def orbit_logits(logits_fn: Callable[[Any, Array], Array], params: Any,
                 images: Array, transformations: Any, *,
                 key: Array | None = None,
                 num_samples: int | None = None) -> Array:
  """Logits of every (sample, group element) pair: (B, S, ...).

  Args:
    logits_fn, params, images, transformations, key, num_samples: as
      `invariance_error`.

  Returns:
    (B, S, ...) logits, S = T or ``num_samples``.
  """
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be (B, H, W, C), got shape {images.shape}")
  rows = transformations.parameters
  t = rows.shape[0]
  if (key is None) != (num_samples is None):
    raise ValueError("pass both key and num_samples to sample group elements, "
                     "or neither to use all of them")
  if num_samples is not None:
    if (not isinstance(num_samples, int) or isinstance(num_samples, bool)
        or not 2 <= num_samples <= t):
      raise ValueError(f"num_samples must be an int in [2, {t}] (an orbit of "
                       f"one element has no spread), got {num_samples!r}")
    # One subset per step, shared by the batch, drawn without replacement.
    rows = rows[jax.random.choice(key, t, (num_samples,), replace=False)]
  x = type(transformations)(rows, transformations.action).orbit(images)
  b, s = x.shape[:2]
  z = logits_fn(params, x.reshape((b * s,) + x.shape[2:]))
  return z.reshape((b, s) + z.shape[1:])


def invariance_error(logits_fn: Callable[[Any, Array], Array], params: Any,
                     images: Array, transformations: Any, *,
                     kind: str = "logit_spread", key: Array | None = None,
                     num_samples: int | None = None,
                     return_logits: bool = False
                     ) -> Array | tuple[Array, Array]:
  """The orbit spread of a network's outputs, averaged over a batch.

  Differentiable with respect to ``params`` (and ``images``).

  Args:
    logits_fn: ``logits_fn(params, images (N, H, W, C)) -> (N, K)``.
    params: its parameters, handed to ``logits_fn`` unchanged. For a Linen
      model, pass the raw ``variables['params']`` with ``logits_fn = lambda
      p, x: model.apply({**variables, 'params': p}, x)``: the same tree
      `nv_penalty` takes, so one loss can add both terms.
    images: (B, H, W, C) training images (untransformed).
    transformations: a TransformationSet G (e.g. `rot90()`).
    kind: ``"logit_spread"``: (1/|G|) Σ_g ‖f(g·x) − f̄(x)‖² (squared norm over
      all logits); ``"kl"``: (1/|G|) Σ_g KL(p(g·x) ‖ p̄(x)), softmax over the
      last axis.
    key: PRNG key to use a random subset of ``num_samples`` group elements
      (same for the whole batch); give both or neither.
    num_samples: size of that subset, in [2, |G|].
    return_logits: also return the (B, S, K) orbit logits, e.g. to compute
      the cross-entropy over the orbit without another forward pass.

  Returns:
    The scalar error, or ``(error, logits)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from invjax._src import objectives, transforms
    >>> pool = lambda p, x: x.mean(axis=(1, 2))        # invariant to rot90
    >>> float(objectives.invariance_error(pool, None, jnp.ones((2, 4, 4, 3)),
    ...                                   transforms.rot90()))
    0.0
  """
  if kind not in _KINDS:
    raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")
  z = orbit_logits(logits_fn, params, images, transformations, key=key,
                   num_samples=num_samples)
  zf = z.astype(jnp.promote_types(z.dtype, jnp.float32))
  if kind == "logit_spread":
    dev = zf - jnp.mean(zf, axis=1, keepdims=True)
    per_sample = jnp.mean(
        jnp.sum(dev.reshape(dev.shape[:2] + (-1,)) ** 2, axis=-1), axis=1)
  else:
    per_sample = orbit_lib.orbit_jsd(zf)
  error = jnp.mean(per_sample)
  return (error, z) if return_logits else error


def nv_penalty(activations: Any, params: Any, images: Array,
               transformations: Any, layer: str, *,
               statistic: str = "variance", ddof: int = 1) -> Array:
  """Normalized variance of one layer on one batch, as a differentiable loss.

  NV_layer = mean(TV) / mean(SV) over the layer's activations (the ratio of
  layer means, so dead units with SV = 0 do not make it infinite), with TV and
  SV from `normalized_variance` on the batch's B samples × T transformations
  (`engine.measure_block`). B must be ≥ 2 for SV with ddof = 1. Division by
  `stats.safe_divide` (0/0 → 1).

  Args:
    activations: an `invjax.capture` Activations (or a callable) returning
      ``layer``; its weights are replaced by ``params``.
    params: parameters to differentiate with respect to. For
      `capture.linen` activations either the variables dict
      ``{'params': ..., 'batch_stats': ...}`` or the raw ``'params'`` tree
      alone (as `invariance_error` takes it), which replaces
      ``variables['params']`` and keeps the other collections; which one is
      decided by the tree's structure, never by guessing. Otherwise the tree
      ``activations.apply`` takes (an `nnx.State` for `capture.nnx`).
    images: (B, H, W, C) images.
    transformations: a TransformationSet.
    layer: the layer name.
    statistic, ddof: as `normalized_variance`.

  Returns:
    The scalar NV of ``layer`` (0: invariant).

  Raises:
    ValueError: ``layer`` is not among the activations, or ``params`` for
      Linen activations is neither their variables nor their ``'params'``.
  """
  activations = capture_callable.as_activations(activations)
  params = _linen_variables(activations.params, params)
  out = engine.measure_block(
      activations, images, transformations,
      variance.normalized_variance(statistic=statistic, ddof=ddof),
      params=params, layers=[layer])
  if layer not in out:
    raise ValueError(f"layer {layer!r} not among the activations")
  return stats.safe_divide(jnp.mean(out[layer]["numerator"]),
                           jnp.mean(out[layer]["denominator"]))


def _linen_variables(own: Any, given: Any) -> Any:
  """``given`` as the tree ``apply`` takes, when ``own`` is Linen variables.

  Linen activations apply ``{'params': ..., <other collections>}``, but a
  training loss differentiates the ``'params'`` entry alone. The two are told
  apart by structure: ``given`` is the variables when its ``'params'`` entry
  has the layout of ``own['params']``, and the raw parameters when it has
  that layout itself. One tree cannot have both (it would contain itself), so
  this never guesses; anything else is an error that says what is expected.
  """
  if given is None or not (isinstance(own, Mapping) and "params" in own):
    # None: the activations' own weights; else apply takes the tree as it is.
    return given
  layout = _layout(own["params"])
  if isinstance(given, Mapping) and "params" in given and (
      _layout(given["params"]) == layout):
    return given
  if _layout(given) == layout:
    return {**own, "params": given}
  keys = sorted(map(str, given)) if isinstance(given, Mapping) else None
  raise ValueError(
      "nv_penalty: params must be the Linen variables {'params': ...} given "
      "to capture.linen, or their 'params' entry alone (the tree "
      "invariance_error takes); got a tree laid out like neither"
      + (f" (top-level keys {keys})" if keys is not None else
         f" ({type(given).__name__})"))


def _layout(tree: Any) -> tuple[str, ...]:
  # Key paths, not treedefs: a FrozenDict and a dict of the same keys match.
  return tuple(jax.tree_util.keystr(path) for path, _ in
               jax.tree_util.tree_flatten_with_path(tree)[0])
