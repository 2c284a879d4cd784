"""Group actions: geometry against analytic answers, exact inverses, errors.

Compiling a dm-pix warp costs about a second on a busy CPU, so the tests share
one jitted entry point (`_fwd_back`) and reuse set sizes and image shapes: the
compilation cache is keyed on (action, T, image shape).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax import transforms as tr

S = 16                                    # side of the square test images
CENTRE = (S - 1) / 2.0
SHAPE = (S, S, 2)


def _random(shape=SHAPE, seed=0):
  return jnp.asarray(np.random.default_rng(seed).uniform(size=shape),
                     jnp.float32)


def _ramp(h=S, w=S):
  """An affine image per channel: bilinear interpolation reproduces it exactly.

  So a forward warp followed by the inverse warp must give the image back
  wherever both warps sampled inside the image: no blur tolerance needed.
  """
  r, c = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  chans = [0.3 * r + 0.7 * c + 1.0, -0.5 * r + 0.2 * c + 9.0]
  return jnp.asarray(np.stack(chans, -1), jnp.float32)


def _blob(centre, sigma=1.2):
  r, c = np.meshgrid(np.arange(S), np.arange(S), indexing="ij")
  g = np.exp(-((r - centre[0]) ** 2 + (c - centre[1]) ** 2) / (2 * sigma**2))
  return jnp.asarray(np.repeat(g[..., None], 2, axis=-1), jnp.float32)


def _centroid(img):
  img = np.asarray(img[..., 0], np.float64)
  r, c = np.meshgrid(np.arange(img.shape[0]), np.arange(img.shape[1]),
                     indexing="ij")
  return np.array([(img * r).sum(), (img * c).sum()]) / img.sum()


@jax.jit
def _fwd_back(ts, img):
  """(t_j(img), t_j^{-1}(t_j(img))) for every j."""
  y = ts.apply(img)
  return y, ts.apply_inverse(y)


def _round_trip(ts, img):
  """(t_j^{-1}(t_j(img)), mask of pixels where both warps stayed inside)."""
  _, back = _fwd_back(ts, img)
  # In constant mode (cval 0), an all-ones image comes back as exactly 1 only
  # where every bilinear sample of both warps was inside the image.
  _, ones = _fwd_back(ts, jnp.ones_like(img))
  return np.asarray(back), np.abs(np.asarray(ones) - 1) < 1e-5


def _assert_round_trip(ts, img, min_inside=0.2):
  back, inside = _round_trip(ts, img)
  fraction = inside.mean(axis=(1, 2, 3))
  assert np.all(fraction > min_inside), fraction       # never vacuous
  err = np.where(inside, np.abs(back - np.asarray(img)[None]), 0.0)
  assert err.max() < 1e-3, err.max()


# ---------------------------------------------------------------- rotation


def test_rotation_90_moves_single_pixel_like_rot90():
  img = np.zeros(SHAPE, np.float32)
  img[1, 10] = 1.0
  out, _ = _fwd_back(tr.rotation([90.0, 180.0, 270.0]), jnp.asarray(img))
  for k in (1, 2, 3):
    np.testing.assert_allclose(out[k - 1], np.rot90(img, k, axes=(0, 1)),
                               atol=1e-5)
  # Counter-clockwise on screen: a pixel right of the top goes to the left.
  assert np.unravel_index(np.argmax(out[0]), out[0].shape)[:2] == (5, 1)


def test_rotation_multiples_of_90_match_exact_rot90_everywhere():
  img = _random()
  out, _ = _fwd_back(tr.rotation([90.0, -180.0, 270.0]), img)
  exact = tr.rot90().apply(img)
  np.testing.assert_allclose(out, exact[1:], atol=1e-4)
  for k in range(4):
    np.testing.assert_array_equal(exact[k], jnp.rot90(img, k, axes=(0, 1)))


def test_rotation_units_agree():
  img = _random()
  deg = _fwd_back(tr.rotation([30.0, -75.0, 200.0]), img)[0]
  rad = _fwd_back(tr.rotation(np.radians([30.0, -75.0, 200.0]),
                              unit="radians"), img)[0]
  turns = _fwd_back(tr.rotation(np.array([30.0, -75.0, 200.0]) / 360,
                                unit="turns"), img)[0]
  np.testing.assert_allclose(rad, deg, atol=1e-5)
  np.testing.assert_allclose(turns, deg, atol=1e-5)


def test_rotation_moves_blob_along_arc():
  angles = [45.0, -45.0, 130.0]
  p = np.array([CENTRE - 5.0, CENTRE + 1.0])
  out, _ = _fwd_back(tr.rotation(angles), _blob(p))
  for a, o in zip(np.radians(angles), out):
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    expected = CENTRE + rot @ (p - CENTRE)
    np.testing.assert_allclose(_centroid(o), expected, atol=0.5)
    # And it really moved (the test would pass trivially for angle ~ 0).
    assert np.linalg.norm(_centroid(o) - p) > 2.0


# ---------------------------------------------------------- scale / shift

SCALES = [(2.0, 1.5), 0.5, (0.8, 1.3)]
SHIFTS = [(2.0, 3.0), (1.5, -2.0), (-3.0, 0.25)]


def test_scale_zooms_in_about_centre():
  p = np.array([CENTRE + 3.0, CENTRE - 2.0])
  out, _ = _fwd_back(tr.scale(SCALES), _blob(p, sigma=0.8))
  expected = CENTRE + np.array([2.0, 1.5]) * (p - CENTRE)
  np.testing.assert_allclose(_centroid(out[0]), expected, atol=0.5)
  expected = CENTRE + 0.5 * (p - CENTRE)
  np.testing.assert_allclose(_centroid(out[1]), expected, atol=0.5)


def test_scale_accepts_scalars_and_pairs():
  np.testing.assert_allclose(tr.scale(SCALES).parameters,
                             [[2.0, 1.5], [0.5, 0.5], [0.8, 1.3]], rtol=1e-7)
  np.testing.assert_array_equal(tr.scale(1.5).parameters, [[1.5, 1.5]])


def test_translation_direction_and_integer_shift_is_exact():
  img = _random()
  out, _ = _fwd_back(tr.translation(SHIFTS), img)
  # Positive dy moves content down, positive dx moves it right.
  np.testing.assert_allclose(out[0, 2:, 3:], img[:-2, :-3], atol=1e-6)
  np.testing.assert_array_equal(out[0, :2], 0.0)           # constant padding
  np.testing.assert_array_equal(out[0, :, :3], 0.0)
  # A half-pixel shift averages neighbours.
  np.testing.assert_allclose(out[1, 5, 5], (img[4, 7] + img[3, 7]) / 2,
                             atol=1e-6)


def test_padding_mode_is_passed_through():
  img = _random()
  out = tr.translation(SHIFTS, mode="nearest").apply(img)[0]
  np.testing.assert_allclose(out[2:, :3], np.repeat(img[:-2, :1], 3, axis=1),
                             atol=1e-6)
  out = tr.translation(SHIFTS, cval=0.25).apply(img)[0]
  np.testing.assert_allclose(out[:, :3], 0.25, atol=1e-6)


def test_inverse_on_half_size_feature_map():
  # Elements: (90°, no shift), (90°, (2, 3)), (0°, no shift), (0°, (2, 3)).
  ts = tr.affine([90.0, 0.0], translations=[(0.0, 0.0), (2.0, 3.0)])
  fmap = _random((S // 2, S // 2, 2))
  fmaps = jnp.stack([fmap] * 4)
  back = ts.apply_inverse(fmaps, input_shape=(S, S))
  # A rotation stays the same rotation on a smaller map.
  np.testing.assert_allclose(back[0], np.rot90(fmap, -1, axes=(0, 1)),
                             atol=1e-5)
  np.testing.assert_array_equal(back[2], fmap)
  # (2, 3) input pixels are (1, 1.5) feature-map pixels: the inverse moves
  # content up 1 and left 1.5.
  np.testing.assert_allclose(
      back[3, :-1, :-2], (fmap[1:, 1:-1] + fmap[1:, 2:]) / 2, atol=1e-6)
  # Without input_shape the shift is taken in feature-map pixels.
  back = ts.apply_inverse(fmaps)
  np.testing.assert_allclose(back[3, :-2, :-3], fmap[2:, 3:], atol=1e-6)


# ---------------------------------------------------------------- inverses


@pytest.mark.parametrize("ts", [
    tr.rotation([30.0, -60.0, 200.0]),
    tr.scale(SCALES),
    tr.translation(SHIFTS),
    tr.affine([-40.0, 25.0], [0.8, (1.2, 0.9)], [(0.0, 0.0), (1.0, -2.5)]),
    tr.product(tr.translation([(2.0, 1.0)]),
               tr.product(tr.rotation([35.0]), tr.scale([(1.3, 0.7)]))),
    tr.product(tr.rot90(), tr.rotation([20.0])),
], ids=["rotation", "scale", "translation", "affine", "product_affine",
        "product_rot90_rotation"])
def test_inverse_undoes_forward_in_interior(ts):
  _assert_round_trip(ts, _ramp())


@pytest.mark.parametrize("ts", [
    tr.rot90(), tr.flips(), tr.identity(2),
    tr.product(tr.rot90(), tr.flips()),
], ids=["rot90", "flips", "identity", "rot90_x_flips"])
def test_exact_sets_round_trip_exactly(ts):
  img = _random((9, 9, 3))
  x = ts.apply(img)
  np.testing.assert_array_equal(ts.apply_inverse(x),
                                np.broadcast_to(img, x.shape))
  assert ts.action.exact


def test_flips_are_the_four_reflections():
  img = _random((5, 7, 2))
  out = tr.flips().apply(img)
  for got, want in zip(out, [img, img[:, ::-1], img[::-1], img[::-1, ::-1]]):
    np.testing.assert_array_equal(got, want)


def test_combined_rotation_translation_inverse_is_exact_not_tmeasures():
  angle, shift = 30.0, (3.0, 0.0)
  ts = tr.affine([angle], translations=[shift])
  img = _ramp()
  # Our inverse recovers the image wherever it was sampled inside ...
  _assert_round_trip(ts, img, min_inside=0.3)
  fwd_m, inv_m = jax.jit(ts.action.matrices)(ts.parameters[0])
  np.testing.assert_allclose(fwd_m @ inv_m, np.eye(3), atol=1e-6)
  # ... while tmeasures' parameter-wise inverse (-r, -t) leaves an offset of
  # R(-r)·t - t (about 1.6 px here), so it does not give the image back.
  naive = tr.affine([-angle], translations=[(-shift[0], -shift[1])])
  fwd = _fwd_back(ts, img)[0][0]
  naive_back = np.asarray(_fwd_back(naive, fwd)[0][0])
  ones = _fwd_back(naive, _fwd_back(ts, jnp.ones_like(img))[0][0])[0][0]
  inside = np.all(np.abs(np.asarray(ones) - 1) < 1e-5, axis=-1)
  assert inside.mean() > 0.3
  naive_err = np.abs(naive_back - np.asarray(img)).max(axis=-1)[inside]
  assert naive_err.min() > 1.0


def test_product_composition_order_and_parameters():
  a = tr.rotation([90.0, 180.0, 45.0])
  b = tr.translation([(0.0, 2.0), (1.0, 3.0), (0.0, 0.0)])
  ts = tr.product(a, b)
  assert len(ts) == 9 and ts.parameters.shape == (9, 3)
  np.testing.assert_array_equal(ts.parameters[4], [180.0, 1.0, 3.0])
  assert ts.action == tr.AffineAction(("rotation", "translation"))
  img = _random()
  # Element (1, 1) = a_1 ∘ b_1: b_1 first.
  want = _fwd_back(a, _fwd_back(b, img)[0][1])[0][1]
  got, back = _fwd_back(ts[4], img)
  np.testing.assert_allclose(got[0], want, atol=1e-5)
  # The other order differs: the shift gets rotated too.
  other = _fwd_back(b, _fwd_back(a, img)[0][1])[0][1]
  assert np.abs(np.asarray(other) - np.asarray(want)).max() > 0.1
  # Generic composition (two warps) agrees, forward and inverse.
  generic = tr.TransformationSet(ts.parameters,
                                 tr.ComposedAction(a.action, b.action))
  g_got, g_back = _fwd_back(generic[4], img)
  np.testing.assert_allclose(g_got, got, atol=1e-5)
  np.testing.assert_allclose(g_back, back, atol=1e-5)


# ------------------------------------------------------- shapes, jit, grad


def test_non_square_shapes_and_centre():
  img = _random((9, 12, 2))
  fwd, back = _fwd_back(tr.rotation([180.0, 0.0, 90.0]), img)
  assert fwd.shape == back.shape == (3, 9, 12, 2)
  # About ((H - 1) / 2, (W - 1) / 2), a half turn is exactly both flips.
  np.testing.assert_allclose(fwd[0], img[::-1, ::-1], atol=1e-5)
  np.testing.assert_array_equal(fwd[1], img)
  np.testing.assert_allclose(back[0], img, atol=1e-5)


def test_indexing_and_iteration():
  ts = tr.affine([0.0, 10.0, 20.0], [1.0, 1.1], [(0.0, 0.0)])
  assert len(ts) == 6 and ts.parameters.dtype == jnp.float32
  assert len(ts[2:5]) == 3 and len(ts[-1]) == 1 and len(ts[[0, 5]]) == 2
  np.testing.assert_array_equal(ts[-1].parameters, ts.parameters[5:])
  np.testing.assert_array_equal(ts[[0, 5]].parameters[1], ts.parameters[5])
  assert ts[1].action == ts.action
  assert [len(t) for t in ts] == [1] * 6
  with pytest.raises(IndexError):
    ts[6]
  assert "T=6" in repr(ts)


def test_pytree_jit_vmap_and_apply_batch():
  ts = tr.rotation([0.0, 45.0, 90.0])
  leaves, treedef = jax.tree_util.tree_flatten(ts)
  assert len(leaves) == 1 and leaves[0].shape == (3, 1)
  assert jax.tree_util.tree_unflatten(treedef, leaves).action == ts.action
  batch = jnp.stack([_random(seed=i) for i in range(3)])
  got = jax.jit(lambda t, x: t.apply_batch(x))(ts, batch)
  assert got.shape == (3, 3) + SHAPE
  for i in range(3):
    np.testing.assert_allclose(got[i], _fwd_back(ts, batch[i])[0], atol=1e-6)
  # The engine's pattern: single-row functions vmapped by the caller.
  fwd = jax.jit(jax.vmap(jax.vmap(ts.action.forward, (0, None)), (None, 0)))
  np.testing.assert_allclose(fwd(ts.parameters, batch), got, atol=1e-6)


def test_gradient_wrt_image_is_finite():
  ts = tr.product(tr.flips(), tr.affine([33.0], [0.8], [(0.5, -1.0)]))
  img = _random((9, 9, 2))
  loss = lambda x: jnp.sum(ts.apply_inverse(ts.apply(x)) ** 2)
  g = jax.jit(jax.grad(loss))(img)
  assert g.shape == img.shape and bool(jnp.all(jnp.isfinite(g)))
  assert float(jnp.abs(g).sum()) > 0


# --------------------------------------------------------------- paper sets


def test_paper_set_sizes():
  sets = tr.paper_sets()
  assert {k: len(v) for k, v in sets.items()} == {
      "rotation": 49, "scale": 49, "translation": 49, "hard": 504}
  np.testing.assert_allclose(sets["rotation"].parameters[:, 0],
                             np.linspace(-180, 180, 49), atol=1e-4)
  # 0.15 of 28 px = 4.2 px is the largest shift.
  np.testing.assert_allclose(np.abs(sets["translation"].parameters).max(),
                             4.2, rtol=1e-6)
  scales = np.asarray(sets["scale"].parameters)
  assert scales.min() == 0.5 and scales.max() == 1.25
  np.testing.assert_array_equal(scales[24], [1.0, 1.0])     # the identity
  # Rows are rotation-major: (dy, dx, degrees, sy, sx).
  hard = np.asarray(sets["hard"].parameters)
  np.testing.assert_allclose(hard[:63, 2], -180.0)
  np.testing.assert_allclose(np.unique(hard[:, 2]),
                             np.linspace(-180, 180, 8), atol=1e-4)


def test_parameter_generators_match_tmeasures_definitions():
  assert len(tr.scale_uniform(8, 0.5, 1.25)) == 49
  assert tr.scale_uniform(1, 0.5, 1.25) == [
      (0.5, 1.0), (1.0, 0.5), (0.5, 0.5), (1.0, 1.0),
      (1.25, 1.0), (1.0, 1.25), (1.25, 1.25)]
  t = tr.translation_uniform(1, 0.25, (8, 4))
  assert len(t) == 9 and t[0] == (0.0, 0.0)
  assert sorted(t) == sorted((dy, dx) for dy in (0.0, 2.0, -2.0)
                             for dx in (0.0, 1.0, -1.0))
  assert len(tr.translation_uniform(6, 0.15, (28, 28))) == 49
  assert tr.rotation_uniform(0, 1.0) == [0.0]
  np.testing.assert_allclose(tr.rotation_uniform(5, 0.5),
                             [-90, -45, 0, 45, 90])


def test_legacy_rotation_reproduces_tmeasures_unit_bug():
  true = np.asarray(tr.paper_sets()["rotation"].parameters[:, 0], np.float64)
  legacy = np.asarray(tr.paper_sets(legacy_tmeasures_rotation=True)[
      "rotation"].parameters[:, 0], np.float64)
  r = np.linspace(-0.5, 0.5, 49)
  np.testing.assert_allclose(legacy, np.mod(np.degrees(180 * r), 360),
                             atol=1e-3)
  np.testing.assert_allclose(true, 360 * r, atol=1e-4)
  # r = 1/48 should be 7.5°, the bug applies 3.75 rad = 214.9°.
  assert abs(legacy[25] - 214.8592) < 1e-3 and abs(true[25] - 7.5) < 1e-4
  assert np.mean(np.abs(np.mod(legacy - true, 360))) > 10
  hard = tr.paper_sets(legacy_tmeasures_rotation=True)["hard"]
  assert len(hard) == 504


# ------------------------------------------------------------------ errors


@pytest.mark.parametrize("angles", [[0.0, math.pi], [math.pi / 2],
                                    [-2 * math.pi, 1.0]])
def test_radian_looking_degrees_are_refused(angles):
  with pytest.raises(ValueError, match="radians"):
    tr.rotation(angles)
  with pytest.raises(ValueError, match="radians"):
    tr.affine(rotations=angles)
  assert len(tr.rotation(angles, unit="radians")) == len(angles)


@pytest.mark.parametrize("make,match", [
    (lambda: tr.rotation([10.0], unit="gradians"), "unit"),
    (lambda: tr.rotation([]), "empty"),
    (lambda: tr.rotation([1.0, float("nan")]), "NaN"),
    (lambda: tr.translation([(0.0, float("inf"))]), "NaN or inf"),
    (lambda: tr.translation([1.0, 2.0]), r"\(dy, dx\)"),
    (lambda: tr.scale([1.0, 0.0]), "> 0"),
    (lambda: tr.scale([(1.0, -2.0)]), "> 0"),
    (lambda: tr.scale([]), "empty"),
    (lambda: tr.rotation([10.0], mode="bogus"), "mode"),
    (lambda: tr.identity(0), "n >= 1"),
    (lambda: tr.TransformationSet(np.zeros((3, 2)), tr.Rot90Action()),
     "1 parameters"),
    (lambda: tr.TransformationSet(np.full((1, 1), np.nan), tr.Rot90Action()),
     "NaN"),
])
def test_bad_construction_raises(make, match):
  with pytest.raises(ValueError, match=match):
    make()


def test_bad_inputs_raise():
  ts = tr.rotation([10.0, 20.0])
  with pytest.raises(ValueError, match="rank-3"):
    ts.apply(jnp.zeros((2, 8, 8, 1)))
  with pytest.raises(ValueError, match="rank-3"):
    ts.apply(jnp.zeros((8, 8)))
  with pytest.raises(ValueError, match=r"\(2, h, w, c\)"):
    ts.apply_inverse(jnp.zeros((3, 8, 8, 1)))
  with pytest.raises(ValueError, match="square"):
    tr.rot90().apply(jnp.zeros((8, 6, 1)))
  with pytest.raises(ValueError, match="square"):
    tr.rot90().apply_inverse(jnp.zeros((4, 4, 3, 1)), input_shape=(8, 6))
  with pytest.raises(TypeError):
    tr.product(ts, "not a set")


def test_orbit_and_unorbit_are_the_per_image_maps_batched():
  ts = tr.rotation([0.0, 30.0, 90.0])
  images = jnp.asarray(np.random.default_rng(3).uniform(size=(2, 8, 8, 1)),
                       jnp.float32)
  orbits = ts.orbit(images)                                # (2, 3, 8, 8, 1)
  for i in range(2):
    np.testing.assert_array_equal(orbits[i], ts.apply(images[i]))
  fmaps = orbits[..., ::2, ::2, :]                         # (2, 3, 4, 4, 1)
  back = ts.unorbit(fmaps, (8, 8))
  for i in range(2):
    # One program against another: equal to float32 round-off.
    np.testing.assert_allclose(
        back[i], ts.apply_inverse(fmaps[i], input_shape=(8, 8)), atol=1e-6)
  with pytest.raises(ValueError, match=r"\(B, 3, h, w, c\)"):
    ts.unorbit(fmaps[:, :2])
  with pytest.raises(ValueError, match="rank-4"):
    ts.orbit(images[0])


def test_check_set_is_the_one_validator():
  assert tr.check_set(tr.rot90()) == 4
  with pytest.raises(TypeError, match="augment must be an invjax"):
    tr.check_set(np.zeros((4, 1)), "augment")
  with pytest.raises(ValueError, match="empty"):
    tr.check_set(tr.rot90()[4:])


def test_uniform_rotation_is_a_deprecated_name_of_rotation_uniform():
  with pytest.warns(DeprecationWarning, match="rotation_uniform"):
    old = tr.uniform_rotation(5, 0.5, legacy_tmeasures=True)
  assert old == tr.rotation_uniform(5, 0.5, legacy_tmeasures=True)
