"""Saliency invariance: do input-gradient saliency maps follow the input?

    SIS(x) = mean_{g≠h} cos( g⁻¹·s(g·x), h⁻¹·s(h·x) ),  s(x) = ∇ₓ z_ŷ(x),

Moskalev et al.'s saliency invariance similarity, as this library
operationalizes it (see `invjax._src.measures.genuine`). It is not a
streamed `Measure` of `invjax.measures`: it needs the network's input
gradients (``apply_fn`` and ``params``), not captured activations.

Reference:
  Moskalev, Sepliarskaia, Bekkers, Smeulders. "On genuine invariance learning
  without weight-tying", TAG-ML workshop at ICML 2023.
"""

from invjax._src.measures.genuine import aligned_saliency
from invjax._src.measures.genuine import saliency_invariance
from invjax._src.measures.genuine import saliency_invariance_dataset

__all__ = (
    "aligned_saliency",
    "saliency_invariance",
    "saliency_invariance_dataset",
)
