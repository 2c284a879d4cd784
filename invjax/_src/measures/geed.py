"""G-EED: the group empirical equivariance deviation of Kvinge et al.

For the activation f_i of one layer, samples x ∈ D, the elements g of a finite
transformation set G and a distance m,

    G-EED_i = 1/(|D|·|G|) · Σ_x Σ_g m( f_i(g·x), ρ_i(g)·f̃_i(x) ).

* Invariance (``equivariant=False``; ρ_i trivial). The reference f̃_i(x) is
  the orbit centroid c_i(x) = (1/|G|) Σ_h f_i(h·x) (``reference="centroid"``,
  the default, as in the authors' TAGTorch code) or the untransformed
  activation f_i(x) (``reference="identity"``, as the paper's definition
  probably reads).
* Equivariance (``equivariant=True``). ρ_i(g) is the transformation set's own
  action on feature maps (`Action.inverse` with the input size), and input
  and latent group elements match exactly: the g applied to the image is the g
  applied to the feature map (TAGTorch samples a fresh g for the latent, which
  is only right for fully enumerated finite groups, and takes f̃_i(x) from the
  orbit's first element, which is x only when the orbit starts at the
  identity). TAGTorch compares m( f_i(g·x), ρ_i(g)·f_i(x) ) in the latent's
  own frame. The engine hands this measure ρ_i(g)⁻¹·f_i(g·x), so what is
  computed is

      m( ρ_i(g)⁻¹·f_i(g·x), f̃_i(x) ),  f̃_i(x) = f_i(x) (the default here)

  which equals m( f_i(g·x), ρ_i(g)·f_i(x) ) whenever m is invariant under
  ρ_i(g): exactly so for pixel permutations (`rot90`, `flips`) with
  ``"euclidean"`` or ``"cosine"`` over the whole activation. For
  interpolating warps (`rotation` by other angles, scales, translations) the
  comparison happens in the input frame, after the inverse warp, and padded
  corners count. ``reference="centroid"`` with ``equivariant=True`` compares
  each mapped-back map with the orbit mean of the mapped-back maps. Layers
  without spatial axes are skipped by the engine (with a note) because ρ_i is
  only defined on (h, w, c) feature maps.

Distances, all over the **whole activation of one sample**. TAGTorch's
``latent_g_eed`` instead applies ``F.cosine_similarity(..., dim=-1)`` (and
``torch.norm(dim=-1)`` for the euclidean distance) to its (|G|, N, C, H, W)
stack, i.e. one distance per **width row** of each channel, averaged over
rows, channels, samples and g; for a conv map that is a different number
(0.356 per row vs 0.0997 for the whole map on conv1 of a small CNN, as
measured for issue 12). For (N, D) latents and logits the two agree.

* ``"cosine"``: 1 − cos(a, b) of the flattened activations, computed as
  ½‖a/‖a‖ − b/‖b‖‖², which is the same number without float32 cancellation
  near 0. A zero vector against a zero vector is at distance 0, a zero vector
  against a nonzero one at distance 1 (torch's ``cosine_similarity`` puts
  both at distance 1, which matters for TAGTorch's all-zero ReLU rows).
* ``"euclidean"``: ‖a − b‖₂ of the flattened activations.
* ``"kl"``: KL( softmax f(g·x) ‖ reference distribution ), the softmax taken
  over the **last axis** (apply it to a logits layer; for other shapes the
  KL is averaged over the remaining positions). With the centroid reference
  the reference distribution is the mean of the orbit's softmaxes p̄, so
  (1/|G|) Σ_g KL(p_g ‖ p̄) is the generalized Jensen–Shannon divergence of
  the orbit (uniform weights), the TAGTorch default for softmax outputs.

``normalize="pairwise"`` divides G-EED by the mean distance between the
references of *different* samples, m(f̃_i(x_j), f̃_i(x_{j+1})), which is not
in the authors' code; None (the default) matches TAGTorch. To stream it, pairs
are consecutive samples in dataset order, j = 1..N−1 (the last sample of one
batch is paired with the first of the next), so the value does not depend on
the batch size; with ``stratify=True`` pairs are consecutive samples of the
same class. For ``"kl"`` the pair distance is KL(p̃_j ‖ p̃_{j+1}) between the
reference distributions. The ratio follows `stats.safe_divide` (0/0 → 1).

Outputs of ``finalize``: ``"geed"`` is the scalar G-EED of the layer;
``"values"`` is the same scalar broadcast to the activation's shape, so the
result's per-feature-map and per-layer values are all G-EED. With
``normalize="pairwise"`` also ``"deviation"`` (the unnormalized G-EED) and
``"pairwise_distance"``.

Transformation chunks (``transform_chunk``) are handled exactly for every
setting except ``distance="euclidean"`` with ``reference="centroid"``: the
distance to a centroid that is known only after the last chunk does not
decompose into per-chunk sums, so that combination needs whole orbits
(``transform_chunk=None``) and raises otherwise. Cosine and KL to the centroid
accumulate Σ_g f/‖f‖, Σ_g f (and Σ_g p, Σ_g p·log p) over chunks; whole orbits
use the direct, more accurate per-element form.

References:
  Kvinge, Emerson, Jorgenson, Vasquez, Doster, Lew. "In What Ways Are Deep
  Neural Networks Invariant and How Should We Measure This?", NeurIPS 2022.
  Authors' later implementation: hkvinge/tagtorch,
  ``model_properties/equivariance_metrics.py``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

from invjax._src import base
from invjax._src import stats

Array = jax.Array

_DISTANCES = ("cosine", "euclidean", "kl")
_REFERENCES = ("centroid", "identity")
_NORMALIZE = (None, "pairwise")


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


def weighted_sum(v: Array, w: Array) -> Array:
  """Σ_t w_t v[:, t] for v (B, Tc, ...) and weights w (Tc,)."""
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
  return weighted_sum(kl_divergence(lp, lbar[:, None]), w) / jnp.sum(w)


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
  dist = {"cosine": cosine_distance, "euclidean": euclidean_distance,
          "kl": kl_divergence}[distance]

  def zeros(b, m, k):
    del m, k
    return jnp.zeros(()), jnp.zeros((b,))

  def accumulate(x, w, ident):
    d = dist(prep(x), prep(ident)[:, None])                     # (B, Tc)
    return jnp.sum(w), weighted_sum(d, w)

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
      d = weighted_sum(kl_divergence(lp, lbar[:, None]), w) / jnp.sum(w)
      return d, lbar

    def zeros(b, m, k):
      return jnp.zeros(()), jnp.zeros((b, m, k)), jnp.zeros((b,))

    def accumulate(x, w, ident):
      del ident
      lp = jax.nn.log_softmax(x, axis=-1)
      p = jnp.exp(lp)
      neg_entropy = jnp.mean(jnp.sum(p * lp, axis=-1), axis=-1)  # (B, Tc)
      return jnp.sum(w), weighted_sum(p, w), weighted_sum(neg_entropy, w)

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
      c = weighted_sum(x, w) / jnp.sum(w)
      return weighted_sum(euclidean_distance(x, c[:, None]), w) / jnp.sum(w), c

    # No accumulators: ‖f − c‖ needs c before the first chunk is seen.
    return Orbit(direct_euclidean, None, None, None)

  def direct_cosine(x, w, ident):
    del ident
    c = weighted_sum(x, w) / jnp.sum(w)
    return weighted_sum(cosine_distance(x, c[:, None]), w) / jnp.sum(w), c

  def zeros_cosine(b, m, k):
    return (jnp.zeros(()), jnp.zeros((b, m, k)), jnp.zeros((b, m, k)),
            jnp.zeros((b,)))

  def accumulate_cosine(x, w, ident):
    del ident
    u, n = _unit(x)
    return (jnp.sum(w), weighted_sum(x, w), weighted_sum(u, w),
            weighted_sum((n <= 0).astype(x.dtype), w))

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
    marker: zero-size (Tp, 0, *shape) array: its *shape* tells `update`
      statically how many transformation slots an orbit has and `finalize`
      the activation shape, at no memory cost.
  """
  acc: Any
  samples: stats.RunningMean
  pairs: stats.RunningMean | None
  last_ref: Array | None
  has_ref: Array | None
  num_transformations: Array
  marker: Array


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
    settings: tuple[tuple[str, Any], ...], needs_inverse: bool = False,
    needs_identity: bool = False,
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
                      jnp.asarray(spec.num_transformations, jnp.float32),
                      jnp.zeros((spec.num_padded_transformations, 0) + shape))

  def update(state: OrbitState, block: base.Block) -> OrbitState:
    nd = block.x.ndim - 2
    x = as_mk(block.x.astype(jnp.float32), nd)
    w = block.t_mask.astype(jnp.float32)
    ident = None
    if needs_identity:
      if block.identity is None:
        raise ValueError(
            f"{name}: this setting compares with the untransformed "
            "activations; pass identity=(B, *shape) when calling the measure "
            "on a block")
      ident = as_mk(block.identity.astype(jnp.float32), nd)
    whole = x.shape[1] == state.marker.shape[0]
    acc = state.acc
    if whole and orbit.direct is not None:
      d, ref = orbit.direct(x, w, ident)
    elif orbit.accumulate is None:
      raise ValueError(
          f"{name}: {chunk_error or 'this setting'} needs whole orbits, got a "
          f"chunk of {x.shape[1]} of {state.marker.shape[0]} transformations; "
          "use transform_chunk=None")
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

  def finalize(state: OrbitState) -> dict[str, Array]:
    value = state.samples.mean
    out = {}
    if pair_distance is not None:
      out["deviation"] = value
      out["pairwise_distance"] = state.pairs.mean
      value = stats.safe_divide(value, state.pairs.mean)
    out[key] = value
    out["values"] = jnp.broadcast_to(value, state.marker.shape[2:])
    if extras is not None:
      out.update(extras(value, state.num_transformations))
    return out

  return base.Measure(name=name, init=init, update=update, merge=merge,
                      finalize=finalize, settings=settings,
                      needs_inverse=needs_inverse,
                      needs_identity=needs_identity)


