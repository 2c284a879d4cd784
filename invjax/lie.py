"""Lie derivatives and the local equivariance error (Gruver et al. 2023).

    (L_A f)(x) = d/dt ρ₂(g_t)⁻¹ f(ρ₁(g_t) x) |_{t=0} = J_f(x)·v(x) − τ(f(x)),

end to end (`lie_derivative`, one `jax.jvp`) or split exactly into per-layer
contributions that sum to it (`layerwise_lie_derivative`). The generators are
`invjax.flows`: one-parameter flows with an analytic tangent v, given as a
`Flow` or a flow name (``"rotation"``, ``"scale"``, ``"translation_x"``, …;
``"rotation"`` and ``"scale"`` are also the names of the
`invjax.transforms` families they generate). Derivatives are per radian
(rotation) and per input pixel (translations), with mirror borders, as in
Gruver et al.'s code: multiply by π/180 for per degree, and see
`invjax.flows.lie_deriv_factor` for their units and signs. Why the
generators are flows and not transformation sets of `invjax.transforms` is
explained in `invjax._src.lie`.

They are not streamed measures of `invjax.measures`: they need the network
itself (its Jacobian-vector products), not captured activations.
"""

from invjax._src.lie import layerwise_lie_derivative
from invjax._src.lie import LayerwiseLieDerivative
from invjax._src.lie import lie_derivative
from invjax._src.lie import LieDerivative
from invjax._src.lie import linen_sequential_layers

__all__ = (
    "LayerwiseLieDerivative",
    "LieDerivative",
    "layerwise_lie_derivative",
    "lie_derivative",
    "linen_sequential_layers",
)
