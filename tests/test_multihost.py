"""invjax.measure in two processes (`jax.distributed`, gloo on localhost).

Each process holds half of every global batch (its own rows only) and two
simulated CPU devices; the oracle is one process measuring the same global
batches on a mesh of two devices. The data leave process 1 with a shorter
part (the last batch is short and all process 0's), so the processes must
agree on the chunks to step through.
"""

import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]

_CHILD = textwrap.dedent("""
    import os, sys
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    import jax
    pid, procs, port, out = (int(sys.argv[1]), int(sys.argv[2]), sys.argv[3],
                             sys.argv[4])
    if procs > 1:
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
      jax.distributed.initialize(f"localhost:{port}", num_processes=procs,
                                 process_id=pid)
    import jax.numpy as jnp
    import numpy as np
    import invjax
    from invjax import measures as ms
    from invjax import transforms as tr

    rng = np.random.default_rng(0)
    x = rng.uniform(size=(100, 6, 6, 2)).astype(np.float32)
    y = rng.choice([1, 4], size=100)
    B, part = 8, 8 // procs
    mesh = jax.make_mesh((2 * procs,), ("data",))

    def model(im):
      h = jnp.tanh(im[..., :1] * 2.0 - im[..., 1:])
      return {"map": h, "vec": h.mean(axis=(1, 2, 3))[:, None] * jnp.arange(3.)}

    # This process's rows of every global batch of B.
    rows = np.concatenate([
        np.arange(i + pid * part, min(i + (pid + 1) * part, len(x)))
        for i in range(0, len(x), B)])

    class Batches:
      def __iter__(self):
        for i in range(0, len(rows), part):
          yield x[rows[i:i + part]], y[rows[i:i + part]]

    families = [ms.normalized_variance(), ms.goodfellow(), ms.geed()]
    kw = dict(batch_size=B, stratify=True, classes=[1, 4], mesh=mesh)
    from_array = invjax.measure(model, x[rows], tr.rot90(), families,
                                labels=y[rows], **kw)
    from_stream = invjax.measure(model, Batches(), tr.rot90(), families, **kw)
    np.savez(out, n=from_array[0].settings["num_samples"],
             n_stream=from_stream[0].settings["num_samples"], **{
        f"{kind}/{i}/{c}/{l}": v
        for kind, res in (("array", from_array), ("stream", from_stream))
        for i, r in enumerate(res)
        for c, rc in list(r.per_class.items()) + [("mean", r)]
        for l, v in rc.per_activation.items()})
""")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(pid, procs, port, out):
  env = dict(os.environ, PYTHONPATH=str(REPO))
  return subprocess.Popen(
      [sys.executable, "-c", _CHILD, str(pid), str(procs), str(port),
       str(out)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)


def _finish(p):
  try:
    _, err = p.communicate(timeout=600)
  except subprocess.TimeoutExpired:
    p.kill()
    raise
  assert p.returncode == 0, err[-3000:]


def test_two_processes_equal_one(tmp_path):
  port = _free_port()
  two = [_start(i, 2, port, tmp_path / f"two{i}.npz") for i in range(2)]
  one = _start(0, 1, 0, tmp_path / "one.npz")
  for p in two + [one]:
    _finish(p)
  want = np.load(tmp_path / "one.npz")
  assert int(want["n"]) == int(want["n_stream"]) == 100
  for i in range(2):
    got = np.load(tmp_path / f"two{i}.npz")
    assert sorted(got) == sorted(want)
    for k in want:
      # The same global batches: only the order of the cross-device sums
      # may differ.
      np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7,
                                 err_msg=k)


def test_several_processes_need_a_mesh():
  # Checked before any collective, so one process suffices to see it.
  from invjax._src import engine  # pylint: disable=g-import-not-at-top
  from invjax import measures as ms  # pylint: disable=g-import-not-at-top
  from invjax import transforms as tr  # pylint: disable=g-import-not-at-top
  x = np.zeros((4, 3, 3, 1), np.float32)
  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(engine.hosts, "count", lambda: 2)
    with pytest.raises(ValueError, match="need mesh="):
      engine.measure(lambda im: {"a": im}, x, tr.rot90(),
                     ms.normalized_variance())
