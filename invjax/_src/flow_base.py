"""The `Flow` type and what every flow shares: image checks and gradients.

A `Flow` is a one-parameter group of transformations of one image (H, W, C)
with its tangent at the identity; the geometric flows are built in
`invjax._src.flows`, the colour flows in `invjax._src.colour_flows`.
`image_gradient` is the finite-difference gradient that the geometric
tangents use, with the image extended past its border by the same rule as
the warp (``mode``, `PAD_MODES`).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array

# map_coordinates mode -> jnp.pad mode extending the image the same way.
PAD_MODES = {
    "mirror": "reflect",
    "reflect": "symmetric",
    "nearest": "edge",
    "wrap": "wrap",
    "constant": "constant",
}
_DIFFERENCES = ("central", "forward")


class Flow(NamedTuple):
  """A one-parameter flow on single images (H, W, C).

  Attributes:
    name: e.g. ``"rotation"``.
    warp: ``(image, t) -> image``: the transformation at a finite parameter
      t, differentiable in t and in the image.
    tangent: ``image -> image``: the exact velocity d/dt warp_t(x) at t = 0.
    generator: for geometric flows, the 3×3 generator matrix
      ``[[A, b], [0, 0]]`` in centred homogeneous (row, col, 1) pixel
      coordinates, as nested tuples of floats (so flows stay hashable and
      comparable; ``np.asarray(flow.generator)`` for the matrix); None for
      colour flows.
    rescale: for geometric flows, ``(sy, sx) -> Flow``: the same group
      element acting on a grid whose pixel is 1/sy × 1/sx input pixels (a
      feature map of size (sy·H, sx·W)). The generator is conjugated by
      S = diag(sy, sx): translations shrink with the map, rotations stay
      rotations about the map's own centre. None for colour flows, which act
      trivially on feature maps.
    forward_tangent: for geometric flows, ``image -> image``: −D⁺x·ξ with
      forward differences, the finite-difference tangent of Gruver et al.'s
      code (see `invjax._src.flows`); None for colour flows, which are
      pointwise, so the two definitions agree.
  """
  name: str
  warp: Callable[[Array, Array], Array]
  tangent: Callable[[Array], Array]
  generator: tuple[tuple[float, ...], ...] | None = None
  rescale: Callable[[float, float], "Flow"] | None = None
  forward_tangent: Callable[[Array], Array] | None = None



def check_image(image: Array, name: str) -> None:
  if image.ndim != 3:
    raise ValueError(
        f"{name}: expected one image of shape (H, W, C), got {image.shape}; "
        "use jax.vmap for batches")
  if not jnp.issubdtype(image.dtype, jnp.floating):
    raise ValueError(f"{name}: expected a floating-point image, got "
                     f"{image.dtype}")



def image_gradient(image: Array, *, mode: str = "mirror", cval: float = 0.0,
                   difference: str = "central") -> tuple[Array, Array]:
  """Finite-difference gradient (∂/∂row, ∂/∂col) of an (H, W, C) image.

  ``"central"``: ∂x/∂row ≈ (x[r+1] − x[r−1]) / 2, the t → 0 limit of
  central differences of the bilinear warp (what `Flow.tangent` uses).
  ``"forward"``: ∂x/∂row ≈ x[r+1] − x[r], what autograd through a bilinear
  sampler returns at integer positions (Gruver et al.'s code; see
  `invjax._src.flows`). The image is extended by one pixel past its border
  according to ``mode``.

  Args:
    image: (H, W, C).
    mode: boundary rule, one of ``"mirror"``, ``"reflect"``, ``"nearest"``,
      ``"wrap"``, ``"constant"``.
    cval: fill value for ``"constant"``.
    difference: ``"central"`` or ``"forward"``.

  Returns:
    Two arrays of the image's shape: derivatives along rows and columns.
  """
  check_image(image, "image_gradient")
  if mode not in PAD_MODES:
    raise ValueError(f"unknown mode {mode!r}; expected one of "
                     f"{sorted(PAD_MODES)}")
  if difference not in _DIFFERENCES:
    raise ValueError(f"unknown difference {difference!r}; expected one of "
                     f"{_DIFFERENCES}")
  pad = ((1, 1), (1, 1), (0, 0))
  if mode == "constant":
    padded = jnp.pad(image, pad, mode="constant", constant_values=cval)
  else:
    padded = jnp.pad(image, pad, mode=PAD_MODES[mode])
  if difference == "forward":
    centre = padded[1:-1, 1:-1]
    return padded[2:, 1:-1] - centre, padded[1:-1, 2:] - centre
  d_row = (padded[2:, 1:-1] - padded[:-2, 1:-1]) / 2
  d_col = (padded[1:-1, 2:] - padded[1:-1, :-2]) / 2
  return d_row, d_col

