"""Flows, Lie derivatives and LEE vs finite differences and NumPy references."""

import dm_pix
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src import flows
from invjax._src import lie
from invjax._src import transforms as tr

H = W = 10
GEOMETRIC = ("translation_x", "translation_y", "rotation", "scale", "shear_x",
             "shear_y", "hyperbolic_rotation", "stretch")
COLOUR = ("brightness", "gain", "contrast", "saturation")
MODES = ("mirror", "reflect", "nearest", "wrap", "constant")


def _smooth_images(n, c=3, seed=0):
  """Sums of wide Gaussians in [0.1, 0.9].

  Bilinear warps are only piecewise linear between pixels, so a finite step
  t sees second differences of the image: O(t) errors that are small only
  for smooth images.
  """
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:H, :W]
  out = np.zeros((n, H, W, c))
  for i in range(n):
    for _ in range(3):
      cy, cx = rng.uniform(1, H - 2, size=2)
      s = rng.uniform(2.0, 3.5)
      bump = np.exp(-((yy - cy)**2 + (xx - cx)**2) / (2 * s * s))
      out[i] += rng.uniform(0.2, 1.0, size=c) * bump[..., None]
    out[i] = 0.1 + 0.8 * out[i] / out[i].max()
  return out


def _layers(dtype, c=3):
  """A small conv net as a list of batched layers: conv→tanh, strided
  conv→gelu, global average pool, dense (logits)."""
  rng = np.random.default_rng(1)
  k1 = jnp.asarray(rng.normal(size=(3, 3, c, 4)) * 0.6, dtype)
  k2 = jnp.asarray(rng.normal(size=(3, 3, 4, 5)) * 0.4, dtype)
  w = jnp.asarray(rng.normal(size=(5, 6)) * 2.0, dtype)

  def conv(x, k, stride=1):
    return jax.lax.conv_general_dilated(
        x, k, (stride, stride), "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  return [lambda x: jnp.tanh(conv(x, k1)),
          lambda x: jax.nn.gelu(conv(x, k2, 2)),
          lambda x: jnp.mean(x, axis=(1, 2)),
          lambda x: x @ w]


def _compose(layers):
  def fn(x):
    for layer in layers:
      x = layer(x)
    return x
  return fn


def _lie(fn, x, gens, **kwargs):
  """lie_derivative under one jit: one XLA compile instead of one per op."""
  return jax.jit(lambda z: lie.lie_derivative(fn, z, gens, **kwargs))(x)


def _layerwise(layers, x, gens, **kwargs):
  return jax.jit(
      lambda z: lie.layerwise_lie_derivative(layers, z, gens, **kwargs))(x)


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / np.linalg.norm(b)


def _warp_fd(fl, x, h):
  """Central finite difference of the warp itself at t = 0."""
  return (fl.warp(x, h) - fl.warp(x, -h)) / (2 * h)


# --------------------------------------------------------------------------
# Flows: conventions and tangents.


def test_conventions_match_numpy_and_dm_pix():
  x = jnp.asarray(_smooth_images(1)[0], jnp.float32)
  # Content moves right / down by whole pixels: circular shifts.
  np.testing.assert_allclose(
      flows.translation_x(mode="wrap").warp(x, 2.0), jnp.roll(x, 2, axis=1),
      atol=1e-6)
  np.testing.assert_allclose(
      flows.translation_y(mode="wrap").warp(x, 3.0), jnp.roll(x, 3, axis=0),
      atol=1e-6)
  # Counter-clockwise as displayed, like np.rot90 and dm_pix.rotate.
  np.testing.assert_allclose(flows.rotation().warp(x, np.pi / 2),
                             jnp.rot90(x, 1), atol=1e-5)
  np.testing.assert_allclose(
      flows.rotation(mode="nearest").warp(x, 0.3),
      dm_pix.rotate(x, 0.3, mode="nearest"), atol=1e-5)
  # Zoom in by exp(t) = 2 about the centre: output p reads centre + p/2.
  big = flows.scale(mode="nearest").warp(x, np.log(2.0))
  np.testing.assert_allclose(big, dm_pix.affine_transform(
      x, jnp.diag(jnp.array([0.5, 0.5, 1.0])),
      offset=jnp.array([(H - 1) / 4, (W - 1) / 4, 0.0])), atol=1e-5)


@pytest.mark.parametrize("name,mode", (
    [(name, "mirror") for name in GEOMETRIC]
    + [(name, mode) for name in ("translation_x", "rotation")
       for mode in MODES if mode != "mirror"]))
