"""Group actions on images: the transformation sets invariance is measured over.

A `TransformationSet` is a pytree holding a ``(T, P)`` float32 parameter array
(one row per transformation, the only pytree leaf) and a static, hashable
*action* that knows how to apply one row to one image. Everything is written for
a single ``(H, W, C)`` image and a single parameter row; sets, batches and the
measurement engine get their extra axes from `jax.vmap`.

Conventions:

* Images and feature maps are ``(H, W, C)`` (channels last). Coordinates are
  ``(row, col)`` pixel indices, rows going *down* the image as it is displayed.
* Angles are in **degrees** in the public API. Positive angles rotate the
  content **counter-clockwise as displayed**, so ``rotation([90.])`` equals
  ``jnp.rot90(image, k=1, axes=(0, 1))`` (for a square image, exactly).
* Rotation and scaling are about the image centre
  ``((H - 1) / 2, (W - 1) / 2)``.
  A scale factor ``s > 1`` zooms in (content gets bigger). Scales are
  ``(sy, sx)`` pairs; a scalar means ``(s, s)``.
* Translations are ``(dy, dx)`` in input pixels; positive ``dx`` moves the
  content right, positive ``dy`` moves it down.
* `affine` composes scale, then rotation, then translation into one matrix,
  ``M = T · R · S``, so each element is a single interpolation.
* Warps are bilinear (order 1) and use `dm_pix.affine_transform`. Samples that
  fall outside the input are filled according to ``mode`` (default
  ``"constant"`` with ``cval=0``; note dm-pix's own default is ``"nearest"``).
  ``mode="nearest"`` matches tmeasures' ``padding_mode="border"``.
* `rot90` and `flips` are exact (no interpolation), as is `identity`; `rot90`
  needs square images. Rotations by multiples of 90° are exact too: their
  cos/sin are snapped to 0/±1.
* `product(a, b)` applies ``b_j`` first, then ``a_i``; element ``(i, j)`` is
  row ``i·len(b) + j`` and its parameters are ``a``'s then ``b``'s.

Inverse transformations (for same-equivariance, ``t^{-1}(f(t(x)))``) use the
exact inverse matrix ``S^{-1} R^{-1} T^{-1}``. This is also correct for
combined sets such as rotation + translation, where tmeasures' parameter-wise
inverse ``(-r, 1/s, -t)`` is not. An inverse can act on a feature map of any
spatial size ``(h, w)``: given the input size ``(H, W)``, the transformation is
conjugated by ``D = diag(h/H, w/W)`` about the centres, so a translation of
``(dy, dx)`` input pixels becomes ``(dy·h/H, dx·w/W)`` feature-map pixels (and a
rotation stays a rotation when ``h/H == w/W``). Mapping centre to centre is an
approximation for layers whose padding shifts the grid by a fraction of a
pixel.

Angle units: `rotation` takes ``unit="degrees"`` (default), ``"radians"`` or
``"turns"``. Because a degrees/radians mix-up silently measures the wrong thing
(tmeasures itself shipped one, see `paper_sets`), ``unit="degrees"`` refuses
angle lists whose largest magnitude is within 1e-3 of π/2, π or 2π: those look
like radians, so pass ``unit="radians"``.

`TransformationSet.apply` and `apply_inverse` are jitted (one compilation per
action, set size and image shape); `Action.forward` and `Action.inverse` are
plain traceable functions for callers that jit and vmap themselves.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import itertools
import math
from typing import Any, Iterator, Sequence

import dm_pix
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

_MODES = ("constant", "nearest", "wrap", "mirror", "reflect")
_UNITS = ("degrees", "radians", "turns")
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


def _check_rank3(x: Any, what: str) -> None:
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
    _check_rank3(image, "image")
    if not self.factors:
      return image
    _, inv = self.matrices(p)
    # dm-pix wants the output -> input map, i.e. the inverse of the forward.
    return _warp(image, inv, (1.0, 1.0), self.mode, self.cval)

  def inverse(self, p: Array, fmap: Array, *,
              input_shape: Sequence[int] | None = None) -> Array:
    _check_rank3(fmap, "feature map")
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
    _check_rank3(image, "image")
    _check_square(image, "image")
    return _rot90(image, p[0])

  def inverse(self, p: Array, fmap: Array, *,
              input_shape: Sequence[int] | None = None) -> Array:
    _check_rank3(fmap, "feature map")
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
    _check_rank3(image, "image")
    image = jnp.where(p[0] > 0.5, image[::-1, :], image)
    return jnp.where(p[1] > 0.5, image[:, ::-1], image)

  def inverse(self, p: Array, fmap: Array, *,
              input_shape: Sequence[int] | None = None) -> Array:
    _check_rank3(fmap, "feature map")
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


# --------------------------------------------------------------------------
# The transformation set.
# --------------------------------------------------------------------------


@jax.tree_util.register_pytree_node_class
class TransformationSet:
  """T transformations: a ``(T, P)`` parameter array and a static action.

  A pytree whose only leaf is ``parameters``; ``action`` is static auxiliary
  data, so sets can be passed through `jax.jit` and `jax.vmap`.

  Attributes:
    parameters: (T, P) float32, one row per transformation.
    action: an `Action` that applies one row.

  Examples:
    >>> import jax.numpy as jnp
    >>> from invjax import transforms
    >>> ts = transforms.rotation([0.0, 90.0])
    >>> len(ts), ts.parameters.shape
    (2, (2, 1))
    >>> ts.apply(jnp.ones((8, 8, 3))).shape
    (2, 8, 8, 3)
  """

  def __init__(self, parameters: Any, action: Action):
    if not isinstance(action, Action):
      raise TypeError(f"action must be an invjax Action, got {type(action)}")
    if isinstance(parameters, jax.core.Tracer):
      params = parameters
    else:
      host = np.asarray(parameters, dtype=np.float32)
      if host.ndim != 2:
        raise ValueError("parameters must be a (T, P) array, got shape "
                         f"{host.shape}")
      if not np.all(np.isfinite(host)):
        raise ValueError("transformation parameters contain NaN or inf")
      params = jnp.asarray(host)
    if params.ndim != 2 or params.shape[1] != action.num_params:
      raise ValueError(
          f"{type(action).__name__} takes {action.num_params} parameters per "
          f"transformation, got parameters of shape {params.shape}")
    self.parameters = params
    self.action = action

  def tree_flatten(self):
    return (self.parameters,), self.action

  @classmethod
  def tree_unflatten(cls, action, children):
    # Skip validation: transformations of the pytree may put non-arrays here.
    ts = object.__new__(cls)
    ts.parameters, = children
    ts.action = action
    return ts

  def __len__(self) -> int:
    return int(self.parameters.shape[0])

  def __getitem__(self, index: Any) -> TransformationSet:
    """Rows ``index`` as a new set; an int gives a set of one."""
    if isinstance(index, (int, np.integer)):
      n = len(self)
      if not -n <= index < n:
        raise IndexError(f"index {index} out of range for {n} transformations")
      index = slice(index % n, index % n + 1)
    elif isinstance(index, (list, tuple)):
      index = np.asarray(index)
    params = self.parameters[index]
    if params.ndim != 2:
      raise IndexError("indexing must select rows, e.g. ts[i], ts[a:b] or "
                       "ts[[i, j]]")
    return TransformationSet(params, self.action)

  def __iter__(self) -> Iterator[TransformationSet]:
    return (self[i] for i in range(len(self)))

  def __repr__(self) -> str:
    return (f"TransformationSet(T={len(self)}, P={self.action.num_params}, "
            f"action={self.action!r})")

  def apply(self, image: Array) -> Array:
    """All T transformations of one image.

    Args:
      image: (H, W, C) image.

    Returns:
      (T, H, W, C), row t is transformation t of ``image``.
    """
    _check_rank3(image, "image")
    return _apply(self, image)

  def orbit(self, images: Array) -> Array:
    """The orbits of a batch: (B, H, W, C) -> (B, T, H, W, C).

    Row [i, t] is transformation t of image i: what every measure, loss and
    model of invjax feeds the network (flattened to B·T images).
    """
    if getattr(images, "ndim", None) != 4:
      raise ValueError("images must be a rank-4 (B, H, W, C) batch, got shape "
                       f"{getattr(images, 'shape', type(images))}")
    return jax.vmap(self.apply)(images)

  def apply_batch(self, images: Array) -> Array:
    """`orbit` under its earlier name."""
    return self.orbit(images)

  def unorbit(self, fmaps: Array, input_hw: Sequence[int] | None = None
              ) -> Array:
    """Each orbit's feature maps mapped back: (B, T, h, w, c) -> same shape.

    Row [i, t] becomes t⁻¹(fmaps[i, t]) (same-equivariance compares these);
    ``input_hw`` as ``input_shape`` in `apply_inverse`.
    """
    if (getattr(fmaps, "ndim", None) != 5 or fmaps.shape[1] != len(self)):
      raise ValueError(
          f"fmaps must be a (B, {len(self)}, h, w, c) array (each sample's "
          "feature maps, one per transformation), got shape "
          f"{getattr(fmaps, 'shape', type(fmaps))}")
    shape = None if input_hw is None else tuple(int(s) for s in input_hw)
    inv = lambda p, fm: self.action.inverse(p, fm, input_shape=shape)
    return jax.vmap(jax.vmap(inv), (None, 0))(self.parameters, fmaps)

  def apply_inverse(self, fmaps: Array, *,
                    input_shape: Sequence[int] | None = None) -> Array:
    """Row t of ``fmaps`` mapped back by the inverse of transformation t.

    Args:
      fmaps: (T, h, w, c), e.g. the feature maps f(t_j(x)) of one sample.
      input_shape: (H, W) spatial size of the input image; translations are
        scaled by (h/H, w/W). Defaults to (h, w).

    Returns:
      (T, h, w, c) array of t_j^{-1}(fmaps[j]).
    """
    if getattr(fmaps, "ndim", None) != 4 or fmaps.shape[0] != len(self):
      raise ValueError(
          f"fmaps must be a ({len(self)}, h, w, c) array (one feature map per "
          f"transformation), got shape {getattr(fmaps, 'shape', type(fmaps))}")
    if input_shape is not None:
      input_shape = tuple(int(s) for s in input_shape)
    return _apply_inverse(self, fmaps, input_shape)


class NotATransformationSet(TypeError, ValueError):
  """Something else where a TransformationSet belongs.

  Both a TypeError and a ValueError: `invjax.measure` raised the first and
  `invjax.train` the second before they shared `check_set`, and callers of
  either keep working (as NumPy's AxisError is a ValueError and an
  IndexError).
  """


def check_set(ts: Any, what: str = "transformations") -> int:
  """T, the size of a TransformationSet, checked: the one validator.

  Raises:
    NotATransformationSet: ``ts`` is not a TransformationSet (names ``what``).
    ValueError: the set is empty.
  """
  if not isinstance(ts, TransformationSet):
    raise NotATransformationSet(
        f"{what} must be an invjax TransformationSet (see invjax.transforms), "
        f"got {type(ts).__name__}")
  t = len(ts)
  if t == 0:
    raise ValueError(f"{what}: the transformation set is empty")
  return t


# Jitted once per (action, shapes): run eagerly, the many small ops of a
# dm-pix warp would each be dispatched (and compiled) on their own. Under an
# outer jit or vmap these simply inline.
@jax.jit
def _apply(ts: TransformationSet, image: Array) -> Array:
  return jax.vmap(ts.action.forward, (0, None))(ts.parameters, image)


@functools.partial(jax.jit, static_argnums=2)
def _apply_inverse(ts: TransformationSet, fmaps: Array,
                   input_shape: tuple[int, ...] | None) -> Array:
  inv = lambda p, fm: ts.action.inverse(p, fm, input_shape=input_shape)
  return jax.vmap(inv)(ts.parameters, fmaps)


# --------------------------------------------------------------------------
# Builders.
# --------------------------------------------------------------------------


def _finite_array(values: Any, what: str) -> np.ndarray:
  try:
    a = np.asarray(values, dtype=np.float64)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{what} must be numbers, got {values!r}") from e
  if a.size == 0:
    raise ValueError(f"{what}: the list of values is empty")
  if not np.all(np.isfinite(a)):
    raise ValueError(f"{what} contain NaN or inf: {values!r}")
  return a


def _angles_to_degrees(angles: Any, unit: str) -> np.ndarray:
  if unit not in _UNITS:
    raise ValueError(f"unknown angle unit {unit!r}; expected one of {_UNITS}")
  a = np.atleast_1d(_finite_array(angles, "rotation angles"))
  if a.ndim != 1:
    raise ValueError("rotation angles must be a flat list, got shape "
                     f"{a.shape}")
  if unit == "degrees":
    biggest = float(np.max(np.abs(a)))
    if biggest > 0 and any(abs(biggest - v) < 1e-3
                           for v in (math.pi / 2, math.pi, 2 * math.pi)):
      raise ValueError(
          f"rotation angles look like radians (largest magnitude {biggest:g} "
          "is close to π/2, π or 2π) but unit='degrees'; pass "
          "unit='radians' if they are radians")
    return a
  if unit == "radians":
    return np.degrees(a)
  return a * 360.0


def _scale_pairs(factors: Any) -> np.ndarray:
  # Entries may mix scalars and (sy, sx) pairs, so go item by item.
  try:
    items = list(factors)
  except TypeError:                       # a scalar (or 0-d array)
    items = [factors]
  if not items:
    raise ValueError("scales: the list of values is empty")
  pairs = []
  for f in items:
    v = np.atleast_1d(_finite_array(f, "scales"))
    if v.shape == (1,):
      v = np.repeat(v, 2)
    if v.shape != (2,):
      raise ValueError(f"each scale must be a scalar or (sy, sx), got {f!r}")
    pairs.append(v)
  out = np.stack(pairs)
  if np.any(out <= 0):
    raise ValueError(f"scale factors must be > 0, got {out.tolist()}")
  return out


def _translation_pairs(pixels: Any) -> np.ndarray:
  a = _finite_array(pixels, "translations")
  if a.ndim != 2 or a.shape[1] != 2:
    raise ValueError("translations must be a sequence of (dy, dx) pairs, e.g. "
                     f"[(0., 2.)], got shape {a.shape}")
  return a


def rotation(degrees: Any, *, unit: str = "degrees", mode: str = "constant",
             cval: float = 0.0) -> TransformationSet:
  """Rotations about the image centre (bilinear).

  Args:
    degrees: angles, one per transformation; positive is counter-clockwise as
      displayed.
    unit: "degrees" (default), "radians" or "turns". With "degrees", a list
      whose largest magnitude is within 1e-3 of π/2, π or 2π is refused as
      probably radians.
    mode: padding mode for samples outside the image (dm-pix modes).
    cval: fill value for mode "constant".

  Returns:
    A set with parameter rows ``(degrees,)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> from invjax import transforms
    >>> img = jnp.arange(9.0).reshape(3, 3, 1)
    >>> out = transforms.rotation([90.0]).apply(img)[0]
    >>> bool(jnp.allclose(out, jnp.rot90(img, 1, axes=(0, 1))))
    True
  """
  deg = _angles_to_degrees(degrees, unit)
  return TransformationSet(deg[:, None],
                           AffineAction(("rotation",), mode, float(cval)))


def scale(factors: Any, *, mode: str = "constant",
          cval: float = 0.0) -> TransformationSet:
  """Scalings about the image centre (bilinear); ``s > 1`` zooms in.

  Args:
    factors: one per transformation, each a scalar (isotropic) or an
      ``(sy, sx)`` pair. All must be > 0.
    mode: padding mode for samples outside the image.
    cval: fill value for mode "constant".

  Returns:
    A set with parameter rows ``(sy, sx)``.
  """
  return TransformationSet(_scale_pairs(factors),
                           AffineAction(("scale",), mode, float(cval)))


def translation(pixels: Any, *, mode: str = "constant",
                cval: float = 0.0) -> TransformationSet:
  """Translations by (dy, dx) pixels (bilinear for fractional shifts).

  Args:
    pixels: a sequence of ``(dy, dx)`` pairs; positive ``dx`` moves content
      right, positive ``dy`` moves it down.
    mode: padding mode for samples outside the image.
    cval: fill value for mode "constant".

  Returns:
    A set with parameter rows ``(dy, dx)``.
  """
  return TransformationSet(_translation_pairs(pixels),
                           AffineAction(("translation",), mode, float(cval)))


def affine(rotations: Any = (0.0,), scales: Any = (1.0,),
           translations: Any = ((0.0, 0.0),), *, unit: str = "degrees",
           mode: str = "constant", cval: float = 0.0) -> TransformationSet:
  """The grid rotations × scales × translations, each one affine warp.

  Element ``(i, j, k)`` (at index ``(i·S + j)·N + k``) scales by
  ``scales[j]``, then rotates by ``rotations[i]``, then translates by
  ``translations[k]``, composed into one matrix so the image is interpolated
  once.

  Args:
    rotations: angles (see `rotation`).
    scales: scalars or (sy, sx) pairs (see `scale`).
    translations: (dy, dx) pixel pairs (see `translation`).
    unit: angle unit of ``rotations``.
    mode: padding mode for samples outside the image.
    cval: fill value for mode "constant".

  Returns:
    A set of R·S·N elements with parameter rows
    ``(dy, dx, degrees, sy, sx)`` (factors ``("translation", "rotation",
    "scale")``).
  """
  deg = _angles_to_degrees(rotations, unit)
  sc = _scale_pairs(scales)
  tr = _translation_pairs(translations)
  rows = [np.concatenate([t, [r], s])
          for r, s, t in itertools.product(deg, sc, tr)]
  return TransformationSet(
      np.stack(rows),
      AffineAction(("translation", "rotation", "scale"), mode, float(cval)))


def rot90() -> TransformationSet:
  """The exact C4 group: k = 0, 1, 2, 3 counter-clockwise quarter turns.

  Needs square images (and square feature maps for `apply_inverse`).

  Returns:
    A set of 4 with parameter rows ``(k,)``.
  """
  return TransformationSet(np.arange(4.0)[:, None], Rot90Action())


def flips() -> TransformationSet:
  """The exact flip group: identity, left-right, up-down, both.

  Returns:
    A set of 4 with parameter rows ``(flip_up_down, flip_left_right)``.
  """
  return TransformationSet(
      np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]), FlipAction())


def identity(n: int = 1) -> TransformationSet:
  """``n`` copies of the identity (exact; zero parameters per row).

  Args:
    n: number of elements, >= 1.

  Returns:
    A set of ``n`` with (n, 0) parameters.
  """
  if int(n) < 1:
    raise ValueError(f"identity needs n >= 1, got {n}")
  return TransformationSet(np.zeros((int(n), 0)), AffineAction(()))


def product(a: TransformationSet, b: TransformationSet) -> TransformationSet:
  """All compositions ``a_i ∘ b_j`` (``b_j`` applied first).

  Element ``(i, j)`` is at index ``i·len(b) + j`` and its parameter row is
  ``concat(a.parameters[i], b.parameters[j])``. Its inverse is
  ``b_j^{-1} ∘ a_i^{-1}``. When both actions are affine with the same padding
  settings they are merged into one `AffineAction` (one interpolation);
  otherwise a `ComposedAction` applies them in turn.

  Args:
    a: the set applied second.
    b: the set applied first.

  Returns:
    A set of ``len(a) · len(b)`` elements.
  """
  for name, ts in (("a", a), ("b", b)):
    if not isinstance(ts, TransformationSet):
      raise TypeError(f"product: {name} must be a TransformationSet, got "
                      f"{type(ts)}")
  pa, pb = np.asarray(a.parameters), np.asarray(b.parameters)
  rows = np.concatenate([np.repeat(pa, len(b), axis=0),
                         np.tile(pb, (len(a), 1))], axis=1)
  aa, ab = a.action, b.action
  if isinstance(aa, AffineAction) and not aa.factors:
    action = ab
  elif isinstance(ab, AffineAction) and not ab.factors:
    action = aa
  elif (isinstance(aa, AffineAction) and isinstance(ab, AffineAction)
        and (aa.mode, aa.cval) == (ab.mode, ab.cval)):
    action = AffineAction(aa.factors + ab.factors, aa.mode, aa.cval)
  else:
    action = ComposedAction(aa, ab)
  return TransformationSet(rows, action)


# --------------------------------------------------------------------------
# tmeasures' parameter generators and the paper's sets.
# --------------------------------------------------------------------------


def uniform_rotation(n: int, turns: float, *,
                     legacy_tmeasures: bool = False) -> list[float]:
  """tmeasures ``UniformRotation(n, turns)`` as angles in degrees.

  tmeasures uses ``r = linspace(-turns/2, turns/2, n)`` in fractions of a full
  turn (for ``turns=1`` both ±180° are included, duplicating each other); n = 0
  gives ``[0]``.

  Args:
    n: number of angles.
    turns: the covered range as a fraction of a full turn, in [0, 1].
    legacy_tmeasures: reproduce tmeasures' unit bug: it passes ``180·r`` to
      cos/sin, which take radians, so the angle actually applied is
      ``degrees(180·r) mod 360``.

  Returns:
    Angles in degrees, for `rotation` or `affine`.
  """
  if int(n) < 0 or not 0 <= turns <= 1:
    raise ValueError(f"uniform_rotation needs n >= 0 and 0 <= turns <= 1, "
                     f"got n={n}, turns={turns}")
  r = np.zeros(1) if n == 0 else np.linspace(-turns / 2, turns / 2, int(n))
  if legacy_tmeasures:
    return [float(v) for v in np.mod(np.degrees(180.0 * r), 360.0)]
  return [float(v) for v in 360.0 * r]


def scale_uniform(n: int, min_down: float,
                  max_up: float) -> list[tuple[float, float]]:
  """tmeasures ``ScaleUniform(n, min_down, max_up)`` as (sy, sx) pairs.

  6n + 1 scales: n downscales ``linspace(min_down, 1, n, endpoint=False)`` and
  n upscales ``linspace(1, max_up, n + 1)[1:]``, each s expanded to the three
  tmeasures pairs ``(sx, sy) = (1, s), (s, 1), (s, s)``, with the identity
  between downscales and upscales. n = 0 gives ``[(1, 1)]``.

  Args:
    n: number of 1-D scales on each side of 1.
    min_down: smallest downscale, in (0, 1].
    max_up: largest upscale, >= 1.

  Returns:
    (sy, sx) pairs, for `scale` or `affine`.
  """
  if int(n) < 0 or not 0 < min_down <= 1 or max_up < 1:
    raise ValueError("scale_uniform needs n >= 0 and 0 < min_down <= 1 <= "
                     f"max_up, got n={n}, min_down={min_down}, max_up={max_up}")
  if n == 0:
    return [(1.0, 1.0)]
  down = np.linspace(min_down, 1.0, int(n), endpoint=False)
  up = np.linspace(1.0, max_up, int(n) + 1)[1:]
  # tmeasures writes (sx, sy); ours are (sy, sx).
  triple = lambda s: [(s, 1.0), (1.0, s), (s, s)]
  out = [p for s in down for p in triple(float(s))]
  out.append((1.0, 1.0))
  out += [p for s in up for p in triple(float(s))]
  return out


def translation_uniform(n: int, max_fraction: float,
                        image_size: Sequence[int]) -> list[tuple[float, float]]:
  """tmeasures ``TranslationUniform(n, max_fraction)`` as (dy, dx) pixels.

  8n + 1 translations: the identity, then for each
  ``d in linspace(0, max_fraction, n + 1)[1:]`` the 8 neighbours with offsets
  in {0, d, -d}² (tmeasures' order). Fractions are of the image size.
  tmeasures' ``(tx, ty)`` shifts the sampling grid, which moves the content by
  ``(-tx·W, -ty·H)`` pixels; that is what is returned, so element j here moves
  the content the same way as tmeasures' element j. n = 0 gives ``[(0, 0)]``.

  Args:
    n: number of distances.
    max_fraction: the largest shift, as a fraction of the image size.
    image_size: (H, W) of the images the set will be applied to.

  Returns:
    (dy, dx) pixel pairs, for `translation` or `affine`.
  """
  size = tuple(int(s) for s in image_size)
  if len(size) != 2 or min(size) <= 0:
    raise ValueError(f"image_size must be (H, W), got {image_size!r}")
  if int(n) < 0 or max_fraction < 0:
    raise ValueError("translation_uniform needs n >= 0 and max_fraction >= 0, "
                     f"got n={n}, max_fraction={max_fraction}")
  h, w = size
  out = [(0.0, 0.0)]
  if n == 0:
    return out
  for d in np.linspace(0.0, max_fraction, int(n) + 1)[1:]:
    offsets = (0.0, float(d), -float(d))
    for tx, ty in list(itertools.product(offsets, offsets))[1:]:
      # 0.0 - 0.0 keeps the zero positive, unlike -0.0.
      out.append((0.0 - ty * h, 0.0 - tx * w))
  return out


def paper_sets(*, image_size: Sequence[int] = (28, 28),
               legacy_tmeasures_rotation: bool = False,
               mode: str = "constant",
               cval: float = 0.0) -> dict[str, TransformationSet]:
  """The transformation sets of the tmeasures paper experiments.

  * "rotation": ``UniformRotation(49, 1.0)``, 49 angles over -180..180°.
  * "scale": ``ScaleUniform(8, 0.5, 1.25)``, 49 scales.
  * "translation": ``TranslationUniform(6, 0.15)``, 49 shifts of up to 15% of
    the image size.
  * "hard": ``UniformRotation(8, 1.0) × ScaleUniform(1, 0.5, 1.25) ×
    TranslationUniform(1, 0.15)``, 8·7·9 = 504 elements, via `affine`.

  Differences from tmeasures, apart from the rotation bug below: tmeasures
  pads with ``"border"`` (use ``mode="nearest"`` for that), and its combined
  matrix applies translation before rotation and scale, whereas `affine` uses
  ``T · R · S``.

  Args:
    image_size: (H, W) of the images, to turn translation fractions into
      pixels.
    legacy_tmeasures_rotation: reproduce tmeasures' rotation unit bug (angle
      actually applied = ``degrees(180·r) mod 360`` for turn fraction r), to
      compare with its published numbers.
    mode: padding mode.
    cval: fill value for mode "constant".

  Returns:
    ``{"rotation", "scale", "translation", "hard"}`` -> TransformationSet.
  """
  kw = dict(mode=mode, cval=cval)
  legacy = legacy_tmeasures_rotation
  return {
      "rotation": rotation(uniform_rotation(49, 1.0, legacy_tmeasures=legacy),
                           **kw),
      "scale": scale(scale_uniform(8, 0.5, 1.25), **kw),
      "translation": translation(translation_uniform(6, 0.15, image_size),
                                 **kw),
      "hard": affine(uniform_rotation(8, 1.0, legacy_tmeasures=legacy),
                     scale_uniform(1, 0.5, 1.25),
                     translation_uniform(1, 0.15, image_size), **kw),
  }
