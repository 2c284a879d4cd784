"""tmeasures' transformation sets, parameter for parameter.

The sets of Quiroga et al.'s experiments as tmeasures builds them (uniform
rotations in turns, scale and translation grids), for comparisons with the
PyTorch peer; `paper_sets` gathers them at an image size.
"""

from __future__ import annotations

import itertools
import warnings
from typing import Sequence

import jax
import numpy as np

from invjax._src import transforms

Array = jax.Array

# --------------------------------------------------------------------------
# tmeasures' parameter generators and the paper's sets.
# --------------------------------------------------------------------------


def rotation_uniform(n: int, turns: float, *,
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
    raise ValueError(f"rotation_uniform needs n >= 0 and 0 <= turns <= 1, "
                     f"got n={n}, turns={turns}")
  r = np.zeros(1) if n == 0 else np.linspace(-turns / 2, turns / 2, int(n))
  if legacy_tmeasures:
    return [float(v) for v in np.mod(np.degrees(180.0 * r), 360.0)]
  return [float(v) for v in 360.0 * r]


def uniform_rotation(n: int, turns: float, *,
                     legacy_tmeasures: bool = False) -> list[float]:
  """`rotation_uniform` under its earlier name (deprecated)."""
  warnings.warn("transforms.uniform_rotation is now rotation_uniform, like "
                "scale_uniform and translation_uniform", DeprecationWarning,
                stacklevel=2)
  return rotation_uniform(n, turns, legacy_tmeasures=legacy_tmeasures)


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
               cval: float = 0.0) -> dict[str, transforms.TransformationSet]:
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
  rotations = rotation_uniform(49, 1.0, legacy_tmeasures=legacy)
  shifts = translation_uniform(6, 0.15, image_size)
  return {
      "rotation": transforms.rotation(rotations, **kw),
      "scale": transforms.scale(scale_uniform(8, 0.5, 1.25), **kw),
      "translation": transforms.translation(shifts, **kw),
      "hard": transforms.affine(
          rotation_uniform(8, 1.0, legacy_tmeasures=legacy),
          scale_uniform(1, 0.5, 1.25),
          translation_uniform(1, 0.15, image_size), **kw),
  }
