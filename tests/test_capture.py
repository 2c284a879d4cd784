"""Tests for invjax.capture: every captured value is checked against the layer
applied by hand, and every ordering claim against a model built to break it."""

import collections
import doctest

import flax.linen as nn
from flax import nnx as flax_nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax import capture

B = 2
IMAGES = jax.random.normal(jax.random.key(0), (B, 6, 6, 3))


def _close(a, b):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5,
                             atol=1e-5)


# ----------------------------------------------------------------------------
# Linen models.
# ----------------------------------------------------------------------------


class LinenCNN(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3))(x))
    x = nn.Conv(5, (3, 3))(x)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(3)(x)


class Swapped(nn.Module):
  """Dense_0 (3 units) is constructed first but Dense_1 (4 units) runs first."""

  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.relu(nn.Dense(4)(x)))


class Sower(nn.Module):

  @nn.compact
  def __call__(self, x):
    self.sow("intermediates", "pre", x + 1.0)  # sown before the child runs
    h = nn.Dense(4)(x)
    self.sow("intermediates", "pair", h * 2.0)
    self.sow("intermediates", "pair", h * 3.0)
    self.sow("intermediates", "loss", jnp.sum(h))  # scalar: no batch axis
    return jnp.tanh(h)


class SowerNet(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(2)(Sower()(x))


@pytest.fixture(scope="module")
def cnn():
  module = LinenCNN()
  return module, module.init(jax.random.key(1), IMAGES)


def test_linen_cnn_captures_every_layer(cnn):
  module, variables = cnn
  acts = capture.linen(module, variables)(IMAGES)
  assert isinstance(acts, collections.OrderedDict)
  # The network returns Dense_0's output: listed once, as Dense_0.
  assert list(acts) == ["Conv_0", "Conv_1", "Dense_0"]

  p = variables["params"]
  conv0 = nn.Conv(4, (3, 3)).apply({"params": p["Conv_0"]}, IMAGES)
  conv1 = nn.Conv(5, (3, 3)).apply({"params": p["Conv_1"]}, nn.relu(conv0))
  dense = nn.Dense(3).apply({"params": p["Dense_0"]},
                            jnp.mean(conv1, axis=(1, 2)))
  assert acts["Conv_0"].shape == (B, 6, 6, 4)
  assert acts["Conv_1"].shape == (B, 6, 6, 5)
  assert acts["Dense_0"].shape == (B, 3)
  _close(acts["Conv_0"], conv0)
  _close(acts["Conv_1"], conv1)
  _close(acts["Dense_0"], dense)
  _close(acts["Dense_0"], module.apply(variables, IMAGES))


def test_linen_order_is_execution_not_construction():
  x = jnp.ones((B, 5))
  module = Swapped()
  variables = module.init(jax.random.key(0), x)
  act = capture.linen(module, variables)
  assert act.layer_names(x) == ["Dense_1", "Dense_0"]
  acts = act(x)
  assert list(acts) == ["Dense_1", "Dense_0"]
  assert acts["Dense_1"].shape == (B, 4)
  assert acts["Dense_0"].shape == (B, 3)
  # Order survives jit, which rebuilds plain dicts in sorted key order.
  assert list(jax.jit(act.apply)(variables, x)) == ["Dense_1", "Dense_0"]


def test_linen_sown_values():
  x = jax.random.normal(jax.random.key(2), (B, 5))
  module = SowerNet()
  variables = module.init(jax.random.key(0), x)
  acts = capture.linen(module, variables)(x)
  assert list(acts) == ["Sower_0/pre", "Sower_0/Dense_0", "Sower_0/pair.0",
                        "Sower_0/pair.1", "Sower_0", "Dense_0"]
  h = nn.Dense(4).apply(
      {"params": variables["params"]["Sower_0"]["Dense_0"]}, x)
  _close(acts["Sower_0/pre"], x + 1.0)
  _close(acts["Sower_0/Dense_0"], h)
  _close(acts["Sower_0/pair.0"], h * 2.0)
  _close(acts["Sower_0/pair.1"], h * 3.0)
  _close(acts["Sower_0"], jnp.tanh(h))
  assert "Sower_0/loss" not in acts  # a scalar has no batch axis


class TwoOutputs(nn.Module):
  """Returns a new array equal to the last layer's output, and that output."""

  @nn.compact
  def __call__(self, x):
    h = nn.Dense(3)(x)
    return h * 1.0, h


class HeadNamedOutput(nn.Module):

  @nn.compact
  def __call__(self, x):
    return nn.Dense(2, name="output")(nn.Dense(4)(x))


def test_linen_output_listed_only_when_new(cnn):
  x = jax.random.normal(jax.random.key(6), (B, 5))
  module = TwoOutputs()
  variables = module.init(jax.random.key(0), x)
  acts = capture.linen(module, variables)(x)
  # Identity, not equality: h * 1.0 is a new array with h's values.
  assert list(acts) == ["Dense_0", "output[0]"]
  h = nn.Dense(3).apply({"params": variables["params"]["Dense_0"]}, x)
  _close(acts["Dense_0"], h)
  _close(acts["output[0]"], h)

  # A filter that names the output still gets it, beside its first name.
  module, variables = cnn
  named = capture.linen(module, variables, layers=["output", "Dense_0"])(IMAGES)
  assert list(named) == ["Dense_0", "output"]
  _close(named["output"], named["Dense_0"])
  _close(named["output"], module.apply(variables, IMAGES))
  assert "output" not in capture.linen(module, variables,
                                       layers=lambda n: True)(IMAGES)

  # A last layer called "output" no longer clashes with the network output.
  module = HeadNamedOutput()
  variables = module.init(jax.random.key(0), x)
  acts = capture.linen(module, variables)(x)
  assert list(acts) == ["Dense_0", "output"]
  _close(acts["output"], module.apply(variables, x))
  assert list(capture.linen(module, variables, layers="output")(x)) == [
      "output"]


def test_linen_filters(cnn):
  module, variables = cnn
  by_names = capture.linen(module, variables,
                           layers=["Dense_0", "Conv_0"])(IMAGES)
  assert list(by_names) == ["Conv_0", "Dense_0"]  # execution order
  _close(by_names["Conv_0"], capture.linen(module, variables)(IMAGES)["Conv_0"])

  by_callable = capture.linen(module, variables,
                              layers=lambda n: n.startswith("Conv"))(IMAGES)
  assert list(by_callable) == ["Conv_0", "Conv_1"]
  assert list(capture.linen(module, variables, layers="output")(IMAGES)) == [
      "output"]


def test_linen_filter_stores_only_selected(cnn, monkeypatch):
  module, variables = cnn
  act = capture.linen(module, variables, layers=["Conv_1"])
  act(IMAGES)  # builds and caches the plan
  stored = []
  real_apply = nn.Module.apply

  def spy(self, *args, **kwargs):
    out, state = real_apply(self, *args, **kwargs)
    stored.append([jax.tree_util.keystr(p) for p, _ in
                   jax.tree_util.tree_flatten_with_path(state)[0]])
    return out, state

  monkeypatch.setattr(nn.Module, "apply", spy)
  act(IMAGES)
  assert stored == [
      ["['intermediates']['Conv_1']['__call__'][0]"]]


def test_linen_unknown_layer_lists_available(cnn):
  module, variables = cnn
  act = capture.linen(module, variables, layers=["Conv_0", "Conv_9"])
  with pytest.raises(ValueError, match="unknown layer 'Conv_9'") as err:
    act(IMAGES)
  for name in ["Conv_0", "Conv_1", "Dense_0", "output"]:
    assert name in str(err.value)
  with pytest.raises(ValueError, match="no layers"):
    capture.linen(module, variables, layers=lambda n: False)(IMAGES)


class BNNet(nn.Module):

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(4, (3, 3))(x)
    x = nn.BatchNorm(use_running_average=not train)(x)
    return nn.Dense(2)(jnp.mean(nn.relu(x), axis=(1, 2)))


def test_linen_batch_stats_eval_mode():
  module = BNNet()
  variables = module.init(jax.random.key(0), IMAGES, train=False)
  # Non-trivial running statistics, so eval mode is visible in the values.
  stats = variables["batch_stats"]["BatchNorm_0"]
  mean = jnp.linspace(-1.0, 1.0, 4)
  var = jnp.linspace(0.5, 2.0, 4)
  variables = {"params": variables["params"],
               "batch_stats": {"BatchNorm_0": {"mean": mean, "var": var}}}
  assert stats["mean"].shape == mean.shape

  acts = capture.linen(module, variables,
                       apply_kwargs={"train": False})(IMAGES)
  assert list(acts) == ["Conv_0", "BatchNorm_0", "Dense_0"]
  p = variables["params"]["BatchNorm_0"]
  expected = ((acts["Conv_0"] - mean) / jnp.sqrt(var + 1e-5) * p["scale"] +
              p["bias"])
  _close(acts["BatchNorm_0"], expected)
  _close(acts["Dense_0"], module.apply(variables, IMAGES, train=False))


class Encoder(nn.Module):

  def setup(self):
    self.proj = nn.Dense(3)

  def embed(self, x):
    return jnp.sin(self.proj(x))

  def __call__(self, x):
    return self.embed(x) * 2.0


class AutoEncoder(nn.Module):

  def setup(self):
    self.encoder = Encoder()
    self.decoder = nn.Dense(5)

  def encode(self, x):
    return self.encoder(x)

  def __call__(self, x):
    return self.decoder(self.encode(x))


def test_linen_methods():
  x = jax.random.normal(jax.random.key(3), (B, 5))
  module = AutoEncoder()
  variables = module.init(jax.random.key(0), x)
  full = capture.linen(module, variables)(x)
  assert list(full) == ["encoder/proj", "encoder.embed", "encoder", "encode",
                        "decoder"]
  proj = nn.Dense(3).apply(
      {"params": variables["params"]["encoder"]["proj"]}, x)
  _close(full["encoder.embed"], jnp.sin(proj))
  _close(full["encode"], 2.0 * jnp.sin(proj))

  encoded = capture.linen(module, variables, method="encode")(x)
  # encode returns the encoder's output: no second name for it.
  assert list(encoded) == ["encoder/proj", "encoder.embed", "encoder"]
  _close(encoded["encoder"], 2.0 * jnp.sin(proj))


class Shared(nn.Module):
  """One Dense called twice, and a layer with a tuple output."""

  @nn.compact
  def __call__(self, x):
    dense = nn.Dense(5)
    y = dense(dense(x))
    return y, {"half": y / 2.0}


def test_linen_repeated_calls_and_tuple_outputs():
  x = jax.random.normal(jax.random.key(4), (B, 5))
  module = Shared()
  variables = module.init(jax.random.key(0), x)
  acts = capture.linen(module, variables)(x)
  # output[0] is Dense_0's second output, so only output[1] is new.
  assert list(acts) == ["Dense_0.0", "Dense_0.1", "output[1][half]"]
  first = nn.Dense(5).apply({"params": variables["params"]["Dense_0"]}, x)
  second = nn.Dense(5).apply({"params": variables["params"]["Dense_0"]}, first)
  _close(acts["Dense_0.0"], first)
  _close(acts["Dense_0.1"], second)
  _close(acts["output[1][half]"], second / 2.0)


def test_linen_jit_and_grad(cnn):
  module, variables = cnn
  act = capture.linen(module, variables)
  eager = act(IMAGES)
  jitted = jax.jit(act.apply)(act.params, IMAGES)
  for name in eager:
    _close(jitted[name], eager[name])

  def loss(params):
    return jnp.sum(act.apply(params, IMAGES)["Conv_1"] ** 2)

  grads = jax.grad(loss)(act.params)["params"]
  for layer in ["Conv_0", "Conv_1"]:
    g = grads[layer]["kernel"]
    assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0.0
  # Conv_1 does not depend on the classifier.
  assert float(jnp.abs(grads["Dense_0"]["kernel"]).sum()) == 0.0


def test_linen_keys_identify_the_function(cnn):
  module, variables = cnn
  a = capture.linen(module, variables)
  b = capture.linen(module, variables)
  c = capture.linen(module, variables, layers="Conv_0")
  assert a.key == b.key and hash(a.key) == hash(b.key)
  assert a.key != c.key


def test_linen_type_errors(cnn):
  _, variables = cnn
  with pytest.raises(TypeError, match="linen.Module"):
    capture.linen(lambda x: x, variables)
  with pytest.raises(TypeError, match="capture_intermediates"):
    capture.linen(LinenCNN(), variables,
                  apply_kwargs={"capture_intermediates": True})


def test_linen_repr_is_short(cnn):
  module, variables = cnn
  act = capture.linen(module, variables)
  # 3·3·3·4 + 4, 3·3·4·5 + 5 and 5·3 + 3 weights; none of them printed.
  assert repr(act) == (
      "Activations(flax.linen LinenCNN, 315 parameters;\n"
      "  layers: known after the first call (or .layer_names(images), which "
      "computes nothing))")
  act.layer_names(IMAGES)
  assert repr(act) == (
      "Activations(flax.linen LinenCNN, 315 parameters;\n"
      "  3 layers, per-sample shapes at the latest call:\n"
      "    Conv_0 (6, 6, 4), Conv_1 (6, 6, 5), Dense_0 (3,))")

  bn = BNNet()
  bn_vars = bn.init(jax.random.key(0), IMAGES, train=False)
  # 112 + 4 scales + 4 offsets + 4·2 + 2; the running statistics apart.
  assert repr(capture.linen(bn, bn_vars)).startswith(
      "Activations(flax.linen BNNet, 130 parameters (+ batch_stats);")


# ----------------------------------------------------------------------------
# NNX models.
# ----------------------------------------------------------------------------


class NNXCNN(flax_nnx.Module):

  def __init__(self, rngs):
    # Attribute names sort differently from the execution order.
    self.z_conv = flax_nnx.Conv(3, 4, (3, 3), rngs=rngs)
    self.b_conv = flax_nnx.Conv(4, 5, (3, 3), rngs=rngs)
    self.a_head = flax_nnx.Linear(5, 3, rngs=rngs)

  def __call__(self, x):
    x = flax_nnx.relu(self.z_conv(x))
    x = self.b_conv(x)
    return self.a_head(jnp.mean(x, axis=(1, 2)))


class NNXBlock(flax_nnx.Module):

  def __init__(self, rngs):
    self.zz = flax_nnx.Linear(4, 4, rngs=rngs)
    self.aa = flax_nnx.Linear(4, 4, rngs=rngs)

  def __call__(self, x):
    h = self.zz(x)
    self.sow(flax_nnx.Intermediate, "feat", h)
    self.sow(flax_nnx.Intermediate, "twice", jnp.tanh(h))
    self.sow(flax_nnx.Intermediate, "twice", jnp.cos(h))
    return self.aa(h)


class NNXNet(flax_nnx.Module):

  def __init__(self, rngs):
    self.block = NNXBlock(rngs)
    self.layers = flax_nnx.List([flax_nnx.Linear(4, 2, rngs=rngs),
                                 flax_nnx.Linear(2, 2, rngs=rngs)])

  def __call__(self, x):
    x = self.block(x)
    for layer in self.layers:
      x = layer(x)
    return x


@pytest.fixture(scope="module")
def nnx_cnn():
  return NNXCNN(flax_nnx.Rngs(0))


def test_nnx_values_and_order(nnx_cnn):
  model = nnx_cnn
  act = capture.nnx(model)
  acts = act(IMAGES)
  assert list(acts) == ["z_conv", "b_conv", "a_head"]
  conv0 = model.z_conv(IMAGES)
  conv1 = model.b_conv(flax_nnx.relu(conv0))
  _close(acts["z_conv"], conv0)
  _close(acts["b_conv"], conv1)
  _close(acts["a_head"], model.a_head(jnp.mean(conv1, axis=(1, 2))))
  _close(acts["a_head"], model(IMAGES))
  jitted = jax.jit(act.apply)(act.params, IMAGES)
  assert list(jitted) == list(acts)
  _close(jitted["b_conv"], conv1)


def test_nnx_sown_values_and_paths():
  model = NNXNet(flax_nnx.Rngs(1))
  x = jax.random.normal(jax.random.key(5), (B, 4))
  acts = capture.nnx(model)(x)
  assert list(acts) == ["block/zz", "block/feat", "block/twice.0",
                        "block/twice.1", "block/aa", "block", "layers/0",
                        "layers/1"]
  h = model.block.zz(x)
  _close(acts["block/feat"], h)
  _close(acts["block/twice.0"], jnp.tanh(h))
  _close(acts["block/twice.1"], jnp.cos(h))
  _close(acts["block"], model.block.aa(h))
  # Recomputed layer by layer: calling model(x) would sow outside nnx.capture.
  _close(acts["layers/1"], model.layers[1](model.layers[0](acts["block"])))


class NNXSowsLogits(flax_nnx.Module):

  def __init__(self, rngs):
    self.lin = flax_nnx.Linear(4, 3, rngs=rngs)

  def __call__(self, x):
    z = self.lin(x)
    self.sow(flax_nnx.Intermediate, "logits", z)
    return z, jnp.tanh(z)


def test_nnx_output_listed_only_when_new():
  model = NNXSowsLogits(flax_nnx.Rngs(2))
  x = jax.random.normal(jax.random.key(7), (B, 4))
  act = capture.nnx(model)
  acts = act(x)
  # output[0] is z, already listed as "lin" and as the sown "logits".
  assert list(acts) == ["lin", "logits", "output[1]"]
  z = model.lin(x)
  _close(acts["logits"], z)
  _close(acts["output[1]"], jnp.tanh(z))
  named = capture.nnx(model, layers="output[0]")(x)
  assert list(named) == ["output[0]"]
  _close(named["output[0]"], z)


def test_nnx_repr_is_short(nnx_cnn):
  act = capture.nnx(nnx_cnn)
  assert repr(act).startswith("Activations(flax.nnx NNXCNN, 315 parameters;\n"
                              "  layers: known after the first call")
  jax.jit(act.apply)(act.params, IMAGES)  # tracing is enough
  assert repr(act).endswith(
      "  3 layers, per-sample shapes at the latest call:\n"
      "    z_conv (6, 6, 4), b_conv (6, 6, 5), a_head (3,))")


def test_nnx_filter_and_grad(nnx_cnn):
  act = capture.nnx(nnx_cnn, layers=["a_head", "z_conv"])
  acts = act(IMAGES)
  assert list(acts) == ["z_conv", "a_head"]
  with pytest.raises(ValueError, match="unknown layer 'nope'.*z_conv"):
    capture.nnx(nnx_cnn, layers="nope")(IMAGES)

  grads = jax.grad(lambda s: jnp.sum(act.apply(s, IMAGES)["z_conv"]))(
      act.params)
  g = grads["z_conv"]["kernel"][...]
  assert bool(jnp.all(jnp.isfinite(g))) and float(jnp.abs(g).sum()) > 0.0


# ----------------------------------------------------------------------------
# Plain callables and the shared helpers.
# ----------------------------------------------------------------------------


def _two_layers(images):
  h = jnp.tanh(images)
  return {"z_first": h, "a_second": jnp.sum(h, axis=-1)}


def test_plain_callable():
  act = capture.as_activations(_two_layers)
  assert capture.as_activations(act) is act
  assert act.params is None
  with pytest.warns(DeprecationWarning, match="use as_activations"):
    assert act.key == capture.from_callable(_two_layers).key
  acts = act(IMAGES)
  assert list(acts) == ["z_first", "a_second"]  # the callable's own order
  _close(acts["a_second"], jnp.sum(jnp.tanh(IMAGES), axis=-1))
  assert act.layer_names(IMAGES) == ["z_first", "a_second"]
  assert list(jax.jit(act.apply)(None, IMAGES)) == ["z_first", "a_second"]


def test_repr_of_callables_elides_long_layer_lists():
  act = capture.as_activations(_two_layers)
  act(IMAGES)
  assert repr(act) == ("Activations(callable _two_layers;\n"
                       "  2 layers, per-sample shapes at the latest call:\n"
                       "    z_first (6, 6, 3), a_second (6, 6))")

  many = capture.Activations(
      apply=lambda p, x: {f"layer{i:02d}": x * p for i in range(40)},
      params=jnp.ones((2, 3)))
  assert repr(many).startswith("Activations(6 values in params;")
  many(jnp.ones((B, 2, 3)))
  lines = repr(many).splitlines()
  # Header, count, 3 lines of layers, the elision, the last 2 lines.
  assert len(lines) == 8
  assert lines[2].startswith("    layer00 (2, 3), layer01 (2, 3),")
  assert lines[-1].endswith("layer39 (2, 3))")
  shown = sum(line.count("(2, 3)") for line in lines)
  assert lines[5] == f"    ... {40 - shown} more ...,"


def test_as_activations_errors(nnx_cnn, cnn):
  with pytest.raises(TypeError, match="int"):
    capture.as_activations(3)
  with pytest.raises(TypeError, match="capture.linen"):
    capture.as_activations(cnn[0])
  with pytest.raises(ValueError, match="no activations"):
    capture.as_activations(lambda x: {})(IMAGES)
  with pytest.raises(ValueError, match="dict"):
    capture.as_activations(jnp.tanh)(IMAGES)
  converted = capture.as_activations(nnx_cnn)
  assert converted.layer_names(IMAGES)[0] == "z_conv"


def test_no_activations_raises():

  class Scalar(nn.Module):

    @nn.compact
    def __call__(self, x):
      return jnp.sum(x)

  with pytest.raises(ValueError, match="no activations"):
    capture.linen(Scalar(), {})(IMAGES)


def test_select_layers():
  names = ["a", "b", "c"]
  assert capture.select_layers(names, None) == names
  assert capture.select_layers(names, "b") == ["b"]
  assert capture.select_layers(names, ("c", "a")) == ["a", "c"]
  assert capture.select_layers(names, lambda n: n != "b") == ["a", "c"]
  with pytest.raises(ValueError, match="unknown layer 'd'; available layers: "
                     "a, b, c"):
    capture.select_layers(names, ["a", "d"])
  with pytest.raises(ValueError, match="no layers"):
    capture.select_layers(names, [])


@pytest.mark.parametrize("fn", [capture.linen, capture.nnx])
def test_docstring_examples_tap_function_calls(fn):
  # The examples show what is not captured (relu, max_pool) and how to sow
  # it; running them keeps the documented layer lists true.
  finder = doctest.DocTestFinder(recurse=False)
  runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
  tests = finder.find(fn, globs={})
  for test in tests:
    runner.run(test)
  outcome = runner.summarize(verbose=False)
  assert outcome.attempted >= 5 and outcome.failed == 0
  assert "'relu1'" in fn.__doc__ and "max_pool" in fn.__doc__


def test_filter_is_a_deprecated_name_of_layers(cnn):
  module, variables = cnn
  with pytest.warns(DeprecationWarning, match="layers="):
    old = capture.linen(module, variables, filter=["Conv_0"])
  assert list(old(IMAGES)) == ["Conv_0"]
  with pytest.raises(ValueError, match="layers= only"):
    with pytest.warns(DeprecationWarning):
      capture.linen(module, variables, filter=["Conv_0"], layers=["Conv_0"])
