"""invjax.measure: input checks, compilation, memory, sharding, stratification."""

import logging
import os
import subprocess
import sys
import textwrap
import threading
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import invjax
from invjax import measures as ms
from invjax import transforms as tr
from invjax._src import plan
from invjax._src import program


def _model(x):
  h = jnp.tanh(x[..., :1] * 2.0 - x[..., 1:])
  return {"map": h, "vec": h.mean(axis=(1, 2, 3))[:, None] * jnp.arange(3.0)}


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).uniform(size=(11, 6, 6, 2)).astype(
      np.float32)


@pytest.mark.parametrize("bad,match", [
    (np.zeros((6, 6, 2), np.float32), "rank 4"),
    (np.zeros((0, 6, 6, 2), np.float32), "empty"),
    (np.zeros((3, 6, 6, 2), np.int32), "floating"),
])
def test_bad_images(bad, match):
  with pytest.raises(ValueError, match=match):
    invjax.measure(_model, bad, tr.rot90(), ms.normalized_variance())


def test_nonfinite_images(images):
  bad = images.copy()
  bad[2, 1, 1, 0] = np.nan
  bad[3, 0, 0, 1] = np.inf
  with pytest.raises(ValueError, match="2 non-finite"):
    invjax.measure(_model, bad, tr.rot90(), ms.normalized_variance())
  with pytest.raises(ValueError, match="non-finite"):
    invjax.measure(_model, jnp.asarray(bad), tr.rot90(),
                   ms.normalized_variance())


@pytest.mark.parametrize("batch_size", [0, -3, 2.5])
def test_bad_batch_size(images, batch_size):
  with pytest.raises(ValueError, match="batch_size"):
    invjax.measure(_model, images, tr.rot90(), ms.normalized_variance(),
                   batch_size=batch_size)


def test_bad_labels(images):
  with pytest.raises(ValueError, match=r"labels must have shape \(N,\)"):
    invjax.measure(_model, images, tr.rot90(), ms.normalized_variance(),
                   labels=np.zeros(5, np.int32))
  with pytest.raises(ValueError, match="stratify=True needs labels"):
    invjax.measure(_model, images, tr.rot90(), ms.normalized_variance(),
                   stratify=True)


def test_unknown_layer(images):
  with pytest.raises(ValueError, match="unknown layer 'nope'.*map.*vec"):
    invjax.measure(_model, images, tr.rot90(), ms.normalized_variance(),
                   layers=["nope"])


def test_layer_filter(images):
  r = invjax.measure(_model, images, tr.rot90(), ms.normalized_variance(),
                     layers=["vec"])
  assert r.layers == ["vec"]


def test_no_recompile_on_second_call(images, caplog):
  acts = invjax.capture.as_activations(_model)
  ts, m = tr.rot90(), ms.normalized_variance()
  first = invjax.measure(acts, images, ts, m, batch_size=4)
  with jax.log_compiles(), caplog.at_level(logging.WARNING):
    second = invjax.measure(acts, images + 0.5, ts,
                            ms.normalized_variance(), batch_size=4)
  compiled = [r for r in caplog.records if "Compiling" in r.getMessage()
              and "program" in r.getMessage()]
  assert not compiled, [r.getMessage() for r in compiled]
  assert first.per_layer["map"] != second.per_layer["map"]


def test_memory_is_bounded_by_one_batch():
  n, t, b = 20_000, 4, 50
  images = np.zeros((n, 12, 12, 1), np.float32)
  wide = lambda x: {"wide": jnp.tile(x, (1, 1, 1, 16))}   # 2304 floats/sample
  fn, args, _ = plan.prepare(
      wide, images, tr.rot90(), [ms.normalized_variance()], batch_size=b,
      labels=None, stratify=False, layers=None, transform_chunk=None,
      mesh=None)
  stats = fn.lower(*args).compile().memory_analysis()
  all_activations = n * t * 2304 * 4
  one_tile = b * t * 2304 * 4
  assert stats.temp_size_in_bytes < 20 * one_tile
  assert stats.temp_size_in_bytes < all_activations / 50
  # The compiled step returns the states it carries between chunks: per
  # layer at most one tile's worth (per-sample orbit moments), never O(N).
  assert stats.output_size_in_bytes < one_tile