def geed(*, distance: str = "cosine", equivariant: bool = False,
         reference: str | None = None,
         normalize: str | None = None) -> base.Measure:
  """Kvinge et al.'s G-EED of every layer: mean_x,g m(f(g·x), ρ(g)·f̃(x)).

  See the module docstring for the exact definitions, how equivariance is
  computed through the inverse feature-map action, and chunking.

  Args:
    distance: ``"cosine"`` (1 − cos over the whole flattened activation;
      TAGTorch's default for latents), ``"euclidean"`` or ``"kl"`` (softmax
      over the last axis; for logits layers).
    equivariant: compare ρ(g)⁻¹·f(g·x) with the reference instead of f(g·x),
      ρ being the transformation set's feature-map action; only layers with
      spatial (h, w, c) activations are measured.
    reference: ``"centroid"`` (orbit mean) or ``"identity"`` (f(x), needs one
      extra forward pass of the untransformed images). Default: the centroid
      for invariance and f(x) for equivariance, as in TAGTorch.
    normalize: None, or ``"pairwise"`` to divide by the mean distance between
      consecutive samples' references.

  Returns:
    A `Measure` whose ``finalize`` gives ``"geed"`` (scalar) and ``"values"``
    (it broadcast to the activation shape); 0 means invariant (equivariant).

  Examples:
    >>> import jax.numpy as jnp
    >>> from invjax._src.measures.geed import geed
    >>> orbit = jnp.ones((2, 4, 3))       # (B, T, features): invariant
    >>> float(geed()(orbit)["geed"])
    0.0
  """
  if distance not in _DISTANCES:
    raise ValueError(f"distance must be one of {_DISTANCES}, got {distance!r}")
  if not isinstance(equivariant, bool):
    raise ValueError(f"equivariant must be a bool, got {equivariant!r}")
  if reference is None:
    reference = "identity" if equivariant else "centroid"
  if reference not in _REFERENCES:
    raise ValueError(
        f"reference must be one of {_REFERENCES}, got {reference!r}")
  if normalize not in _NORMALIZE:
    raise ValueError(
        f"normalize must be one of {_NORMALIZE}, got {normalize!r}")
  orbit = (centroid_orbit(distance) if reference == "centroid"
           else identity_orbit(distance))
  pair_distance = None
  if normalize == "pairwise":
    pair_distance = {"cosine": cosine_distance,
                     "euclidean": euclidean_distance,
                     "kl": kl_divergence}[distance]
  return orbit_measure(
      "geed", orbit, key="geed",
      settings=base.settings_tuple(distance=distance, equivariant=equivariant,
                                   reference=reference, normalize=normalize),
      needs_inverse=equivariant, needs_identity=reference == "identity",
      pair_distance=pair_distance,
      chunk_error="distance='euclidean' with reference='centroid'")
