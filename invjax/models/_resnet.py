"""CIFAR-style residual networks (He et al., 2016) as in the paper code.

Quiroga et al. use ResNet-18 on MNIST and a "v32" network on CIFAR-10 whose
blocks are [3, 4, 6, 3] BasicBlocks, i.e. the ResNet-34 layout
(`tmeasures.md` section 4). Their variant differs from torchvision's: a 3x3
stride-1 stem without max pooling (CIFAR-style), ELU instead of ReLU, bias-free
convolutions and batch norm *off* by default. Those defaults are kept here;
``batch_norm=True`` and ``activation="relu"`` give the textbook network.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax

from invjax.models import _layers

Array = jax.Array


class BasicBlock(nn.Module):
  """Two 3x3 convolutions plus a (projected when needed) identity shortcut.

  Layer names: ``conv1``, ``conv1_bn``, ``conv1_act``, ``conv2``,
  ``conv2_bn``, ``shortcut``, ``shortcut_bn`` (only when the shape changes)
  and ``act`` (after the addition).

  Attributes:
    features: output channels.
    strides: stride of conv1 and of the shortcut projection.
    activation: see `Activation`.
    batch_norm: batch norm after every convolution.
  """
  features: int
  strides: int = 1
  activation: str = "elu"
  batch_norm: bool = False

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    y = _layers.conv_bn_act(x, "conv1", self.features, 3, strides=self.strides,
                            activation=self.activation,
                            use_batch_norm=self.batch_norm, use_bias=False,
                            train=train)
    y = _layers.conv_bn_act(y, "conv2", self.features, 3, activation=None,
                            use_batch_norm=self.batch_norm, use_bias=False,
                            train=train)
    if self.strides != 1 or x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1), strides=self.strides, use_bias=False,
                  name="shortcut")(x)
      if self.batch_norm:
        x = _layers.batch_norm("shortcut_bn", train)(x)
    return _layers.Activation(self.activation, name="act")(x + y)


class ResNet(nn.Module):
  """Residual network of BasicBlocks; subclasses fix ``stage_sizes``.

  Stem ``conv1`` (3x3, ``width`` channels, stride 1) + ``conv1_bn`` +
  ``conv1_act``; four stages ``layer{s}_block{b}`` with ``width * [1, 2, 4,
  8]`` channels and strides [1, 2, 2, 2]; global average pooling ``pool``;
  dense ``logits``.

  Attributes:
    num_classes: output logits.
    width: channels of the stem and first stage (64 in the paper).
    activation: see `Activation` (ELU in the paper).
    batch_norm: batch norm after every convolution (off in the paper's
      default configuration).
  """
  stage_sizes: ClassVar[tuple[int, ...]] = ()
  num_classes: int = 10
  width: int = 64
  activation: str = "elu"
  batch_norm: bool = False

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    if not self.stage_sizes:
      raise TypeError("Use a concrete ResNet such as ResNet18 or ResNet34.")
    x = _layers.conv_bn_act(x, "conv1", self.width, 3,
                            activation=self.activation,
                            use_batch_norm=self.batch_norm, use_bias=False,
                            train=train)
    for s, n_blocks in enumerate(self.stage_sizes):
      for b in range(n_blocks):
        x = BasicBlock(self.width * 2**s,
                       strides=2 if (s > 0 and b == 0) else 1,
                       activation=self.activation,
                       batch_norm=self.batch_norm,
                       name=f"layer{s + 1}_block{b + 1}")(x, train=train)
    x = _layers.GlobalAvgPool(name="pool")(x)
    return nn.Dense(self.num_classes, name="logits")(x)


class ResNet18(ResNet):
  """ResNet-18: [2, 2, 2, 2] BasicBlocks (the paper's MNIST ResNet)."""
  stage_sizes: ClassVar[tuple[int, ...]] = (2, 2, 2, 2)


class ResNet34(ResNet):
  """ResNet-34: [3, 4, 6, 3] BasicBlocks (the paper's CIFAR-10 "v32")."""
  stage_sizes: ClassVar[tuple[int, ...]] = (3, 4, 6, 3)