def test_geometric_tangent_vs_warp_finite_difference(name, mode):
  fl = flows.flow(name, mode=mode)
  # float32, smooth image, finite step: the O(t)·(second difference) term.
  x = jnp.asarray(_smooth_images(1)[0], jnp.float32)
  v = fl.tangent(x)
  assert v.dtype == jnp.float32 and fl.warp(x, 0.1).dtype == jnp.float32
  np.testing.assert_allclose(fl.warp(x, 0.0), x, atol=1e-6)
  assert _rel(_warp_fd(fl, x, 1e-2), v) < 2e-2
  # float64 and t → 0: the central-difference tangent is the exact limit of
  # the bilinear warp's central difference, for any image, borders included.
  with jax.enable_x64(True):
    rough = jnp.asarray(np.random.default_rng(3).uniform(size=(H, W, 2)))
    assert _rel(_warp_fd(fl, rough, 1e-8), fl.tangent(rough)) < 1e-6


@pytest.mark.parametrize("name", COLOUR)
def test_colour_tangent_vs_warp_finite_difference(name):
  fl = flows.flow(name)

  @jax.jit
  def run(x, h):
    return fl.warp(x, 0.0), _warp_fd(fl, x, h), fl.tangent(x)

  x = jnp.asarray(_smooth_images(1)[0], jnp.float32)
  identity, _, v = run(x, 1e-2)
  np.testing.assert_allclose(identity, x, atol=1e-6)
  assert v.dtype == jnp.float32
  with jax.enable_x64(True):
    x = jnp.asarray(np.random.default_rng(4).uniform(0.05, 0.95, (H, W, 3)))
    _, fd, v = run(x, 1e-6)
  assert _rel(fd, v) < 1e-8


def test_saturation_is_hsv_saturation():
  rng = np.random.default_rng(5)
  x = rng.uniform(0.05, 0.95, (H, W, 3))
  x[0, :3, 0] = 0.0                     # fully saturated pixels: S = 1
  x[1, :3] = 0.4                        # grey pixels: S = 0
  with jax.enable_x64(True):
    x = jnp.asarray(x)
    fl = flows.saturation()
    y = fl.warp(x, 0.2)
    hsv, hsv_y = dm_pix.rgb_to_hsv(x), dm_pix.rgb_to_hsv(y)
    s = np.asarray(hsv[..., 1])
    # Hue and value kept, saturation scaled by exp(t) and clipped.
    np.testing.assert_allclose(hsv_y[..., 2], hsv[..., 2], atol=1e-12)
    np.testing.assert_allclose(hsv_y[..., 1],
                               np.minimum(s * np.exp(0.2), 1.0), atol=1e-12)
    ok = s > 1e-6
    np.testing.assert_allclose(np.asarray(hsv_y[..., 0])[ok],
                               np.asarray(hsv[..., 0])[ok], atol=1e-12)
    # Tangent = RGB − V, halved at S = 1 where the clip kinks the flow.
    v = np.asarray(x) - np.asarray(x).max(-1, keepdims=True)
    v[0, :3] /= 2
    np.testing.assert_allclose(fl.tangent(x), v, atol=1e-12)
    # One-sided at S = 1: the central difference is then off by O(t).
    np.testing.assert_allclose(_warp_fd(fl, x, 1e-7), v, atol=1e-7)
  with pytest.raises(ValueError, match="C = 3"):
    fl.tangent(jnp.ones((H, W, 2)))
  with pytest.raises(ValueError, match="C = 3"):
    fl.warp(jnp.ones((H, W, 1)), 0.1)


def test_rescaled_generator_and_names():
  assert set(flows.FLOW_NAMES) == set(GEOMETRIC + COLOUR)
  rot = flows.rotation()
  np.testing.assert_allclose(rot.rescale(0.5, 0.5).generator, rot.generator)
  tx = flows.translation_x().rescale(0.5, 0.25)
  np.testing.assert_allclose(np.asarray(tx.generator)[:2, 2], [0.0, 0.25])
  assert hash(rot) == hash(rot)                     # usable as a static arg
  assert flows.brightness().rescale is None


def test_zero_derivative_trap():
  """d/dt of a dm-pix warp at t = 0 is exactly 0; ours is not.

  At the identity every sample sits on a pixel, where bilinear weights have
  a kink: dm_pix.affine_transform differentiates to 0 there, which would
  make every Lie derivative 0. map_coordinates gives the one-sided forward
  difference. The analytic tangent gives the central difference.
  """
  x = jnp.asarray(_smooth_images(1)[0], jnp.float32)

  def pix_translate(t):
    # Output pixel (r, c) reads input (r, c − t): content moves right.
    return dm_pix.affine_transform(x, jnp.eye(3),
                                   offset=jnp.stack([0.0, -t, 0.0]))

  np.testing.assert_allclose(pix_translate(1.0), flows.translation_x(
      mode="nearest").warp(x, 1.0), atol=1e-6)
  _, d_pix = jax.jvp(pix_translate, (0.0,), (1.0,))
  assert np.all(np.asarray(d_pix) == 0.0)

  fl = flows.translation_x(mode="nearest")
  _, d_ours = jax.jvp(lambda t: fl.warp(x, t), (0.0,), (1.0,))
  padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (0, 0)), mode="edge")
  forward = padded[:, 2:] - padded[:, 1:-1]            # x(c + 1) − x(c)
  np.testing.assert_allclose(d_ours, -forward, atol=1e-6)
  central = (padded[:, 2:] - padded[:, :-2]) / 2
  np.testing.assert_allclose(fl.tangent(x), -central, atol=1e-6)
  assert np.abs(np.asarray(fl.tangent(x))).max() > 0.01
  # Through a network: the pix-based Lie derivative is exactly 0, ours not.
  w = jnp.asarray(np.random.default_rng(6).normal(size=(H, W, 3, 4)),
                  jnp.float32)
  f = lambda z: jnp.einsum("hwc,hwck->k", z, w)
  _, lie_pix = jax.jvp(lambda t: f(pix_translate(t)), (0.0,), (1.0,))
  assert np.all(np.asarray(lie_pix) == 0.0)
  ours = lie.lie_derivative(jax.vmap(f), x[None], fl, output="logits")
  np.testing.assert_allclose(ours.derivative[0], f(fl.tangent(x)),
                             rtol=1e-5)
  assert float(ours.lee) > 1e-3


