"""G-EED against a float64 NumPy reference, closed forms and the engine."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax._src import base
from invjax._src import engine
from invjax._src import transforms as tr
from invjax._src.measures.geed import geed

N, H, W, C = 13, 6, 6, 2
_SETTINGS = list(itertools.product(("cosine", "euclidean", "kl"),
                                   ("centroid", "identity"),
                                   (None, "pairwise")))


# ---------------------------------------------------------------------------
# Float64 reference, written from the formulas with explicit loops.
# ---------------------------------------------------------------------------


def _log_softmax(v):
  m = v.max(axis=-1, keepdims=True)
  return v - m - np.log(np.exp(v - m).sum(axis=-1, keepdims=True))


def _distance(u, v, distance):
  """m(u, v) for two activations of one sample (log-probabilities for kl)."""
  if distance == "kl":
    return float(np.mean(np.sum(np.exp(u) * (u - v), axis=-1)))
  u, v = u.ravel(), v.ravel()
  if distance == "euclidean":
    return float(np.linalg.norm(u - v))
  nu, nv = np.linalg.norm(u), np.linalg.norm(v)
  if nu == 0 and nv == 0:
    return 0.0
  if nu == 0 or nv == 0:
    return 1.0
  return float(1.0 - u @ v / (nu * nv))


def reference_geed(a, ident, distance, reference, normalize):
  """a: (N, T, *shape), mapped back for equivariance; ident: (N, *shape)."""
  a = np.asarray(a, np.float64)
  ident = None if ident is None else np.asarray(ident, np.float64)
  if a.ndim == 2:                  # scalar activations: one class of one
    a = a[..., None]
    ident = None if ident is None else ident[..., None]
  embed = _log_softmax if distance == "kl" else (lambda v: v)
  refs, per_sample = [], []
  for i in range(a.shape[0]):
    if reference == "identity":
      r = embed(ident[i])
    elif distance == "kl":
      r = np.log(np.mean(np.exp(embed(a[i])), axis=0))   # log of mean softmax
    else:
      r = a[i].mean(axis=0)
    refs.append(r)
    per_sample.append(np.mean([_distance(embed(a[i, g]), r, distance)
                               for g in range(a.shape[1])]))
  value = np.mean(per_sample)
  if normalize == "pairwise":
    pw = np.mean([_distance(refs[j], refs[j + 1], distance)
                  for j in range(len(refs) - 1)])
    # safe_divide: 0/0 → 1, x/0 → inf.
    value = value / pw if pw > 0 else (np.inf if value > 0 else 1.0)
  return value


# ---------------------------------------------------------------------------
# One in-memory block.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(5,), (3, 3, 2)])
def test_block_matches_reference(shape):
  rng = np.random.default_rng(len(shape))
  x = rng.normal(size=(7, 5) + shape).astype(np.float32)
  ident = rng.normal(size=(7,) + shape).astype(np.float32)
  measures = [geed(distance=d, reference=r, normalize=n) for d, r, n in
              _SETTINGS]
  # One compiled program for all twelve settings.
  use = lambda m, i: i if m.requires.untransformed else None
  outs = jax.jit(lambda x, i: [m(x, untransformed=use(m, i))
                               for m in measures])(x, ident)
  for (distance, reference, normalize), out in zip(_SETTINGS, outs):
    expected = reference_geed(x, ident, distance, reference, normalize)
    np.testing.assert_allclose(out["geed"], expected, rtol=2e-5, atol=1e-6)
    assert out["values"].shape == shape
    np.testing.assert_allclose(out["values"],
                               np.broadcast_to(out["geed"], shape))
    if normalize:
      unnormalized = reference_geed(x, ident, distance, reference, None)
      np.testing.assert_allclose(out["deviation"], unnormalized, rtol=2e-5)


def test_scalar_activations():
  x = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
  outs = jax.jit(lambda x: [geed(distance=d)(x)["geed"]
                            for d in ("cosine", "euclidean", "kl")])(x)
  for d, out in zip(("cosine", "euclidean", "kl"), outs):
    np.testing.assert_allclose(out, reference_geed(x, None, d, "centroid",
                                                   None), rtol=1e-5, atol=1e-7)
  assert float(outs[2]) == 0.0         # a softmax over one class is constant


def test_cosine_uses_the_whole_activation_and_zero_vectors():
  # Two maps equal along every width row up to a per-row scale: cosine over
  # the last axis alone (the TAGTorch pitfall) would call them identical.
  a = np.ones((1, 2, 2, 3), np.float32)
  a[0, 1, 1] *= 5.0
  x = np.stack([a, a[:, ::-1]], axis=1)[0]            # (1, 2, 2, 2, 3)
  z = np.zeros((1, 2, 4), np.float32)
  half = np.stack([np.zeros(4), np.ones(4)])[None].astype(np.float32)

  @jax.jit
  def run():
    ident = geed(reference="identity")
    return (ident(x, untransformed=a[:, 0])["geed"], geed()(z)["geed"],
            ident(half, untransformed=np.zeros((1, 4), np.float32))["geed"],
            geed()(half)["geed"])

  whole, zeros, half_identity, half_centroid = (float(v) for v in run())
  assert whole > 1e-2
  # Zero vs zero is at distance 0; zero vs nonzero at distance 1.
  assert zeros == 0.0
  assert half_identity == pytest.approx(0.5)
  assert half_centroid == pytest.approx(0.5)   # distances 1 and 0


def test_kl_centroid_is_generalized_jsd():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(4, 6, 10)) * 3
  p = np.exp(_log_softmax(logits))
  entropy = lambda q: -np.sum(q * np.log(q), axis=-1)
  jsd = entropy(p.mean(axis=1)) - entropy(p).mean(axis=1)
  out = jax.jit(lambda z: geed(distance="kl")(z))(logits.astype(np.float32))
  np.testing.assert_allclose(out["geed"], jsd.mean(), rtol=1e-5)
  assert 0 <= float(out["geed"]) <= np.log(6)


@pytest.mark.parametrize("distance,reference", [
    ("cosine", "centroid"), ("euclidean", "identity"), ("kl", "centroid")])
def test_grad_matches_finite_differences(distance, reference):
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(3, 4, 6)), jnp.float32)
  ident = jnp.asarray(rng.normal(size=(3, 6)), jnp.float32)
  m = geed(distance=distance, reference=reference, normalize="pairwise")
  f = jax.jit(lambda x: m(
      x, untransformed=ident if reference == "identity" else None)["geed"])
  g = jax.jit(jax.grad(f))(x)
  assert np.all(np.isfinite(g)) and float(jnp.abs(g).max()) > 0
  v = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
  eps = 1e-2
  fd = (f(x + eps * v) - f(x - eps * v)) / (2 * eps)
  np.testing.assert_allclose(jnp.vdot(g, v), fd, rtol=2e-2, atol=1e-4)


def test_grad_finite_for_an_invariant_orbit():
  # All-equal orbits sit at the non-smooth points of ‖·‖ and of cos: the
  # gradient must stay finite (no NaN from sqrt(0)).
  x = jnp.ones((2, 4, 5))
  grads = jax.jit(jax.grad(lambda x: sum(
      geed(distance=d)(x)["geed"] for d in ("cosine", "euclidean", "kl"))))(x)
  assert np.all(np.isfinite(grads))


def _stream(m, x, ident, batch, chunk):
  """Feeds (B, Tc) tiles to init/update the way the engine does."""
  n, t = x.shape[:2]
  nb, nc = -(-n // batch), -(-t // chunk)
  pad = lambda a, rows: np.concatenate(
      [a, np.repeat(a[:1], rows - a.shape[0], 0)]) if rows > a.shape[0] else a
  x = pad(pad(x, nb * batch).swapaxes(0, 1), nc * chunk).swapaxes(0, 1)
  ident = None if ident is None else pad(ident, nb * batch)
  spec = base.LayerSpec("l", x.shape[2:], x.dtype, t, nc * chunk, batch)
  state = m.init(spec)
  # The Block's whole_orbit is static: built inside the traced function.
  update = jax.jit(lambda s, b: m.update(s, b._replace(whole_orbit=nc == 1)))
  for i in range(nb):
    rows = slice(i * batch, (i + 1) * batch)
    for j in range(nc):
      cols = slice(j * chunk, (j + 1) * chunk)
      block = base.Block(
          x=jnp.asarray(x[rows, cols]),
          mask=jnp.arange(i * batch, (i + 1) * batch) < n,
          t_index=jnp.arange(j * chunk, (j + 1) * chunk),
          t_mask=jnp.arange(j * chunk, (j + 1) * chunk) < t,
          first=jnp.array(j == 0), last=jnp.array(j == nc - 1),
          untransformed=None if ident is None else jnp.asarray(ident[rows]))
      state = update(state, block)
  return state, spec


@pytest.mark.parametrize("distance,reference,normalize", [
    s for s in _SETTINGS if s[:2] != ("euclidean", "centroid")])
@pytest.mark.parametrize("batch,chunk", [(3, 2)])
def test_streamed_tiles_match_reference(distance, reference, normalize, batch,
                                        chunk):
  # Chunks of 2 of 5 transformations, the last one padded, in batches of 3
  # of 10 samples: the chunked accumulators must give the whole-orbit value.
  rng = np.random.default_rng(11)
  x = rng.normal(size=(10, 5, 2, 3)).astype(np.float32)
  ident = rng.normal(size=(10, 2, 3)).astype(np.float32)
  m = geed(distance=distance, reference=reference, normalize=normalize)
  state, spec = _stream(m, x, ident, batch, chunk)
  out = jax.jit(lambda s: m.finalize(s, spec))(state)
  expected = reference_geed(x, ident, distance, reference, normalize)
  np.testing.assert_allclose(out["geed"], expected, rtol=1e-5, atol=2e-6)


def test_euclidean_centroid_refuses_chunks():
  x = np.ones((2, 4, 3), np.float32)
  with pytest.raises(ValueError, match="whole orbits"):
    _stream(geed(distance="euclidean"), x, None, 2, 2)


def test_merge():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(9, 4, 5)).astype(np.float32)
  m = geed(normalize="pairwise")
  (a, spec), (b, _) = _stream(m, x[:4], None, 4, 4), _stream(m, x[4:], None,
                                                             5, 4)
  out = jax.jit(lambda a, b: m.finalize(m.merge(a, b), spec))(a, b)
  whole_state, spec = _stream(m, x, None, 9, 4)
  whole = jax.jit(lambda s: m.finalize(s, spec))(whole_state)
  np.testing.assert_allclose(out["deviation"], whole["deviation"], rtol=1e-6)
  # The pair (x_3, x_4) straddling the two sets is not formed.
  refs = x.astype(np.float64).mean(axis=1)
  pairs = [_distance(refs[j], refs[j + 1], "cosine") for j in range(8)]
  del pairs[3]
  np.testing.assert_allclose(out["pairwise_distance"], np.mean(pairs),
                             rtol=1e-5)


def test_bad_arguments():
  for kw in [dict(distance="cos"), dict(reference="mean"),
             dict(normalize="batch"), dict(equivariant=1)]:
    with pytest.raises(ValueError):
      geed(**kw)
  with pytest.raises(ValueError, match="untransformed"):
    geed(reference="identity")(np.ones((2, 3, 4), np.float32))
  # Defaults: centroid for invariance, f(x) for equivariance (TAGTorch).
  assert dict(geed().settings)["reference"] == "centroid"
  m = geed(equivariant=True)
  assert dict(m.settings)["reference"] == "identity"
  assert m.requires.inverse and m.requires.untransformed


# ---------------------------------------------------------------------------
# Through the streaming engine.
# ---------------------------------------------------------------------------


_K3 = np.random.default_rng(1).normal(size=(3, 3, C, 3)).astype(np.float32)
_K1 = np.random.default_rng(2).normal(size=(1, 1, C, 3)).astype(np.float32)
_DENSE = np.random.default_rng(3).normal(size=(3, 4)).astype(np.float32)


def _conv(x, k):
  return jax.lax.conv_general_dilated(x, jnp.asarray(k), (1, 1), "SAME",
                                      dimension_numbers=("NHWC", "HWIO",
                                                         "NHWC"))


def _model(images):
  """conv3x3 (not rot90-equivariant), its pooled logits, and a pointwise
  branch: tanh of a 1×1 conv (equivariant) and its global mean (invariant)."""
  conv = jnp.tanh(_conv(images, _K3))
  point = jnp.tanh(_conv(images, _K1))
  logits = conv.mean(axis=(1, 2)) @ jnp.asarray(_DENSE)
  return {"conv": conv, "logits": logits, "point": point,
          "point_pool": point.mean(axis=(1, 2))}


def _c4_averaged(images):
  """The C4 orbit average of `_model`'s logits: exactly rot90-invariant."""
  rots = [jnp.rot90(images, k, axes=(1, 2)) for k in range(4)]
  return {"avg_logits": sum(_model(r)["logits"] for r in rots) / 4}


