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

The distances and the streaming of per-sample orbit statistics
(`orbit.orbit_measure`) live in `orbit`, shared with `genuine` and
`objectives`; this module only chooses among them.

References:
  Kvinge, Emerson, Jorgenson, Vasquez, Doster, Lew. "In What Ways Are Deep
  Neural Networks Invariant and How Should We Measure This?", NeurIPS 2022.
  Authors' later implementation: hkvinge/tagtorch,
  ``model_properties/equivariance_metrics.py``.
"""

from __future__ import annotations

from invjax._src import base
from invjax._src.measures import orbit as orbit_lib

_DISTANCES = tuple(orbit_lib.DISTANCES)
_REFERENCES = ("centroid", "identity")
_NORMALIZE = (None, "pairwise")


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
  orbit = (orbit_lib.centroid_orbit(distance) if reference == "centroid"
           else orbit_lib.identity_orbit(distance))
  pair_distance = None
  if normalize == "pairwise":
    pair_distance = orbit_lib.DISTANCES[distance]
  return orbit_lib.orbit_measure(
      "geed", orbit, key="geed",
      settings=base.settings_tuple(distance=distance, equivariant=equivariant,
                                   reference=reference, normalize=normalize),
      requires=base.Requirements(inverse=equivariant,
                                 untransformed=reference == "identity"),
      pair_distance=pair_distance,
      chunk_error="distance='euclidean' with reference='centroid'")
