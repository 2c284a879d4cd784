"""Colour flows: one-parameter flows of pixel values, t ↦ warp_t(x).

Pointwise in space, so they need no interpolation and the tangent
v(x) = d/dt warp_t(x)|_{t=0} is exact (the geometric flows, and the
conventions shared with them, are in `invjax._src.flows`):

* ``brightness``: x + t; v = 1.
* ``gain``: exp(t)·x; v = x. This is what Gruver et al.'s "saturate" does
  (``img·(1+t)`` on the mean/std-normalised tensor).
* ``contrast``: μ + exp(t)·(x − μ), μ the per-channel spatial mean (as
  `dm_pix.adjust_contrast`); v = x − μ.
* ``saturation``: real HSV saturation, RGB images only (C = 3). The image is
  converted with `dm_pix.rgb_to_hsv`, S is scaled by exp(t) and clipped to
  [0, 1], and converted back with `dm_pix.hsv_to_rgb`. For fixed hue H and
  value V, RGB = V·(1 − S·c(H)) is affine in S, so the tangent is
  v = S·∂RGB/∂S = RGB − V with V = max over channels. At fully saturated
  pixels (S = 1, i.e. some channel is 0) the clip makes the flow kink at
  t = 0; there v is the central derivative ½(RGB − V).

Colour flows have no natural action on hidden feature maps; the Lie
derivative code treats hidden layers as invariant (trivial action) for them
(`Flow.rescale` is None).

References:
  Gruver, Finzi, Goldblum, Wilson. "The Lie Derivative for Measuring Learned
  Equivariance". ICLR 2023.
"""

from __future__ import annotations

import dm_pix
import jax
import jax.numpy as jnp

from invjax._src import flow_base

Array = jax.Array
Flow = flow_base.Flow


def brightness() -> Flow:
  """Additive brightness x + t (as `dm_pix.adjust_brightness`); v = 1."""

  def warp(image, t):
    flow_base.check_image(image, "brightness")
    return image + jnp.asarray(t, image.dtype)

  def tangent(image):
    flow_base.check_image(image, "brightness")
    return jnp.ones_like(image)

  return Flow(name="brightness", warp=warp, tangent=tangent)


def gain() -> Flow:
  """Multiplicative gain exp(t)·x; v = x (Gruver et al.'s "saturate")."""

  def warp(image, t):
    flow_base.check_image(image, "gain")
    return jnp.exp(jnp.asarray(t, image.dtype)) * image

  def tangent(image):
    flow_base.check_image(image, "gain")
    return image

  return Flow(name="gain", warp=warp, tangent=tangent)


def contrast() -> Flow:
  """Contrast μ + exp(t)·(x − μ), μ the per-channel spatial mean; v = x − μ.

  The mean is preserved, so exp(s)·exp(t) compose exactly: a true
  one-parameter group. Matches `dm_pix.adjust_contrast` with factor exp(t).
  """

  def warp(image, t):
    flow_base.check_image(image, "contrast")
    mean = jnp.mean(image, axis=(0, 1), keepdims=True)
    return mean + jnp.exp(jnp.asarray(t, image.dtype)) * (image - mean)

  def tangent(image):
    flow_base.check_image(image, "contrast")
    return image - jnp.mean(image, axis=(0, 1), keepdims=True)

  return Flow(name="contrast", warp=warp, tangent=tangent)


def _check_rgb(image: Array) -> None:
  flow_base.check_image(image, "saturation")
  if image.shape[-1] != 3:
    raise ValueError("saturation: HSV saturation needs RGB images (C = 3), "
                     f"got C = {image.shape[-1]}")


def saturation() -> Flow:
  """HSV saturation S ↦ clip(exp(t)·S, 0, 1) via dm-pix colour conversion.

  RGB images in [0, 1] only. Tangent v = RGB − V (V = max channel); at fully
  saturated pixels (S = 1) the clip kinks the flow and v = ½(RGB − V), the
  central derivative. See the module docstring.
  """

  def warp(image, t):
    _check_rgb(image)
    hsv = dm_pix.rgb_to_hsv(image)
    s = jnp.clip(hsv[..., 1] * jnp.exp(jnp.asarray(t, image.dtype)), 0, 1)
    return dm_pix.hsv_to_rgb(hsv.at[..., 1].set(s))

  def tangent(image):
    _check_rgb(image)
    value = jnp.max(image, axis=-1, keepdims=True)
    v = image - value
    # S = 1 exactly when the smallest channel is 0 (and V > 0): increasing S
    # is clipped away, so the flow has only a left derivative there.
    full = (jnp.min(image, axis=-1, keepdims=True) <= 0) & (value > 0)
    return jnp.where(full, v / 2, v)

  return Flow(name="saturation", warp=warp, tangent=tangent)

