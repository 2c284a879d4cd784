"""A tiny sweep for tests/test_sweep.py: 2 seeds x 2 rotation sets on digits.

The model class lives at module level: one defined inside run() would be a
new class per call, and every cell would compile its own program.

    invjax sweep tests/digits_sweep.py --out /tmp/digits_sweep    # ~20 s, CPU

A two-convolution CNN of 4 channels, initialized from the cell's seed (not
trained: the sweep machinery is under test, not the model), measured on 16
digits. Two environment variables let the tests watch it: each call of
``run``/``run_group`` appends a line to $DIGITS_SWEEP_COUNTER, and the
$DIGITS_SWEEP_KILL_AT-th call of ``run`` in a process kills that process
with SIGKILL. Every attempt at a cell appends a line to attempts.txt in its
folder. ``fake=True`` returns made-up results without measuring (for fast
command-line tests).
"""

import os
import signal

import flax.linen as nn
import jax
import numpy as np

import invjax
import invjax.data
from invjax import measures as ms
from invjax import transforms as tr

# Two rotation sets of equal size share one compiled measurement program.
_ANGLES = {"quarter": [0.0, 90.0, 180.0, 270.0],
           "small": [-30.0, -15.0, 15.0, 30.0]}
_RUNS = [0]  # calls of run() in this process


class TinyCNN(nn.Module):
  """Two 3x3 convolutions and a linear read-out."""
  channels: int

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(self.channels, (3, 3), name="conv1")(x))
    x = nn.Conv(self.channels, (3, 3), strides=2, name="conv2")(x)
    return nn.Dense(10, name="fc")(x.mean(axis=(1, 2)))


def get_config():
  return dict(seed=0, transform="quarter", num_images=16, channels=4,
              ensemble=True, fake=False)


def get_sweep():
  return invjax.sweep.product(seed=range(2), transform=["quarter", "small"])


def _note(kind, configs):
  path = os.environ.get("DIGITS_SWEEP_COUNTER")
  if path:
    with open(path, "a", encoding="utf-8") as f:
      for c in configs:
        f.write(f"{kind} seed={c['seed']} transform={c['transform']}\n")


def _fake(config):
  from invjax._src.result import MeasureResult  # pylint: disable=g-import-not-at-top
  s = float(config["seed"]) + len(config["transform"])
  return {"nv": MeasureResult.from_outputs(
      "normalized_variance", {"fake": True},
      {"conv1": {"values": np.array([s, 1.0])},
       "fc": {"values": np.array([s / 2])}})}


def run(config, outdir):
  """Measures NV and TV of one seed's CNN under one rotation set."""
  _note("run", [config])
  # Each attempt at the cell leaves a line: a resumed cell has two.
  with open(os.path.join(outdir, "attempts.txt"), "a", encoding="utf-8") as f:
    f.write("attempt\n")
  _RUNS[0] += 1
  if _RUNS[0] == int(os.environ.get("DIGITS_SWEEP_KILL_AT", "0")):
    os.kill(os.getpid(), signal.SIGKILL)
  if config["fake"]:
    return _fake(config)
  images, _ = invjax.data.load_digits(size=12)
  images = np.asarray(images[:config["num_images"]], np.float32)
  model = TinyCNN(config["channels"])
  variables = model.init(jax.random.PRNGKey(config["seed"]), images[:1])
  nv, tv = invjax.measure(
      invjax.capture.linen(model, variables), images,
      tr.rotation(_ANGLES[config["transform"]]),
      [ms.normalized_variance(), ms.transformation_variance()],
      batch_size=len(images) // 2, workdir=os.path.join(outdir, "measure"),
      checkpoint_every=1)  # resumable, as a real sweep's would be
  return {"nv": nv, "both": [nv, tv]}


def run_group(configs, outdirs):
  """Cells that differ only in seed, together (here: one after another)."""
  _note("group", configs)
  return [run(c, d) for c, d in zip(configs, outdirs)]
