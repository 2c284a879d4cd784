"""Ensembles: K networks that differ only in their parameters, one program.

The oracle of an ensemble measurement is each member measured alone.
"""

import jax.numpy as jnp
import numpy as np
import pytest

import invjax
from invjax import measures as ms
from invjax import transforms as tr
from invjax._src import capture

K = 3


def _apply(params, images):
  h = jnp.tanh(images @ params["w"])                     # (B, H, W, 4)
  return {"map": h, "vec": h.mean(axis=(1, 2))}


def _weights():
  return np.random.default_rng(0).normal(size=(K, 2, 4)).astype(np.float32)


@pytest.mark.parametrize("stratify", [False, True])
def test_an_ensemble_measurement_equals_each_member_alone(stratify):
  rng = np.random.default_rng(1)
  x = rng.uniform(size=(40, 6, 6, 2)).astype(np.float32)
  y = rng.choice([0, 1], size=40)
  families = [ms.normalized_variance(), ms.goodfellow(), ms.geed()]
  w = _weights()
  kw = dict(batch_size=8, labels=y, stratify=stratify)
  ensemble = capture.Activations(apply=_apply, params={"w": w}, key="ens",
                                 members=K)
  together = invjax.measure(ensemble, x, tr.rot90(), families, **kw)
  assert len(together) == K
  for i in range(K):
    alone = invjax.measure(
        capture.Activations(apply=_apply, params={"w": w[i]}, key="one"),
        x, tr.rot90(), families, **kw)
    for a, b in zip(together[i], alone):
      for layer in b.per_activation:
        np.testing.assert_array_equal(a.per_activation[layer],
                                      b.per_activation[layer])
      if stratify:
        for c in b.per_class:
          np.testing.assert_array_equal(a.per_class[c].per_activation["map"],
                                        b.per_class[c].per_activation["map"])


def test_an_ensemble_needs_the_members_axis_on_every_parameter():
  x = np.zeros((8, 4, 4, 2), np.float32)
  bad = capture.Activations(apply=_apply, params={"w": _weights()[0]},
                            key="bad", members=K)
  with pytest.raises(ValueError, match="leading axis of 3"):
    invjax.measure(bad, x, tr.rot90(), ms.normalized_variance())
