"""K seeds of one network, trained and measured as one vmapped program vs one after another.

    python benchmarks/ensemble.py [--k 8] [--steps 100] [--batch-size 32] \
        [--channels 8] [--fc 32] [--n 256] [--t 8] [--measure-batch 64] \
        [--output benchmarks/results/ensemble_cpu.md]

SimpleConv (narrowed to C = ``--channels``) on scikit-learn's digits
(28×28, `invjax.data.load_digits`), K seeds 0..K-1:
  train: `invjax.train.fit` for ``--steps`` Adam steps, once with
    ``seeds=range(K)`` (one vmapped jit step for all members) and once per
    seed (``seed=s``, K runs; they share one compiled step);
  measure: `invjax.measure` of NV on every layer under T rotations of N
    images, once with ``capture.linen(model, stacked, ensemble=True)`` (one
    program, vmapped over members) and once per member (K calls of one
    compiled program).
Steady state: every program is compiled and run once first (a fit
stopped after one step, a measurement); the compile cost is reported apart, as that first call's
time. Each timing is the fastest of ``--repeats``. Prints a Markdown table
(times and the sequential/vmapped ratios); ``--output`` also writes it with
the command, date, commit, machine and settings.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import pathlib
import sys
import time

import jax
import numpy as np

import invjax
from invjax import data
from invjax import measures as ms
from invjax import models
from invjax import train as T
from invjax import transforms as tr

import _report  # benchmarks/, the script's own folder



def _timed(fn):
  t0 = time.perf_counter()
  jax.block_until_ready(fn())
  return time.perf_counter() - t0


def _best(fn, repeats):
  return min(_timed(fn) for _ in range(repeats))


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--k", type=int, default=8, help="ensemble members")
  p.add_argument("--steps", type=int, default=100)
  p.add_argument("--batch-size", type=int, default=32)
  p.add_argument("--channels", type=int, default=8)
  p.add_argument("--fc", type=int, default=32)
  p.add_argument("--n", type=int, default=256, help="images measured")
  p.add_argument("--t", type=int, default=8, help="rotations")
  p.add_argument("--measure-batch", type=int, default=64)
  p.add_argument("--repeats", type=int, default=1,
                 help="steady-state timings per entry (the fastest is kept)")
  p.add_argument("--output", default=None,
                 help="also write the table, with the command and machine, "
                 "to this file")
  args = p.parse_args()
  k = args.k

  x, y = data.load_digits()
  model = models.SimpleConv(channels=args.channels, fc=args.fc)
  cfg = T.TrainConfig(steps=args.steps, batch_size=args.batch_size,
                      learning_rate=3e-3, log_every=args.steps)
  seeds = tuple(range(k))

  # Training. The first fit of each form, stopped after one step (until=1:
  # the same config, so the same programs), compiles init and step.
  rows = []
  c_vmap = _timed(lambda: T.fit(model, cfg, x, y, seeds=seeds,
                                until=1).variables)
  c_seq = _timed(lambda: T.fit(model, cfg, x, y, until=1).variables)
  state = None

  def train_vmapped():
    nonlocal state
    state = T.fit(model, cfg, x, y, seeds=seeds)
    return state.variables

  def train_sequential():
    return [T.fit(model, dataclasses.replace(cfg, seed=s), x, y).variables
            for s in seeds]

  t_vmap = _best(train_vmapped, args.repeats)
  t_seq = _best(train_sequential, args.repeats)
  rows.append(("train", c_vmap, c_seq, t_vmap, t_seq))
  print(f"train: vmapped {t_vmap:.2f} s, sequential {t_seq:.2f} s "
        f"({t_seq / t_vmap:.2f}x)", flush=True)

  # Measuring NV of the trained members.
  images = x[:args.n]
  ts = tr.rotation(np.linspace(-180, 180, args.t, endpoint=False))
  nv = ms.normalized_variance()
  stacked = state.variables
  ensemble = invjax.capture.linen(model, stacked, ensemble=True)
  members = [invjax.capture.linen(model, jax.tree.map(lambda v, i=i: v[i],
                                                      stacked))
             for i in range(k)]
  b = args.measure_batch

  def measure_vmapped():
    return [r.per_layer for r in invjax.measure(ensemble, images, ts, nv,
                                                batch_size=b)]

  def measure_sequential():
    return [invjax.measure(a, images, ts, nv, batch_size=b).per_layer
            for a in members]

  c_vmap = _timed(measure_vmapped)
  c_seq = _timed(lambda: invjax.measure(members[0], images, ts, nv,
                                        batch_size=b).per_layer)
  t_vmap = _best(measure_vmapped, args.repeats)
  t_seq = _best(measure_sequential, args.repeats)
  rows.append(("measure NV", c_vmap, c_seq, t_vmap, t_seq))
  print(f"measure: vmapped {t_vmap:.2f} s, sequential {t_seq:.2f} s "
        f"({t_seq / t_vmap:.2f}x)", flush=True)

  table = [
      "| task | vmapped first call s | one member's first call s | "
      "vmapped steady s | sequential steady s (K runs) | "
      "sequential / vmapped |",
      "|---|---|---|---|---|---|"]
  for name, cv, cs, tv, tq in rows:
    table.append(f"| {name} | {cv:.2f} | {cs:.2f} | {tv:.2f} | {tq:.2f} | "
                 f"{tq / tv:.2f}x |")
  device = f"{jax.devices()[0].device_kind} ({jax.default_backend()})"
  settings = (f"K={k} SimpleConv(channels={args.channels}, fc={args.fc}) "
              f"seeds 0..{k - 1}; train: {args.steps} Adam steps, batch "
              f"{args.batch_size}, on {x.shape[0]} digits; measure: NV, "
              f"every layer, N={args.n}, T={args.t} rotations, batch {b}; "
              f"steady = fastest of {args.repeats}; first call = fit(until=1) "
              f"(train) or first measurement (measure), compile included; "
              f"jax {jax.__version__}, {device}")
  print("\n".join(table))
  if args.output:
    now = datetime.datetime.now(datetime.timezone.utc)
    head = [
        f"# Ensembles: K members vmapped vs one after another "
        f"({jax.default_backend().upper()})", "",
        "* command: `python benchmarks/ensemble.py "
        + " ".join(sys.argv[1:]) + "`",
        f"* date: {now:%Y-%m-%d %H:%M} UTC",
        f"* commit: `{_report.commit()}`",
        f"* machine: {_report.machine()}",
        f"* settings: {settings}", ""]
    pathlib.Path(args.output).write_text("\n".join(head + table) + "\n")


if __name__ == "__main__":
  main()
