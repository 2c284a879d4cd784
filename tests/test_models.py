"""Tests for invjax.models: shapes, layer names, parameter counts, invariance.

Shape and parameter tests use `jax.eval_shape`, which traces without
compiling, so even ResNet-34 costs well under a second; only SimpleConv, the
C4 GCNN and TI-pooling run real (jitted) forward passes.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax import models
from invjax import transforms

KEY = jax.random.key(0)
MNIST = (2, 28, 28, 1)
CIFAR = (2, 32, 32, 3)


def _shapes(model, shape, **kwargs):
  """(variables, logits, intermediates) as ShapeDtypeStructs."""
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(model.init, KEY, x)
  logits, state = jax.eval_shape(
      lambda v, x: model.apply(v, x, capture_intermediates=True,
                               mutable=["intermediates"], **kwargs),
      variables, x)
  return variables, logits, state["intermediates"]


def _random_variables(model, shape, seed=0):
  """Random variables for ``model`` without running ``model.init``.

  Compiling Flax's initialisers (threefry random bits per parameter) costs
  seconds per model on a busy CPU, so tests fill the traced variable
  structure with NumPy draws instead: parameters ~ N(0, 1/fan_in) (biases
  and scalars ~ N(0, 0.1^2), random so that they take part in the tests),
  batch statistics at mean 0, variance 1.
  """
  rng = np.random.default_rng(seed)
  structure = jax.eval_shape(model.init, KEY,
                             jax.ShapeDtypeStruct(shape, jnp.float32))

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "batch_stats" in name:
      return jnp.full(leaf.shape, 1.0 if "var" in name else 0.0, leaf.dtype)
    if len(leaf.shape) >= 2:
      scale = 1.0 / np.sqrt(np.prod(leaf.shape[:-1]))
    else:
      scale = 0.1
    return jnp.asarray(rng.normal(size=leaf.shape) * scale, leaf.dtype)

  return jax.tree_util.tree_map_with_path(fill, structure)


def _num_params(variables):
  return sum(int(np.prod(a.shape)) for a in
             jax.tree.leaves(variables["params"]))


def _rot90_set(images):
  return jnp.stack([jnp.rot90(images, k, axes=(1, 2)) for k in range(4)],
                   axis=1)


MODELS = {
    "simple_conv": lambda: models.SimpleConv(channels=8),
    "simple_conv_bn_strided_prelu": lambda: models.SimpleConv(
        channels=8, batch_norm=True, pooling="strided", activation="prelu",
        kernel_size=5),
    "all_conv": lambda: models.AllConvolutional(filters=8),
    "vgg16d": lambda: models.VGG16D(base=4, fc=8),
    "resnet18": lambda: models.ResNet18(width=4),
    "resnet34": lambda: models.ResNet34(width=4, batch_norm=True),
    "c4gcnn": lambda: models.C4GCNN(channels=(4, 8)),
    "tipooling": lambda: models.TIPooling(
        models.SimpleConv(channels=4, features_only=True), _rot90_set, fc=16),
}


@pytest.mark.parametrize("shape", [MNIST, CIFAR], ids=["mnist", "cifar"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shape(name, shape):
  _, logits, intermediates = _shapes(MODELS[name](), shape)
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert intermediates["logits"]["__call__"][0].shape == (2, 10)


def test_simple_conv_layers_and_parameter_count():
  variables, _, inter = _shapes(models.SimpleConv(channels=8), MNIST)
  expected = ["conv1", "conv1_act", "conv2", "conv2_act", "pool1", "conv3",
              "conv3_act", "conv4", "conv4_act", "pool2", "conv5",
              "conv5_act", "fc1", "fc1_act", "logits"]
  assert set(expected) <= set(inter)
  assert inter["pool1"]["__call__"][0].shape == (2, 14, 14, 8)
  assert inter["conv5_act"]["__call__"][0].shape == (2, 7, 7, 32)
  # conv: k*k*cin*cout + cout; fc1 sees the 7x7x32 map.
  convs = [(1, 8), (8, 8), (8, 16), (16, 16), (16, 32)]
  expected_count = (sum(9 * i * o + o for i, o in convs) +
                    (7 * 7 * 32 * 128 + 128) + (128 * 10 + 10))
  assert _num_params(variables) == expected_count == 210914


def test_simple_conv_options():
  variables, _, inter = _shapes(MODELS["simple_conv_bn_strided_prelu"](),
                                MNIST)
  assert {"conv1_bn", "fc1_bn", "pool1", "pool2"} <= set(inter)
  assert "batch_stats" in variables
  # Strided pooling is a learned 3x3 stride-2 convolution.
  assert variables["params"]["pool1"]["kernel"].shape == (3, 3, 8, 8)
  assert variables["params"]["conv1"]["kernel"].shape == (5, 5, 1, 8)
  assert variables["params"]["conv5"]["kernel"].shape == (3, 3, 16, 32)
  assert variables["params"]["conv1_act"]["negative_slope"].shape == ()
  with pytest.raises(ValueError, match="pooling"):
    _shapes(models.SimpleConv(pooling="avg"), MNIST)
  with pytest.raises(ValueError, match="activation"):
    _shapes(models.SimpleConv(activation="swish"), MNIST)


def test_simple_conv_jit_forward_and_training_mode():
  model = models.SimpleConv(channels=4, fc=16, batch_norm=True)
  x = jnp.asarray(np.random.default_rng(1).normal(size=MNIST), jnp.float32)
  variables = _random_variables(model, MNIST)
  apply = jax.jit(model.apply, static_argnames=("train", "mutable"))
  logits = apply(variables, x)
  assert logits.shape == (2, 10) and bool(jnp.all(jnp.isfinite(logits)))
  np.testing.assert_allclose(apply(variables, x), logits)
  # Training mode updates the batch statistics.
  _, updates = apply(variables, x, train=True, mutable=("batch_stats",))
  before = variables["batch_stats"]["conv1_bn"]["mean"]
  after = updates["batch_stats"]["conv1_bn"]["mean"]
  assert not np.allclose(before, after)


def test_all_convolutional_layers():
  variables, _, inter = _shapes(models.AllConvolutional(filters=8), CIFAR)
  assert [f"conv{i}" for i in range(1, 9)] == sorted(
      k for k in inter if k.startswith("conv") and "_" not in k)
  assert inter["conv3"]["__call__"][0].shape == (2, 16, 16, 8)
  assert inter["conv8_act"]["__call__"][0].shape == (2, 8, 8, 16)
  assert inter["class_conv"]["__call__"][0].shape == (2, 8, 8, 10)
  assert variables["params"]["conv8"]["kernel"].shape == (1, 1, 16, 16)


def test_vgg16d_layers_and_dropout():
  model = models.VGG16D(base=4, fc=8)
  variables, _, inter = _shapes(model, CIFAR)
  convs = [k for k in variables["params"] if k.startswith("conv")]
  assert len(convs) == 10  # blocks [2, 2, 3, 3]
  assert inter["conv4_3_act"]["__call__"][0].shape == (2, 4, 4, 32)
  assert inter["pool4"]["__call__"][0].shape == (2, 2, 2, 32)
  assert variables["params"]["fc1"]["kernel"].shape == (2 * 2 * 32, 8)
  # Training mode needs (and uses) a dropout rng.
  x = jax.ShapeDtypeStruct(CIFAR, jnp.float32)
  out = jax.eval_shape(
      lambda v, x: model.apply(v, x, train=True,
                               rngs={"dropout": jax.random.key(1)}),
      variables, x)
  assert out.shape == (2, 10)


def test_resnet_layers():
  variables, _, inter = _shapes(models.ResNet18(width=4), MNIST)
  blocks = sorted(k for k in variables["params"] if k.startswith("layer"))
  assert blocks == [f"layer{s}_block{b}" for s in range(1, 5)
                    for b in (1, 2)]
  params = variables["params"]
  assert "shortcut" not in params["layer1_block1"]
  assert params["layer2_block1"]["shortcut"]["kernel"].shape == (1, 1, 4, 8)
  assert inter["layer4_block2"]["act"]["__call__"][0].shape == (2, 4, 4, 32)
  assert inter["pool"]["__call__"][0].shape == (2, 32)
  v34, _, _ = _shapes(models.ResNet34(width=4), CIFAR)
  assert len([k for k in v34["params"] if k.startswith("layer")]) == 16
  # ResNet34 with width 64 has the textbook ~21.3M parameters (CIFAR stem,
  # no batch norm, 10 classes).
  full = jax.eval_shape(models.ResNet34().init, KEY,
                        jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert 21.0e6 < _num_params(full) < 21.5e6


def test_tipooling_is_invariant_to_its_group():
  ts = transforms.rot90()
  model = models.TIPooling(models.SimpleConv(channels=4, features_only=True),
                           ts, fc=16)
  x = jnp.asarray(np.random.default_rng(1).uniform(size=(2, 16, 16, 1)),
                  jnp.float32)
  variables = _random_variables(model, x.shape)
  batch = jnp.concatenate([x, jnp.rot90(x, 1, axes=(1, 2))])

  @jax.jit
  def forward(v, images):
    return model.apply(v, images, capture_intermediates=True,
                       mutable=["intermediates"])

  logits, state = forward(variables, batch)
  inter = state["intermediates"]
  assert inter["branch"]["conv1"]["__call__"][0].shape == (4 * 4, 16, 16, 4)
  assert inter["ti_pool"]["__call__"][0].shape == (4, 4 * 4 * 16)
  np.testing.assert_allclose(logits[2:], logits[:2], rtol=1e-5, atol=1e-6)
  # A plain callable works as the transformation set too.
  same = models.TIPooling(models.SimpleConv(channels=4, features_only=True),
                          _rot90_set, fc=16)
  np.testing.assert_allclose(jax.jit(same.apply)(variables, x), logits[:2],
                             rtol=1e-5, atol=1e-6)


def test_c4gcnn_invariance_and_equivariance():
  model = models.C4GCNN(channels=(4, 8, 8))
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 16, 16, 3)),
                  jnp.float32)
  variables = _random_variables(model, x.shape)
  batch = jnp.concatenate([jnp.rot90(x, k, axes=(1, 2)) for k in range(4)])

  @jax.jit
  def forward(v, images):
    return model.apply(v, images, capture_intermediates=True,
                       mutable=["intermediates"])

  with jax.default_matmul_precision("highest"):
    logits, state = forward(variables, batch)
  logits = logits.reshape(4, 2, 10)
  scale = float(jnp.max(jnp.abs(logits[0])))
  for k in (1, 2, 3):
    np.testing.assert_allclose(logits[k], logits[0], rtol=1e-4,
                               atol=1e-4 * scale)
  inter = state["intermediates"]
  for layer in ("gconv1", "gconv2", "gconv2_act", "pool2", "gconv3"):
    maps = inter[layer]["__call__"][0]
    maps = maps.reshape((4, 2) + maps.shape[1:])  # (k, B, 4, H, W, C)
    assert maps.shape[2] == 4
    base = maps[0]
    for k in (1, 2, 3):
      # Rotating the input rotates the maps and shifts the rotation axis.
      expected = jnp.roll(jnp.rot90(base, k, axes=(2, 3)), k, axis=1)
      np.testing.assert_allclose(
          maps[k], expected, rtol=1e-4,
          atol=1e-4 * float(jnp.max(jnp.abs(base))), err_msg=f"{layer} k={k}")
  # The rotation axis is not trivially symmetric (the test has teeth).
  g1 = inter["gconv1"]["__call__"][0][:2]
  assert float(jnp.max(jnp.abs(g1 - jnp.roll(g1, 1, axis=1)))) > 1e-2


def test_c4gcnn_parameters_and_pooling_checks():
  variables, _, inter = _shapes(models.C4GCNN(channels=(4, 8)), MNIST)
  params = variables["params"]
  assert params["gconv1"]["kernel"].shape == (3, 3, 1, 4)
  assert params["gconv2"]["kernel"].shape == (4, 3, 3, 4, 8)
  assert inter["gconv2"]["__call__"][0].shape == (2, 4, 14, 14, 8)
  assert inter["spatial_pool"]["__call__"][0].shape == (2, 4, 8)
  assert inter["rotation_pool"]["__call__"][0].shape == (2, 8)
  # 28 -> 14 -> 7: a third pooling would floor an odd size.
  with pytest.raises(ValueError, match="even"):
    _shapes(models.C4GCNN(channels=(4, 4, 4, 4)), MNIST)
  with pytest.raises(ValueError, match="odd"):
    _shapes(models.C4GCNN(kernel_size=4), MNIST)
