"""A C4 (p4) group-equivariant CNN (Cohen & Welling, 2016).

The group is p4: translations and rotations by multiples of 90 degrees. Its
feature maps carry a rotation axis, ``f: (B, 4, H, W, C)``, and the network is
equivariant in the sense

    f(rot90(x, k)) = roll(rot90(f(x), k, spatial axes), k, rotation axis),

i.e. rotating the input rotates every map and cyclically shifts the rotation
axis. The layers:

* Lifting convolution (Z2 -> p4): one filter bank ``w`` applied at the four
  rotations, ``f[r] = x * rot90(w, r)``; the weights are tied through
  `jnp.rot90` of the kernel.
* Group convolution (p4 -> p4): a kernel ``psi[s]`` per *relative* input
  rotation ``s``; output rotation ``r`` sees
  ``g[r] = sum_s f[s] * rot90(psi[(s - r) mod 4], r)``, i.e. the kernel is
  rotated spatially and cyclically shifted along its rotation axis.
* Pointwise nonlinearities and biases shared over rotations, 2x2 spatial max
  pooling on even-sized maps (which commutes with rot90), and at the end a
  pooling over the whole spatial map followed by a pooling over rotations,
  giving features invariant to rot90 of the input.

Both convolutions build the stacked kernels and run one `lax` convolution
over the rotation-and-channel axis, so a layer costs one conv with 4x the
output (and, for p4 -> p4, 4x the input) channels.

References:
  Cohen & Welling, "Group Equivariant Convolutional Networks", ICML 2016.
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from invjax.models import _layers

Array = jax.Array

_ROTATIONS = 4


def _conv(x: Array, kernel: Array) -> Array:
  # Symmetric padding: with an odd kernel the padded grid is symmetric under
  # rot90, which exact equivariance on square inputs needs.
  pad = kernel.shape[0] // 2
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(1, 1), padding=((pad, pad), (pad, pad)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _check_kernel_size(k: int) -> None:
  if k % 2 != 1:
    raise ValueError(f"kernel_size must be odd for exact equivariance, got "
                     f"{k}.")


class LiftingConv(nn.Module):
  """Z2 -> p4 convolution: ``(B, H, W, C) -> (B, 4, H, W, features)``.

  Output rotation ``r`` is the correlation of the input with the kernel
  rotated by ``r`` quarter turns (`jnp.rot90` over the spatial axes).

  Attributes:
    features: output channels per rotation.
    kernel_size: odd square kernel size; stride 1, size-preserving padding.
    use_bias: add one bias per output channel, shared over rotations.
  """
  features: int
  kernel_size: int = 3
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    _check_kernel_size(self.kernel_size)
    k, cin, cout = self.kernel_size, x.shape[-1], self.features
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (k, k, cin, cout))
    # (k, k, cin, 4, cout) -> rotation-major output channels.
    stacked = jnp.stack([jnp.rot90(kernel, r, axes=(0, 1))
                         for r in range(_ROTATIONS)], axis=3)
    y = _conv(x, stacked.reshape(k, k, cin, _ROTATIONS * cout))
    y = y.reshape(y.shape[:3] + (_ROTATIONS, cout))
    y = jnp.moveaxis(y, 3, 1)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (cout,))
    return y


class GroupConv(nn.Module):
  """p4 -> p4 convolution: ``(B, 4, H, W, C) -> (B, 4, H, W, features)``.

  The learned kernel ``psi`` has shape ``(4, k, k, C, features)``, indexed
  by the input rotation relative to the output one. For output rotation
  ``r`` the kernel is rolled by ``r`` along that axis (``psi[(s - r) mod
  4]`` meets input rotation ``s``) and rotated spatially by ``r``.

  Attributes:
    features: output channels per rotation.
    kernel_size: odd square kernel size; stride 1, size-preserving padding.
    use_bias: add one bias per output channel, shared over rotations.
  """
  features: int
  kernel_size: int = 3
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    _check_kernel_size(self.kernel_size)
    if x.ndim != 5 or x.shape[1] != _ROTATIONS:
      raise ValueError(f"GroupConv expects (B, 4, H, W, C), got {x.shape}.")
    k, cin, cout = self.kernel_size, x.shape[-1], self.features
    # Default fan-in: every axis but the last two counts as receptive field,
    # so fan_in = 4 * k * k * cin as for the equivalent plain convolution.
    psi = self.param("kernel", nn.initializers.lecun_normal(),
                     (_ROTATIONS, k, k, cin, cout))
    per_output = [jnp.rot90(jnp.roll(psi, r, axis=0), r, axes=(1, 2))
                  for r in range(_ROTATIONS)]
    # (s, k, k, cin, r, cout) -> HWIO with input channels (s, cin) and output
    # channels (r, cout), both rotation-major.
    stacked = jnp.stack(per_output, axis=4)
    stacked = jnp.transpose(stacked, (1, 2, 0, 3, 4, 5)).reshape(
        k, k, _ROTATIONS * cin, _ROTATIONS * cout)
    b, _, h, w, _ = x.shape
    x = jnp.moveaxis(x, 1, 3).reshape(b, h, w, _ROTATIONS * cin)
    y = _conv(x, stacked).reshape(b, h, w, _ROTATIONS, cout)
    y = jnp.moveaxis(y, 3, 1)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (cout,))
    return y


class GroupMaxPool(nn.Module):
  """2x2 spatial max pooling of p4 maps, ``(B, 4, H, W, C)``.

  Equivariant only when H and W are even (the 2x2 cells then map onto each
  other under rot90), so odd sizes are rejected instead of silently floored.
  """

  @nn.compact
  def __call__(self, x: Array) -> Array:
    b, r, h, w, c = x.shape
    if h % 2 or w % 2:
      raise ValueError(f"GroupMaxPool needs even spatial sizes to stay "
                       f"equivariant, got {h}x{w}; use fewer channels "
                       "stages or a different input size.")
    y = nn.max_pool(x.reshape(b * r, h, w, c), (2, 2), (2, 2), "VALID")
    return y.reshape((b, r) + y.shape[1:])


class SpatialPool(nn.Module):
  """Pools p4 maps over the whole spatial extent: ``(B,4,H,W,C) -> (B,4,C)``.

  Attributes:
    mode: ``"mean"`` or ``"max"``.
  """
  mode: str = "mean"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _reduce(x, (2, 3), self.mode)


class RotationPool(nn.Module):
  """Pools over the rotation axis: ``(B, 4, ...) -> (B, ...)``; invariant.

  Attributes:
    mode: ``"max"`` (Cohen & Welling's rotation pooling) or ``"mean"``.
  """
  mode: str = "max"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return _reduce(x, 1, self.mode)


def _reduce(x: Array, axis, mode: str) -> Array:
  if mode == "mean":
    return jnp.mean(x, axis=axis)
  if mode == "max":
    return jnp.max(x, axis=axis)
  raise ValueError(f"Pooling mode must be 'mean' or 'max', got {mode!r}.")


class C4GCNN(nn.Module):
  """A p4-CNN classifier whose logits are invariant to rot90 of the input.

  Layers: ``gconv1`` (lifting) then ``gconv2..`` (group convolutions), one
  per entry of ``channels``, each followed by ``gconv{i}_bn`` (optional)
  and ``gconv{i}_act``, and by a 2x2 ``pool{i}`` except after the last; then
  ``spatial_pool`` ``(B, 4, C)``, ``rotation_pool`` ``(B, C)`` and the dense
  ``logits``. Every layer up to ``spatial_pool`` is equivariant (exactly, on
  square inputs whose size stays even at each pooling); ``rotation_pool``
  onwards is invariant.

  Batch norm normalises over batch, rotation and space per channel, which
  keeps equivariance.

  Attributes:
    num_classes: output logits.
    channels: output channels per rotation of each layer.
    kernel_size: odd square kernel size.
    activation: see `Activation` (ReLU as in Cohen & Welling).
    batch_norm: batch norm after every group convolution.
    spatial_pool: ``"mean"`` or ``"max"`` over the final maps.
    rotation_pool: ``"max"`` or ``"mean"`` over rotations.
  """
  num_classes: int = 10
  channels: Sequence[int] = (16, 32, 64)
  kernel_size: int = 3
  activation: str = "relu"
  batch_norm: bool = False
  spatial_pool: str = "mean"
  rotation_pool: str = "max"

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    if not self.channels:
      raise ValueError("channels must name at least one layer.")
    for i, c in enumerate(self.channels, start=1):
      conv = LiftingConv if i == 1 else GroupConv
      x = conv(c, self.kernel_size, name=f"gconv{i}")(x)
      if self.batch_norm:
        x = _layers.batch_norm(f"gconv{i}_bn", train)(x)
      x = _layers.Activation(self.activation, name=f"gconv{i}_act")(x)
      if i < len(self.channels):
        x = GroupMaxPool(name=f"pool{i}")(x)
    x = SpatialPool(self.spatial_pool, name="spatial_pool")(x)
    x = RotationPool(self.rotation_pool, name="rotation_pool")(x)
    return nn.Dense(self.num_classes, name="logits")(x)
