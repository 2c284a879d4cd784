"""Time of a whole-network NV measure vs the bare forward pass, in one run.

    python benchmarks/nv_vs_forward.py [--n 1000] [--t 16] [--batch-size 128]

Three compiled programs over the same N × T transformed MNIST-shaped images
(SimpleConv, every layer tapped), each a `lax.scan` over batches:
  forward: transform + forward pass, logits summed (so nothing is elided);
  floor:   forward + one read (a sum) of every tapped activation;
  measure: `invjax.measure` with normalized variance on every layer;
  combined: NV, ANOVA and Goodfellow in one `invjax.measure` call;
  pallas (with --pallas): NV with ``implementation="pallas"``, one read of
    every tile (a GPU's; elsewhere Pallas' interpret mode, very slow).
The programs run in turn, ``--repeats`` rounds. Reports median wall times
and the medians over rounds of the ratios measure/forward, measure/floor
and combined/measure (and pallas/forward, with its largest deviation from
NV), and each program's minor page faults per call. On CPU the measure's
unit reduce runs in one loop below ``program.LONG_RUN`` orbit images
(N · T; 2^15) and in ``program.LONG_RUN_LOOPS`` loops from there: the script
says which (``--n 2048`` at T = 16 is the smallest long run).
"""

from __future__ import annotations

import argparse
import resource
import time
import types

import jax
import jax.numpy as jnp
import numpy as np

import invjax
from invjax import measures as ms
from invjax import models
from invjax import transforms as tr
from invjax._src import plan
from invjax._src import program