@pytest.fixture(scope="module")
def images():
  return np.random.default_rng(0).uniform(size=(N, H, W, C)).astype(
      np.float32)


def _activations(fn, images, ts, equivariant):
  @jax.jit
  def run(images):
    x = jax.vmap(ts.apply)(images)
    n, t = x.shape[:2]
    acts = fn(x.reshape((n * t,) + x.shape[2:]))
    out = {}
    for name, a in acts.items():
      a = a.reshape((n, t) + a.shape[1:])
      if equivariant:
        if a.ndim != 5:
          continue
        a = jax.vmap(lambda m: ts.apply_inverse(m, input_shape=(H, W)))(a)
      out[name] = a
    return out, fn(images)

  acts, ident = run(jnp.asarray(images))
  return {name: (np.asarray(a), np.asarray(ident[name]))
          for name, a in acts.items()}


_CHUNKABLE = [("cosine", "centroid", None), ("kl", "centroid", "pairwise"),
              ("euclidean", "identity", "pairwise")]
_WHOLE = [("euclidean", "centroid", "pairwise"), ("kl", "identity", None),
          ("cosine", "identity", "pairwise")]


@pytest.mark.parametrize("settings,batch_size,chunk", [
    (_CHUNKABLE, 5, 3), (_CHUNKABLE, 1, 2), (_WHOLE, 4, None)])
