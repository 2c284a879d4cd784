"""Compile time of the measure programs, and what the persistent cache saves.

    python benchmarks/compile_time.py [--n 256] [--t 16] [--batch-size 64]
        [--models simpleconv resnet18] [--resnet-width 16] [--output FILE]

For SimpleConv (28×28×1) and ResNet-18 (32×32×3) on N random images under T
rotations, five programs over the same N × T images:
  forward:   transform + forward pass in a `lax.scan` over batches (the
             program of nv_vs_forward.py);
  NV:        `invjax.measure` with normalized variance on every layer;
  NV+ANOVA+GF: NV, ANOVA and Goodfellow in one `invjax.measure` call;
  NV same-eq: `normalized_variance_same_equivariance` (inverse warps);
  NV progress (SimpleConv): NV with ``progress=True``, whose program holds a
             host callback.

Each model runs in two fresh worker processes that share an empty cache
directory (`invjax.enable_compile_cache`). In the first ("cold") one, a
program's compile time is its first call minus its steady-state call (the
fastest of ``--repeats`` further calls): tracing, lowering, XLA compilation
and writing the cache entry; the forward program's is also timed directly as
``jax.jit(f).lower(...).compile()``, and that is the denominator of the
ratios (its first − steady is within run-time noise on a busy machine). The second ("warm") one runs the same programs
with the cache filled; its first call over the steady-state call is what a
rerun of a script or command pays (issue 13's target: within 1.5×). Only
public API is timed (first vs later calls), so the figures do not depend on
the engine's internals.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

import _report  # benchmarks/, the script's own folder

REPO = pathlib.Path(__file__).resolve().parents[1]


def _files(directory: str) -> int:
  return sum(len(f) for _, _, f in os.walk(directory))


def _worker(args) -> None:
  """Times every program of one model; one JSON line per program."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import invjax  # pylint: disable=g-import-not-at-top
  from invjax import measures as ms  # pylint: disable=g-import-not-at-top
  from invjax import models  # pylint: disable=g-import-not-at-top
  from invjax import transforms as tr  # pylint: disable=g-import-not-at-top

  cache = invjax.enable_compile_cache(args.cache)
  if args.model == "simpleconv":
    model, shape = models.SimpleConv(num_classes=10), (28, 28, 1)
  else:
    model, shape = models.ResNet18(num_classes=10,
                                   width=args.resnet_width), (32, 32, 3)
  n, b = args.n, args.batch_size
  images = np.random.default_rng(0).uniform(
      size=(n,) + shape).astype(np.float32)
  variables = model.init(jax.random.PRNGKey(0), images[:1])
  acts = invjax.capture.linen(model, variables)
  ts = tr.rotation(np.linspace(-180, 180, args.t, endpoint=False))
  nb = -(-n // b)
  batches = jnp.asarray(np.concatenate(
      [images, images[:nb * b - n]]).reshape((nb, b) + shape))

  def body(total, x):
    xt = jax.vmap(ts.apply)(x).reshape((-1,) + shape)
    return total + model.apply(variables, xt).sum(), None
  forward = jax.jit(lambda params, data: jax.lax.scan(
      body, jnp.zeros(()), data)[0])

  def measure(m, progress=False):
    return lambda: jax.tree.map(
        lambda r: r.per_layer,
        invjax.measure(acts, images, ts, m, batch_size=b, progress=progress))

  nv = ms.normalized_variance()
  programs = [
      ("forward", lambda: forward(variables, batches)),
      ("NV", measure(nv)),
      ("NV+ANOVA+GF", measure([nv, ms.anova_f(), ms.goodfellow()])),
      ("NV same-eq", measure(ms.normalized_variance_same_equivariance())),
  ]
  if args.model == "simpleconv":
    programs.append(("NV progress", measure(nv, progress=True)))
  for name, fn in programs:
    before = _files(cache)
    t0 = time.perf_counter()
    extra = {}
    if name == "forward":
      # Its compile time directly, by ahead-of-time lowering: first − steady
      # is within run-time noise for it on a busy machine. The call below
      # reuses the executable, so `first` is still the time to a result.
      forward.lower(variables, batches).compile()
      extra["compile"] = time.perf_counter() - t0
    jax.block_until_ready(fn())
    first = time.perf_counter() - t0
    steady = []
    for _ in range(args.repeats):
      t0 = time.perf_counter()
      jax.block_until_ready(fn())
      steady.append(time.perf_counter() - t0)
    print(json.dumps(dict(program=name, first=first, steady=min(steady),
                          new_files=_files(cache) - before, **extra)),
          flush=True)


def _run_worker(args, model: str, cache: str) -> dict:
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker",
         model, "--cache", cache, "--n", str(args.n), "--t", str(args.t),
         "--batch-size", str(args.batch_size), "--repeats",
         str(args.repeats), "--resnet-width", str(args.resnet_width)]
  t0 = time.perf_counter()
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                       check=False)
  wall = time.perf_counter() - t0
  if out.returncode != 0:
    sys.stderr.write(out.stderr)
    raise SystemExit(f"worker {model} failed ({out.returncode})")
  rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
  return {"wall": wall, "rows": {r["program"]: r for r in rows}}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--n", type=int, default=256)
  p.add_argument("--t", type=int, default=16)
  p.add_argument("--batch-size", type=int, default=64)
  p.add_argument("--repeats", type=int, default=2,
                 help="steady-state calls after the first (the fastest "
                 "counts)")
  p.add_argument("--models", nargs="+", choices=("simpleconv", "resnet18"),
                 default=["simpleconv", "resnet18"])
  p.add_argument("--resnet-width", type=int, default=16,
                 help="ResNet-18's first-stage channels (compile time "
                 "hardly depends on it; run time does)")
  p.add_argument("--output", default=None, help="also write the Markdown "
                 "table, with the command and machine, to this file")
  p.add_argument("--worker", choices=("simpleconv", "resnet18"),
                 help=argparse.SUPPRESS)
  p.add_argument("--cache", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    args.model = args.worker
    _worker(args)
    return

  import jax  # pylint: disable=g-import-not-at-top
  header = (f"N={args.n}, T={args.t} rotations, batch {args.batch_size}, "
            f"steady state = fastest of {args.repeats} calls; ResNet-18 width "
            f"{args.resnet_width}; jax {jax.__version__}, "
            f"{jax.default_backend()}")
  print(header, flush=True)
  lines = [
      "| model | program | compile s (cold first − steady; forward: "
      "`.lower().compile()`) | × forward's "
      "compile | steady s | cold first s | warm first s | warm first / "
      "steady | cache files written (cold / warm) |",
      "|---|---|---|---|---|---|---|---|---|"]
  walls = []
  for model in args.models:
    with tempfile.TemporaryDirectory(prefix="invjax_cc_") as cache:
      cold = _run_worker(args, model, cache)
      warm = _run_worker(args, model, cache)
    walls.append(f"{model}: cold process {cold['wall']:.0f} s, warm "
                 f"{warm['wall']:.0f} s")
    fwd_compile = cold["rows"]["forward"]["compile"]
    label = "SimpleConv" if model == "simpleconv" else "ResNet-18"
    for name, c in cold["rows"].items():
      w = warm["rows"][name]
      compile_s = c.get("compile", c["first"] - c["steady"])
      lines.append(
          f"| {label} | {name} | {compile_s:.2f} | "
          f"{compile_s / fwd_compile:.2f} | {c['steady']:.2f} | "
          f"{c['first']:.2f} | {w['first']:.2f} | "
          f"{w['first'] / w['steady']:.2f} | {c['new_files']} / "
          f"{w['new_files']} |")
      print(lines[-1], flush=True)
  table = "\n".join(lines)
  print()
  print(table)
  for w in walls:
    print(w)
  if args.output:
    command = " ".join(["python", "benchmarks/compile_time.py"] +
                       sys.argv[1:])
    now = datetime.datetime.now(datetime.timezone.utc)
    text = "\n".join([
        "# Compile time and the persistent compilation cache (CPU)", "",
        f"* command: `{command}`",
        f"* date: {now:%Y-%m-%d %H:%M} UTC",
        f"* commit: `{_report.commit()}`",
        f"* machine: {_report.machine()}",
        f"* settings: {header}",
        f"* wall time per worker process: {'; '.join(walls)}", "",
        table, ""])
    pathlib.Path(args.output).write_text(text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