def test_transform_chunk_bounds_memory():
  images = np.zeros((64, 12, 12, 1), np.float32)
  wide = lambda x: {"wide": jnp.tile(x, (1, 1, 1, 16))}
  ts = tr.rotation(np.linspace(-90, 90, 32))
  sizes = []
  for chunk in (None, 4):
    fn, args, _ = plan.prepare(
        wide, images, ts, [ms.transformation_variance()], batch_size=16,
        labels=None, stratify=False, layers=None, transform_chunk=chunk,
        mesh=None)
    sizes.append(fn.lower(*args).compile().memory_analysis()
                 .temp_size_in_bytes)
  assert sizes[1] < sizes[0] / 3


def test_list_of_measures_equals_separate_calls(images):
  together = invjax.measure(_model, images, tr.rot90(),
                            [ms.normalized_variance(),
                             ms.normalized_variance_same_equivariance()],
                            batch_size=3)
  alone = invjax.measure(_model, images, tr.rot90(),
                         ms.normalized_variance_same_equivariance(),
                         batch_size=3)
  np.testing.assert_array_equal(together[1].per_activation["map"],
                                alone.per_activation["map"])


def test_stratified(images):
  labels = np.array([0, 1, 1, 0, 2, 2, 2, 1, 0, 0, 1])
  strat = invjax.measure(_model, images, tr.rot90(), ms.normalized_variance(),
                         batch_size=4, labels=labels, stratify=True)
  assert sorted(strat.per_class) == [0, 1, 2]
  for c in (0, 2):
    alone = invjax.measure(_model, images[labels == c], tr.rot90(),
                           ms.normalized_variance(), batch_size=4)
    np.testing.assert_allclose(strat.per_class[c].per_activation["map"],
                               alone.per_activation["map"], rtol=1e-5)
  mean = np.mean([strat.per_class[c].per_feature_map["map"]
                  for c in range(3)], axis=0)
  np.testing.assert_allclose(strat.per_feature_map["map"], mean, rtol=1e-12)


def test_stratified_one_class_equals_unstratified(images):
  plain = invjax.measure(_model, images, tr.rot90(), ms.normalized_variance(),
                         batch_size=4)
  strat = invjax.measure(_model, images, tr.rot90(), ms.normalized_variance(),
                         batch_size=4, labels=np.full(11, 7), stratify=True)
  for layer in plain.layers:
    np.testing.assert_allclose(strat.per_activation[layer],
                               plain.per_activation[layer], rtol=1e-6)
  assert list(strat.per_class) == [7]


def test_progress_bar(images, capsys):
  plain = invjax.measure(_model, images, tr.rot90(), ms.normalized_variance(),
                         batch_size=4)
  shown = invjax.measure(_model, images, tr.rot90(), ms.normalized_variance(),
                         batch_size=4, progress=True)
  err = capsys.readouterr().err
  assert "3/3" in err
  np.testing.assert_array_equal(shown.per_activation["map"],
                                plain.per_activation["map"])


