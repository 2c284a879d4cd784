"""Resumable measurement: `invjax.measure(..., workdir=, checkpoint_every=)`.

The oracle is the same measurement run without a workdir, uninterrupted:
a run killed with SIGKILL (a real signal, in a subprocess) and called again
must end with the same numbers bit for bit.
"""

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import invjax
from invjax import measures as ms
from invjax import transforms as tr

REPO = pathlib.Path(__file__).resolve().parents[1]

# The child measures a fixed function on fixed data, from an array or a
# re-iterable batch source, and kills itself with SIGKILL when the data
# reach KILL_AT = "pass,chunk" (array) or "pass,batch" (stream); without
# KILL_AT it finishes and saves the outputs. Workdir "none": no workdir.
_CHILD = textwrap.dedent("""
    import os, signal, sys
    import jax.numpy as jnp
    import numpy as np
    import invjax
    from invjax import measures as ms
    from invjax import transforms as tr
    from invjax._src import sources

    kind, workdir, out = sys.argv[1:4]
    workdir = None if workdir == "none" else workdir
    every = lambda k: k if workdir else None
    kill_at = os.environ.get("KILL_AT")
    kill_at = tuple(map(int, kill_at.split(","))) if kill_at else None
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(200, 6, 6, 2)).astype(np.float32)
    y = rng.choice([1, 4], size=200)
    B = 8

    def model(im):
      h = jnp.tanh(im[..., :1] * 2.0 - im[..., 1:])
      return {"map": h, "vec": h.mean(axis=(1, 2, 3))[:, None] * jnp.arange(3.)}

    def maybe_kill(g, i):
      if (g, i) == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)

    class Batches:
      passes = 0
      def __iter__(self):
        g, Batches.passes = Batches.passes, Batches.passes + 1
        for i in range(0, len(x), B):
          maybe_kill(g, i // B)
          yield x[i:i + B], y[i:i + B]

    if kind == "array":
      chunks = sources.ArraySource.chunks
      def killing(self, g, skip=0):
        for c, chunk in enumerate(chunks(self, g, skip), skip):
          maybe_kill(g, c)
          yield chunk
      sources.ArraySource.chunks = killing
      res = invjax.measure(model, x, tr.rot90(),
                           [ms.normalized_variance(), ms.goodfellow()],
                           batch_size=B, workdir=workdir,
                           checkpoint_every=every(2))
    else:
      res = invjax.measure(model, Batches(), tr.rot90(),
                           [ms.anova_f(), ms.normalized_variance()],
                           batch_size=B, stratify=True, classes=[1, 4],
                           workdir=workdir, checkpoint_every=every(1))
    np.savez(out, **{f"{i}/{l}": v for i, r in enumerate(res)
                     for l, v in r.per_activation.items()})
""")


def _run_child(kind, workdir, out, kill_at=None):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  if kill_at:
    env["KILL_AT"] = kill_at
  return subprocess.run([sys.executable, "-c", _CHILD, kind, str(workdir),
                         str(out)], env=env, capture_output=True, text=True,
                        timeout=600)


@pytest.mark.parametrize("kind,kill_at", [
    # Array, 25 batches in chunks of K = 7: killed in Goodfellow's second
    # pass as chunk 3 comes, after the checkpoints of pass 0 and of
    # chunk 2 of pass 1 (checkpoint_every=2); chunk 2 is lost.
    ("array", "1,3"),
    # Stream, stratified, killed in pass 0 at batch 13 (chunk 1 of K = 8,
    # its 6th batch), after the chunk-0 checkpoint.
    ("stream", "0,13"),
])
def test_killed_measurement_resumes_bit_for_bit(tmp_path, kind, kill_at):
  reference = _run_child(kind, "none", tmp_path / "ref.npz")
  assert reference.returncode == 0, reference.stderr[-2000:]
  killed = _run_child(kind, tmp_path / "wd", tmp_path / "x.npz", kill_at)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
  assert not (tmp_path / "x.npz").exists()
  saved = os.listdir(tmp_path / "wd" / "measure_checkpoints")
  assert saved, "killed before the first checkpoint"
  resumed = _run_child(kind, tmp_path / "wd", tmp_path / "x.npz")
  assert resumed.returncode == 0, resumed.stderr[-2000:]
  want, got = np.load(tmp_path / "ref.npz"), np.load(tmp_path / "x.npz")
  assert sorted(want) == sorted(got)
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def _model(x):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return {"map": jnp.tanh(x * 2.0)}


def _data(n=40):
  return np.random.default_rng(1).uniform(size=(n, 5, 5, 1)).astype(np.float32)


def test_a_workdir_of_another_measurement_is_refused(tmp_path):
  x = _data()
  invjax.measure(_model, x, tr.rot90(), ms.normalized_variance(),
                 batch_size=8, workdir=tmp_path)
  other_data = x.copy()
  other_data[17] += 0.5
  cases = {
      "data": dict(images=other_data),
      "measures": dict(measures=ms.normalized_variance(ddof=0)),
      "transformations": dict(transformations=tr.rotation([0, 90, 180])),
      "settings": dict(batch_size=4),
      "model": dict(activations=lambda im: {"map": im * 2.0}),
  }
  for what, change in cases.items():
    kwargs = dict(activations=_model, images=x, transformations=tr.rot90(),
                  measures=ms.normalized_variance(), batch_size=8)
    kwargs.update(change)
    with pytest.raises(ValueError, match=f"different {what}"):
      invjax.measure(workdir=tmp_path, **kwargs)


def test_a_completed_workdir_returns_its_result_without_reading_data(tmp_path):
  x = _data()
  first = invjax.measure(_model, x, tr.rot90(), ms.normalized_variance(),
                         batch_size=8, workdir=tmp_path)

  class Counting:
    reads = 0

    def __iter__(self):
      for i in range(0, len(x), 8):
        Counting.reads += 1
        yield x[i:i + 8]

  wd = tmp_path / "stream"
  stream = invjax.measure(_model, Counting(), tr.rot90(),
                          ms.normalized_variance(), batch_size=8, workdir=wd)
  reads = Counting.reads
  again = invjax.measure(_model, Counting(), tr.rot90(),
                         ms.normalized_variance(), batch_size=8, workdir=wd)
  # The source is opened (its first batch identifies it), nothing else.
  assert Counting.reads == reads + 1
  for a, b in ((stream, again), (first, stream)):
    np.testing.assert_array_equal(a.per_activation["map"],
                                  b.per_activation["map"])


def test_checkpoint_every_needs_a_workdir_and_a_positive_int(tmp_path):
  x = _data()
  with pytest.raises(ValueError, match="needs workdir"):
    invjax.measure(_model, x, tr.rot90(), ms.normalized_variance(),
                   checkpoint_every=2)
  for bad in (0, -1, 1.5, True):
    with pytest.raises(ValueError, match="checkpoint_every must be"):
      invjax.measure(_model, x, tr.rot90(), ms.normalized_variance(),
                     workdir=tmp_path, checkpoint_every=bad)
