"""STIR: shared invariance between two models (Nanda et al., ICML 2022).

`invert_representation` finds, by projected normalised gradient descent,
inputs X′ that a reference model m1 represents like X; `stir` then measures
how similar a second model m2 finds X and X′,

    STIR(m2 | m1, X) = (1/k) Σ_{j=1..k} S(m2(X), m2(X′_j)),

with S a CKA from `cka` (linear by default). Both directions are computed,
with the plain S(m1(X), m2(X)) beside them.

Why STIR is not a `Measure`: it optimises inputs (gradient descent through
m1) and compares two models, where a `Measure` reads one network's
activations under a fixed transformation set. Its values go into results
files and sweep tables through `similarity.as_result`.

Reference:
  Nanda, Speicher, Kolling, Dickerson, Gummadi, Weller. "Measuring
  Representational Robustness of Neural Networks Through Shared
  Invariances", ICML 2022.
"""

from __future__ import annotations

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from invjax._src import cka

Array = jax.Array
Model = Callable[[Array], Array]
Similarity = Callable[[Array, Array], Array]


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
  target_norm = jnp.maximum(cka.safe_norm(target, 1),
                            jnp.finfo(target.dtype).tiny)

  def losses(z):
    return cka.safe_norm(model(z).reshape(n, -1) - target, 1) / target_norm

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
    g_norm = cka.safe_norm(g.reshape(n, -1), 1)
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
    "linear": cka.linear_cka,
    "rbf": cka.rbf_cka,
    "unbiased": cka.unbiased_cka,
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