_MESH_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    import invjax
    from invjax import measures as ms, transforms as tr
    assert jax.device_count() == 8, jax.devices()
    def model(x):
      h = jnp.tanh(x[..., :1] * 2.0 - x[..., 1:])
      return {"map": h, "vec": h.mean(axis=(1, 2, 3))[:, None] * jnp.arange(3.0)}
    images = np.random.default_rng(0).uniform(size=(37, 6, 6, 2)).astype(np.float32)
    measures = [ms.normalized_variance(), ms.normalized_variance_same_equivariance()]
    single = invjax.measure(model, images, tr.rot90(), measures, batch_size=12)
    mesh = jax.make_mesh((8,), ("data",))
    sharded = invjax.measure(model, images, tr.rot90(), measures, batch_size=12,
                             mesh=mesh)
    for a, b in zip(single, sharded):
      for layer in a.layers:
        np.testing.assert_allclose(b.per_activation[layer],
                                   a.per_activation[layer], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(b.extras[layer]["numerator"],
                                   a.extras[layer]["numerator"], rtol=1e-5, atol=1e-7)
    print("MESH-OK", sharded[0].settings["batch_size"])
""")


def test_mesh_matches_single_device():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-c", _MESH_SCRIPT], env=env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "MESH-OK 16" in out.stdout


def test_all_families_in_one_call_equal_separate_calls(images):
  # One program for measures of every family: the shared forward pass and
  # pass scheduling (Goodfellow's extra passes) must not change any value.
  def make():
    return [ms.normalized_variance(), ms.anova_f(), ms.goodfellow(),
            ms.normalized_distance(), ms.geed(), ms.predictive_invariance(),
            ms.logit_invariance(), ms.normalized_variance_same_equivariance()]
  together = invjax.measure(_model, images, tr.rot90(), make(), batch_size=4)
  for m, res in zip(make(), together):
    alone = invjax.measure(_model, images, tr.rot90(), m, batch_size=4)
    assert res.measure == alone.measure
    assert res.layers == alone.layers
    for layer in alone.layers:
      np.testing.assert_allclose(res.per_activation[layer],
                                 alone.per_activation[layer], rtol=1e-6)


@pytest.fixture(params=["cpu", "default"])
def stats_branch(request, monkeypatch):
  """invjax._src.stats with lax.platform_dependent forced to one branch.

  CI has no accelerator: forcing each branch in turn checks the reduction
  that GPUs/TPUs run against the CPU loop and float64.
  """
  from invjax._src import stats
  monkeypatch.setattr(
      stats.jax.lax, "platform_dependent",
      lambda *args, cpu, default: (cpu if request.param == "cpu"
                                   else default)(*args))
  return stats


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_block_moments_both_backend_branches(stats_branch, axis):
  x = np.random.default_rng(axis).normal(3.0, 2.0, (5, 6, 7))
  w = np.ones(x.shape[axis])
  w[-2:] = 0   # padding comes last
  m = stats_branch.block_moments(jnp.asarray(x, jnp.float32), jnp.asarray(w),
                                 axis)
  valid = np.take(x, np.arange(x.shape[axis] - 2), axis=axis)
  np.testing.assert_allclose(m.count, x.shape[axis] - 2)
  np.testing.assert_allclose(m.mean, valid.mean(axis), rtol=1e-5)
  np.testing.assert_allclose(
      m.m2, ((valid - valid.mean(axis, keepdims=True))**2).sum(axis),
      rtol=1e-4)


def test_block_moments_long_axis(stats_branch):
  # Past _UNROLL entries the accelerator branch reduces instead of unrolling.
  n = stats_branch._UNROLL + 6
  x = np.random.default_rng(1).normal(3.0, 2.0, (n, 4))
  w = np.ones(n)
  w[-3:] = 0
  m = stats_branch.block_moments(jnp.asarray(x, jnp.float32), jnp.asarray(w), 0)
  valid = x[:-3]
  np.testing.assert_allclose(m.count, n - 3)
  np.testing.assert_allclose(m.mean, valid.mean(0), rtol=1e-5)
  np.testing.assert_allclose(m.m2, ((valid - valid.mean(0))**2).sum(0),
                             rtol=1e-4)


@pytest.mark.parametrize("measure", [
    ms.normalized_variance(), ms.normalized_variance_same_equivariance()])
def test_cuda_layout_pin_keeps_values(images, monkeypatch, measure):
  # The CUDA branch of `program.row_major` (a layout constraint) compiled on
  # CPU: the same numbers, in one program with the stats' accelerator branch.
  expected = invjax.measure(_model, images, tr.rot90(), measure, batch_size=4)
  monkeypatch.setattr(plan, "PROGRAMS", {})
  monkeypatch.setattr(
      jax.lax, "platform_dependent",
      lambda *args, default, **branches: branches.get("cuda", default)(*args))
  pinned = invjax.measure(_model, images, tr.rot90(), measure, batch_size=4)
  assert pinned.layers == expected.layers
  for layer in expected.per_activation:
    np.testing.assert_allclose(pinned.per_activation[layer],
                               expected.per_activation[layer], rtol=1e-5)


def test_block_moments_sparse_unit(stats_branch):
  # A dead-most-of-the-time unit whose first sample is the lone outlier: the
  # shift must not be that sample, or Σd² − (Σd)²/n cancels in float32.
  x = np.random.default_rng(0).normal(0.0, 0.01, (256, 3))
  x[0] = 50.0
  m = stats_branch.block_moments(jnp.asarray(x, jnp.float32), jnp.ones(256), 0)
  np.testing.assert_allclose(m.m2, ((x - x.mean(0))**2).sum(0), rtol=1e-5)
  constant = stats_branch.block_moments(jnp.full((64, 2), 0.1, jnp.float32),
                                        jnp.ones(64), 0)
  np.testing.assert_array_equal(constant.m2, 0.0)   # exactly: 0/0 → 1 rule


def test_shared_moments_computes_moments_of_the_same_arrays_once():
  from invjax._src import stats
  x = jnp.arange(12.0).reshape(3, 4)
  w, v = jnp.array([1.0, 1.0, 0.0]), jnp.array([1.0, 0.0, 1.0])
  with stats.shared_moments():
    first = stats.block_moments(x, w, 0)
    assert stats.block_moments(x, w, 0) is first
    other = stats.block_moments(x, v, 0)      # other weights: its own
    elsewhere = []                            # another thread: its own
    thread = threading.Thread(
        target=lambda: elsewhere.append(stats.block_moments(x, w, 0)))
    thread.start()
    thread.join()
    assert elsewhere[0] is not first
  np.testing.assert_allclose(first.mean, np.asarray(x)[:2].mean(0))
  np.testing.assert_allclose(other.mean, np.asarray(x)[[0, 2]].mean(0))
  assert stats.block_moments(x, w, 0) is not first    # the scope is closed


def _reciprocal(x):
  flat = x.reshape(x.shape[0], -1)
  total = jnp.sum(x, axis=(1, 2, 3), keepdims=True)
  return {"inv": 1 / flat, "map": (x - 0.1) / total, "vec": flat[:, :3],
          "finite": jnp.tanh(1 / x)}           # tanh(inf) = 1: kept


_FAMILIES = [ms.normalized_variance(), ms.anova_f(), ms.goodfellow(),
             ms.normalized_distance(window=16), ms.geed(normalize="pairwise")]


# The poisoned samples 3 and 9 in one batch; in two, with chunked orbits.
@pytest.mark.parametrize("batch_size,chunk", [(16, None), (5, 3)])
def test_nonfinite_samples_are_left_out_and_counted(images, batch_size, chunk):
  x = np.concatenate([images, images[:5] + 0.5])
  x[[3, 9]] = 0.0                        # 1/x = inf: two poisoned samples
  keep = np.ones(len(x), bool)
  keep[[3, 9]] = False
  with pytest.warns(RuntimeWarning, match="2 sample.*NaN or inf"):
    got = invjax.measure(_reciprocal, x, tr.rot90(), _FAMILIES,
                         batch_size=batch_size, transform_chunk=chunk)
  clean = invjax.measure(_reciprocal, x[keep], tr.rot90(), _FAMILIES,
                         batch_size=batch_size, transform_chunk=chunk)
  for g, c in zip(got, clean):
    assert g.nonfinite_samples["finite"] == 0
    for layer in ("inv", "map"):
      np.testing.assert_allclose(g.per_activation[layer],
                                 c.per_activation[layer], rtol=2e-5,
                                 err_msg=f"{g.measure} {layer}")
      assert g.nonfinite_samples[layer] == 2
      assert c.nonfinite_samples[layer] == 0
      assert "2 samples with NaN or inf" in g.notes[layer]


def test_program_cache_keys_on_input_and_layer_shapes():
  # The same callable on new image shapes: a new program, the right numbers.
  fn = lambda x: {"map": x * 2.0, "flat": x.reshape(x.shape[0], -1)}
  rng = np.random.default_rng(0)
  nv = ms.normalized_variance()
  first = rng.uniform(size=(64, 28, 28, 1)).astype(np.float32)
  invjax.measure(fn, first, tr.rot90(), nv)
  for shape in [(64, 20, 20, 1), (64, 32, 32, 3), (10, 32, 32, 3)]:
    x = rng.uniform(size=shape).astype(np.float32)
    again = invjax.measure(fn, x, tr.rot90(), nv)
    plan.PROGRAMS.clear()
    fresh = invjax.measure(fn, x, tr.rot90(), nv)
    for layer in fresh.layers:
      assert again.per_activation[layer].shape == shape[1:] if layer == "map" \
          else (np.prod(shape[1:]),)
      np.testing.assert_array_equal(again.per_activation[layer],
                                    fresh.per_activation[layer])


def test_complex_activations_are_an_error(images):
  fn = lambda x: {"real": x, "spectrum": jnp.fft.fft2(x, axes=(1, 2))}
  with pytest.raises(ValueError, match="'spectrum' has complex activations"):
    invjax.measure(fn, images, tr.rot90(), ms.normalized_variance())


@pytest.mark.parametrize("offset", [1e4, 1e5, 1e6])
def test_float32_statistics_far_from_zero(offset):
  # Activations offset by 10⁴–10⁶ σ: merging batches must not round the
  # means (float64 of the very same float32 activations as the oracle).
  x = np.random.default_rng(0).normal(size=(300, 4, 4, 1)).astype(np.float32)
  fn = lambda im: {"a": im.reshape(im.shape[0], -1) + np.float32(offset)}
  tv, sv = invjax.measure(fn, x, tr.rot90(), [ms.transformation_variance(),
                                               ms.sample_variance()],
                          batch_size=32)
  orbits = np.stack([np.rot90(x, k, axes=(1, 2)) for k in range(4)], 1)
  a = (orbits.reshape(300, 4, -1) + np.float32(offset)).astype(np.float64)
  np.testing.assert_allclose(tv.per_activation["a"],
                             a.var(1, ddof=1).mean(0), rtol=1e-5)
  np.testing.assert_allclose(sv.per_activation["a"],
                             a.var(0, ddof=1).mean(0), rtol=1e-5)


def test_merge_moments_keeps_precision_far_from_zero(stats_branch):
  x = np.random.default_rng(2).normal(1e5, 1.0, (40, 3)).astype(np.float32)
  merged = stats_branch.zeros_moments((3,))
  for part in np.split(x, 8):
    merged = stats_branch.merge_moments(
        merged, stats_branch.block_moments(jnp.asarray(part), jnp.ones(5), 0))
  ref = x.astype(np.float64)
  np.testing.assert_allclose(merged.m2, ((ref - ref.mean(0))**2).sum(0),
                             rtol=1e-5)
  f64 = lambda v: np.asarray(v, np.float64)
  # The mean to float32's resolution of the offset, not of 1e5 (~4e-3).
  np.testing.assert_allclose(f64(merged.shift) - ref.mean(0),
                             -f64(merged.offset), atol=1e-5)


def test_transform_chunk_equals_unchunked_to_round_off():
  x = np.random.default_rng(0).normal(size=(24, 8, 8, 1)).astype(np.float32)
  fn = lambda im: {"a": jnp.tanh(im.reshape(im.shape[0], -1) * 2 + 1)}
  ts = tr.rotation(np.arange(360.0))
  whole = invjax.measure(fn, x, ts, ms.normalized_variance(), batch_size=12)
  chunked = invjax.measure(fn, x, ts, ms.normalized_variance(), batch_size=12,
                           transform_chunk=50)
  for k in ("numerator", "denominator"):
    np.testing.assert_allclose(chunked.extras["a"][k], whole.extras["a"][k],
                               rtol=2e-5, atol=1e-9)


def test_a_long_run_reduces_in_loops_bit_equal_to_one_loop(monkeypatch):
  # Layers of 432, 1152, 288 and 10 units: blocked on CPU (512 units), and
  # split into three loops by layer order when the run counts as long.
  w = jnp.asarray(np.random.default_rng(1).normal(size=(3, 8)), jnp.float32)

  def fn(im):
    h = jnp.tanh(im @ w)                                    # (B, 12, 12, 8)
    pool = h.reshape(h.shape[0], 6, 2, 6, 2, 8).mean((2, 4))
    return {"pix": im, "h": h, "pool": pool,
            "out": pool.reshape(pool.shape[0], -1)[:, :10]}

  x = np.random.default_rng(0).uniform(size=(20, 12, 12, 3)).astype(
      np.float32)
  y = np.arange(20) % 2
  measures = [ms.normalized_variance(), ms.anova_f(), ms.goodfellow(),
              ms.normalized_variance_same_equivariance()]
  run = lambda: invjax.measure(fn, x, tr.rot90(), measures, labels=y,
                               stratify=True, batch_size=8)
  if jax.default_backend() != "cpu":
    pytest.skip("accelerators reduce each layer whole")
  monkeypatch.setattr(plan, "PROGRAMS", {})
  one = run()
  assert {p.loops for p in _plans()} == {1}      # 80 orbit images: short
  monkeypatch.setattr(program, "LONG_RUN", 80)
  looped = run()
  assert {p.loops for p in _plans()} == {1, program.LONG_RUN_LOOPS}
  for a, b in zip(one, looped):
    for c in (None, 0, 1):
      ra = a if c is None else a.per_class[c]
      rb = b if c is None else b.per_class[c]
      for l in ra.layers:
        np.testing.assert_array_equal(ra.per_activation[l],
                                      rb.per_activation[l], err_msg=l)


def _plans():
  return [p.plan for p in plan.PROGRAMS.values()]


def test_channels_first_and_unscaled_images_warn():
  fn = lambda x: {"mean": jnp.mean(x, axis=(1, 2))}
  x = np.random.default_rng(0).uniform(size=(4, 3, 16, 16)).astype(np.float32)
  with pytest.warns(UserWarning, match="channels-first"):
    invjax.measure(fn, x, tr.rotation([0.0, 30.0]), ms.normalized_variance())
  pixels = np.round(255 * x.transpose(0, 2, 3, 1))
  with pytest.warns(UserWarning, match="unscaled pixels"):
    invjax.measure(fn, pixels, tr.rot90(), ms.normalized_variance())
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    invjax.measure(fn, pixels / 255, tr.rot90(), ms.normalized_variance())