# --------------------------------------------------------------------------
# Lie derivative.


@pytest.mark.parametrize("dtype,tol", [("float32", 1e-3), ("float64", 1e-6)])
def test_jvp_vs_finite_differences(dtype, tol):
  """The network part: J_f·v vs central differences of f(x + h·v)."""
  gens = ("translation_x", "rotation")
  # A step of 1 % of the image's scale balances float32 rounding against
  # the O(h²) truncation error.
  rel_step = 1e-2 if dtype == "float32" else 1e-5
  with jax.enable_x64(dtype == "float64"):
    x = jnp.asarray(_smooth_images(2), dtype)
    fn = _compose(_layers(x.dtype))

    @jax.jit
    def run(x):
      res = lie.lie_derivative(fn, x, gens, output="logits")
      fds = []
      for name in gens:
        v = jax.vmap(flows.flow(name).tangent)(x)
        h = rel_step * jnp.linalg.norm(x) / jnp.linalg.norm(v)
        fds.append((fn(x + h * v) - fn(x - h * v)) / (2 * h))
      return res, jnp.stack(fds)

    res, fds = run(x)
  assert res.derivative.shape == (2, 2, 6)
  assert res.derivative.dtype == dtype
  for g, name in enumerate(gens):
    assert _rel(res.derivative[g], fds[g]) < tol, name


def test_jvp_vs_finite_differences_through_the_warp():
  """End to end, t ↦ softmax(f(warp_t(x))), in float64 with a tiny step:
  the analytic tangent is the limit of the bilinear warp's differences."""
  gens = ("rotation", "saturation")
  with jax.enable_x64(True):
    x = jnp.asarray(_smooth_images(2), jnp.float64)
    fn = _compose(_layers(x.dtype))

    @jax.jit
    def run(x):
      res = lie.lie_derivative(fn, x, gens, output="probabilities")
      fds = []
      for name in gens:
        warp = jax.vmap(flows.flow(name).warp, in_axes=(0, None))
        prob = lambda t: jax.nn.softmax(fn(warp(x, t)), axis=-1)
        fds.append((prob(1e-7) - prob(-1e-7)) / 2e-7)
      return res, jnp.stack(fds)

    res, fds = run(x)
  for g, name in enumerate(gens):
    assert _rel(res.derivative[g], fds[g]) < 1e-6, name


