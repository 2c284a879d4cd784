"""Where a measure's time goes: XLA kernel times of the forward and NV programs.

    python benchmarks/kernel_times.py [--n 1000] [--t 16] [--batch-size 128]
        [--measures nv] [--top 20] [--rounds 3]

The forward program of `nv_vs_forward.py` and `invjax.measure`'s program
(NV on every layer of SimpleConv, or ``--measures three``: NV + ANOVA +
Goodfellow) run in turn under `jax.profiler.trace`, ``--rounds`` times
each. For each, the exclusive time of every kernel the runtime launched (an
HLO instruction of the compiled program: a fusion, a copy, a loop...) is
summed over a run, and its median over the rounds printed largest first,
with its launch count and the ``op_name`` XLA recorded for it (the JAX
source op: ``.../conv2/conv_general_dilated`` is a forward convolution,
``.../jit(_where)/select_n`` in the engine's loops a masked sum). A kernel
of the measure's program whose op_name is a forward op is the forward's
work again; the rest is the measure's. Then, by kind (the
instruction name without its number): the launches and time per kind,
which show how much goes to many small launches (loop overhead). Last, how
long each program had kernels running, and how long on two or more threads
at once (XLA:CPU runs independent kernels concurrently).

The measure's compiled program is obtained from the engine's `plan.prepare`
(internal API), as `invjax.measure` compiles it, to read the op_names.
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

import invjax
from invjax import measures as ms
from invjax._src import plan as plan_lib

from nv_vs_forward import setup  # pylint: disable=g-import-not-at-top

# An HLO instruction's name: what XLA:CPU's runtime names a kernel's event.
_KERNEL = re.compile(r"^[a-z][\w-]*(\.\d+)?$")
_OP_NAME = re.compile(
    r"^\s*(?:ROOT )?%?([\w.-]+) = .*?op_name=\"([^\"]+)\"", re.M)


def trace_events(trace_dir: str) -> list[dict]:
  """The complete events (with a start and a duration) of the profiler
  trace in ``trace_dir``."""
  (path,) = glob.glob(f"{trace_dir}/**/*.trace.json.gz", recursive=True)
  data = json.load(gzip.open(path))
  events = data["traceEvents"] if isinstance(data, dict) else data
  return [e for e in events if e.get("ph") == "X" and "dur" in e]


def kernel_times(events: list[dict]) -> dict[str, tuple[float, int]]:
  """{kernel: (exclusive seconds, launches)} from a profiler trace."""
  threads = collections.defaultdict(list)
  for e in events:
    threads[(e["pid"], e["tid"])].append(e)
  total = collections.Counter()
  count = collections.Counter()
  for es in threads.values():
    # Exclusive time: an event's duration less its children's on its thread.
    es.sort(key=lambda e: (e["ts"], -e["dur"]))
    stack, child = [], collections.Counter()
    for i, e in enumerate(es):
      while stack and es[stack[-1]]["ts"] + es[stack[-1]]["dur"] <= e["ts"]:
        stack.pop()
      if stack:
        child[stack[-1]] += e["dur"]
      stack.append(i)
    for i, e in enumerate(es):
      if _KERNEL.match(e["name"]):
        total[e["name"]] += (e["dur"] - child[i]) * 1e-6
        count[e["name"]] += 1
  return {k: (total[k], count[k]) for k in total}


def overlap(events: list[dict]) -> tuple[float, float]:
  """(seconds with a kernel running, seconds with kernels on ≥ 2 threads).

  XLA:CPU runs independent kernels on its threads at once: the second
  figure is how long the program kept two cores busy with its own kernels.
  """
  spans = collections.defaultdict(list)
  for e in events:
    if _KERNEL.match(e["name"]):
      spans[(e["pid"], e["tid"])].append((e["ts"], e["ts"] + e["dur"]))
  edges = []
  for iv in spans.values():
    # A thread's nested events (a loop and its body's kernels) count once.
    iv.sort()
    merged = [list(iv[0])]
    for a, b in iv[1:]:
      if a <= merged[-1][1]:
        merged[-1][1] = max(merged[-1][1], b)
      else:
        merged.append([a, b])
    edges += [(a, 1) for a, _ in merged] + [(b, -1) for _, b in merged]
  edges.sort()
  busy, both, active, last = 0.0, 0.0, 0, None
  for t, step in edges:
    if last is not None:
      busy += (t - last) * (active >= 1)
      both += (t - last) * (active >= 2)
    active, last = active + step, t
  return busy * 1e-6, both * 1e-6


def traced(fn) -> tuple[dict[str, tuple[float, int]], tuple[float, float]]:
  """`kernel_times` and `overlap` of one call of ``fn``."""
  with tempfile.TemporaryDirectory() as d:
    with jax.profiler.trace(d):
      jax.block_until_ready(fn())
    events = trace_events(d)
  return kernel_times(events), overlap(events)


def report(rounds: list[dict], hlo_text: str, name: str, top: int) -> float:
  """Prints a program's kernels (median over rounds); returns their total."""
  names = set().union(*rounds)
  times = {k: (float(np.median([r.get(k, (0, 0))[0] for r in rounds])),
               max(r.get(k, (0, 0))[1] for r in rounds)) for k in names}
  op_names = dict(_OP_NAME.findall(hlo_text))
  kernels = sum(t for t, _ in times.values())
  print(f"\n## {name}: {kernels:.2f} s in kernels (medians of "
        f"{len(rounds)} rounds)\n")
  print(f"{'ms':>9} {'launches':>8}  kernel  (op_name)")
  for k, (t, c) in sorted(times.items(), key=lambda kv: -kv[1][0])[:top]:
    op = "/".join(op_names.get(k, "").split("/")[-3:])
    print(f"{t * 1e3:9.1f} {c:8d}  {k}  ({op})")
  kinds = collections.defaultdict(lambda: [0.0, 0])
  for k, (t, c) in times.items():
    kind = kinds[re.sub(r"\.\d+$", "", k)]
    kind[0] += t
    kind[1] += c
  print(f"\nby kind:\n{'ms':>9} {'launches':>8}  kind")
  for k, (t, c) in sorted(kinds.items(), key=lambda kv: -kv[1][0])[:top]:
    print(f"{t * 1e3:9.1f} {c:8d}  {k}")
  return kernels


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--n", type=int, default=1000)
  p.add_argument("--t", type=int, default=16)
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--measures", choices=("nv", "three"), default="nv")
  p.add_argument("--top", type=int, default=20)
  p.add_argument("--rounds", type=int, default=3,
                 help="traced calls of each program, in turn")
  args = p.parse_args()

  b = args.batch_size
  s = setup(args.n, args.t, b)
  batches = jnp.asarray(s.batches)
  measures = [ms.normalized_variance()]
  if args.measures == "three":
    measures += [ms.anova_f(), ms.goodfellow()]
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"N={args.n}, T={args.t}, batch={b}, measures: {args.measures}")

  forward_hlo = s.forward.lower(s.variables, batches).compile().as_text()
  step, step_args, _ = plan_lib.prepare(
      s.acts, s.images, s.ts, measures, batch_size=b, labels=None,
      stratify=False, layers=None, transform_chunk=None, mesh=None)
  measure_hlo = step.lower(*step_args).compile().as_text()

  programs = {
      "forward": lambda: s.forward(s.variables, batches),
      "measure": lambda: [r.per_layer for r in invjax.measure(
          s.acts, s.images, s.ts, measures, batch_size=b)]}
  rounds = {name: [] for name in programs}
  for fn in programs.values():
    jax.block_until_ready(fn())                        # compile + warm up
  overlaps = {name: [] for name in programs}
  for _ in range(args.rounds):
    # In turn, so that the machine's drift moves both programs alike.
    for name, fn in programs.items():
      times, busy = traced(fn)
      rounds[name].append(times)
      overlaps[name].append(busy)
  t_forward = report(rounds["forward"], forward_hlo, "forward", args.top)
  t_measure = report(rounds["measure"], measure_hlo, "measure", args.top)
  print(f"\nkernel time measure/forward = {t_measure / t_forward:.2f}x")
  for name, values in overlaps.items():
    busy, both = np.median(values, axis=0)
    print(f"{name}: kernels running {busy:.2f} s, on two or more threads at "
          f"once {both:.2f} s (medians)")


if __name__ == "__main__":
  main()
