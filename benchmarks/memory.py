"""Peak host memory (and device memory on a GPU) of NV, streamed vs in memory.

    python benchmarks/memory.py [--sizes 2000 20000 200000] [--modes stream array]
        [--t 4] [--batch-size 128] [--channels 8] [--output FILE]

A tiny CNN (conv 3×3 C → ReLU → 2×2 average pool → conv 3×3 C → ReLU → 2×2
average pool → dense 10, on 28×28×1; every module tapped) under T rotations,
`invjax.measures.normalized_variance()` over N random images given two ways:

  stream: a generator yielding float32 batches of B images made on the fly
          (the dataset is never held; a one-shot generator, NV has one pass);
  array:  a NumPy (N, 28, 28, 1) float32 array allocated in the worker.

Each (mode, N) case runs in a fresh worker process (`--worker`), with
``INVJAX_NO_COMPILE_CACHE=1`` in its environment (and JAX's persistent cache
never turned on: every worker compiles afresh, so no case reads what another
wrote). The worker imports, builds the model and runs the same measure once on
a tiny input of the same mode (one chunk: K·B images, the chunk shape of the
real run, so the real run reuses the compiled step), calls glibc's ``malloc_trim(0)`` (unless
``--no-trim``) and reads its current RSS: the *baseline*. The trim returns
to the OS the heap that compiling freed but glibc kept (about 200 MB here,
varying by ±50 MB from process to process), so that the baseline is the live
memory and the peaks of different processes can be compared. It then resets the kernel's peak-RSS mark (VmHWM, by
writing 5 to /proc/self/clear_refs), allocates the array (array mode) and
runs the measure. Reported, in MB (10^6 bytes):

  baseline:   RSS after imports, model init and the tiny warm-up call;
  peak:       VmHWM after the run, i.e. the peak RSS since the reset;
  peak − baseline, and for arrays peak − baseline − input (what the
              measure needed beyond holding the data);
  process peak: the whole process's peak RSS, compilation included: the
              larger of `resource.getrusage(RUSAGE_SELF).ru_maxrss` read
              before the reset and the peak above (on Linux the reset
              lowers ru_maxrss too);
  device:     on a GPU, `jax.devices()[0].memory_stats()["peak_bytes_in_use"]`
              (the process's peak, warm-up included); "n/a" elsewhere.

In stream mode the generator also records the current RSS at 10 points of
the run (`rss_trace` in the JSON line): growth within one process, free of
the process-to-process noise of the baseline.

Each case prints a JSON line; then the Markdown table and the checks: the
streamed peak is flat in N (spread ≤ --flat-mb, default 50 MB; also shown for
peak − baseline, and the RSS during each streamed run), and the array mode
holds the input plus O(one chunk): its peak − baseline − input exceeds the
streamed run's peak − baseline at the same N (the measure's own working set:
one step's buffers and the chunks in flight, the same in both modes) by at
most --flat-mb, so there is no copy of the whole input. ``--output`` also
writes the table with the command, date, commit and machine.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

import _report  # benchmarks/, the script's own folder

REPO = pathlib.Path(__file__).resolve().parents[1]
SHAPE = (28, 28, 1)
MB = 1e6


def _status_kb(field: str) -> int | None:
  """A ``kB`` field of /proc/self/status (VmRSS, VmHWM), or None."""
  try:
    for line in pathlib.Path("/proc/self/status").read_text().splitlines():
      if line.startswith(field + ":"):
        return int(line.split()[1])
  except OSError:
    pass
  return None


def _rss_mb() -> float:
  kb = _status_kb("VmRSS")
  if kb is None:  # no /proc: the peak is the best there is
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
  return kb * 1024 / MB


def _maxrss_mb() -> float:
  # ru_maxrss is in kB on Linux (bytes on macOS).
  scale = 1 if sys.platform == "darwin" else 1024
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / MB


def _reset_peak() -> bool:
  """Resets VmHWM to the current RSS (Linux ≥ 4.0); False if it could not."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return _status_kb("VmHWM") is not None
  except OSError:
    return False


def _malloc_trim() -> bool:
  """Returns the heap glibc keeps free (after compiling) to the OS."""
  try:
    import ctypes  # pylint: disable=g-import-not-at-top
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    return True
  except (OSError, AttributeError):
    return False


