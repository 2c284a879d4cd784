"""Lie derivatives and the local equivariance error (LEE) of Gruver et al.

For a one-parameter group g_t = exp(tA) acting on inputs by ρ₁ and on
outputs by ρ₂, the Lie derivative of a network f at an input x is

    (L_A f)(x) = d/dt ρ₂(g_t)⁻¹ f(ρ₁(g_t) x) |_{t=0}
               = J_f(x)·v(x) − τ(f(x)),

where v(x) = d/dt ρ₁(g_t)x|₀ is the input tangent (`Flow.tangent`) and τ the
tangent of the output action. For classifiers ρ₂ is trivial, τ = 0, and
L_A f(x) = J_f(x)·v(x) is one forward-mode `jax.jvp` of the network along v.
The tangent v is computed analytically (−∇x·ξ, see `invjax._src.flows`)
rather than by differentiating a warp at t = 0, where bilinear warps have a
kink and dm-pix's returns exactly 0.

The local equivariance error of one image is the mean over the d output
dimensions of

    "mean_square": (1/d)·‖L_A f(x)‖²   (paper Eq. 4 and its Fig. 3 code),
    "mean_abs":    (1/d)·‖L_A f(x)‖₁   (the reference `e2e_lee.py`),

by default on softmax probabilities; the dataset LEE is its mean over
images. The two reference aggregations disagree (lie-deriv issue #6), so
both are offered and neither is silent.

Why flows are not TransformationSets
------------------------------------
The generators are `invjax.flows`, not `invjax.transforms` sets. A
`TransformationSet` is a finite set of group elements applied by warps, and
at the identity the derivative of dm-pix's bilinear warps is zero (a kink:
every sample sits on a pixel), so the Lie derivative needs the generator,
an analytic tangent. ``"rotation"`` and ``"scale"`` name both a flow and the
family it generates, with the same direction; ``"translation"`` has two
parameters (pass ``("translation_y", "translation_x")``) and the discrete
``rot90`` and ``flips`` have no tangent, so those names are refused with the
reason. Derivatives are per radian, the Lie-algebra unit, where the sets
take degrees: per degree is π/180 times per radian (mean-square LEE
(π/180)² times, mean-abs LEE π/180 times); lie-deriv's units are
`flows.lie_deriv_factor`. There is no unit option: only rotation's
parameter is an angle (shears and scales are ratios, translations pixels),
so it would apply to one generator of a sequence. Borders mirror, as Gruver
et al.'s reference: a zero border (the sets' ``"constant"``) makes the
tangent at the edge a spurious step, the frame edge moving rather than the
content; ``flows.flow(name, mode="constant")`` is there to compare. These
defaults are those of every recorded LEE; see `invjax._src.flows`.

Numbers beside lie-deriv's
--------------------------
Gruver et al.'s code (``ngruver/lie-deriv``, whose numbers the paper
reports) differentiates its bilinear warp at t = 0 by autograd, which at
integer sample positions returns the *forward* difference of the image
(mirror border): v⁺ = −D⁺x·ξ instead of −∇x·ξ, half a pixel off (see
`invjax._src.flows`). ``tangent="forward"`` uses v⁺ for the input and for
every feature-map action, so that, with ``aggregate="mean_abs"`` and the
factor c = `flows.lie_deriv_factor` (their units and signs: −(W−1)/2 for
x-translations, −1 for rotations), c·L and |c|·LEE are their quantities.
It is a finite-difference approximation kept only for comparison; the
default ``tangent="exact"`` is the true t → 0 limit of the warp's central
difference. Their code also maps a flow to a feature map of another size
in normalised coordinates: an h-row map moves (h−1)/(H−1) times as many
pixels as the input, here h/H. In `layerwise_lie_derivative` that only moves
error between layers; with ``equivariant=True`` and an output of another
size than the input it changes the end-to-end value too.

Layer-wise decomposition
------------------------
Write f = f_n ∘ … ∘ f_1, with the softmax (if any) folded into f_n;
h_0 = x, h_i = f_i(h_{i−1}); and let τ_i be the tangent of the action on
h_i: the flow itself on the input (τ_0 = v), the flow rescaled to the map's
size on hidden feature maps (B, h, w, c), the output action on h_n, and 0 on
everything else. Layer i's own Lie derivative is

    L_A f_i = J_{f_i}(h_{i−1})·τ_{i−1}(h_{i−1}) − τ_i(h_i),

and its contribution to the output is that, pushed through the rest of the
network S_i = f_n ∘ … ∘ f_{i+1} (S_n = id):

    c_i = J_{S_i}(h_i)·L_A f_i.

By the chain rule J_{S_i}·J_{f_i} = J_{S_{i−1}}, so the sum telescopes:

    Σ_i c_i = J_{S_0}(x)·v − τ_n(h_n) = J_f(x)·v − τ(f(x)) = L_A f(x),

the end-to-end Lie derivative (τ_n = 0 for vector outputs).
The identity holds for *any* choice of hidden actions τ_i; the choice only
decides how the total is split between layers. Gruver et al. estimate
‖c_i‖² with Hutchinson probes through backward hooks; here c_i is computed
exactly, in forward mode: `jax.linearize` each layer once and push every
earlier contribution through it together with the new one.

Per-layer LEEs are the aggregation of each c_i. Squares do not add, so the
per-layer "mean_square" LEEs do not sum to the end-to-end LEE; the
contribution *vectors* do.

References:
  Gruver, Finzi, Goldblum, Wilson. "The Lie Derivative for Measuring Learned
  Equivariance". ICLR 2023. https://arxiv.org/abs/2210.02984
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp

from invjax._src import flows as flows_lib

Array = jax.Array
FlowLike = Union[str, flows_lib.Flow]

_AGGREGATES = ("mean_square", "mean_abs")
_OUTPUTS = ("probabilities", "logits")
_TANGENTS = ("exact", "forward")


class LieDerivative(NamedTuple):
  """End-to-end Lie derivatives and LEE of a batch of images.

  With a single flow the leading G axis is absent.

  Attributes:
    derivative: (G, B, *out) the Lie derivatives L_A f(x).
    per_image: (G, B) LEE of each image: mean over output dims of the
      squared (``"mean_square"``) or absolute (``"mean_abs"``) derivative.
    lee: (G,) mean of ``per_image`` over images.
  """
  derivative: Array
  per_image: Array
  lee: Array


class LayerwiseLieDerivative(NamedTuple):
  """Exact per-layer contributions to the Lie derivative.

  With a single flow the G axis is absent.

  Attributes:
    contributions: (L, G, B, *out) c_i = J_{suffix_i}·L_A f_i, one per layer;
      they sum over L to ``total.derivative``.
    per_image: (L, G, B) LEE of each contribution, per image.
    lee: (L, G) mean of ``per_image`` over images.
    total: the end-to-end `LieDerivative` (Σ_i c_i).
  """
  contributions: Array
  per_image: Array
  lee: Array
  total: LieDerivative


def _as_flows(generators) -> tuple[tuple[flows_lib.Flow, ...], bool]:
  """Normalises one or several flows; also says whether there was one."""
  single = isinstance(generators, (str, flows_lib.Flow))
  items = (generators,) if single else tuple(generators)
  if not items:
    raise ValueError("need at least one generator")
  return tuple(flows_lib.flow(g) if isinstance(g, str) else g
               for g in items), single


def _check_options(output: str, aggregate: str, tangent: str) -> None:
  if output not in _OUTPUTS:
    raise ValueError(f"output must be one of {_OUTPUTS}, got {output!r}")
  if aggregate not in _AGGREGATES:
    raise ValueError(
        f"aggregate must be one of {_AGGREGATES}, got {aggregate!r}")
  if tangent not in _TANGENTS:
    raise ValueError(f"tangent must be one of {_TANGENTS}, got {tangent!r}")


def _tangent_fn(flow: flows_lib.Flow,
                tangent: str) -> Callable[[Array], Array]:
  """The flow's exact tangent, or lie-deriv's forward-difference one."""
  if tangent == "exact":
    return flow.tangent
  if flow.forward_tangent is not None:
    return flow.forward_tangent
  if flow.generator is None:
    # Colour flows are pointwise: no image differences, nothing to approximate.
    return flow.tangent
  raise ValueError(
      f"tangent='forward': flow {flow.name!r} has no forward_tangent; build "
      "geometric flows with invjax.flows.affine_flow")


def _action_tangent(flow: flows_lib.Flow, h: Array,
                    input_hw: tuple[int, int],
                    tangent: str = "exact") -> Array | None:
  """Tangent of the action on a batch of hidden activations, None if trivial.

  A (B, h, w, c) array is a feature map acted on by the flow rescaled from
  the input grid (H, W) to (h, w). Anything else, and every activation under
  a colour flow (no natural action past the input), is acted on trivially.
  """
  if h.ndim != 4 or flow.rescale is None:
    return None
  hw = h.shape[1:3]
  if hw != tuple(input_hw):
    flow = flow.rescale(hw[0] / input_hw[0], hw[1] / input_hw[1])
  return jax.vmap(_tangent_fn(flow, tangent))(h)


def _aggregate(derivative: Array, aggregate: str, batch_axis: int) -> Array:
  """Per-image LEE: mean over all axes after ``batch_axis``."""
  axes = tuple(range(batch_axis + 1, derivative.ndim))
  if aggregate == "mean_square":
    return jnp.mean(jnp.square(derivative), axis=axes)
  return jnp.mean(jnp.abs(derivative), axis=axes)


def _input_tangents(flows, images: Array, tangent: str) -> Array:
  """(G, B, H, W, C) input tangents, one vmap over images per flow."""
  return jnp.stack([jax.vmap(_tangent_fn(f, tangent))(images)
                    for f in flows])


def lie_derivative(
    fn: Callable[[Array], Array],
    images: Array,
    generators: FlowLike | Sequence[FlowLike],
    *,
    output: str = "probabilities",
    aggregate: str = "mean_square",
    equivariant: bool = False,
    tangent: str = "exact",
) -> LieDerivative:
  """Lie derivative L_A f(x) and LEE of a network, end to end.

  L_A f(x) = J_f(x)·v(x) − τ(f(x)), with v the flow's analytic tangent
  (`Flow.tangent`) and τ the output action's tangent (0 unless
  ``equivariant``). Computed with one `jax.jvp` of ``fn`` on the batch,
  vmapped over the generators (the primal pass is shared).

  LEE per image (Gruver et al., ICLR 2023):
  ``"mean_square"`` = (1/d)·Σ_k (L_A f(x))_k² (paper Eq. 4);
  ``"mean_abs"`` = (1/d)·Σ_k |L_A f(x)_k| (reference ``e2e_lee.py``).

  Args:
    fn: the network on a batch, ``(B, H, W, C) -> (B, *out)``, in inference
      mode; examples must not interact (no batch statistics).
    images: (B, H, W, C).
    generators: a flow name (see `invjax._src.flows.FLOW_NAMES`; e.g.
      ``"rotation"``, per radian, the generator of
      `invjax.transforms.rotation`), a `Flow`, or a sequence of them. One
      flow drops the G axis of the results.
    output: ``"probabilities"`` applies a softmax over the last axis of
      ``fn``'s output first (as the paper); ``"logits"`` uses it as is.
    aggregate: ``"mean_square"`` or ``"mean_abs"``.
    equivariant: treat a (B, h, w, c) output as a feature map acted on by
      the same flow rescaled to (h, w), and subtract its tangent:
      L = d/dt ρ₂(g_t)⁻¹ f(ρ₁(g_t)x). Requires image-like outputs and a
      geometric flow (a colour flow acts trivially on outputs).
    tangent: ``"exact"``: v = −∇x·ξ with central differences, the t → 0
      limit of the bilinear warp's central difference. ``"forward"``:
      v⁺ = −D⁺x·ξ with forward differences, the approximation that Gruver
      et al.'s code computes (autograd through its bilinear sampler at
      t = 0, mirror border); with ``aggregate="mean_abs"`` and
      `flows.lie_deriv_factor` it reproduces their numbers (see the module
      docstring). Same for colour flows.

  Returns:
    A `LieDerivative` (derivative, per_image, lee).

  Example:
    >>> import jax.numpy as jnp
    >>> fn = lambda x: jnp.mean(x, axis=(1, 2))   # translation invariant
    >>> res = lie_derivative(fn, jnp.ones((2, 8, 8, 3)), "translation_x",
    ...                      output="logits")
    >>> res.per_image.shape
    (2,)
  """
  _check_options(output, aggregate, tangent)
  flows, single = _as_flows(generators)
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be (B, H, W, C), got {images.shape}")
  input_hw = images.shape[1:3]

  def network(x):
    y = fn(x)
    return jax.nn.softmax(y, axis=-1) if output == "probabilities" else y

  tangents = _input_tangents(flows, images, tangent)
  y, dy = jax.vmap(lambda v: jax.jvp(network, (images,), (v,)),
                   out_axes=(None, 0))(tangents)
  if equivariant:
    if y.ndim != 4:
      raise ValueError("equivariant=True needs image-like outputs "
                       f"(B, h, w, c), got {y.shape}")
    out_tangents = [_action_tangent(f, y, input_hw, tangent) for f in flows]
    dy = dy - jnp.stack([jnp.zeros_like(y) if t is None else t
                         for t in out_tangents])
  per_image = _aggregate(dy, aggregate, batch_axis=1)
  result = LieDerivative(derivative=dy, per_image=per_image,
                         lee=jnp.mean(per_image, axis=1))
  return jax.tree.map(lambda a: a[0], result) if single else result


def layerwise_lie_derivative(
    layers: Sequence[Callable[[Array], Array]],
    images: Array,
    generators: FlowLike | Sequence[FlowLike],
    *,
    output: str = "probabilities",
    aggregate: str = "mean_square",
    feature_maps: bool = True,
    equivariant: bool = False,
    tangent: str = "exact",
) -> LayerwiseLieDerivative:
  """Exact per-layer contributions c_i = J_{suffix_i}(h_i)·L_A f_i.

  The network is ``layers[-1] ∘ … ∘ layers[0]`` (then the softmax unless
  ``output="logits"``; it is folded into the last layer, whose contribution
  then includes the softmax's own term). Layer i's own Lie derivative
  L_A f_i = J_{f_i}·τ_{i−1}(h_{i−1}) − τ_i(h_i) uses the flow on the input,
  the flow rescaled to (h, w) on (B, h, w, c) feature maps (when
  ``feature_maps``) and the trivial action elsewhere; it is pushed to the
  output in forward mode. By the chain rule the contributions telescope:
  Σ_i c_i equals the end-to-end Lie derivative (see the module docstring).

  Rescaling assumes a feature map covers the same field as the input with
  corners aligned (pixel pitch H/h); with strided 'SAME' convolutions the
  true correspondence is off by a sub-pixel translation. That only moves
  error between layers, never changes the sum.

  Cost: one linearisation per layer and Σ_i i layer-JVPs (vmapped), i.e.
  about n/2 network JVPs for n layers; use coarse layers (blocks) for deep
  networks.

  Args:
    layers: callables on batches, ``(B, ...) -> (B, ...)``, in order; e.g.
      from `linen_sequential_layers`.
    images: (B, H, W, C).
    generators: a flow name, a `Flow`, or a sequence of them.
    output: ``"probabilities"`` (softmax on the last axis) or ``"logits"``.
    aggregate: ``"mean_square"`` or ``"mean_abs"``.
    feature_maps: act on (B, h, w, c) hidden activations with the rescaled
      flow; if False every hidden layer is required to be invariant.
    equivariant: also act on a (B, h, w, c) final output (see
      `lie_derivative`).
    tangent: ``"exact"`` or ``"forward"`` (lie-deriv's forward-difference
      tangent, on the input and on every feature-map action; see
      `lie_derivative`). Lie-deriv maps a flow to a smaller feature map in
      normalised coordinates, (h−1)/(H−1) where this uses h/H, so per-layer
      values still differ from theirs; the total does not.

  Returns:
    A `LayerwiseLieDerivative`.

  Example:
    >>> import jax.numpy as jnp
    >>> layers = [jnp.tanh, lambda h: jnp.mean(h, axis=(1, 2))]
    >>> res = layerwise_lie_derivative(layers, jnp.ones((2, 8, 8, 3)),
    ...                                ("rotation", "scale"))
    >>> res.contributions.shape, res.lee.shape      # (L, G, B, out), (L, G)
    ((2, 2, 2, 3), (2, 2))
  """
  _check_options(output, aggregate, tangent)
  flows, single = _as_flows(generators)
  layers = list(layers)
  if not layers:
    raise ValueError("need at least one layer")
  images = jnp.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be (B, H, W, C), got {images.shape}")
  input_hw = images.shape[1:3]
  num_layers = len(layers)

  def action(h, last):
    """(G, *h.shape) tangents of the actions on h, or None if trivial."""
    if (last and not equivariant) or (not last and not feature_maps):
      return None
    ts = [_action_tangent(f, h, input_hw, tangent) for f in flows]
    if all(t is None for t in ts):
      return None
    return jnp.stack([jnp.zeros_like(h) if t is None else t for t in ts])

  def push(linear, tangents):
    """Applies a layer's linearisation to a (K, G, *shape) tangent stack."""
    k, g = tangents.shape[:2]
    flat = tangents.reshape((k * g,) + tangents.shape[2:])
    out = jax.vmap(linear)(flat)
    return out.reshape((k, g) + out.shape[1:])

  if output == "probabilities":
    # Fold the softmax into the last layer, so that its own term is counted
    # there and the output action (if any) is applied after it, exactly as
    # in `lie_derivative`.
    last_layer = layers[-1]
    layers[-1] = lambda z: jax.nn.softmax(last_layer(z), axis=-1)

  h = images
  tau = _input_tangents(flows, images, tangent)  # τ_0 = v, (G, B, H, W, C)
  stack = None                          # (i, G, B, ...): c_0 … c_{i−1}
  for i, layer in enumerate(layers):
    h_next, linear = jax.linearize(layer, h)
    tau_next = action(h_next, last=(i == num_layers - 1))
    # L_A f_i = J_{f_i}·τ_{i−1} − τ_i; a trivial action contributes nothing.
    if tau is None:
      own = jnp.zeros((len(flows),) + h_next.shape, h_next.dtype)
    else:
      own = jax.vmap(linear)(tau)
    if tau_next is not None:
      own = own - tau_next
    stack = own[None] if stack is None else jnp.concatenate(
        [push(linear, stack), own[None]])
    h, tau = h_next, tau_next
  if equivariant and h.ndim != 4:
    raise ValueError("equivariant=True needs image-like outputs "
                     f"(B, h, w, c), got {h.shape}")

  per_image = _aggregate(stack, aggregate, batch_axis=2)
  total_derivative = jnp.sum(stack, axis=0)
  total_per_image = _aggregate(total_derivative, aggregate, batch_axis=1)
  total = LieDerivative(derivative=total_derivative, per_image=total_per_image,
                        lee=jnp.mean(total_per_image, axis=1))
  result = LayerwiseLieDerivative(contributions=stack, per_image=per_image,
                                  lee=jnp.mean(per_image, axis=2),
                                  total=total)
  if single:
    result = LayerwiseLieDerivative(
        contributions=stack[:, 0], per_image=per_image[:, 0],
        lee=result.lee[:, 0], total=jax.tree.map(lambda a: a[0], total))
  return result


def linen_sequential_layers(
    module, variables) -> list[Callable[[Array], Array]]:
  """The layers of a bound-able Flax Linen ``nn.Sequential`` as callables.

  Args:
    module: an ``nn.Sequential`` (or any Linen module with a ``layers``
      sequence of submodules / plain functions applied in order).
    variables: its variables, e.g. from ``module.init``.

  Returns:
    A list of ``(B, ...) -> (B, ...)`` callables, one per entry of
    ``module.layers``, for `layerwise_lie_derivative`.
  """
  bound = module.bind(variables)
  return list(bound.layers)
