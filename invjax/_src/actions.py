"""Actions: how one parameter row transforms one (H, W, C) image.

An `Action` is a static, hashable object with ``forward(params, image)`` and
``inverse(params, fmap, input_shape=...)`` for a single row and a single
image (the conventions are in `invjax._src.transforms`): `AffineAction`
(bilinear dm-pix warps of rotations, scales and translations, with exact
inverses), `Rot90Action` and `FlipAction` (exact), and `ComposedAction`
(one action after another, for `transforms.product`).
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, Sequence

import dm_pix
import jax
from jax import lax
import jax.numpy as jnp

Array = jax.Array

_MODES = ("constant", "nearest", "wrap", "mirror", "reflect")
_FACTOR_SIZES = {"rotation": 1, "scale": 2, "translation": 2}


# --------------------------------------------------------------------------
# Actions: static, hashable objects that apply one parameter row.
# --------------------------------------------------------------------------


class Action(abc.ABC):
  """How one row of transformation parameters acts on images and feature maps.

  Subclasses must be hashable and immutable (frozen dataclasses): the action is
  static pytree data and part of compilation cache keys. Both methods act on a
  single ``(H, W, C)`` array and a single ``(P,)`` parameter row, which may be
  traced; batching is done by the caller with `jax.vmap`.
  """

  @property
  @abc.abstractmethod
  def num_params(self) -> int:
    """P, the length of one parameter row."""

  @property
  @abc.abstractmethod
  def exact(self) -> bool:
    """True when the action only permutes pixels (no interpolation)."""

  @abc.abstractmethod
  def forward(self, p: Array, image: Array) -> Array:
    """Applies the transformation with parameters ``p`` to ``image``.

    Args:
      p: (P,) parameter row.
      image: (H, W, C) image.

    Returns:
      The transformed (H, W, C) image.
    """

  @abc.abstractmethod
  def inverse(self, p: Array, fmap: Array, *,
              input_shape: Sequence[int] | None = None) -> Array:
    """Applies the inverse transformation to an (h, w, c) feature map.

    Args:
      p: (P,) parameter row (of the forward transformation).
      fmap: (h, w, c) feature map.
      input_shape: (H, W) spatial size of the input image the parameters refer
        to; translations are rescaled by (h/H, w/W). Defaults to (h, w).

    Returns:
      The (h, w, c) feature map with the inverse transformation applied.
    """


def check_rank3(x: Any, what: str) -> None:
  if getattr(x, "ndim", None) != 3:
    raise ValueError(f"{what} must be a rank-3 (H, W, C) array, got shape "
                     f"{getattr(x, 'shape', type(x))}")


def _spatial_ratio(fmap: Array, input_shape: Sequence[int] | None):
  """(h/H, w/W) as Python floats, checking ``input_shape``."""
  if input_shape is None:
    return 1.0, 1.0
  input_shape = tuple(input_shape)
  if len(input_shape) < 2 or any(int(s) <= 0 for s in input_shape[:2]):
    raise ValueError("input_shape must be the input's (H, W) spatial size, "
                     f"got {input_shape!r}")
  return (fmap.shape[0] / int(input_shape[0]),
          fmap.shape[1] / int(input_shape[1]))


def _snap(v: Array) -> Array:
  # cos(90°) in float32 is -4.4e-8, not 0. That puts border samples a hair
  # outside [0, H - 1], where constant mode returns cval; snapping keeps
  # multiples of 90° exact.
  r = jnp.round(v)
  return jnp.where(jnp.abs(v - r) < 1e-6, r, v)


def _homogeneous(linear: Array, shift: Array) -> Array:
  """3x3 homogeneous matrix from a 2x2 linear part and a (2,) shift."""
  top = jnp.concatenate([linear, shift[:, None]], axis=1)
  return jnp.concatenate([top, jnp.array([[0.0, 0.0, 1.0]], top.dtype)])


def _factor_matrices(kind: str, q: Array) -> tuple[Array, Array]:
  """Forward and exact inverse 3x3 matrices of one factor, centred coords."""
  q = q.astype(jnp.float32)
  zero = jnp.zeros((2,), jnp.float32)
  eye = jnp.eye(2, dtype=jnp.float32)
  if kind == "rotation":
    a = jnp.deg2rad(jnp.mod(q[0], 360.0))
    c, s = _snap(jnp.cos(a)), _snap(jnp.sin(a))
    # (row, col) with rows pointing down: this is counter-clockwise on screen.
    fwd = jnp.stack([jnp.stack([c, -s]), jnp.stack([s, c])])
    return _homogeneous(fwd, zero), _homogeneous(fwd.T, zero)
  if kind == "scale":
    return (_homogeneous(jnp.diag(q), zero),
            _homogeneous(jnp.diag(1.0 / q), zero))
  if kind == "translation":
    return _homogeneous(eye, q), _homogeneous(eye, -q)
  raise ValueError(f"unknown affine factor {kind!r}")


def _matmul(a: Array, b: Array) -> Array:
  # Pin float32: on GPUs the default precision may be TF32, which would
  # perturb sampling coordinates by ~1e-3 relative.
  return jnp.matmul(a, b, precision=lax.Precision.HIGHEST)


def _warp(image: Array, pull: Array, ratio: tuple[float, float], mode: str,
          cval: float) -> Array:
  """Resamples ``image`` with a centred pull (output -> input) matrix.

  Args:
    image: (h, w, c) array.
    pull: 3x3 homogeneous matrix in centred (row, col) coordinates of the
      *input image* the parameters refer to, mapping output to input points.
    ratio: (h/H, w/W); the matrix is conjugated by diag(ratio) so that it acts
      on this array's pixel grid.
    mode: dm-pix padding mode.
    cval: fill value for mode "constant".

  Returns:
    The resampled (h, w, c) array.
  """
  h, w = image.shape[:2]
  d = jnp.array(ratio, jnp.float32)
  # D · pull · D^{-1}, written elementwise: exact and free of dot precision.
  linear = pull[:2, :2] * d[:, None] / d[None, :]
  shift = pull[:2, 2] * d
  centre = jnp.array([(h - 1) / 2.0, (w - 1) / 2.0], jnp.float32)
  # Move the origin from the centre to pixel (0, 0): o' = c + L (o - c) + s.
  offset = centre + shift - (linear[:, 0] * centre[0] +
                             linear[:, 1] * centre[1])
  z = jnp.zeros((), jnp.float32)
  one = jnp.ones((), jnp.float32)
  # dm-pix resamples all three axes; the channel row is the identity so the
  # channel coordinate stays an exact integer.
  matrix = jnp.stack([
      jnp.stack([linear[0, 0], linear[0, 1], z, offset[0]]),
      jnp.stack([linear[1, 0], linear[1, 1], z, offset[1]]),
      jnp.stack([z, z, one, z]),
      jnp.stack([z, z, z, one]),
  ])
  # dm-pix computes coordinates with a float32 matmul of its own; pin its
  # precision for the same reason as `_matmul`.
  with jax.default_matmul_precision("highest"):
    return dm_pix.affine_transform(image, matrix, order=1, mode=mode,
                                   cval=cval)


@dataclasses.dataclass(frozen=True)
class AffineAction(Action):
  """A composition of rotation, scale and translation factors, one warp.

  The parameter row is the concatenation of the factors' parameters in the
  order of ``factors``: rotation ``(degrees,)``, scale ``(sy, sx)``,
  translation ``(dy, dx)`` (input pixels). Factors compose like matrix
  products, right to left: ``factors[-1]`` is applied first, so
  ``("translation", "rotation", "scale")`` is ``T · R · S``. With no factors
  this is the identity and returns its input unchanged.

  Attributes:
    factors: tuple of "rotation", "scale" or "translation".
    mode: dm-pix padding mode.
    cval: fill value for mode "constant".
  """
  factors: tuple[str, ...] = ()
  mode: str = "constant"
  cval: float = 0.0

  def __post_init__(self):
    for f in self.factors:
      if f not in _FACTOR_SIZES:
        raise ValueError(f"unknown affine factor {f!r}; expected one of "
                         f"{tuple(_FACTOR_SIZES)}")
    _check_mode(self.mode)

  @property
  def num_params(self) -> int:
    return sum(_FACTOR_SIZES[f] for f in self.factors)

  @property
  def exact(self) -> bool:
    return not self.factors

  def matrices(self, p: Array) -> tuple[Array, Array]:
    """Forward and inverse 3x3 matrices in centred (row, col) coordinates.

    Args:
      p: (P,) parameter row.

    Returns:
      ``(M, M_inv)``: M maps a centred input point ``x - c`` (translations in
      input pixels) to its centred output point; ``M_inv`` is its exact inverse,
      built from the factors' analytic inverses rather than a numeric one.
    """
    fwd = inv = jnp.eye(3, dtype=jnp.float32)
    start = 0
    for f in self.factors:
      size = _FACTOR_SIZES[f]
      mf, mf_inv = _factor_matrices(f, p[start:start + size])
      start += size
      fwd = _matmul(fwd, mf)
      inv = _matmul(mf_inv, inv)
    return fwd, inv

  def forward(self, p: Array, image: Array) -> Array:
    check_rank3(image, "image")
    if not self.factors:
      return image
    _, inv = self.matrices(p)
    # dm-pix wants the output -> input map, i.e. the inverse of the forward.
    return _warp(image, inv, (1.0, 1.0), self.mode, self.cval)

  def inverse(self, p: Array, fmap: Array, *,
              input_shape: Sequence[int] | None = None) -> Array:
    check_rank3(fmap, "feature map")
    ratio = _spatial_ratio(fmap, input_shape)
    if not self.factors:
      return fmap
    fwd, _ = self.matrices(p)
    # Warping by t^{-1} pulls from t(o): the pull matrix is the forward one.
    return _warp(fmap, fwd, ratio, self.mode, self.cval)


def _check_square(x: Array, what: str) -> None:
  if x.shape[0] != x.shape[1]:
    raise ValueError(f"rot90 needs a square {what}, got spatial shape "
                     f"{tuple(x.shape[:2])}")


def _rot90(x: Array, k: Array) -> Array:
  k = jnp.mod(jnp.round(k).astype(jnp.int32), 4)
  # k is traced, and jnp.rot90 needs a static k: branch over the four.
  branches = [lambda y, kk=kk: jnp.rot90(y, kk, axes=(0, 1))
              for kk in range(4)]
  return lax.switch(k, branches, x)


@dataclasses.dataclass(frozen=True)
class Rot90Action(Action):
  """Exact rotations by ``k`` quarter turns (parameter row ``(k,)``).

  Counter-clockwise as displayed, like ``jnp.rot90(x, k, axes=(0, 1))``.
  Images and feature maps must be square.
  """

  @property
  def num_params(self) -> int:
    return 1

  @property
  def exact(self) -> bool:
    return True

  def forward(self, p: Array, image: Array) -> Array:
    check_rank3(image, "image")
    _check_square(image, "image")
    return _rot90(image, p[0])

  def inverse(self, p: Array, fmap: Array, *,
              input_shape: Sequence[int] | None = None) -> Array:
    check_rank3(fmap, "feature map")
    _spatial_ratio(fmap, input_shape)
    _check_square(fmap, "feature map")
    return _rot90(fmap, -p[0])


@dataclasses.dataclass(frozen=True)
class FlipAction(Action):
  """Exact reflections; parameter row ``(flip_up_down, flip_left_right)``.

  Each entry is 0 or 1 (values above 0.5 flip). Flips are their own inverse.
  """

  @property
  def num_params(self) -> int:
    return 2

  @property
  def exact(self) -> bool:
    return True

  def forward(self, p: Array, image: Array) -> Array:
    check_rank3(image, "image")
    image = jnp.where(p[0] > 0.5, image[::-1, :], image)
    return jnp.where(p[1] > 0.5, image[:, ::-1], image)

  def inverse(self, p: Array, fmap: Array, *,
              input_shape: Sequence[int] | None = None) -> Array:
    check_rank3(fmap, "feature map")
    _spatial_ratio(fmap, input_shape)
    # Both flips commute and are involutions.
    return self.forward(p, fmap)


@dataclasses.dataclass(frozen=True)
class ComposedAction(Action):
  """``outer ∘ inner``: the row is ``(outer params, inner params)``.

  Used by `product` when the two actions cannot be merged into one affine
  matrix (e.g. rot90 with rotations); each part does its own resampling.

  Attributes:
    outer: the action applied second.
    inner: the action applied first.
  """
  outer: Action
  inner: Action

  @property
  def num_params(self) -> int:
    return self.outer.num_params + self.inner.num_params

  @property
  def exact(self) -> bool:
    return self.outer.exact and self.inner.exact

  def _split(self, p: Array) -> tuple[Array, Array]:
    n = self.outer.num_params
    return p[:n], p[n:]

  def forward(self, p: Array, image: Array) -> Array:
    po, pi = self._split(p)
    return self.outer.forward(po, self.inner.forward(pi, image))

  def inverse(self, p: Array, fmap: Array, *,
              input_shape: Sequence[int] | None = None) -> Array:
    po, pi = self._split(p)
    # (a ∘ b)^{-1} = b^{-1} ∘ a^{-1}.
    fmap = self.outer.inverse(po, fmap, input_shape=input_shape)
    return self.inner.inverse(pi, fmap, input_shape=input_shape)


def _check_mode(mode: str) -> None:
  if mode not in _MODES:
    raise ValueError(f"unknown padding mode {mode!r}; expected one of {_MODES}")