def _worker(args) -> None:
  """One (mode, N) case; prints one JSON line."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import invjax  # pylint: disable=g-import-not-at-top
  from invjax import measures as ms  # pylint: disable=g-import-not-at-top
  from invjax import transforms as tr  # pylint: disable=g-import-not-at-top

  class Act(nn.Module):
    """ReLU as a module, so that capture.linen taps it."""

    @nn.compact
    def __call__(self, x):
      return nn.relu(x)

  class Pool(nn.Module):

    @nn.compact
    def __call__(self, x):
      return nn.avg_pool(x, (2, 2), (2, 2))

  class TinyCNN(nn.Module):
    channels: int = 8

    @nn.compact
    def __call__(self, x):
      x = Pool(name="pool1")(Act(name="relu1")(
          nn.Conv(self.channels, (3, 3), name="conv1")(x)))
      x = Pool(name="pool2")(Act(name="relu2")(
          nn.Conv(self.channels, (3, 3), name="conv2")(x)))
      return nn.Dense(10, name="logits")(x.reshape((x.shape[0], -1)))

  n, b = args.n, args.batch_size
  rng = np.random.default_rng(args.seed)
  model = TinyCNN(channels=args.channels)
  variables = model.init(jax.random.PRNGKey(0), np.zeros((1,) + SHAPE,
                                                         np.float32))
  acts = invjax.capture.linen(model, variables)
  ts = tr.rotation(np.linspace(0, 360, args.t, endpoint=False))
  nv = ms.normalized_variance()
  # One chunk of the real run: K batches of B (sources._chunk_batches' rule
  # without N; every N here gives the same K, so the step is compiled once).
  warm_n = max(1, min(8, 1024 // b)) * b

  trace = []   # (images yielded so far, current RSS MB), 10 points a run

  def stream(count, record=False):
    """A one-shot generator of `count` random images, B at a time."""
    every = max(1, -(-count // b) // 10)
    for i, start in enumerate(range(0, count, b)):
      if record and i % every == 0:
        trace.append((start, round(_rss_mb(), 1)))
      yield rng.random((min(b, count - start),) + SHAPE, dtype=np.float32)
    if record:
      trace.append((count, round(_rss_mb(), 1)))

  def run(data):
    res = invjax.measure(acts, data, ts, nv, batch_size=b)
    return res, jax.block_until_ready(res.per_layer)

  gpu = jax.devices()[0].platform == "gpu"
  t0 = time.perf_counter()
  run(stream(warm_n) if args.mode == "stream" else
      rng.random((warm_n,) + SHAPE, dtype=np.float32))
  warm_s = time.perf_counter() - t0
  gc.collect()
  trimmed = args.trim and _malloc_trim()
  baseline = _rss_mb()
  maxrss_warm = _maxrss_mb()
  reset = _reset_peak()

  images = None
  if args.mode == "array":
    images = rng.random((n,) + SHAPE, dtype=np.float32)
    input_mb = images.nbytes / MB
    after_input = _rss_mb()
  else:
    input_mb = n * int(np.prod(SHAPE)) * 4 / MB   # generated, never held
    after_input = baseline
  t0 = time.perf_counter()
  res, per_layer = run(stream(n, record=True) if args.mode == "stream"
                       else images)
  run_s = time.perf_counter() - t0
  peak = _status_kb("VmHWM") * 1024 / MB if reset else _maxrss_mb()
  out = dict(
      mode=args.mode, n=n, t=args.t, batch_size=b,
      num_samples=res.settings["num_samples"], layers=len(per_layer),
      input_mb=input_mb, baseline_mb=baseline, after_input_mb=after_input,
      peak_mb=peak, peak_minus_baseline_mb=peak - baseline,
      beyond_input_mb=(peak - baseline - input_mb
                       if args.mode == "array" else None),
      ru_maxrss_mb=_maxrss_mb(), ru_maxrss_warmup_mb=maxrss_warm,
      process_peak_mb=max(maxrss_warm, _maxrss_mb(), peak),
      peak_is_vmhwm=reset, malloc_trim=trimmed, end_rss_mb=_rss_mb(),
      device_peak_mb=(jax.devices()[0].memory_stats()["peak_bytes_in_use"] /
                      MB if gpu else None),
      rss_trace=trace or None, warmup_s=warm_s, run_s=run_s,
      platform=jax.devices()[0].platform)
  print(json.dumps(out), flush=True)


def _run_worker(args, mode: str, n: int) -> dict:
  cmd = [sys.executable, str(pathlib.Path(__file__).resolve()), "--worker",
         mode, "--n", str(n), "--t", str(args.t), "--batch-size",
         str(args.batch_size), "--channels", str(args.channels), "--seed",
         str(args.seed)] + ([] if args.trim else ["--no-trim"])
  env = dict(os.environ, INVJAX_NO_COMPILE_CACHE="1")
  t0 = time.perf_counter()
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                       env=env, check=False)
  wall = time.perf_counter() - t0
  if out.returncode != 0:
    sys.stderr.write(out.stderr)
    raise SystemExit(f"worker {mode} N={n} failed ({out.returncode})")
  rows = [json.loads(l) for l in out.stdout.splitlines() if l.startswith("{")]
  row = rows[-1]
  row["wall_s"] = wall
  if row["num_samples"] != n:
    raise SystemExit(f"worker {mode} N={n} measured {row['num_samples']} "
                     "samples")
  return row


def _commit() -> str:
  """HEAD, and whether the invjax the workers import is this tree's."""
  import invjax  # pylint: disable=g-import-not-at-top
  out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                       capture_output=True, text=True, check=False)
  where = pathlib.Path(invjax.__file__).resolve().parent
  if REPO not in where.parents:
    # e.g. PYTHONPATH=DIR with `git archive HEAD invjax | tar -x -C DIR`,
    # to measure a commit while the working tree is being edited.
    return (f"working tree at {out.stdout.strip()}; invjax imported from "
            f"{where}, not from the working tree")
  return _report.commit()


