"""One-parameter image flows t ↦ warp_t(x) and their tangents at t = 0.

The generators of `invjax.lie.lie_derivative` (Gruver et al. 2023).
See `invjax._src.flows` for the coordinate conventions, for why these are
not `invjax.transforms` sets (per radian, mirror borders, analytic
tangents), and `lie_deriv_factor` for the units and signs of Gruver et al.'s
code; `invjax._src.colour_flows` for the colour flows.
"""

from invjax._src.colour_flows import brightness
from invjax._src.colour_flows import contrast
from invjax._src.colour_flows import gain
from invjax._src.colour_flows import saturation
from invjax._src.flow_base import Flow
from invjax._src.flow_base import image_gradient
from invjax._src.flows import affine_flow
from invjax._src.flows import flow
from invjax._src.flows import hyperbolic_rotation
from invjax._src.flows import lie_deriv_factor
from invjax._src.flows import rotation
from invjax._src.flows import scale
from invjax._src.flows import shear_x
from invjax._src.flows import shear_y
from invjax._src.flows import stretch
from invjax._src.flows import translation_x
from invjax._src.flows import translation_y

__all__ = (
    "Flow",
    "affine_flow",
    "brightness",
    "contrast",
    "flow",
    "gain",
    "hyperbolic_rotation",
    "image_gradient",
    "lie_deriv_factor",
    "rotation",
    "saturation",
    "scale",
    "shear_x",
    "shear_y",
    "stretch",
    "translation_x",
    "translation_y",
)
