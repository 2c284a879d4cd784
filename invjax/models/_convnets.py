"""Plain convolutional classifiers of the paper experiments.

SimpleConv, AllConvolutional and VGG16D as Quiroga et al. train and measure
them (`tmeasures.md` section 4; repository
``facundoq/transformational_measures_experiments``, ``experiments/models``).
Every layer, activations and pooling included, is a named submodule so that
``capture_intermediates=True`` yields paths such as ``conv1``, ``conv1_act``,
``pool1``, ``fc1``, ``logits``.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from invjax.models import _layers

Array = jax.Array


class SimpleConv(nn.Module):
  """Quiroga et al.'s SimpleConv.

  Layers: conv C, conv C, pool, conv 2C, conv 2C, pool, conv 4C, then
  fc ``fc`` and the class logits; every conv and the hidden fc are followed
  by the activation (and a batch norm before it with ``batch_norm``). The
  paper uses C = 128 and fc = 128 on MNIST and CIFAR-10; the default here is
  smaller (C = 32, as in the paper code's own default).

  Layer names: ``conv1..conv5`` (+ ``_bn``, ``_act``), ``pool1``, ``pool2``
  (+ nothing for max pooling), ``fc1`` (+ ``_bn``, ``_act``), ``logits``.

  Attributes:
    num_classes: output logits.
    channels: C.
    activation: see `Activation` (ELU by default, as in the paper).
    batch_norm: batch norm after every conv and the hidden fc.
    kernel_size: kernel size of conv1..conv4 (odd). conv5 is always 3x3 in
      the paper code, kept here.
    pooling: ``"max"`` (2x2 max pooling) or ``"strided"``: a learned 3x3
      stride-2 convolution without activation, the paper's alternative
      (MaxPooling experiment).
    fc: hidden fully connected units.
    features_only: stop after conv5 and return its ``(B, H/4, W/4, 4C)``
      maps (the branch of `TIPooling`).
  """
  num_classes: int = 10
  channels: int = 32
  activation: str = "elu"
  batch_norm: bool = False
  kernel_size: int = 3
  pooling: str = "max"
  fc: int = 128
  features_only: bool = False

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    if self.kernel_size % 2 != 1:
      raise ValueError(f"kernel_size must be odd, got {self.kernel_size}.")
    if self.pooling not in ("max", "strided"):
      raise ValueError(f"pooling must be 'max' or 'strided', got "
                       f"{self.pooling!r}.")
    c, k = self.channels, self.kernel_size
    block = dict(activation=self.activation, use_batch_norm=self.batch_norm,
                 train=train)

    def pool(x, name, features):
      if self.pooling == "max":
        return _layers.MaxPool(2, name=name)(x)
      return _layers.conv_bn_act(x, name, features, 3, strides=2,
                                 activation=None, train=train)

    x = _layers.conv_bn_act(x, "conv1", c, k, **block)
    x = _layers.conv_bn_act(x, "conv2", c, k, **block)
    x = pool(x, "pool1", c)
    x = _layers.conv_bn_act(x, "conv3", 2 * c, k, **block)
    x = _layers.conv_bn_act(x, "conv4", 2 * c, k, **block)
    x = pool(x, "pool2", 2 * c)
    x = _layers.conv_bn_act(x, "conv5", 4 * c, 3, **block)
    if self.features_only:
      return x
    x = nn.Dense(self.fc, name="fc1")(_layers.flatten(x))
    if self.batch_norm:
      x = _layers.batch_norm("fc1_bn", train)(x)
    x = _layers.Activation(self.activation, name="fc1_act")(x)
    return nn.Dense(self.num_classes, name="logits")(x)


class AllConvolutional(nn.Module):
  """The All-Convolutional net (Springenberg et al., 2015), paper variant.

  Eight 3x3 conv + activation layers (filters F, F, F/2-stride, 2F, 2F,
  2F/2-stride, 2F, then a 1x1 with 2F), a 1x1 class convolution and global
  average pooling. The paper uses F = 32 on MNIST and 96 on CIFAR-10, with
  ELU. Unlike the paper code, whose 1x1 layer is padded by 1 (growing the
  map by 2 pixels of pure bias), every layer here is size-preserving.

  Layer names: ``conv1..conv8`` (+ ``_bn``, ``_act``), ``class_conv``,
  ``logits`` (the global average pool).

  Attributes:
    num_classes: output logits.
    filters: F.
    activation: see `Activation`.
    batch_norm: batch norm after each of conv1..conv8.
  """
  num_classes: int = 10
  filters: int = 32
  activation: str = "elu"
  batch_norm: bool = False

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    f = self.filters
    block = dict(activation=self.activation, use_batch_norm=self.batch_norm,
                 train=train)
    # (features, kernel, stride) of conv1..conv8.
    layers = ((f, 3, 1), (f, 3, 1), (f, 3, 2), (2 * f, 3, 1), (2 * f, 3, 1),
              (2 * f, 3, 2), (2 * f, 3, 1), (2 * f, 1, 1))
    for i, (features, k, s) in enumerate(layers, start=1):
      x = _layers.conv_bn_act(x, f"conv{i}", features, k, strides=s, **block)
    x = nn.Conv(self.num_classes, (1, 1), name="class_conv")(x)
    return _layers.GlobalAvgPool(name="logits")(x)


class VGG16D(nn.Module):
  """The paper's VGG16D: VGG configuration D with four blocks.

  Blocks of [2, 2, 3, 3] 3x3 convolutions with ``base * [1, 2, 4, 8]``
  channels, each conv followed by the activation (and a batch norm *after*
  it, as in the paper code), each block by 2x2 max pooling; then dropout,
  fc, ReLU, dropout, fc, ReLU, logits. The paper uses base 16 / fc 64 on
  MNIST and base 64 / fc 512 on CIFAR-10.

  Layer names: ``conv{block}_{i}`` (+ ``_act``, ``_bn``), ``pool1..pool4``,
  ``fc1_dropout``, ``fc1``, ``fc1_act``, ``fc2_dropout``, ``fc2``,
  ``fc2_act``, ``logits``. Dropout needs a ``"dropout"`` rng when
  ``train=True``.

  Attributes:
    num_classes: output logits.
    base: channels of the first block.
    fc: hidden units of both fully connected layers.
    dropout: dropout rate before fc1 and fc2.
    activation: convolution activation (ELU in the paper).
    fc_activation: fully connected activation (ReLU in the paper).
    batch_norm: batch norm after every conv activation.
  """
  num_classes: int = 10
  base: int = 16
  fc: int = 64
  dropout: float = 0.5
  activation: str = "elu"
  fc_activation: str = "relu"
  batch_norm: bool = False

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    for b, (n_conv, mult) in enumerate(zip((2, 2, 3, 3), (1, 2, 4, 8)),
                                       start=1):
      for i in range(1, n_conv + 1):
        x = _layers.conv_bn_act(x, f"conv{b}_{i}", self.base * mult, 3,
                                activation=self.activation,
                                use_batch_norm=self.batch_norm,
                                bn_after_activation=True, train=train)
      x = _layers.MaxPool(2, name=f"pool{b}")(x)
    x = _layers.flatten(x)
    for i in (1, 2):
      x = nn.Dropout(self.dropout, deterministic=not train,
                     name=f"fc{i}_dropout")(x)
      x = nn.Dense(self.fc, name=f"fc{i}")(x)
      x = _layers.Activation(self.fc_activation, name=f"fc{i}_act")(x)
    return nn.Dense(self.num_classes, name="logits")(x)
