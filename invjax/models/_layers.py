"""Small Linen building blocks shared by the paper models.

Activations and pooling are modules rather than inline functions so that
``Module.apply(..., capture_intermediates=True)`` records their outputs: the
invariance measures of Quiroga et al. are reported per layer *including* the
activation and pooling layers (`tmeasures.md` section 4), and Linen only
captures the outputs of module calls.
"""

from __future__ import annotations

from typing import Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array

# Names accepted by `Activation`; the paper compares ELU, ReLU, PReLU and TanH
# (ActivationFunctionComparison) and uses ELU by default.
_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "elu": nn.elu,
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "sigmoid": nn.sigmoid,
    "gelu": nn.gelu,
    "identity": lambda x: x,
}
ACTIVATIONS = tuple(sorted(_ACTIVATIONS)) + ("prelu",)

# PyTorch's BatchNorm momentum 0.1 (weight of the new batch) is Flax's 0.9
# (weight of the running average); the paper models were PyTorch models.
BN_MOMENTUM = 0.9


def check_activation(name: str) -> None:
  if name not in ACTIVATIONS:
    raise ValueError(f"Unknown activation {name!r}; expected one of "
                     f"{ACTIVATIONS}.")


class Activation(nn.Module):
  """A pointwise nonlinearity as its own (capturable) layer.

  Attributes:
    kind: one of ``elu`` (default), ``relu``, ``prelu``, ``tanh``,
      ``sigmoid``, ``gelu``, ``identity``. ``prelu`` learns one shared slope
      for negative inputs, initialised at 0.25 like PyTorch's ``nn.PReLU()``
      used in the paper.
  """
  kind: str = "elu"

  @nn.compact
  def __call__(self, x: Array) -> Array:
    check_activation(self.kind)
    if self.kind == "prelu":
      slope = self.param("negative_slope", nn.initializers.constant(0.25), ())
      return jnp.where(x >= 0, x, slope.astype(x.dtype) * x)
    return _ACTIVATIONS[self.kind](x)


class MaxPool(nn.Module):
  """Spatial max pooling over NHWC maps (no padding: odd sizes are floored).

  Attributes:
    window: square window size.
    strides: stride; defaults to ``window``.
  """
  window: int = 2
  strides: Optional[int] = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    s = self.strides or self.window
    return nn.max_pool(x, (self.window, self.window), (s, s), "VALID")


class GlobalAvgPool(nn.Module):
  """Mean over the spatial axes: ``(B, H, W, C) -> (B, C)``."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return jnp.mean(x, axis=(-3, -2))


def batch_norm(name: str, train: bool) -> nn.BatchNorm:
  """A BatchNorm with PyTorch's defaults, using batch statistics in training.

  Training calls must pass ``mutable=["batch_stats"]`` to ``apply``.
  """
  return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                      epsilon=1e-5, name=name)


def conv_bn_act(
    x: Array,
    name: str,
    features: int,
    kernel_size: int,
    *,
    strides: int = 1,
    activation: Optional[str] = "elu",
    use_batch_norm: bool = False,
    bn_after_activation: bool = False,
    use_bias: bool = True,
    train: bool = False,
) -> Array:
  """Applies ``name`` (conv), ``name_bn`` and ``name_act`` layers in order.

  Must be called from inside a ``@nn.compact`` method, whose module becomes
  the parent of the layers created here.

  Args:
    x: ``(B, H, W, C)`` input.
    name: name of the convolution; the batch norm and activation get the
      suffixes ``_bn`` and ``_act``.
    features: output channels.
    kernel_size: square kernel size; padded by ``kernel_size // 2`` on every
      side, as PyTorch's ``padding=k//2`` in the paper models (for stride 2
      this differs from XLA's asymmetric "SAME").
    strides: convolution stride.
    activation: activation kind, or None for none.
    use_batch_norm: insert a batch norm.
    bn_after_activation: put the batch norm after the activation (VGG16D in
      the paper) instead of before it.
    use_bias: convolution bias.
    train: batch statistics (True) or running averages (False).

  Returns:
    The output feature maps.
  """
  pad = kernel_size // 2
  x = nn.Conv(features, (kernel_size, kernel_size), strides=strides,
              padding=((pad, pad), (pad, pad)), use_bias=use_bias,
              name=name)(x)
  if use_batch_norm and not bn_after_activation:
    x = batch_norm(f"{name}_bn", train)(x)
  if activation is not None:
    x = Activation(activation, name=f"{name}_act")(x)
  if use_batch_norm and bn_after_activation:
    x = batch_norm(f"{name}_bn", train)(x)
  return x


def flatten(x: Array) -> Array:
  return x.reshape((x.shape[0], -1))