def test_engine_matches_reference(images, settings, batch_size, chunk):
  # Batch sizes that do not divide N = 13, with and without transformation
  # chunks: the values must not depend on them (pairs cross batches too).
  ts = tr.flips()
  measures = [geed(distance=d, reference=r, normalize=n)
              for d, r, n in settings]
  results = engine.measure(_model, images, ts, measures,
                           batch_size=batch_size, transform_chunk=chunk,
                           layers=["conv", "logits"])
  acts = _activations(_model, images, ts, False)
  del acts["point"], acts["point_pool"]
  for (distance, reference, normalize), res in zip(settings, results):
    for layer, (a, ident) in acts.items():
      expected = reference_geed(a, ident, distance, reference, normalize)
      # float32 sums of small KL terms: a few 1e-5 relative.
      np.testing.assert_allclose(res.extras[layer]["geed"], expected,
                                 rtol=5e-5, atol=1e-6)
      assert res.per_layer[layer] == pytest.approx(expected, rel=5e-5,
                                                   abs=1e-6)
      np.testing.assert_allclose(res.per_feature_map[layer], expected,
                                 rtol=5e-5, atol=1e-6)


def test_engine_equivariant_matches_reference(images):
  ts = tr.flips()
  settings = [("euclidean", "identity"), ("cosine", "centroid")]
  measures = [geed(equivariant=True, reference=r, distance=d)
              for d, r in settings]
  results = engine.measure(_model, images, ts, measures, batch_size=6,
                           transform_chunk=2)
  ref = _activations(_model, images, ts, True)
  for (distance, reference), res in zip(settings, results):
    assert sorted(res.layers) == sorted(ref) == ["conv", "point"]
    assert "logits" in res.notes          # no spatial axes: skipped
    for layer, (a, ident) in ref.items():
      expected = reference_geed(a, ident, distance, reference, None)
      np.testing.assert_allclose(res.extras[layer]["geed"], expected,
                                 rtol=2e-5, atol=1e-6)


