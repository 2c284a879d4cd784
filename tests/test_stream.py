"""invjax.measure on batch sources: lists, re-iterable objects, generators.

The oracle is the same measure on the same samples as one (N, H, W, C)
array, whose own results the other test files check against references:
the per-batch maths is the same, so a source yielding the array's batches
gives the array's numbers bit for bit, and one with other batch boundaries
gives them to float32 round-off.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import invjax
from invjax import measures as ms
from invjax import transforms as tr
from invjax._src import plan
from invjax._src import sources

# N = 8 batches of B: an array, a list (K balanced over 8 batches) and a
# source without a length (K = 8) then share one compiled step per pass.
N, B = 32, 4


def _model(x):
  h = jnp.tanh(x[..., :1] * 2.0 - x[..., 1:])
  return {"map": h, "vec": h.mean(axis=(1, 2, 3))[:, None] * jnp.arange(3.0)}


def _families():
  # Every family; the Goodfellow thresholds read the data 2 and 3 times.
  return [ms.normalized_variance(), ms.normalized_variance_same_equivariance(),
          ms.anova_f(), ms.goodfellow(), ms.goodfellow(threshold="quantile"),
          ms.normalized_distance(window=5), ms.geed(),
          ms.predictive_invariance()]


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  x = rng.uniform(size=(N, 6, 6, 2)).astype(np.float32)
  y = rng.choice([3, 5, 9], size=N)
  return x, y


@pytest.fixture(scope="module")
def from_array(data):
  x, _ = data
  return invjax.measure(_model, x, tr.rot90(), _families(), batch_size=B)


@pytest.fixture(scope="module")
def stratified_array(data):
  x, y = data
  return invjax.measure(_model, x, tr.rot90(), _families(), batch_size=B,
                        labels=y, stratify=True)


class _Batches:
  """A re-iterable source: each iter() starts over; no __len__."""

  def __init__(self, x, y=None, sizes=(B,)):
    self.x, self.y, self.sizes = x, y, sizes
    self.passes = 0

  def __iter__(self):
    self.passes += 1
    start, i = 0, 0
    while start < len(self.x):
      stop = start + self.sizes[i % len(self.sizes)]
      xb = self.x[start:stop]
      yield xb if self.y is None else (xb, self.y[start:stop])
      start, i = stop, i + 1


def _split(x, sizes=(B,)):
  return list(_Batches(x, sizes=sizes))


def _assert_equal(got, want, rtol=0.0):
  assert got.measure == want.measure
  assert got.layers == want.layers
  assert got.settings["num_samples"] == want.settings["num_samples"]
  for layer in want.layers:
    a, b = got.per_activation[layer], want.per_activation[layer]
    if rtol:
      np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-7,
                                 err_msg=f"{want.measure} {layer}")
    else:
      np.testing.assert_array_equal(a, b, err_msg=f"{want.measure} {layer}")


def test_list_of_batches_equals_the_array_bit_for_bit(data, from_array):
  x, _ = data
  got = invjax.measure(_model, _split(x), tr.rot90(), _families(),
                       batch_size=B)
  for g, w in zip(got, from_array):
    _assert_equal(g, w)


def test_reiterable_object_with_short_batches_in_the_middle(data, from_array):
  x, _ = data
  source = _Batches(x, sizes=(4, 1, 3, 4, 2))
  got = invjax.measure(_model, source, tr.rot90(), _families(), batch_size=B)
  assert source.passes == 3              # quantile Goodfellow: three passes
  for g, w in zip(got, from_array):
    _assert_equal(g, w, rtol=2e-5)
  # The same batches as the array's: the same numbers, bit for bit.
  got = invjax.measure(_model, _Batches(x), tr.rot90(), _families(),
                       batch_size=B)
  for g, w in zip(got, from_array):
    _assert_equal(g, w)


def test_one_shot_generator_serves_single_pass_measures(data, from_array):
  x, _ = data
  single = [(m, r) for m, r in zip(_families(), from_array)
            if m.requires.passes == 1]
  measures = [m for m, _ in single]
  got = invjax.measure(_model, (b for b in _split(x, (3, 4, 2))), tr.rot90(),
                       measures, batch_size=B)
  for g, (_, w) in zip(got, single):
    _assert_equal(g, w, rtol=2e-5)
  # iter(list) is one-shot too; `images=` by keyword as before.
  got = invjax.measure(_model, images=iter(_split(x)),
                       transformations=tr.rot90(), measures=measures,
                       batch_size=B)
  for g, (_, w) in zip(got, single):
    _assert_equal(g, w, rtol=1e-6)


@pytest.mark.parametrize("measure", [ms.goodfellow(),
                                     ms.goodfellow(threshold="quantile")])
def test_one_shot_iterator_with_multi_pass_measure_is_an_error(data, measure):
  x, _ = data
  with pytest.raises(ValueError, match="goodfellow reads the data [23] times"
                     ".*one-shot"):
    invjax.measure(_model, iter(_split(x)), tr.rot90(),
                   [ms.normalized_variance(), measure], batch_size=B)


def test_stratified_stream_equals_stratified_array(data, stratified_array):
  x, y = data
  source = _Batches(x, y, sizes=(4, 2, 4, 3, 4))
  got = invjax.measure(_model, source, tr.rot90(), _families(), batch_size=B,
                       stratify=True, classes=[9, 3, 5])
  for g, w in zip(got, stratified_array):
    assert sorted(g.per_class) == [3, 5, 9]
    for c in (3, 5, 9):
      _assert_equal(g.per_class[c], w.per_class[c], rtol=2e-5)
    _assert_equal(g, w, rtol=2e-5)
  # Dict batches, grain-style, with the array's batches: bit for bit.
  dicts = [{"image": xb, "label": yb} for xb, yb in _Batches(x, y)]
  again = invjax.measure(_model, dicts, tr.rot90(), _families(),
                         batch_size=B, stratify=True, classes=[3, 5, 9])
  for g, w in zip(again, stratified_array):
    _assert_equal(g, w)
  # A label outside classes= is an error when its batch is read.
  y = y.copy()
  y[6] = 4
  with pytest.raises(ValueError, match=r"label 4 of batch 1 is not one of "
                     r"classes=\[3, 5, 9\]"):
    invjax.measure(_model, _Batches(x, y), tr.rot90(), _families(),
                   batch_size=B, stratify=True, classes=[3, 5, 9])


def test_class_checks_run_after_the_first_pass(data):
  # Class 7 is listed but never yielded; class 9 holds one sample, too few
  # for ddof = 1: both are left out of the average with a note, as for an
  # array with the same classes=.
  x, y = data
  y = np.where(y == 9, 5, y)
  y[4] = 9
  nv = ms.normalized_variance()
  got = invjax.measure(_model, _Batches(x, y), tr.rot90(), nv, batch_size=B,
                       stratify=True, classes=[3, 5, 7, 9])
  want = invjax.measure(_model, x, tr.rot90(), nv, batch_size=B, labels=y,
                        stratify=True, classes=[3, 5, 7, 9])
  assert sorted(got.per_class) == [3, 5, 7, 9]
  note = got.notes["map"]
  assert "class 7" in note and "0 samples" in note and "class 9" in note
  assert note == want.notes["map"]
  _assert_equal(got, want)
  for c in (3, 5):
    _assert_equal(got.per_class[c], want.per_class[c])
  with pytest.raises(ValueError, match="normalized_variance needs at least 2 "
                     "samples.*got 1"):
    invjax.measure(_model, iter([x[:1]]), tr.rot90(), nv, batch_size=B)


def test_stream_errors(data):
  x, y = data
  nv = ms.normalized_variance()
  with pytest.raises(ValueError, match="needs classes="):
    invjax.measure(_model, _Batches(x, y), tr.rot90(), nv, batch_size=B,
                   stratify=True)
  with pytest.raises(ValueError, match="labels= goes with"):
    invjax.measure(_model, _split(x), tr.rot90(), nv, labels=y)
  with pytest.raises(ValueError, match="batch 0 holds 4 samples, more than "
                     "batch_size=3"):
    invjax.measure(_model, _split(x), tr.rot90(), nv, batch_size=3)
  with pytest.raises(ValueError, match="yielded no batch"):
    invjax.measure(_model, [], tr.rot90(), nv)
  # Read in the loop, after the first batches went by (compiled already).
  with pytest.raises(ValueError, match=r"batch 1 has images of shape \(4, 5"):
    invjax.measure(_model, iter([x[:4], x[4:8, :5]]), tr.rot90(), nv,
                   batch_size=B)
  bad = x.copy()
  bad[5, 0, 0, 0] = np.nan
  with pytest.raises(ValueError, match="batch 1: images contain 1 non-finite"):
    invjax.measure(_model, iter(_split(bad)), tr.rot90(), nv, batch_size=B)


def test_a_source_must_repeat_its_samples(data, from_array):
  x, _ = data

  class Shrinking:
    def __init__(self):
      self.n = N

    def __iter__(self):
      self.n -= 2
      return iter(_split(x[:self.n]))

  with pytest.raises(ValueError, match="28 samples in pass 2 but 30 in pass 1"):
    invjax.measure(_model, Shrinking(), tr.rot90(), _families(), batch_size=B)


def test_progress_bar_of_a_stream(data, capsys):
  x, _ = data
  invjax.measure(_model, _Batches(x), tr.rot90(), ms.goodfellow(),
                 batch_size=B, progress=True)
  assert "16/16" in capsys.readouterr().err     # 8 batches × 2 passes


def test_device_array_and_short_chunks(data, from_array, monkeypatch):
  # Chunks of K = 3 batches: an on-device array (sliced where it lies), a
  # host array and a list, the last chunk padded with an empty batch.
  x, _ = data
  monkeypatch.setattr(sources, "_MAX_CHUNK", 3)
  measures = [ms.normalized_variance(), ms.goodfellow(threshold="quantile")]
  want = invjax.measure(_model, x, tr.rot90(), measures, batch_size=B)
  on_device = invjax.measure(_model, jnp.asarray(x), tr.rot90(), measures,
                             batch_size=B)
  listed = invjax.measure(_model, _split(x), tr.rot90(), measures,
                          batch_size=B)
  for d, l, w, o in zip(on_device, listed, want, from_array[::4]):
    _assert_equal(d, w)
    _assert_equal(l, w)
    _assert_equal(w, o, rtol=1e-6)


def test_step_holds_one_chunk_not_the_dataset():
  # The compiled step's arguments are one chunk and the states, whatever N.
  wide = lambda x: {"wide": jnp.tile(x, (1, 1, 1, 16))}
  sizes = []
  for n in (2_000, 20_000):
    images = np.zeros((n, 12, 12, 1), np.float32)
    fn, args, ctx = plan.prepare(
        wide, images, tr.rot90(), [ms.normalized_variance()], batch_size=50,
        labels=None, stratify=False, layers=None, transform_chunk=None,
        mesh=None)
    assert ctx["source"].k == 8
    sizes.append(fn.lower(*args).compile().memory_analysis()
                 .argument_size_in_bytes)
  chunk = 8 * 50 * 12 * 12 * 4           # K × B images
  one_tile = 50 * 4 * 2304 * 4           # B × T activations: bounds the state
  assert sizes[0] == sizes[1]
  assert chunk < sizes[0] < chunk + one_tile < 20_000 * 12 * 12 * 4 / 5
