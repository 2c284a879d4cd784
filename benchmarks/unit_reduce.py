"""The engine's unit-wise update of one batch vs one read of its tiles.

    python benchmarks/unit_reduce.py [--batch-size 128] [--rounds 5]

Random (B, T, *shape) tiles shaped like SimpleConv's 15 taps (28×28×1
input, 32 channels; T = 16) go through `units.update`, the step of
`invjax.measure` that reduces every unit-wise measure over all layers (on
CPU in blocks of `program.UNIT_BLOCK` units), for NV alone and for NV +
ANOVA + Goodfellow. Reported: the fastest of ``--rounds`` alternated calls
of each, and its ratio to one read (a sum) of all the tiles. The forward
pass is left out, so the ratio isolates the statistics' own cost.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from invjax import measures as ms
from invjax._src import base
from invjax._src import program
from invjax._src import units

from nv_vs_forward import time_in_turn  # pylint: disable=g-import-not-at-top

# SimpleConv's taps (channels=32): conv1, its activation, conv2, its
# activation, pool1, conv3, ..., fc1, its activation, logits.
SHAPES = ([(28, 28, 32)] * 4 + [(14, 14, 32)] + [(14, 14, 64)] * 4 +
          [(7, 7, 64)] + [(7, 7, 128)] * 2 + [(128,)] * 2 + [(10,)])


def update_program(measures, tiles, untransformed, mask, t):
  """A jitted ``() -> states``: one `units.update` of the measures."""
  names = list(tiles)
  b = mask.shape[0]
  specs = {l: base.LayerSpec(l, tiles[l].shape[2:], jnp.float32, t, t, b)
           for l in names}
  lay = units.layout(names, specs, program.unit_block())
  spec = units.flat_spec(specs[names[0]], lay)
  states = [units.widen(m.init(spec), lay.capacity, m.name)
            for m in measures]

  def block_of(l):
    return base.Block(
        x=units.flatten(tiles[l], 2), mask=mask, t_index=jnp.arange(t),
        t_mask=jnp.ones((t,), bool), first=jnp.array(True),
        last=jnp.array(True), labels=None,
        untransformed=units.flatten(untransformed[l], 1), pass_index=0,
        whole_orbit=True)

  def run(states):
    jobs = [units.Job(m.unitwise.reduce, m.unitwise.fold, s, m.name)
            for m, s in zip(measures, states)]
    return units.update(jobs, lay, block_of)

  compiled = jax.jit(run).lower(states).compile()
  return lambda: compiled(states)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--t", type=int, default=16)
  p.add_argument("--rounds", type=int, default=5)
  args = p.parse_args()
  b, t = args.batch_size, args.t
  rng = np.random.default_rng(0)
  draw = lambda shape: jnp.asarray(rng.normal(size=shape).astype(np.float32))
  tiles = {f"l{i:02d}": draw((b, t) + s) for i, s in enumerate(SHAPES)}
  untransformed = {l: draw((b,) + v.shape[2:]) for l, v in tiles.items()}
  mask = jnp.arange(b) < b - 3          # a short batch: 3 padding samples
  read = jax.jit(lambda ts: sum(jnp.sum(v) for v in ts.values()))
  programs = {
      "one read": lambda: read(tiles),
      "NV": update_program([ms.normalized_variance()], tiles, untransformed,
                           mask, t),
      "NV+ANOVA+GF": update_program(
          [ms.normalized_variance(), ms.anova_f(), ms.goodfellow()], tiles,
          untransformed, mask, t),
  }
  times = time_in_turn(programs, args.rounds)
  mb = sum(v.size for v in tiles.values()) * 4 / 1e6
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"B={b}, T={t}, {len(tiles)} layers, {mb:.0f} MB of tiles")
  one = min(times["one read"])
  for name, ts in times.items():
    print(f"{name:12s} {min(ts) * 1e3:8.1f} ms  {min(ts) / one:5.1f} reads")


if __name__ == "__main__":
  main()