def time_in_turn(fns: dict, repeats: int,
                 faults: dict | None = None) -> dict[str, list[float]]:
  """Wall times of each program, ``repeats`` rounds that run them in turn.

  Round-robin rather than one program after another: a machine whose speed
  drifts (a shared VM's can move by half within minutes) then shifts every
  program of a round alike, and the per-round ratios keep their meaning.
  ``faults``, when given, receives each program's minor page faults per
  call (the process's, all threads): XLA:CPU allocates a program's temporary
  buffers at every call, and the kernels that first touch them pay a fault
  per fresh page.
  """
  for fn in fns.values():
    jax.block_until_ready(fn())                     # compile + warm up
  times = {name: [] for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t0)
      if faults is not None:
        faults.setdefault(name, []).append(
            resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
  return times


def setup(n: int, t: int, batch_size: int, channels: int = 32):
  """The benchmark's inputs and its two reference programs.

  Returns a namespace with ``acts`` (every layer of SimpleConv), ``images``
  (N, 28, 28, 1), ``ts`` (T rotations), ``variables``, ``batches``
  (N/B, B, 28, 28, 1; the last batch padded) and the jitted ``forward`` and
  ``floor`` programs, each called as ``fn(variables, batches)``.
  """
  model = models.SimpleConv(num_classes=10, channels=channels)
  images = np.random.default_rng(0).uniform(
      size=(n, 28, 28, 1)).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), images[:1])
  acts = invjax.capture.linen(model, variables)
  ts = tr.rotation(np.linspace(-180, 180, t, endpoint=False))
  nb = -(-n // batch_size)
  padded = np.concatenate([images, images[:nb * batch_size - n]])
  batches = padded.reshape(nb, batch_size, 28, 28, 1)

  def scan_over(read):
    def body(total, x):
      xt = jax.vmap(ts.apply)(x).reshape((-1, 28, 28, 1))
      return total + read(xt), None
    return jax.jit(lambda params, data: jax.lax.scan(
        body, jnp.zeros(()), data)[0])

  return types.SimpleNamespace(
      acts=acts, images=images, ts=ts, variables=variables, batches=batches,
      forward=scan_over(lambda x: model.apply(variables, x).sum()),
      floor=scan_over(lambda x: sum(a.sum() for a in acts(x).values())))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--n", type=int, default=1000)
  p.add_argument("--t", type=int, default=16)
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--channels", type=int, default=32)
  p.add_argument("--repeats", type=int, default=5,
                 help="rounds, each running every program once in turn")
  p.add_argument("--pallas", action="store_true",
                 help="also time NV with implementation='pallas'")
  args = p.parse_args()

  b = args.batch_size
  s = setup(args.n, args.t, b, args.channels)
  acts, images, ts, variables = s.acts, s.images, s.ts, s.variables
  batches = jnp.asarray(s.batches)
  nv = ms.normalized_variance()

  combined = [nv, ms.anova_f(), ms.goodfellow()]
  fns = {
      "forward": lambda: s.forward(variables, batches),
      "floor": lambda: s.floor(variables, batches),
      "measure": lambda: invjax.measure(acts, images, ts, nv,
                                        batch_size=b).per_layer,
      "combined": lambda: [r.per_layer for r in invjax.measure(
          acts, images, ts, combined, batch_size=b)],
  }
  faults = {}
  times = time_in_turn(fns, args.repeats, faults)
  med = {name: float(np.median(v)) for name, v in times.items()}
  # The median over rounds of each round's ratio.
  ratio = lambda a, b: float(np.median(np.divide(times[a], times[b])))
  layers = len(acts.layer_names(images[:1]))
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"N={args.n}, T={args.t}, batch={b}, layers={layers}, "
        f"{args.repeats} rounds in turn (medians)")
  # What the engine's programs ran with, not a second derivation of it.
  loops = sorted({p.plan.loops for p in plan.PROGRAMS.values()})
  print(f"unit reduce loops: {loops} (N·T = {args.n * args.t}; a long run "
        f"from {program.LONG_RUN})")
  print(f"forward  {med['forward'] * 1e3:9.1f} ms")
  print(f"floor    {med['floor'] * 1e3:9.1f} ms  "
        "(forward + one read of every tap)")
  print(f"measure  {med['measure'] * 1e3:9.1f} ms  (NV, every layer)")
  print(f"combined {med['combined'] * 1e3:9.1f} ms  (NV + ANOVA + Goodfellow, "
        "one call)")
  print(f"measure/forward = {ratio('measure', 'forward'):.2f}x   "
        f"measure/floor = {ratio('measure', 'floor'):.2f}x   "
        f"combined/measure = {ratio('combined', 'measure'):.2f}x")
  print("measure/forward by round: " + " ".join(
      f"{m / f:.2f}" for m, f in zip(times["measure"], times["forward"])))
  print("minor page faults per call (medians): " + ", ".join(
      f"{name} {np.median(v):,.0f}" for name, v in faults.items()))
  if args.pallas:
    fused = ms.normalized_variance(implementation="pallas")
    run = lambda m: invjax.measure(acts, images, ts, m, batch_size=b)
    times.update(time_in_turn({"pallas": lambda: run(fused).per_layer,
                               "forward": fns["forward"],
                               "floor": fns["floor"]}, args.repeats))
    a, f = run(nv), run(fused)
    dev, differ = 0.0, 0
    for l in a.layers:
      x, y = a.per_activation[l], f.per_activation[l]
      both = np.isfinite(x) & np.isfinite(y)
      differ += int(np.sum(np.isfinite(x) != np.isfinite(y)))
      dev = max(dev, float(np.max(np.abs(y - x)[both] / np.maximum(
          np.abs(x[both]), 1e-3), initial=0)))
    print(f"pallas   {np.median(times['pallas']) * 1e3:9.1f} ms  "
          "(NV, one read per tile)")
    print(f"pallas/forward = {ratio('pallas', 'forward'):.2f}x   "
          f"pallas/floor = {ratio('pallas', 'floor'):.2f}x")
    print(f"pallas vs NV: largest deviation {dev:.1e} (of max(|NV|, 1e-3)), "
          f"{differ} units finite in one only")


if __name__ == "__main__":
  main()
