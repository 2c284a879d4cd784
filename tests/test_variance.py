"""Variance family vs an independent float64 NumPy two-pass reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invjax
from invjax import measures as ms
from invjax import transforms as tr
from invjax._src import stats

N, H, W, C = 13, 8, 8, 2


def _model(images):
  """A fixed small network: conv → tanh (spatial), its global pool, a dense."""
  k = jnp.asarray(np.random.default_rng(1).normal(size=(3, 3, C, 3)),
                  jnp.float32)
  conv = jax.lax.conv_general_dilated(images, k, (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  conv = jnp.tanh(conv)
  pooled = conv.mean(axis=(1, 2))
  dense = jnp.tanh(pooled @ jnp.ones((3, 4)) + jnp.arange(4.0))
  return {"conv": conv, "pool": pooled, "dense": dense}


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).uniform(size=(N, H, W, C)).astype(np.float32)


def _reference(images, ts, *, statistic, ddof, same_equivariance=False):
  """All N×T activations materialized, statistics in float64 (two-pass)."""
  x = jax.vmap(ts.apply)(jnp.asarray(images))                  # (N,T,H,W,C)
  n, t = x.shape[:2]
  acts = _model(x.reshape((n * t,) + x.shape[2:]))
  out = {}
  for name, a in acts.items():
    a = np.asarray(a).reshape((n, t) + a.shape[1:])
    if same_equivariance:
      if a.ndim != 5:
        continue
      a = np.stack([np.asarray(ts.apply_inverse(jnp.asarray(a[i]),
                                                input_shape=(H, W)))
                    for i in range(n)])
    a = a.astype(np.float64)

    def stat(v, axis):
      cnt = v.shape[axis]
      if cnt - ddof <= 0:
        return np.zeros(np.delete(v.shape, axis))
      var = ((v - v.mean(axis=axis, keepdims=True))**2).sum(axis) / (cnt - ddof)
      return np.sqrt(var) if statistic == "std" else var

    tv = stat(a, 1).mean(0)
    sv = stat(a, 0).mean(0)
    with np.errstate(divide="ignore", invalid="ignore"):
      nv = np.where(sv > 0, tv / np.where(sv > 0, sv, 1),
                    np.where(tv > 0, np.inf, 1.0))
    out[name] = dict(tv=tv, sv=sv, nv=nv)
  return out


def _close(actual, expected, rtol=1e-5):
  scale = max(np.max(np.abs(expected[np.isfinite(expected)]), initial=0), 1e-6)
  np.testing.assert_array_equal(np.isfinite(actual), np.isfinite(expected))
  fin = np.isfinite(expected)
  np.testing.assert_allclose(actual[fin], expected[fin], rtol=rtol,
                             atol=rtol * scale)


# Every batching with the default statistic; the others (applied when the
# streamed moments are finalized) at a single and at a chunked batching.
@pytest.mark.parametrize("batch_size,chunk,statistic,ddof", [
    (1, None, "variance", 1), (4, None, "variance", 1),
    (5, 2, "variance", 1), (13, None, "variance", 1), (32, 3, "variance", 1),
    (13, None, "std", 1), (5, 2, "std", 1),
    (1, None, "variance", 0), (32, 3, "variance", 0)])
def test_matches_reference(images, batch_size, chunk, statistic, ddof):
  ts = tr.rotation([0.0, 20.0, 45.0, 90.0, 135.0])
  measures = [ms.transformation_variance(statistic=statistic, ddof=ddof),
              ms.sample_variance(statistic=statistic, ddof=ddof),
              ms.normalized_variance(statistic=statistic, ddof=ddof)]
  tv, sv, nv = invjax.measure(_model, images, ts, measures,
                              batch_size=batch_size, transform_chunk=chunk)
  ref = _reference(images, ts, statistic=statistic, ddof=ddof)
  for layer, r in ref.items():
    _close(tv.per_activation[layer], r["tv"])
    _close(sv.per_activation[layer], r["sv"])
    # NV = TV/SV carries the error of both (2.0e-5 seen on an H200, where
    # convolutions sum in another order than the reference's batch).
    _close(nv.per_activation[layer], r["nv"], rtol=3e-5)
    _close(nv.extras[layer]["numerator"], r["tv"])
    _close(nv.extras[layer]["denominator"], r["sv"])


@pytest.mark.parametrize("batch_size,chunk", [(4, None), (5, 3)])
def test_same_equivariance_matches_reference(images, batch_size, chunk):
  ts = tr.product(tr.rotation([0.0, 30.0, 90.0]),
                  tr.translation([(0.0, 0.0), (1.0, -2.0)]))
  measures = [ms.transformation_variance_same_equivariance(),
              ms.sample_variance_same_equivariance(),
              ms.normalized_variance_same_equivariance()]
  tv, sv, nv = invjax.measure(_model, images, ts, measures,
                              batch_size=batch_size, transform_chunk=chunk)
  ref = _reference(images, ts, statistic="variance", ddof=1,
                   same_equivariance=True)
  assert list(ref) == ["conv"] == nv.layers
  _close(tv.per_activation["conv"], ref["conv"]["tv"])
  _close(sv.per_activation["conv"], ref["conv"]["sv"])
  _close(nv.per_activation["conv"], ref["conv"]["nv"])
  # Layers without spatial axes are skipped with a note, not a crash.
  assert "pool" in nv.notes and "dense" in nv.notes


@pytest.mark.parametrize("batch_size,chunk,statistic,ddof", [
    (4, None, "variance", 1), (13, None, "std", 1), (1, None, "variance", 0),
    (5, 2, "variance", 1)])
def test_pallas_implementation_matches_reference(images, batch_size, chunk,
                                                 statistic, ddof):
  # On CPU the kernel runs in Pallas' interpret mode: the same program
  # (masked loads, grid, partial sums) as on a GPU. With chunk=2 the orbit
  # spans several tiles and the XLA update runs instead.
  ts = tr.rotation([0.0, 20.0, 45.0, 90.0, 135.0])
  nv = invjax.measure(_model, images, ts, ms.normalized_variance(
      statistic=statistic, ddof=ddof, implementation="pallas"),
                      batch_size=batch_size, transform_chunk=chunk)
  ref = _reference(images, ts, statistic=statistic, ddof=ddof)
  for layer, r in ref.items():
    _close(nv.per_activation[layer], r["nv"], rtol=3e-5)
    _close(nv.extras[layer]["numerator"], r["tv"])
    _close(nv.extras[layer]["denominator"], r["sv"])
  assert dict(nv.settings)["implementation"] == "pallas"


def test_pallas_implementation_same_equivariance_and_classes(images):
  ts = tr.product(tr.rotation([0.0, 30.0, 90.0]),
                  tr.translation([(0.0, 0.0), (1.0, -2.0)]))
  labels = np.arange(N) % 3
  for make in (ms.normalized_variance,
               ms.normalized_variance_same_equivariance):
    xla, fused = invjax.measure(
        _model, images, ts, [make(), make(implementation="pallas")],
        batch_size=4, labels=labels, stratify=True)
    for c in range(3):
      for layer in xla.layers:
        np.testing.assert_allclose(
            fused.per_class[c].per_activation[layer],
            xla.per_class[c].per_activation[layer], rtol=1e-5, atol=1e-6)


def test_pallas_implementation_needs_one_device(images):
  mesh = jax.make_mesh((1,), ("data",))
  with pytest.raises(ValueError, match="one device"):
    invjax.measure(_model, images, tr.rot90(),
                   ms.normalized_variance(implementation="pallas"), mesh=mesh)


def test_per_feature_map_is_ratio_of_means(images):
  nv = invjax.measure(_model, images, tr.rot90(),
                      ms.normalized_variance(), batch_size=4)
  tv = nv.extras["conv"]["numerator"].mean(axis=(0, 1))
  sv = nv.extras["conv"]["denominator"].mean(axis=(0, 1))
  np.testing.assert_allclose(nv.per_feature_map["conv"], tv / sv, rtol=1e-12)
  assert nv.per_layer["conv"] == pytest.approx(np.mean(tv / sv))
  # Dense layers: per feature map is per activation.
  np.testing.assert_array_equal(nv.per_feature_map["dense"],
                                nv.per_activation["dense"])


def test_too_few_rows_for_ddof_is_an_error(images):
  # TV over one transformation would be 0 ("invariant"): a refusal that
  # names the numbers, not a perfect score.
  for measures, ts, n, match in [
      ([ms.transformation_variance(), ms.normalized_variance()],
       tr.rotation([30.0]), 4, "T = 1"),
      ([ms.normalized_variance(ddof=4)], tr.rot90(), 4, r"ddof=4\), got T = 4"),
      ([ms.sample_variance()], tr.rot90(), 1, "2 samples.*got 1"),
      ([ms.normalized_variance(ddof=3)], tr.rotation(range(0, 360, 30)), 3,
       "4 samples.*got 3")]:
    with pytest.raises(ValueError, match=match):
      invjax.measure(_model, images[:n], ts, measures, batch_size=4)


def test_single_sample_ddof0_gives_zero_sv_inf_nv_and_a_note(images):
  sv, nv = invjax.measure(_model, images[:1], tr.rotation([0.0, 45.0]),
                          [ms.sample_variance(ddof=0),
                           ms.normalized_variance(ddof=0)], batch_size=4)
  np.testing.assert_array_equal(sv.per_activation["dense"], 0.0)
  assert np.all(np.isinf(nv.per_activation["dense"]))
  assert nv.zero_division["dense"] == 4
  assert np.isnan(nv.per_layer["dense"])             # nothing finite to average
  assert nv.nonfinite_skipped["dense"] == 4
  assert "all 4 per-feature-map values are NaN or inf" in nv.notes["dense"]


def test_identity_model_identity_transforms(images):
  ident = lambda x: {"input": x}
  tv, nv = invjax.measure(ident, images, tr.identity(3),
                          [ms.transformation_variance(),
                           ms.normalized_variance()], batch_size=5)
  np.testing.assert_array_equal(tv.per_activation["input"], 0.0)
  np.testing.assert_array_equal(nv.per_activation["input"], 0.0)
  assert tv.per_layer["input"] == 0.0


def test_constant_model(images):
  const = lambda x: {"c": jnp.zeros((x.shape[0], 3)) + 2.5}
  tv, sv, nv = invjax.measure(const, images, tr.rot90(),
                              [ms.transformation_variance(),
                               ms.sample_variance(),
                               ms.normalized_variance()], batch_size=4)
  np.testing.assert_array_equal(tv.per_activation["c"], 0.0)
  np.testing.assert_array_equal(sv.per_activation["c"], 0.0)
  np.testing.assert_array_equal(nv.per_activation["c"], 1.0)    # 0/0 → 1
  assert nv.zero_division["c"] == 3


def test_global_pooling_is_invariant_under_rot90(images):
  w = jnp.asarray(np.random.default_rng(2).normal(size=(C, 6)), jnp.float32)

  def pooled(x):
    features = jax.nn.relu(x @ w)           # pointwise: commutes with rot90
    return {"features": features, "gap": features.mean(axis=(1, 2))}

  tv, nv = invjax.measure(pooled, images, tr.rot90(),
                          [ms.transformation_variance(),
                           ms.normalized_variance()], batch_size=6)
  assert np.max(tv.per_activation["gap"]) < 1e-12
  sv = nv.extras["gap"]["denominator"]
  live = sv > 0
  assert live.sum() >= 3
  assert np.max(nv.per_activation["gap"][live]) < 1e-9
  # Dead ReLU units (never positive): 0/0 → 1, and counted.
  np.testing.assert_array_equal(nv.per_activation["gap"][~live], 1.0)
  assert nv.zero_division["gap"] == (~live).sum()
  assert nv.per_layer["features"] > 0.1           # the maps themselves move


def test_identity_model_is_same_equivariant_under_rot90(images):
  tv, nv = invjax.measure(lambda x: {"input": x}, images, tr.rot90(),
                          [ms.transformation_variance_same_equivariance(),
                           ms.normalized_variance_same_equivariance()],
                          batch_size=4)
  np.testing.assert_array_equal(tv.per_activation["input"], 0.0)
  np.testing.assert_array_equal(nv.per_activation["input"], 0.0)


def test_merge_equals_single_stream():
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.normal(size=(10, 4, 3)), jnp.float32)
  m = ms.normalized_variance()
  spec = ms.LayerSpec("l", (3,), jnp.float32, 4, 4, 5)

  def run(xs):
    state = m.init(spec)
    block = ms.Block(x=xs, mask=jnp.ones(5, bool), t_index=jnp.arange(4),
                     t_mask=jnp.ones(4, bool), first=jnp.array(True),
                     last=jnp.array(True))
    return m.update(state, block)

  merged = m.finalize(m.merge(run(x[:5]), run(x[5:])), spec)
  whole = m(x)
  for k in ("values", "numerator", "denominator"):
    np.testing.assert_allclose(merged[k], whole[k], rtol=1e-5)


def test_grad_of_nv_wrt_params(images):
  def apply(params, x):
    h = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w"])
    return {"h": h}

  params = {"w": jnp.asarray(np.random.default_rng(4).normal(
      size=(H * W * C, 5)) * 0.1, jnp.float32)}
  acts = invjax.capture.Activations(apply=apply, params=params, key="mlp")

  def loss(p):
    out = invjax.measure_block(acts, jnp.asarray(images[:6]), tr.rot90(),
                               ms.normalized_variance(statistic="std"),
                               params=p)
    return out["h"]["values"].mean()

  g = jax.grad(loss)(params)["w"]
  assert np.all(np.isfinite(g)) and np.any(g != 0)
  # The block function agrees with the streamed measure.
  streamed = invjax.measure(acts, images[:6], tr.rot90(),
                            ms.normalized_variance(statistic="std"),
                            batch_size=6)
  block = invjax.measure_block(acts, jnp.asarray(images[:6]), tr.rot90(),
                               ms.normalized_variance(statistic="std"))
  np.testing.assert_allclose(streamed.per_activation["h"],
                             block["h"]["values"], rtol=1e-5)


def test_zero_tolerance_rule():
  num = jnp.array([1e-13, 1e-13, 0.5, 0.5, 0.0])
  den = jnp.array([1e-14, 0.2, 1e-14, 0.25, 0.0])
  np.testing.assert_array_equal(stats.safe_divide(num, den, 1e-12),
                                [1.0, np.float32(1e-13) / np.float32(0.2),
                                 np.inf, 2.0, 1.0])
  np.testing.assert_allclose(stats.safe_divide(num, den),   # tolerance 0
                             [10.0, 5e-13, 5e13, 2.0, 1.0], rtol=1e-6)


def test_zero_tolerance_treats_round_off_as_constant(images):
  # Channel 0 is channel 1 scaled by 1e-7: the same NV in exact arithmetic,
  # but its variances (~1e-15) are round-off sized for O(1) activations.
  def model(x):
    a = x[..., :1] * x[..., 1:]
    return {"m": jnp.concatenate([1e-7 * a, a], axis=-1)}

  plain, tol = invjax.measure(
      model, images, tr.rot90(),
      [ms.normalized_variance(), ms.normalized_variance(zero_tolerance=1e-12)],
      batch_size=4)
  np.testing.assert_allclose(plain.per_activation["m"][..., 0],
                             plain.per_activation["m"][..., 1], rtol=1e-4)
  np.testing.assert_array_equal(tol.per_activation["m"][..., 0], 1.0)
  np.testing.assert_array_equal(tol.per_activation["m"][..., 1],
                                plain.per_activation["m"][..., 1])
  assert tol.per_feature_map["m"][0] == 1.0
  assert tol.per_feature_map["m"][1] == plain.per_feature_map["m"][1]
  assert tol.zero_division["m"] == H * W and plain.zero_division["m"] == 0
  assert dict(tol.settings)["zero_tolerance"] == 1e-12
  # One sample (ddof 0): SV = 0, so x/0 → inf above the tolerance, 0/0 → 1
  # below it.
  one = invjax.measure(model, images[:1], tr.rot90(),
                       ms.normalized_variance(zero_tolerance=1e-12, ddof=0))
  np.testing.assert_array_equal(one.per_activation["m"][..., 0], 1.0)
  assert np.all(np.isinf(one.per_activation["m"][..., 1]))


def test_bad_settings():
  with pytest.raises(ValueError, match="statistic"):
    ms.normalized_variance(statistic="var")
  with pytest.raises(ValueError, match="ddof"):
    ms.sample_variance(ddof=-1)
  for bad in (-1e-9, float("inf"), float("nan"), "0", True):
    with pytest.raises(ValueError, match="zero_tolerance"):
      ms.normalized_variance(zero_tolerance=bad)
  with pytest.raises(ValueError, match="implementation"):
    ms.normalized_variance_same_equivariance(implementation="triton")


def test_save_load_roundtrip(images, tmp_path):
  nv = invjax.measure(_model, images, tr.rot90(), ms.normalized_variance(),
                      batch_size=4, labels=np.arange(N) % 2, stratify=True)
  path = tmp_path / "nv.npz"
  nv.save(path)
  back = invjax.load_result(path)
  assert back.layers == nv.layers and back.measure == nv.measure
  assert back.settings == nv.settings
  for layer in nv.layers:
    np.testing.assert_array_equal(back.per_activation[layer],
                                  nv.per_activation[layer])
    np.testing.assert_array_equal(back.per_feature_map[layer],
                                  nv.per_feature_map[layer])
    np.testing.assert_array_equal(back.extras[layer]["numerator"],
                                  nv.extras[layer]["numerator"])
    assert back.per_layer[layer] == nv.per_layer[layer]
  assert sorted(back.per_class) == [0, 1]
  np.testing.assert_array_equal(back.per_class[1].per_activation["conv"],
                                nv.per_class[1].per_activation["conv"])
