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

import functools
import itertools
import math
from typing import Any, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import actions

Array = jax.Array

_UNITS = ("degrees", "radians", "turns")

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

  def __init__(self, parameters: Any, action: actions.Action):
    if not isinstance(action, actions.Action):
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
    actions.check_rank3(image, "image")
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
                           actions.AffineAction(("rotation",), mode,
                                                float(cval)))


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
                           actions.AffineAction(("scale",), mode, float(cval)))


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
                           actions.AffineAction(("translation",), mode,
                                                float(cval)))


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
      actions.AffineAction(("translation", "rotation", "scale"), mode,
                           float(cval)))


def rot90() -> TransformationSet:
  """The exact C4 group: k = 0, 1, 2, 3 counter-clockwise quarter turns.

  Needs square images (and square feature maps for `apply_inverse`).

  Returns:
    A set of 4 with parameter rows ``(k,)``.
  """
  return TransformationSet(np.arange(4.0)[:, None], actions.Rot90Action())


def flips() -> TransformationSet:
  """The exact flip group: identity, left-right, up-down, both.

  Returns:
    A set of 4 with parameter rows ``(flip_up_down, flip_left_right)``.
  """
  return TransformationSet(
      np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]),
      actions.FlipAction())


def identity(n: int = 1) -> TransformationSet:
  """``n`` copies of the identity (exact; zero parameters per row).

  Args:
    n: number of elements, >= 1.

  Returns:
    A set of ``n`` with (n, 0) parameters.
  """
  if int(n) < 1:
    raise ValueError(f"identity needs n >= 1, got {n}")
  return TransformationSet(np.zeros((int(n), 0)), actions.AffineAction(()))


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
  if isinstance(aa, actions.AffineAction) and not aa.factors:
    action = ab
  elif isinstance(ab, actions.AffineAction) and not ab.factors:
    action = aa
  elif (isinstance(aa, actions.AffineAction) and
        isinstance(ab, actions.AffineAction)
        and (aa.mode, aa.cval) == (ab.mode, ab.cval)):
    action = actions.AffineAction(aa.factors + ab.factors, aa.mode, aa.cval)
  else:
    action = actions.ComposedAction(aa, ab)
  return TransformationSet(rows, action)