def _machine() -> str:
  """`_report.machine()` and the RAM."""
  try:
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
  except (ValueError, OSError):
    return _report.machine()
  return f"{_report.machine()}, {mem:.0f} GiB RAM"


def _fmt(x, spec=".1f"):
  return "n/a" if x is None else format(x, spec)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--sizes", type=int, nargs="+",
                 default=[2000, 20000, 200000])
  p.add_argument("--modes", nargs="+", choices=("stream", "array"),
                 default=["stream", "array"])
  p.add_argument("--t", type=int, default=4, help="rotations (T)")
  p.add_argument("--batch-size", type=int, default=128)
  p.add_argument("--channels", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--flat-mb", type=float, default=50.0,
                 help="tolerance of both checks, MB")
  p.add_argument("--no-trim", dest="trim", action="store_false",
                 help="do not call glibc's malloc_trim(0) before reading the "
                 "baseline")
  p.add_argument("--output", default=None, help="also write the Markdown "
                 "table, with the command and machine, to this file")
  p.add_argument("--worker", choices=("stream", "array"),
                 help=argparse.SUPPRESS)
  p.add_argument("--n", type=int, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args.worker:
    args.mode = args.worker
    _worker(args)
    return

  import jax  # pylint: disable=g-import-not-at-top
  header = (f"tiny CNN (2 × conv 3×3 {args.channels} ch + dense 10, 28×28×1, "
            f"every module tapped), NV, T={args.t} rotations, batch "
            f"{args.batch_size}; one fresh process per case, "
            "INVJAX_NO_COMPILE_CACHE=1 (no persistent compile cache); "
            f"jax {jax.__version__}, {jax.default_backend()}")
  print(header, flush=True)
  rows = []
  for mode in args.modes:
    for n in args.sizes:
      row = _run_worker(args, mode, n)
      print(json.dumps(row), flush=True)
      rows.append(row)

  lines = [
      "| mode | N | input MB | baseline RSS MB | peak RSS MB | peak − "
      "baseline MB | peak − baseline − input MB | process peak MB (with "
      "compiling) | "
      "device peak MB | run s | process s |",
      "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    lines.append(
        f"| {r['mode']} | {r['n']:,} | {r['input_mb']:.1f}"
        f"{' (never held)' if r['mode'] == 'stream' else ''} | "
        f"{r['baseline_mb']:.1f} | {r['peak_mb']:.1f} | "
        f"{r['peak_minus_baseline_mb']:.1f} | {_fmt(r['beyond_input_mb'])} | "
        f"{r['process_peak_mb']:.1f} | {_fmt(r['device_peak_mb'])} | "
        f"{r['run_s']:.1f} | {r['wall_s']:.0f} |")
  table = "\n".join(lines)

  checks = []
  ok = True
  streamed = [r for r in rows if r["mode"] == "stream"]
  if len(streamed) > 1:
    peaks = [r["peak_mb"] for r in streamed]
    spread = max(peaks) - min(peaks)
    good = spread <= args.flat_mb
    ok &= good
    checks.append(
        f"* streamed peak RSS across N = "
        f"{', '.join(format(r['n'], ',') for r in streamed)}: "
        f"{min(peaks):.1f}–{max(peaks):.1f} MB, spread {spread:.1f} MB "
        f"(≤ {args.flat_mb:.0f} MB): {'PASS' if good else 'FAIL'}")
    extra = [r["peak_minus_baseline_mb"] for r in streamed]
    spread = max(extra) - min(extra)
    good = spread <= args.flat_mb
    ok &= good
    checks.append(
        f"* streamed peak − baseline across N: {min(extra):.1f}–"
        f"{max(extra):.1f} MB, spread {spread:.1f} MB (≤ "
        f"{args.flat_mb:.0f} MB): {'PASS' if good else 'FAIL'}")
  for r in streamed:
    trace = r.get("rss_trace") or []
    chunk = max(1, min(8, 1024 // args.batch_size)) * args.batch_size
    # Only where the first tenth is past the first chunks (the step's
    # buffers are allocated as they go by).
    if len(trace) > 2 and r["n"] >= 20 * chunk:
      during = [m for _, m in trace[1:]]   # after the first chunk is read
      checks.append(
          f"* RSS during the streamed N = {r['n']:,} run (10 points, after "
          f"the first tenth): {min(during):.1f}–{max(during):.1f} MB; at the "
          f"first tenth {trace[1][1]:.1f} MB, at the end {trace[-1][1]:.1f} "
          f"MB ({trace[-1][1] - trace[1][1]:+.1f} MB)")
  if len(streamed) > 1:
    devs = [r["device_peak_mb"] for r in streamed
            if r["device_peak_mb"] is not None]
    if len(devs) > 1:
      checks.append(f"* streamed device peak across N: {min(devs):.1f}–"
                    f"{max(devs):.1f} MB, spread {max(devs) - min(devs):.1f} "
                    "MB")
  same_n = {r["n"]: r["peak_minus_baseline_mb"] for r in streamed}
  for r in rows:
    if r["mode"] != "array":
      continue
    extra = r["beyond_input_mb"]
    # What the measure itself needs (one step's buffers and a chunk in
    # flight) is what the streamed run of the same N needs beyond its
    # baseline; without one, it is taken as 0.
    ref = same_n.get(r["n"], 0.0)
    good = extra - ref <= args.flat_mb
    ok &= good
    checks.append(
        f"* array N = {r['n']:,}: peak − baseline − input = {extra:.1f} MB "
        f"(input {r['input_mb']:.1f} MB), against the streamed run's peak − "
        f"baseline {ref:.1f} MB: {extra - ref:+.1f} MB (≤ "
        f"{args.flat_mb:.0f} MB: no copy of the input): "
        f"{'PASS' if good else 'FAIL'}")
  print()
  print(table)
  print()
  print("\n".join(checks))
  print("ALL PASS" if ok else "SOME CHECK FAILED")
  if args.output:
    command = " ".join(
        ([f"PYTHONPATH={os.environ['PYTHONPATH']}"]
         if os.environ.get("PYTHONPATH") else []) +
        ["python", "benchmarks/memory.py"] + sys.argv[1:])
    now = datetime.datetime.now(datetime.timezone.utc)
    text = "\n".join([
        "# Peak memory of NV: streamed vs in-memory data "
        f"({jax.default_backend().upper()})", "",
        f"* command: `{command}`",
        f"* date: {now:%Y-%m-%d %H:%M} UTC",
        f"* commit: `{_commit()}`",
        f"* machine: {_machine()}",
        f"* settings: {header}",
        "* MB = 10^6 bytes. baseline: RSS after imports, model init, one "
        "warm-up measure on one chunk of the same mode"
        f"{' and malloc_trim(0)' if args.trim else ''}; peak: VmHWM after "
        "the run, reset to the baseline just before the array is allocated "
        "/ the measure runs; process peak: the whole process's peak RSS "
        "(ru_maxrss before the reset, compiling included). run s: the measure call; process s: the "
        "whole worker process.", "",
        table, "", "Checks:", "", *checks, "",
        "ALL PASS" if ok else "SOME CHECK FAILED", ""])
    pathlib.Path(args.output).write_text(text)
    print(f"wrote {args.output}")


if __name__ == "__main__":
  main()
