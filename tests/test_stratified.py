"""Stratified runs against the oracle that cannot share their bug: each class
measured alone, at several batch sizes."""

import jax.numpy as jnp
import numpy as np
import pytest

import invjax
from invjax import measures as ms
from invjax import transforms as tr

N, H, W = 22, 6, 6


def _data():
  """Class 0 has a constant border of 0.7 (rot90-invariant), class 1 not."""
  rng = np.random.default_rng(0)
  x = rng.uniform(0.2, 1.2, (N, H, W, 1)).astype(np.float32)
  y = (np.arange(N) % 3 == 0).astype(np.int32)   # classes interleaved
  border = np.ones((H, W), bool)
  border[1:-1, 1:-1] = False
  x[:, border] = np.where(y[:, None, None] == 0, 0.7, x[:, border])
  return x, y, border


def _model(images):
  flat = images.reshape(images.shape[0], -1)
  return {"pixels": images, "tanh": jnp.tanh(2 * flat - 1),
          "mean": jnp.mean(images, axis=(1, 2))}


_MEASURES = [ms.normalized_variance(), ms.anova_f(), ms.goodfellow(),
             ms.normalized_distance(window=N),
             ms.geed(normalize="pairwise"), ms.predictive_invariance()]


def _compare(a, b, rtol):
  for layer in a.layers:
    va, vb = a.per_activation[layer], b.per_activation[layer]
    np.testing.assert_array_equal(np.isfinite(va), np.isfinite(vb),
                                  err_msg=layer)
    fin = np.isfinite(va)
    np.testing.assert_allclose(va[fin], vb[fin], rtol=rtol, atol=1e-6,
                               err_msg=layer)
    np.testing.assert_array_equal(va[~fin], vb[~fin], err_msg=layer)


# 3: every batch holds both classes; 10: a short last batch (22 = 10+10+2),
# class 0 alone (8 samples) one short batch. One batch of all 22 is
# test_class_results_do_not_depend_on_the_batch_size's.
@pytest.mark.parametrize("batch_size", [3, 10])
def test_each_class_equals_the_class_alone(batch_size):
  x, y, border = _data()
  names = ["pixels", "tanh"]
  strat = invjax.measure(_model, x, tr.rot90(), _MEASURES, labels=y,
                         stratify=True, batch_size=batch_size, layers=names)
  for c in (0, 1):
    alone = invjax.measure(_model, x[y == c], tr.rot90(), _MEASURES,
                           batch_size=batch_size, layers=names)
    for s, a in zip(strat, alone):
      _compare(s.per_class[c], a, rtol=2e-5)
  # The border is constant within class 0: TV = SV = 0 exactly, so NV is
  # the 0/0 rule's 1 (not a round-off ratio), whatever the batches hold.
  nv0 = strat[0].per_class[0]
  np.testing.assert_array_equal(nv0.extras["pixels"]["numerator"][border], 0)
  np.testing.assert_array_equal(nv0.extras["pixels"]["denominator"][border], 0)
  np.testing.assert_array_equal(nv0.per_activation["pixels"][border], 1.0)


def test_class_results_do_not_depend_on_the_batch_size():
  x, y, _ = _data()
  runs = [invjax.measure(_model, x, tr.rot90(), _MEASURES, labels=y,
                         stratify=True, batch_size=b) for b in (4, 22)]
  for other in runs[1:]:
    for a, b in zip(runs[0], other):
      for c in (0, 1):
        _compare(a.per_class[c], b.per_class[c], rtol=2e-5)


def test_a_nonfinite_sample_poisons_no_other_class():
  x = np.random.default_rng(0).uniform(.5, 1.5, (8, 4, 4, 1)).astype(
      np.float32)
  x[3] = 0
  y = np.array([0, 0, 0, 1, 1, 1, 0, 1])
  fn = lambda im: {"inv": 1 / im.reshape(len(im), -1)}
  with pytest.warns(RuntimeWarning, match="NaN or inf"):
    strat = invjax.measure(fn, x, tr.rot90(), ms.normalized_variance(),
                           labels=y, stratify=True, batch_size=8)
  alone0 = invjax.measure(fn, x[y == 0], tr.rot90(),
                          ms.normalized_variance(), batch_size=8)
  np.testing.assert_allclose(strat.per_class[0].per_layer["inv"], 0.8251012,
                             rtol=1e-6)
  _compare(strat.per_class[0], alone0, rtol=1e-6)
  # Class 1 is measured without the zero image, and says so.
  keep = (y == 1) & (np.arange(8) != 3)
  alone1 = invjax.measure(fn, x[keep], tr.rot90(), ms.normalized_variance(),
                          batch_size=8)
  _compare(strat.per_class[1], alone1, rtol=1e-6)
  assert strat.per_class[1].nonfinite_samples == {"inv": 1}
  assert strat.per_class[0].nonfinite_samples == {"inv": 0}
  assert strat.nonfinite_samples == {"inv": 1}
  assert "1 sample with NaN or inf" in strat.notes["inv"]


def test_a_class_too_small_is_left_out_of_the_average_with_a_note():
  x, _, _ = _data()
  y = np.zeros(N, np.int32)
  y[5] = 7                                           # one sample of class 7
  y[6:9] = 3
  nv = invjax.measure(_model, x, tr.rot90(), ms.normalized_variance(),
                      labels=y, stratify=True, batch_size=8)
  assert sorted(nv.per_class) == [0, 3, 7]
  for layer in nv.layers:
    assert np.isfinite(nv.per_layer[layer])
    assert "class 7 is left out of the class average" in nv.notes[layer]
    mean = (nv.per_class[0].per_feature_map[layer] +
            nv.per_class[3].per_feature_map[layer]) / 2
    np.testing.assert_allclose(nv.per_feature_map[layer], mean, rtol=1e-6)
  with pytest.raises(ValueError, match="no class can be measured"):
    invjax.measure(_model, x[:3], tr.rot90(), ms.normalized_variance(),
                   labels=[0, 1, 2], stratify=True)
