"""Per-sample orbit statistics and the distances they use, as `Measure`s.

An *orbit statistic* d(x) summarizes the orbit {f(g·x) : g ∈ G} of one
sample's activation f, e.g. the mean distance of its elements to the orbit
centroid; `orbit_measure` averages it over the dataset, streaming whole
orbits or transformation chunks, and can divide it by the mean distance
between consecutive samples' references. G-EED (`geed`), predictive and
logit invariance (`genuine`) and the KL training objective (`objectives`) are
built from these pieces.

Activations are viewed as (..., M, K): K is the last activation axis (the
class axis of logits), M all the others flattened. Distances are over the
**whole activation of one sample**:

* ``cosine_distance``: 1 − cos(a, b), computed as ½‖a/‖a‖ − b/‖b‖‖² (no
  float32 cancellation near 0); zero against zero is 0, zero against
  nonzero is 1.
* ``euclidean_distance``: ‖a − b‖₂.
* ``kl_divergence``: KL(p ‖ q) of log-probabilities over the last axis,
  averaged over the M positions.

References:
  Kvinge, Emerson, Jorgenson, Vasquez, Doster, Lew. "In What Ways Are Deep
  Neural Networks Invariant and How Should We Measure This?", NeurIPS 2022
  (G-EED and its orbit distances). Lin. "Divergence measures based on the
  Shannon entropy", IEEE Trans. Inf. Theory 37(1) 1991 (the generalized
  Jensen–Shannon divergence of `orbit_jsd`).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from invjax._src import base
from invjax._src import stats

Array = jax.Array


# ----------------------------------------------------------------------------
# Distances over (..., M, K) activations: K is the last activation axis (the
# class axis of logits), M all the others flattened.
# ----------------------------------------------------------------------------


def as_mk(x: Array, nd: int) -> Array:
  """Reshapes (..., *shape) with ``nd`` activation axes to (..., M, K)."""
  lead, shape = x.shape[:x.ndim - nd], x.shape[x.ndim - nd:]
  k = shape[-1] if shape else 1
  m = math.prod(shape[:-1]) if shape else 1
  return x.reshape(lead + (m, k))


def sq_norm(a: Array) -> Array:
  """‖a‖² over the whole activation: (..., M, K) -> (...)."""
  return jnp.sum(a * a, axis=(-2, -1))


def _unit(a: Array) -> tuple[Array, Array]:
  """(a/‖a‖ with 0 for a zero vector, ‖a‖); gradient-safe at 0."""
  n = stats.safe_sqrt(sq_norm(a))
  return a / jnp.where(n > 0, n, 1)[..., None, None], n


def cosine_distance(a: Array, b: Array) -> Array:
  """1 − cos(a, b) over the flattened activation: (..., M, K) -> (...)."""
  ua, na = _unit(a)
  ub, nb = _unit(b)
  # ½‖â − b̂‖² = 1 − â·b̂, without the cancellation of 1 − dot near 0.
  d = 0.5 * sq_norm(ua - ub)
  both, either = (na > 0) & (nb > 0), (na > 0) | (nb > 0)
  return jnp.where(both, d, jnp.where(either, 1.0, 0.0))


def euclidean_distance(a: Array, b: Array) -> Array:
  """‖a − b‖₂ over the flattened activation: (..., M, K) -> (...)."""
  return stats.safe_sqrt(sq_norm(a - b))


def kl_divergence(log_p: Array, log_q: Array) -> Array:
  """KL(p ‖ q) over the last axis, averaged over M: (..., M, K) -> (...)."""
  return jnp.mean(jnp.sum(jnp.exp(log_p) * (log_p - log_q), axis=-1), axis=-1)


# The distances by name, as `geed(distance=...)` takes them.
DISTANCES: Mapping[str, Callable[[Array, Array], Array]] = {
    "cosine": cosine_distance, "euclidean": euclidean_distance,
    "kl": kl_divergence}


def orbit_sum(v: Array, w: Array) -> Array:
  """Σ_t w_t v[:, t]: the w-weighted sum over the orbit axis.

  Args:
    v: (B, Tc, ...) values of a chunk of each sample's orbit.
    w: (Tc,) weights, 0 for padding transformations.

  Returns:
    (B, ...). (`stats.weighted_sum` is the general reduction over any axis.)
  """
  return jnp.sum(v * w.reshape((1, -1) + (1,) * (v.ndim - 2)), axis=1)


def log_mean_softmax(log_p: Array, w: Array) -> Array:
  """log of the w-weighted orbit mean of p: (B, Tc, M, K) -> (B, M, K)."""
  keep = (w > 0).reshape(1, -1, 1, 1)
  # logsumexp keeps log p̄ accurate when probabilities underflow.
  lse = jax.nn.logsumexp(jnp.where(keep, log_p, -jnp.inf), axis=1)
  return lse - jnp.log(jnp.sum(w))


def orbit_jsd(logits: Array, w: Array | None = None) -> Array:
  """Generalized Jensen–Shannon divergence of each orbit's softmaxes.

  JSD(x) = (1/|G|) Σ_g KL(p_g ‖ p̄),  p_g = softmax f(g·x),  p̄ = mean_g p_g;
  equivalently H(p̄) − mean_g H(p_g). Differentiable.

  Args:
    logits: (B, T, ..., K) orbit logits; softmax over the last axis.
    w: optional (T,) 0/1 weights of valid transformations.

  Returns:
    (B,) divergences in nats, each in [0, log T].
  """
  x = as_mk(logits, logits.ndim - 2)
  w = jnp.ones((x.shape[1],), x.dtype) if w is None else w.astype(x.dtype)
  lp = jax.nn.log_softmax(x, axis=-1)
  lbar = log_mean_softmax(lp, w)
  return orbit_sum(kl_divergence(lp, lbar[:, None]), w) / jnp.sum(w)


# ----------------------------------------------------------------------------
# Per-sample orbit statistics, streamed over transformation chunks.
# ----------------------------------------------------------------------------


class Orbit(NamedTuple):
  """One per-sample orbit statistic d(x) and the sample's reference r(x).

  Arrays come as x (B, Tc, M, K), the valid-transformation weights w (Tc,)
  and the untransformed activations ``ident`` (B, M, K) or None.

  Attributes:
    direct: ``(x, w, ident) -> (d (B,), r (B, M, K))`` from a whole orbit, in
      the accurate per-element form; None: use the accumulators.
    zeros: ``(B, M, K) -> acc``, the accumulators of one batch's orbits.
    accumulate: ``(x, w, ident) -> acc``, one chunk's contribution; the
      contributions of a batch's chunks are summed. None: whole orbits only.
    reduce: ``(acc, ident) -> (d, r)`` from the summed accumulators.
  """
  direct: Callable[..., tuple[Array, Array]] | None
  zeros: Callable[..., Any] | None
  accumulate: Callable[..., Any] | None
  reduce: Callable[..., tuple[Array, Array]] | None


def identity_orbit(distance: str) -> Orbit:
  """mean_g m(f(g·x), f(x)): per-element, so chunks simply add up."""
  is_kl = distance == "kl"
  prep = (lambda a: jax.nn.log_softmax(a, axis=-1)) if is_kl else (lambda a: a)
  dist = DISTANCES[distance]

  def zeros(b, m, k):
    del m, k
    return jnp.zeros(()), jnp.zeros((b,))

  def accumulate(x, w, ident):
    d = dist(prep(x), prep(ident)[:, None])                     # (B, Tc)
    return jnp.sum(w), orbit_sum(d, w)

  def reduce(acc, ident):
    count, total = acc
    return total / jnp.maximum(count, 1), prep(ident)

  return Orbit(None, zeros, accumulate, reduce)


def centroid_orbit(distance: str) -> Orbit:
  """mean_g m(f(g·x), c(x)) with c(x) the orbit centroid."""
  if distance == "kl":
    def direct(x, w, ident):
      del ident
      lp = jax.nn.log_softmax(x, axis=-1)
      lbar = log_mean_softmax(lp, w)
      d = orbit_sum(kl_divergence(lp, lbar[:, None]), w) / jnp.sum(w)
      return d, lbar

    def zeros(b, m, k):
      return jnp.zeros(()), jnp.zeros((b, m, k)), jnp.zeros((b,))

    def accumulate(x, w, ident):
      del ident
      lp = jax.nn.log_softmax(x, axis=-1)
      p = jnp.exp(lp)
      neg_entropy = jnp.mean(jnp.sum(p * lp, axis=-1), axis=-1)  # (B, Tc)
      return jnp.sum(w), orbit_sum(p, w), orbit_sum(neg_entropy, w)

    def reduce(acc, ident):
      del ident
      count, p_sum, neg_entropy = acc
      count = jnp.maximum(count, 1)
      pbar = p_sum / count
      lbar = jnp.log(jnp.maximum(pbar, jnp.finfo(pbar.dtype).tiny))
      # JSD = H(p̄) − mean_g H(p_g); clipped at 0 against rounding.
      jsd = neg_entropy / count - jnp.mean(jnp.sum(pbar * lbar, -1), -1)
      return jnp.maximum(jsd, 0.0), lbar

    return Orbit(direct, zeros, accumulate, reduce)

  if distance == "euclidean":
    def direct_euclidean(x, w, ident):
      del ident
      c = orbit_sum(x, w) / jnp.sum(w)
      return orbit_sum(euclidean_distance(x, c[:, None]), w) / jnp.sum(w), c

    # No accumulators: ‖f − c‖ needs c before the first chunk is seen.
    return Orbit(direct_euclidean, None, None, None)

  def direct_cosine(x, w, ident):
    del ident
    c = orbit_sum(x, w) / jnp.sum(w)
    return orbit_sum(cosine_distance(x, c[:, None]), w) / jnp.sum(w), c

  def zeros_cosine(b, m, k):
    return (jnp.zeros(()), jnp.zeros((b, m, k)), jnp.zeros((b, m, k)),
            jnp.zeros((b,)))

  def accumulate_cosine(x, w, ident):
    del ident
    u, n = _unit(x)
    return (jnp.sum(w), orbit_sum(x, w), orbit_sum(u, w),
            orbit_sum((n <= 0).astype(x.dtype), w))

  def reduce_cosine(acc, ident):
    del ident
    count, x_sum, u_sum, num_zero = acc
    count = jnp.maximum(count, 1)
    c = x_sum / count
    uc, nc = _unit(c)
    # mean_g (1 − f̂_g·ĉ): a zero f_g has f̂_g = 0, i.e. distance 1, as in
    # `cosine_distance`. A zero centroid is at distance 0 from zero f_g only.
    d = jnp.where(nc > 0, 1.0 - jnp.sum(u_sum / count * uc, axis=(-2, -1)),
                  1.0 - num_zero / count)
    return jnp.maximum(d, 0.0), c

  return Orbit(direct_cosine, zeros_cosine, accumulate_cosine, reduce_cosine)


class OrbitState(NamedTuple):
  """State of an `orbit_measure` for one layer.

  Attributes:
    acc: accumulators of the current batch's orbits (chunked streaming).
    samples: running mean over samples of d(x).
    pairs: running mean of the pair distances (``normalize`` only).
    last_ref: (M, K) reference of the last sample seen (``normalize`` only).
    has_ref: () bool, whether ``last_ref`` is set (``normalize`` only).
    num_transformations: () float, T (unpadded).
  """
  acc: Any
  samples: stats.RunningMean
  pairs: stats.RunningMean | None
  last_ref: Array | None
  has_ref: Array | None
  num_transformations: Array


def _update_pairs(state: OrbitState, ref: Array, mask: Array,
                  pair_distance: Callable[[Array, Array], Array]
                  ) -> OrbitState:
  """Adds m(r_j, r_{j+1}) for consecutive valid samples, across batches."""
  b = mask.shape[0]
  valid_index = jnp.where(mask, jnp.arange(b), -1)
  # Index of the previous valid sample of this batch, −1 when there is none:
  # a running max over the shifted indices.
  prev = jax.lax.cummax(
      jnp.concatenate([jnp.full((1,), -1, valid_index.dtype),
                       valid_index[:-1]]), axis=0)
  in_batch = prev >= 0
  prev_ref = jnp.where(in_batch[:, None, None], ref[jnp.maximum(prev, 0)],
                       state.last_ref[None])
  formed = mask & (in_batch | state.has_ref)
  d = pair_distance(prev_ref, ref)
  pairs = stats.merge_mean(state.pairs, stats.block_mean(d, formed))
  last = jnp.max(valid_index)
  any_valid = last >= 0
  last_ref = jnp.where(any_valid, ref[jnp.maximum(last, 0)], state.last_ref)
  return state._replace(pairs=pairs, last_ref=last_ref,
                        has_ref=state.has_ref | any_valid)


def orbit_measure(
    name: str, orbit: Orbit, *, key: str,
    settings: tuple[tuple[str, Any], ...],
    requires: base.Requirements = base.Requirements(),
    pair_distance: Callable[[Array, Array], Array] | None = None,
    extras: Callable[[Array, Array], Mapping[str, Array]] | None = None,
    chunk_error: str = "",
) -> base.Measure:
  """A `Measure` averaging a per-sample orbit statistic over the dataset.

  The per-sample value d(x) comes from `Orbit`; the measure's value is the
  mean of d over valid samples, optionally divided by the mean pair distance
  of the references (``pair_distance``). ``finalize`` returns ``key`` (the
  scalar), ``values`` (the scalar broadcast to the activation shape) and
  ``extras(value, num_transformations)``.
  """

  def init(spec: base.LayerSpec) -> OrbitState:
    shape = tuple(spec.shape)
    k = shape[-1] if shape else 1
    m = math.prod(shape[:-1]) if shape else 1
    acc = (orbit.zeros(spec.batch_size, m, k) if orbit.zeros is not None
           else ())
    pairs = last_ref = has_ref = None
    if pair_distance is not None:
      pairs = stats.zeros_mean(())
      last_ref = jnp.zeros((m, k))
      has_ref = jnp.zeros((), bool)
    return OrbitState(acc, stats.zeros_mean(()), pairs, last_ref, has_ref,
                      jnp.asarray(spec.num_transformations, jnp.float32))

  def update(state: OrbitState, block: base.Block) -> OrbitState:
    nd = block.x.ndim - 2
    x = as_mk(block.x.astype(jnp.float32), nd)
    w = block.t_mask.astype(jnp.float32)
    ident = None
    if requires.untransformed:
      if block.untransformed is None:
        raise ValueError(
            f"{name}: this setting compares with the untransformed "
            "activations; pass untransformed=(B, *shape) when calling the "
            "measure on a block")
      ident = as_mk(block.untransformed.astype(jnp.float32), nd)
    acc = state.acc
    if block.whole_orbit and orbit.direct is not None:
      d, ref = orbit.direct(x, w, ident)
    elif orbit.accumulate is None:
      raise ValueError(
          f"{name}: {chunk_error or 'this setting'} needs whole orbits, got a "
          f"chunk of {x.shape[1]} transformations; use transform_chunk=None")
    else:
      contrib = orbit.accumulate(x, w, ident)
      acc = jax.tree.map(lambda c, a: jnp.where(block.first, c, a + c),
                         contrib, acc)
      d, ref = orbit.reduce(acc, ident)
    old = state._replace(acc=acc)
    new = old._replace(samples=stats.merge_mean(
        state.samples, stats.block_mean(d, block.mask)))
    if pair_distance is not None:
      new = _update_pairs(new, ref, block.mask, pair_distance)
    # Orbits are complete only on a batch's last chunk: fold in then.
    return jax.tree.map(lambda n, o: jnp.where(block.last, n, o), new, old)

  def merge(a: OrbitState, b: OrbitState) -> OrbitState:
    out = b._replace(samples=stats.merge_mean(a.samples, b.samples))
    if pair_distance is not None:
      # The pair straddling the two sample sets is not formed.
      out = out._replace(
          pairs=stats.merge_mean(a.pairs, b.pairs),
          last_ref=jnp.where(b.has_ref, b.last_ref, a.last_ref),
          has_ref=a.has_ref | b.has_ref)
    return out

  def finalize(state: OrbitState, spec: base.LayerSpec) -> dict[str, Array]:
    value = state.samples.mean
    out = {}
    if pair_distance is not None:
      out["deviation"] = value
      out["pairwise_distance"] = state.pairs.mean
      value = stats.safe_divide(value, state.pairs.mean)
    out[key] = value
    out["values"] = jnp.broadcast_to(value, spec.shape)
    if extras is not None:
      out.update(extras(value, state.num_transformations))
    return out

  return base.Measure(name=name, init=init, update=update, merge=merge,
                      finalize=finalize, settings=settings, requires=requires)