def test_linear_model_matches_numpy():
  rng = np.random.default_rng(7)
  x = _smooth_images(3)
  w = rng.normal(size=(H, W, 3, 4))
  fn = lambda z: jnp.einsum("bhwc,hwck->bk", z, jnp.asarray(w, z.dtype))

  def tangent_np(img, name):
    """−∇x·ξ with NumPy: mirror-padded central differences."""
    p = np.pad(img, ((1, 1), (1, 1), (0, 0)), mode="reflect")
    d_row = (p[2:, 1:-1] - p[:-2, 1:-1]) / 2
    d_col = (p[1:-1, 2:] - p[1:-1, :-2]) / 2
    y, xx = np.mgrid[:H, :W].astype(float)
    y, xx = y - (H - 1) / 2, xx - (W - 1) / 2
    xi = {"translation_x": (0 * y, 1 + 0 * y), "rotation": (-xx, y),
          "scale": (y, xx), "shear_y": (xx, 0 * y)}[name]
    return -(d_row * xi[0][..., None] + d_col * xi[1][..., None])

  gens = ("translation_x", "rotation", "scale", "shear_y")
  with jax.enable_x64(True):
    res = _lie(fn, jnp.asarray(x), gens, output="logits",
                             aggregate="mean_abs")
  for g, name in enumerate(gens):
    expected = np.stack([np.einsum("hwc,hwck->k", tangent_np(img, name), w)
                         for img in x])
    np.testing.assert_allclose(res.derivative[g], expected, rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(res.per_image[g],
                               np.abs(expected).mean(-1), rtol=1e-10)
    np.testing.assert_allclose(res.lee[g], np.abs(expected).mean(),
                               rtol=1e-10)


def _pooled_conv_model(circular):
  """Conv (3 → 5 channels), global average pool, dense; the convolution is
  circular (periodic padding) or zero-padded."""
  rng = np.random.default_rng(8)
  k = jnp.asarray(rng.normal(size=(3, 3, 3, 5)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(5, 7)), jnp.float32)

  def fn(x):
    if circular:
      x = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap")
    y = jax.lax.conv_general_dilated(
        x, k, (1, 1), "VALID" if circular else "SAME",
        dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.mean(y, axis=(1, 2)) @ w

  return fn


def test_circular_model_is_exactly_invariant():
  x = jnp.asarray(np.random.default_rng(9).normal(size=(4, H, W, 3)),
                  jnp.float32)
  gens = (flows.translation_x(mode="wrap"), flows.translation_y(mode="wrap"))

  @jax.jit
  def run(x):
    return (lie.lie_derivative(_pooled_conv_model(True), x, gens),
            lie.lie_derivative(_pooled_conv_model(False), x, gens))

  circular, zero_padded = run(x)
  # Circular convolution commutes with periodic central differences, and
  # periodic differences sum to 0 under the average pool: LEE = 0 up to
  # float32 rounding.
  assert circular.per_image.shape == (2, 4)
  assert float(jnp.max(jnp.abs(circular.derivative))) < 1e-6
  assert float(jnp.max(circular.per_image)) < 1e-12
  # Zero padding breaks the invariance at the border: the same test fails.
  assert float(jnp.min(zero_padded.lee)) > 1e-6


def test_aggregates_softmax_and_generator_batching():
  x = jnp.asarray(_smooth_images(3), jnp.float32)
  fn = _compose(_layers(jnp.float32))

  @jax.jit
  def run(x):
    return (lie.lie_derivative(fn, x, ("translation_x", "rotation"),
                               output="logits"),
            lie.lie_derivative(fn, x, "rotation"),
            lie.lie_derivative(fn, x, "rotation", aggregate="mean_abs"),
            jax.nn.softmax(fn(x), axis=-1))

  logits, probs, abs_, p = run(x)
  assert logits.derivative.shape == (2, 3, 6)        # (G, B, out)
  assert logits.per_image.shape == (2, 3) and logits.lee.shape == (2,)
  assert probs.derivative.shape == (3, 6)            # one flow: no G axis
  assert probs.per_image.shape == (3,) and probs.lee.shape == ()
  # Softmax Jacobian diag(p) − p pᵀ applied to the (batched-generator)
  # logit derivative of the same flow.
  p = np.asarray(p, np.float64)
  d = np.asarray(logits.derivative[1], np.float64)
  expected = p * d - p * np.sum(p * d, axis=-1, keepdims=True)
  np.testing.assert_allclose(probs.derivative, expected, rtol=1e-4,
                             atol=1e-7)
  np.testing.assert_allclose(probs.per_image, np.mean(expected**2, -1),
                             rtol=1e-3)
  np.testing.assert_allclose(abs_.per_image, np.mean(np.abs(expected), -1),
                             rtol=1e-4)
  np.testing.assert_allclose(probs.lee, np.mean(expected**2), rtol=1e-3)
  np.testing.assert_allclose(
      logits.per_image, np.mean(np.asarray(logits.derivative)**2, -1),
      rtol=1e-5)
  with pytest.raises(ValueError, match="aggregate"):
    lie.lie_derivative(fn, x, "rotation", aggregate="rms")
  with pytest.raises(ValueError, match="output"):
    lie.lie_derivative(fn, x, "rotation", output="softmax")
  with pytest.raises(ValueError, match="unknown flow"):
    lie.lie_derivative(fn, x, "rotate")


def _circular_conv(k):
  """A convolution with periodic padding: exactly equivariant to circular
  shifts, and it commutes with periodic central differences."""
  def layer(z):
    z = jnp.pad(z, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="wrap")
    return jax.lax.conv_general_dilated(
        z, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return layer


def test_equivariant_output():
  rng = np.random.default_rng(9)
  x = jnp.asarray(rng.normal(size=(2, H, W, 3)), jnp.float32)
  k1 = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
  k2 = jnp.asarray(rng.normal(size=(3, 3, 4, 4)), jnp.float32)
  fn = _circular_conv(k1)
  layers = [_circular_conv(k1), jnp.tanh, _circular_conv(k2)]
  gen = flows.translation_x(mode="wrap")

  @jax.jit
  def run(x):
    return (lie.lie_derivative(fn, x, gen, output="logits", equivariant=True),
            lie.lie_derivative(fn, x, gen, output="logits"),
            lie.layerwise_lie_derivative(layers, x, gen, equivariant=True),
            lie.lie_derivative(_compose(layers), x, gen, equivariant=True))

  res, raw, lw, e2e = run(x)
  # L = J_f·v − τ(f(x)) vanishes for the equivariant map ...
  assert res.derivative.shape == (2, H, W, 4)
  assert float(jnp.max(jnp.abs(res.derivative))) < 1e-5
  # ... while J_f·v alone is far from 0.
  assert float(jnp.max(jnp.abs(raw.derivative))) > 0.1
  # With a channel softmax and the output action, the decomposition still
  # sums to the end-to-end derivative; the first convolution adds nothing.
  assert lw.contributions.shape == (3, 2, H, W, 4)
  # (float32: both sides subtract O(10) terms, so rounding is O(1e-5).)
  np.testing.assert_allclose(np.asarray(lw.contributions).sum(0),
                             e2e.derivative, atol=5e-5)
  assert float(lw.lee[0]) < 1e-12 and float(lw.lee[1]) > 1e-6
  with pytest.raises(ValueError, match="image-like"):
    lie.lie_derivative(lambda z: z.mean((1, 2)), x, gen, equivariant=True)
  with pytest.raises(ValueError, match="image-like"):
    lie.layerwise_lie_derivative([lambda z: z.mean((1, 2))], x, gen,
                                 equivariant=True)


# --------------------------------------------------------------------------
# Layer-wise decomposition.


def test_layerwise_contributions_sum_to_end_to_end():
  """Σ_i c_i = L_A f(x), and each c_i = J_{S_i}(h_i)·(J_{f_i}·τ_{i−1} − τ_i)
  recomputed by hand with one jvp per suffix."""
  gens = ("translation_x", "rotation", "contrast")
  with jax.enable_x64(True):
    x = jnp.asarray(_smooth_images(2), jnp.float64)
    layers = _layers(jnp.float64)
    fl = flows.rotation()

    @jax.jit
    def run(x):
      return (lie.layerwise_lie_derivative(layers, x, gens, output="logits"),
              lie.lie_derivative(_compose(layers), x, gens, output="logits"))

    @jax.jit
    def by_hand(h0):
      h1 = layers[0](h0)
      tau0 = jax.vmap(fl.tangent)(h0)
      tau1 = jax.vmap(fl.tangent)(h1)              # same size as the input
      own = jax.jvp(layers[0], (h0,), (tau0,))[1] - tau1
      c0 = jax.jvp(_compose(layers[1:]), (h1,), (own,))[1]
      h2 = layers[1](h1)                           # 5×5: rotation about its
      tau2 = jax.vmap(fl.rescale(0.5, 0.5).tangent)(h2)   # own centre
      own = jax.jvp(layers[1], (h1,), (tau1,))[1] - tau2
      c1 = jax.jvp(_compose(layers[2:]), (h2,), (own,))[1]
      return c0, c1

    lw, e2e = run(x)
    c0, c1 = by_hand(x)
  assert lw.contributions.shape == (4, 3, 2, 6)
  assert lw.per_image.shape == (4, 3, 2) and lw.lee.shape == (4, 3)
  # (np.asarray first: np.sum on a jax.Array would call its float32 .sum.)
  np.testing.assert_allclose(np.asarray(lw.contributions).sum(axis=0),
                             e2e.derivative, rtol=1e-10, atol=1e-14)
  np.testing.assert_allclose(lw.total.derivative, e2e.derivative,
                             rtol=1e-10, atol=1e-14)
  np.testing.assert_allclose(lw.total.lee, e2e.lee, rtol=1e-10)
  np.testing.assert_allclose(
      lw.per_image, np.mean(np.asarray(lw.contributions)**2, axis=-1))
  np.testing.assert_allclose(lw.contributions[0, 1], c0, rtol=1e-10)
  np.testing.assert_allclose(lw.contributions[1, 1], c1, rtol=1e-10)
  lee = np.asarray(lw.lee)
  # The global pool is not exactly invariant on a finite grid (boundary
  # terms of −∇h·ξ), but the dense layer maps vectors to vectors: 0.
  assert np.all(lee[:3, :2] > 0) and np.all(lee[3] == 0)
  # Colour flows act trivially past the input: all error is in layer 0.
  assert lee[0, 2] > 0 and np.all(lee[1:, 2] == 0)


def test_layerwise_circular_layers_contribute_nothing():
  """Circular convolutions are exactly equivariant to circular shifts, so
  their own Lie derivative is 0; only the nonlinearity contributes."""
  rng = np.random.default_rng(10)
  k1 = jnp.asarray(rng.normal(size=(3, 3, 3, 4)), jnp.float32)
  k2 = jnp.asarray(rng.normal(size=(3, 3, 4, 4)), jnp.float32)
  layers = [_circular_conv(k1), jnp.tanh, _circular_conv(k2),
            lambda z: jnp.mean(z, (1, 2))]
  x = jnp.asarray(rng.normal(size=(3, H, W, 3)), jnp.float32)
  gen = flows.translation_x(mode="wrap")

  @jax.jit
  def run(x):
    return (lie.layerwise_lie_derivative(layers, x, gen),
            lie.layerwise_lie_derivative(layers, x, gen, feature_maps=False))

  lw, inv = run(x)
  lee = np.asarray(lw.lee)
  assert lee[1] > 1e-6
  assert lee[0] < 1e-12 and lee[2] < 1e-12 and lee[3] < 1e-12
  # With feature_maps=False hidden maps must be invariant: the circular
  # convolution then carries its full equivariant response. The split
  # changes, the sum does not.
  assert float(inv.lee[0]) > 1e-6
  np.testing.assert_allclose(inv.total.derivative, lw.total.derivative,
                             atol=1e-7)


def test_linen_sequential():
  model = nn.Sequential([nn.Conv(4, (3, 3)), nn.tanh,
                         lambda z: jnp.mean(z, axis=(1, 2)), nn.Dense(5)])
  x = jnp.asarray(_smooth_images(2), jnp.float32)
  variables = jax.jit(model.init)(jax.random.key(0), x)

  @jax.jit
  def run(variables, x):
    layers = lie.linen_sequential_layers(model, variables)
    lw = lie.layerwise_lie_derivative(layers, x, ("scale",))
    e2e = lie.lie_derivative(lambda z: model.apply(variables, z), x,
                             ("scale",))
    return lw, e2e

  lw, e2e = run(variables, x)
  assert lw.contributions.shape == (4, 1, 2, 5)
  np.testing.assert_allclose(np.asarray(lw.contributions).sum(0),
                             e2e.derivative,
                             rtol=1e-4, atol=1e-8)


def test_closed_form_exponential():
  """flows._expm (closed-form 2×2 exponential) vs scipy.linalg.expm."""
  import scipy.linalg
  generators = [
      [[0, -1, 0], [1, 0, 0]],      # rotation: Δ < 0
      [[1, 0, 0], [0, 1, 0]],       # scale: Δ = 0, A = I
      [[0, 0, 0], [1, 0, 0]],       # shear: nilpotent
      [[0, 1, 0], [1, 0, 0]],       # hyperbolic: Δ > 0
      [[0, 0, 1], [0, 0, 0]],       # translation
      [[0, -1, 2], [1, 0, 3]],      # rotation about an off-centre point
      [[0.3, -1.2, 0.5], [0.7, 0.1, -2.0]],
  ]
  gs = [np.concatenate([np.asarray(g, float), np.zeros((1, 3))])
        for g in generators]
  ts = np.array([0.0, 0.37, -1.3])
  with jax.enable_x64(True):
    got = jax.jit(lambda t: jnp.stack([
        jax.vmap(lambda s, g=g: flows._expm(g, s))(t) for g in gs]))(
            jnp.asarray(ts))
  for i, g in enumerate(gs):
    for j, t in enumerate(ts):
      np.testing.assert_allclose(got[i, j], scipy.linalg.expm(t * g),
                                 atol=1e-12)


# --------------------------------------------------------------------------
# lie-deriv's forward-difference tangent, units and signs (Gruver et al.'s
# code: bilinear sampling on affine_grid(align_corners=True) positions with
# mirror borders, differentiated by autograd at t = 0).


def _mirror(i, n):
  """lie-deriv's border rule for integer indices: −1 ↦ 1, n ↦ n − 2."""
  return (n - 1) - np.abs((n - 1) - np.abs(i))


def _their_sample(img, theta, cells=None):
  """NumPy float64 emulation of lie-deriv's warp of one (H, W, C) image.

  θ is their 2×3 matrix on normalised (x, y, 1) coordinates mapping each
  output point to the point it samples. ``cells``: (row, col) of each
  point's bilinear cell; by default its floor. Fixing the cells makes the
  warp a polynomial in the positions, which is what their autograd
  differentiates (their floor sits under torch.no_grad()).
  """
  h, w = img.shape[:2]
  yn, xn = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w),
                       indexing="ij")
  ix = (theta[0, 0] * xn + theta[0, 1] * yn + theta[0, 2] + 1) / 2 * (w - 1)
  iy = (theta[1, 0] * xn + theta[1, 1] * yn + theta[1, 2] + 1) / 2 * (h - 1)
  r0, c0 = (np.floor(iy), np.floor(ix)) if cells is None else cells
  fy, fx = (iy - r0)[..., None], (ix - c0)[..., None]
  r0, c0 = r0.astype(int), c0.astype(int)
  at = lambda r, c: img[_mirror(r, h), _mirror(c, w)]
  return ((1 - fy) * (1 - fx) * at(r0, c0) + (1 - fy) * fx * at(r0, c0 + 1)
          + fy * (1 - fx) * at(r0 + 1, c0) + fy * fx * at(r0 + 1, c0 + 1))


def _their_theta(name, t):
  """Their transforms' affine matrices θ(t) (``lee/transforms.py``)."""
  c, s = np.cos(t), np.sin(t)
  return np.array({
      "translation_x": [[1, 0, t], [0, 1, 0]],
      "translation_y": [[1, 0, 0], [0, 1, t]],
      "rotation": [[c, s, 0], [-s, c, 0]],
      "shear_x": [[1, t, 0], [0, 1, 0]],
      "shear_y": [[1, 0, 0], [t, 1, 0]],
      "hyperbolic_rotation": [[np.cosh(t), np.sinh(t), 0],
                              [np.sinh(t), np.cosh(t), 0]],
      "scale": [[1 - t, 0, 0], [0, 1 - t, 0]],
  }[name], dtype=np.float64)


LIE_DERIV = ("translation_x", "translation_y", "rotation", "shear_x",
             "shear_y", "hyperbolic_rotation", "scale")


def test_forward_tangent_by_hand():
  """A 3×4 image: forward differences with lie-deriv's mirror border."""
  img = np.array([[0., 1., 4., 9.],
                  [2., 3., 5., 7.],
                  [1., 1., 2., 6.]])[..., None]
  # Column c + 1 with the mirror border: the last column's neighbour is
  # column W − 2 = 2, so its forward difference is x[:, 2] − x[:, 3].
  d_col = img[:, [1, 2, 3, 2]] - img
  np.testing.assert_array_equal(d_col[0, :, 0], [1., 3., 5., -5.])
  d_row = img[[1, 2, 1]] - img                  # row H = 3 ↦ row 1
  np.testing.assert_array_equal(d_row[:, 0, 0], [2., -1., 1.])
  with jax.enable_x64(True):
    x = jnp.asarray(img)
    tx, ty = flows.translation_x(), flows.translation_y()
    # Ours: content moves right (down) along ξ = (0, 1) ((1, 0)): v⁺ = −D⁺x.
    np.testing.assert_array_equal(tx.forward_tangent(x), -d_col)
    np.testing.assert_array_equal(ty.forward_tangent(x), -d_row)
    np.testing.assert_array_equal(
        flows.image_gradient(x, difference="forward")[1], d_col)
    # Theirs: translate(t) samples column c + t·(W−1)/2, so their derivative
    # is +(W−1)/2·D⁺x = c·v⁺ with c = −(W−1)/2.
    c = flows.lie_deriv_factor("translation_x", 3, 4)
    assert c == -1.5
    np.testing.assert_array_equal(c * tx.forward_tangent(x), 1.5 * d_col)
    assert flows.lie_deriv_factor("translation_y", 3, 4) == -1.0
    # The exact tangent is the central difference (0 at the mirrored border).
    np.testing.assert_array_equal(tx.tangent(x)[0, :, 0], [0., -2., -4., 0.])
    # Through lie_derivative: a linear readout sees the chosen tangent.
    wts = np.random.default_rng(11).normal(size=(3, 4, 1, 2))
    fn = lambda z: jnp.einsum("bhwc,hwck->bk", z, jnp.asarray(wts))
    fwd = lie.lie_derivative(fn, x[None], tx, output="logits",
                             tangent="forward")
    exact = lie.lie_derivative(fn, x[None], tx, output="logits")
    central = np.asarray(tx.tangent(x))
  np.testing.assert_allclose(
      fwd.derivative[0], np.einsum("hwc,hwck->k", -d_col, wts), rtol=1e-12)
  np.testing.assert_allclose(
      exact.derivative[0], np.einsum("hwc,hwck->k", central, wts), rtol=1e-12)


@pytest.mark.parametrize("name", LIE_DERIV)
def test_lie_deriv_units_and_signs(name):
  """Their transform at t is ours at c·t; their derivative is c·v⁺."""
  n = 6
  img = np.random.default_rng(12).uniform(size=(n, n, 2))
  c = flows.lie_deriv_factor(name, n, n)
  fl = flows.flow(name)
  with jax.enable_x64(True):
    x = jnp.asarray(img)
    # Finite t: the same bilinear, mirror-bordered image, content moved the
    # same way (scale is (1 − s)·p there, exp(−t)·p here).
    t = 0.13
    ours_t = -np.log1p(-t) if name == "scale" else c * t
    np.testing.assert_allclose(_their_sample(img, _their_theta(name, t)),
                               fl.warp(x, ours_t), atol=1e-12)
    forward, exact = fl.forward_tangent(x), fl.tangent(x)
  # Their autograd at t = 0: the derivative of the bilinear weights of the
  # cells the points sit in at t = 0 (integer positions, exact arithmetic).
  cells = tuple(np.mgrid[:n, :n].astype(float))
  h = 1e-6
  theirs = (_their_sample(img, _their_theta(name, h), cells)
            - _their_sample(img, _their_theta(name, -h), cells)) / (2 * h)
  np.testing.assert_allclose(c * np.asarray(forward), theirs, atol=1e-8)
  # The exact tangent is not theirs: half a pixel apart.
  assert np.abs(c * np.asarray(exact) - theirs).max() > 0.05


def test_lie_deriv_factor_refuses_what_has_no_counterpart():
  assert flows.lie_deriv_factor("scale", 5, 7) == 1.0
  assert flows.lie_deriv_factor("gain", 5, 7) == 1.0
  assert flows.lie_deriv_factor("translation_x", 5, 7) == -3.0
  for name in ("stretch", "brightness", "contrast", "saturation"):
    with pytest.raises(ValueError, match="no lie-deriv counterpart"):
      flows.lie_deriv_factor(name, 8, 8)
  with pytest.raises(ValueError, match="square"):
    flows.lie_deriv_factor("rotation", 8, 6)


def test_forward_tangent_option():
  """tangent="forward" on every action; the layer-wise sum still telescopes."""
  gens = ("translation_x", "rotation", "gain")
  x = jnp.asarray(_smooth_images(2), jnp.float32)
  layers = _layers(jnp.float32)

  @jax.jit
  def run(x):
    return (lie.layerwise_lie_derivative(layers, x, gens, output="logits",
                                         tangent="forward"),
            lie.lie_derivative(_compose(layers), x, gens, output="logits",
                               tangent="forward"),
            lie.lie_derivative(_compose(layers), x, gens, output="logits"))

  lw, fwd, exact = run(x)
  np.testing.assert_allclose(np.asarray(lw.contributions).sum(0),
                             fwd.derivative, rtol=1e-4, atol=1e-6)
  for g, name in enumerate(gens):
    v = jax.vmap(flows.flow(name).forward_tangent or
                 flows.flow(name).tangent)(x)
    np.testing.assert_allclose(
        fwd.derivative[g], jax.jvp(_compose(layers), (x,), (v,))[1],
        rtol=1e-4, atol=1e-6)
  # Geometric flows differ from the exact tangent; the colour flow does not.
  assert _rel(fwd.derivative[0], exact.derivative[0]) > 0.05
  np.testing.assert_array_equal(fwd.derivative[2], exact.derivative[2])
  with pytest.raises(ValueError, match="tangent"):
    lie.lie_derivative(_compose(layers), x, "rotation", tangent="central")
  bare = flows.rotation()._replace(forward_tangent=None)
  with pytest.raises(ValueError, match="forward_tangent"):
    lie.lie_derivative(_compose(layers), x, bare, tangent="forward")


@pytest.mark.parametrize("family", ["rotation", "scale", "translation"])
def test_named_flows_generate_the_transformation_sets(family):
  """The flow named like an `invjax.transforms` family is its generator.

  With the sets' border (``mode="constant"``) a finite warp matches the set
  (dm-pix), and the set's central difference over ±h, in the set's units,
  is the tangent per radian times π/180 (rotation), per log-factor (scale)
  and per pixel (translation).
  """
  x = jnp.asarray(_smooth_images(1, seed=4)[0], jnp.float32)
  if family == "rotation":                 # h degrees
    h = 0.5
    ts = tr.rotation([h, -h], mode="constant")
    fls, per_unit = [flows.flow("rotation", mode="constant")], [np.pi / 180]
  elif family == "scale":                  # factors exp(±h)
    h = 0.05
    ts = tr.scale([np.exp(h), np.exp(-h)], mode="constant")
    fls, per_unit = [flows.flow("scale", mode="constant")], [1]
  else:                                    # (dy, dx) = ±(h, 2h) pixels
    h = 0.05
    ts = tr.translation([(h, 2 * h), (-h, -2 * h)], mode="constant")
    fls = [flows.flow("translation_y", mode="constant"),
           flows.flow("translation_x", mode="constant")]
    per_unit = [1, 2]
  params = [h * u for u in per_unit]
  plus, minus = np.asarray(ts.apply(x), np.float64)
  warped = x
  for fl, t in zip(fls, params):
    warped = fl.warp(warped, t)
  inner = (slice(2, -2), slice(2, -2))
  np.testing.assert_allclose(plus[inner], np.asarray(warped)[inner],
                             atol=1e-5)
  tangent = sum(u * np.asarray(fl.tangent(x), np.float64)
                for u, fl in zip(per_unit, fls))
  fd = (plus - minus) / (2 * h)
  # Away from the border, which the sets fill with zeros: O(h²) and
  # round-off.
  np.testing.assert_allclose(fd[inner], tangent[inner], atol=1e-2 * np.abs(
      tangent[inner]).max())


def test_transformation_families_that_are_not_one_flow_say_why():
  x = jnp.ones((1, H, W, 3))
  fn = lambda z: jnp.mean(z, axis=(1, 2))
  for name, why in [("translation", "translation_y"),
                    ("rot90", "discrete group"), ("flips", "discrete group"),
                    ("affine", "one-parameter parts"),
                    ("rotation_uniform", "its flow is 'rotation'")]:
    with pytest.raises(ValueError, match=f"unknown flow.*{why}"):
      lie.lie_derivative(fn, x, name)
  with pytest.raises(ValueError, match="unknown flow 'rotate'; expected"):
    flows.flow("rotate")