def test_closed_forms_under_rot90(images):
  ts = tr.rot90()
  invariance = [geed(distance=d, reference=r) for d, r in [
      ("cosine", "centroid"), ("cosine", "identity"),
      ("euclidean", "centroid"), ("kl", "identity")]]
  # Invariant layers: global pooling of pointwise features, and a C4
  # orbit-averaged network; both references give 0.
  results = engine.measure(_model, images, ts, invariance, batch_size=5,
                           layers=["point_pool", "conv"])
  for res in results:
    assert float(res.extras["point_pool"]["geed"]) == pytest.approx(0, abs=1e-6)
    assert float(res.extras["conv"]["geed"]) > 1e-3     # not invariant
  for res in engine.measure(_c4_averaged, images, ts, invariance,
                            batch_size=5):
    assert float(res.extras["avg_logits"]["geed"]) == pytest.approx(
        0, abs=1e-6)
  # Equivariance: the identity map and a pointwise conv commute with rot90.
  ident_model = lambda x: {"x": x, **_model(x)}
  equivariance = [geed(distance=d, equivariant=True)
                  for d in ("cosine", "euclidean", "kl")]
  for res in engine.measure(ident_model, images, ts, equivariance,
                            batch_size=5, transform_chunk=3,
                            layers=["x", "point", "conv"]):
    assert float(res.extras["x"]["geed"]) == pytest.approx(0, abs=1e-6)
    assert float(res.extras["point"]["geed"]) == pytest.approx(0, abs=1e-6)
    assert float(res.extras["conv"]["geed"]) > 1e-3    # a 3×3 conv does not


def test_stratified(images):
  labels = np.arange(N) % 3
  ts = tr.rot90()
  res = engine.measure(_model, images, ts, geed(normalize="pairwise"),
                       batch_size=4, labels=labels, stratify=True)
  acts = _activations(_model, images, ts, False)
  for label in range(3):
    a, ident = acts["logits"]
    keep = labels == label
    expected = reference_geed(a[keep], ident[keep], "cosine", "centroid",
                              "pairwise")
    np.testing.assert_allclose(
        res.per_class[label].extras["logits"]["geed"], expected, rtol=1e-5)
