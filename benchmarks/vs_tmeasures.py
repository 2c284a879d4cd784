"""invjax vs the PyTorch peer tmeasures: agreement to 1e-4, then wall time.

    bash benchmarks/setup_peer_env.sh                  # once: .venv-peer
    python benchmarks/vs_tmeasures.py --quick          # check: N=200, T=16
    python benchmarks/vs_tmeasures.py                  # table: N in {1000,
                                                       #  10000} x T in {16, 64}
    python benchmarks/vs_tmeasures.py --sizes 1000x16,2000x64 --device cuda

1. Trains invjax.models.SimpleConv (C=16, ELU, max pooling) for a few hundred
   Adam steps on MNIST train (seeded), and writes its weights, the MNIST test
   images and the jobs to a temporary .npz.
2. Runs `benchmarks/_tmeasures_peer.py` in `.venv-peer/bin/python`, which
   rebuilds the same network in PyTorch and evaluates tmeasures 1.2.11.
3. Agreement: TV, SV and NV per activation under the exact C4 set (torch.rot90
   callables on the peer side, `invjax.transforms.rot90()` here), both
   networks in full float32 (no TF32 on GPUs), with
   invjax's tmeasures-compatible settings (`statistic="std", ddof=1`). TV and
   SV must satisfy |invjax − tmeasures| ≤ 1e-4 · max(|tmeasures|, floor),
   floor = 1e-2 × the layer's mean |tmeasures| (an absolute floor, so units
   whose statistic is ~0 compare on the layer's scale); NV the same bound
   propagated through TV/SV (see `_deviation`). The max deviation per layer
   is printed, and the script exits 1 when a value is outside.
4. Timing: NV (which tmeasures computes in two passes, TV then SV, and invjax
   in one) under T rotations by the same angles on both sides, for each N×T.
   tmeasures rotates by 180·r *radians* (tmeasures.md §3), so it is given
   r = radians/180; its grid_sample pads with the border pixel, so invjax uses
   mode="nearest". invjax's program is compiled ahead of time (reported
   separately), then `invjax.measure` is timed. Prints a Markdown
   table and writes it to benchmarks/results/vs_tmeasures_<device>.md.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

import invjax
import invjax.data
from invjax import measures as ms
from invjax import models
from invjax import transforms as tr
from invjax._src import plan
from invjax._src import stats
from invjax import train as train_lib

ROOT = pathlib.Path(__file__).resolve().parent.parent
PEER_PYTHON = ROOT / ".venv-peer" / "bin" / "python"
PEER_SCRIPT = ROOT / "benchmarks" / "_tmeasures_peer.py"
RTOL = 1e-4
FLOOR = 1e-2
STD = dict(statistic="std", ddof=1)


def _parse_sizes(text: str) -> list[tuple[int, int]]:
  sizes = []
  for item in text.split(","):
    try:
      n, t = item.lower().split("x")
      sizes.append((int(n), int(t)))
    except ValueError:
      raise ValueError(f"--sizes wants NxT[,NxT...], got {item!r}") from None
    if sizes[-1][0] < 2 or sizes[-1][1] < 2:
      raise ValueError(f"--sizes needs N >= 2 and T >= 2, got {item!r}")
  return sizes


def _angles(t: int) -> np.ndarray:
  return np.linspace(-180.0, 180.0, t, endpoint=False)


def _train(args) -> tuple[models.SimpleConv, dict, float]:
  model = models.SimpleConv(num_classes=10, channels=args.channels)
  x_train, y_train = invjax.data.load_mnist("train", data_dir=args.data_dir,
                                            download=False)
  x_test, y_test = invjax.data.load_mnist("test", data_dir=args.data_dir,
                                          download=False)
  t0 = time.perf_counter()
  cfg = train_lib.TrainConfig(steps=args.train_steps, batch_size=64,
                              learning_rate=1e-3, schedule="constant", seed=0,
                              log_every=args.train_steps)
  variables = train_lib.fit(model, cfg, x_train, y_train).variables
  acc = train_lib.evaluate(model, variables, x_test[:2000],
                           y_test[:2000])["accuracy"]
  print(f"trained SimpleConv(C={args.channels}) for {args.train_steps} steps "
        f"in {time.perf_counter() - t0:.1f} s: test accuracy {acc:.3f} "
        f"(first 2000)", flush=True)
  return model, variables, x_test


def _run_peer(variables, images, jobs, args,
              no_tf32=False) -> dict[str, np.ndarray]:
  peer_python = shutil.which(args.peer_python)
  if peer_python is None:
    raise SystemExit(f"{args.peer_python} not found: run "
                     "`bash benchmarks/setup_peer_env.sh` first, or pass "
                     "--peer-python.")
  with tempfile.TemporaryDirectory() as tmp:
    inp, out = pathlib.Path(tmp, "in.npz"), pathlib.Path(tmp, "out.npz")
    arrays = {f"param/{layer}/{leaf}": np.asarray(v)
              for layer, leaves in variables["params"].items()
              for leaf, v in leaves.items()}
    np.savez(inp, images=np.asarray(images, np.float32),
             jobs=np.array(json.dumps(jobs)), **arrays)
    cmd = [str(peer_python), str(PEER_SCRIPT), str(inp), str(out),
           "--device", args.device, "--batch-size", str(args.peer_batch_size)]
    if no_tf32:
      cmd.append("--no-tf32")
    subprocess.run(cmd, check=True)
    with np.load(out) as f:
      return {k: f[k] for k in f.files}


def _deviation(kind: str, a: dict, b: dict) -> float:
  """Largest normalized deviation of invjax (a) from tmeasures (b).

  TV, SV: |a − b| / max(|b|, FLOOR · mean|b|). NV = TV/SV inherits the error
  of both, so its deviation is normalized by the propagated bound
  (max(|TV|, f_TV) + NV · max(|SV|, f_SV)) / SV: near-border units whose TV
  and SV are ~1e-7 (float32 round-off of two different conv implementations)
  give ratios ~1 that no relative test can hold. Where SV = 0 (NV is 1 or
  inf by the 0/0 rule) the two must be equal. Returns inf on any mismatch of
  inf/NaN positions.
  """
  x, y = a[kind], b[kind]
  finite = np.isfinite(y)
  if not (np.array_equal(finite, np.isfinite(x))
          and np.array_equal(x[~finite], y[~finite])):
    return float("inf")
  if not finite.any():
    return 0.0

  def floored(v):
    s = np.maximum(np.abs(v), FLOOR * np.mean(np.abs(v)))
    return np.where(s > 0, s, 1.0)   # a layer of exact zeros

  if kind in ("tv", "sv"):
    scale = floored(y)
  else:
    sv = b["sv"]
    bound = floored(b["tv"]) + np.abs(y) * floored(sv)
    scale = np.where(sv > 0, bound / np.where(sv > 0, sv, 1.0), 0.0)
  err = np.abs(x - y)[finite]
  scale = scale[finite]
  exact = scale == 0
  if np.any(err[exact] != 0):
    return float("inf")
  return float(np.max(err[~exact] / scale[~exact], initial=0.0))


def agreement(model, variables, images, args) -> bool:
  """TV/SV/NV per activation under C4, invjax vs tmeasures; True if all agree."""
  n = args.check_n
  peer = _run_peer(variables, images[:n], [
      {"name": "c4", "kind": "c4", "n": n, "measures": ["tv", "sv", "nv"],
       "repeats": 1}], args, no_tf32=True)
  acts = invjax.capture.linen(model, variables)
  # Both networks in full float32: GPUs' default TF32 convolutions round
  # inputs to 10 mantissa bits, ~1e-3 relative, which TV (a difference of
  # nearby activations) amplifies past any 1e-4 agreement.
  with jax.default_matmul_precision("highest"):
    ours = invjax.measure(
        acts, images[:n], tr.rot90(),
        [ms.transformation_variance(**STD), ms.sample_variance(**STD),
         ms.normalized_variance(**STD)], batch_size=64)
  print(f"\nAgreement, C4 (exact rot90), N={n}: max |invjax − tmeasures| / "
        f"max(|tmeasures|, {FLOOR:g}·mean|tmeasures|) per layer, NV's "
        f"propagated from TV and SV (must be ≤ {RTOL:g})")
  print("| layer | shape | TV | SV | NV |\n|---|---|---|---|---|")
  ok = True
  worst = 0.0
  for layer in ours[0].layers:
    a = {k: np.asarray(r.per_activation[layer], np.float64)
         for k, r in zip(("tv", "sv", "nv"), ours)}
    b = {k: peer[f"c4/{k}/{layer}"] for k in ("tv", "sv", "nv")}
    if args.zero_tolerance:
      # The same tolerant 0/0 rule on both sides (tmeasures has none): a unit
      # constant in exact arithmetic may be round-off on either side.
      for side in (a, b):
        side["nv"] = np.asarray(stats.safe_divide(
            side["tv"], side["sv"], args.zero_tolerance), np.float64)
    row = []
    for k in ("tv", "sv", "nv"):
      if a[k].shape != b[k].shape:
        raise SystemExit(f"{layer}/{k}: invjax shape {a[k].shape} vs "
                         f"tmeasures {b[k].shape}")
      dev = _deviation(k, a, b)
      worst = max(worst, dev)
      ok &= dev <= RTOL
      row.append(f"{dev:.1e}")
    shape = "×".join(map(str, a["tv"].shape))
    print(f"| {layer} | {shape} | " + " | ".join(row) + " |")
  print(f"largest deviation {worst:.2e}: "
        + ("AGREE" if ok else f"DISAGREE (> {RTOL:g})"), flush=True)
  return ok


def _time_invjax(acts, images, ts, batch_size, repeats):
  """(best run seconds, compile seconds) of NV with invjax.measure.

  The program is compiled ahead of time on the exact arguments (the jit cache
  it fills is the one `invjax.measure` then hits), so the timed calls carry
  no compilation and no separate full-size warm-up run is needed.
  """
  nv = ms.normalized_variance(**STD)
  fn, fn_args, _ = plan.prepare(  # pylint: disable=protected-access
      acts, images, ts, nv, batch_size=batch_size, labels=None,
      stratify=False, layers=None, transform_chunk=None, mesh=None)
  t0 = time.perf_counter()
  fn.lower(*fn_args).compile()
  compile_s = time.perf_counter() - t0
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(
        invjax.measure(acts, images, ts, nv, batch_size=batch_size).per_layer)
    times.append(time.perf_counter() - t0)
  return min(times), compile_s


def _table(rows, acts, images, args) -> str:
  dev = jax.devices()[0]
  lines = [
      f"NV of every layer of SimpleConv (C={args.channels}, "
      f"{len(acts.layer_names(images[:1]))} layers, trained "
      f"{args.train_steps} steps) under T rotations (linspace(-180, 180, T, "
      "endpoint=False) degrees), MNIST test images. tmeasures 1.2.11 on "
      f"torch `{args.device}` (batch {args.peer_batch_size}): one run, a TV "
      f"pass + an SV pass. invjax {getattr(invjax, '__version__', '')} (jax "
      f"{jax.__version__}, {dev.platform}, one pass, batch = "
      f"{args.images_per_step}//T samples): best of {args.repeats} run(s) "
      "after an ahead-of-time compile, whose time is the compile column. "
      f"{platform.machine()}, {os.cpu_count()} cores.",
      "",
      "| N | T | tmeasures s | invjax s | speedup | invjax compile s |",
      "|---:|---:|---:|---:|---:|---:|",
  ]
  for n, t, peer_s, ours_s, compile_s, _ in rows:
    if peer_s is None:
      peer_cell, speed = "not measured (over --peer-budget)", "—"
    else:
      peer_cell, speed = f"{peer_s:.2f}", f"{peer_s / ours_s:.2f}×"
    lines.append(f"| {n} | {t} | {peer_cell} | {ours_s:.2f} | {speed} | "
                 f"{compile_s:.1f} |")
  return "\n".join(lines) + "\n"


def timing(model, variables, images, args, out) -> str:
  """Runs every N×T size; rewrites `out` (if any) after each row."""
  acts = invjax.capture.linen(model, variables)
  rows = []
  measured_peer: dict[int, float] = {}   # T -> seconds per (N·T) at largest N
  for n, t in args.sizes:
    if n > images.shape[0]:
      raise SystemExit(f"N={n} > {images.shape[0]} test images")
    deg = _angles(t)
    # Skip a peer run predicted (from a measured smaller run, same or smaller
    # T) to take longer than --peer-budget seconds; no number is extrapolated
    # into the table.
    rate = max((s for tt, s in measured_peer.items() if tt <= t), default=None)
    skip = rate is not None and rate * n * t > args.peer_budget
    if skip:
      peer_s = None
      print(f"N={n} T={t}: tmeasures skipped (about "
            f"{rate * n * t / 60:.0f} min > --peer-budget "
            f"{args.peer_budget / 60:.0f} min)", flush=True)
    else:
      job = {"name": f"n{n}_t{t}", "kind": "rotation", "n": n,
             "turns": list(np.deg2rad(deg) / 180.0), "measures": ["nv"],
             "repeats": 1}
      peer = _run_peer(variables, images[:n], [job], args)
      peer_s = float(np.min(peer[f"{job['name']}/seconds"]))
      measured_peer[t] = max(measured_peer.get(t, 0.0), peer_s / (n * t))
    batch = max(1, args.images_per_step // t)
    ours_s, compile_s = _time_invjax(
        acts, images[:n], tr.rotation(deg, mode="nearest"), batch,
        args.repeats)
    rows.append((n, t, peer_s, ours_s, compile_s, batch))
    print(f"N={n} T={t}: tmeasures "
          + ("skipped" if peer_s is None else f"{peer_s:.2f} s")
          + f", invjax {ours_s:.2f} s (+{compile_s:.1f} s compile, "
          f"batch {batch})", flush=True)
    if out:
      pathlib.Path(out).parent.mkdir(parents=True, exist_ok=True)
      pathlib.Path(out).write_text(_table(rows, acts, images, args))
  return _table(rows, acts, images, args)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true",
                 help="small run: N=200, T=16 (overrides --sizes)")
  p.add_argument("--sizes", default="1000x16,1000x64,10000x16,10000x64",
                 help="comma-separated NxT timing runs")
  p.add_argument("--device", default="cpu",
                 help="tmeasures' torch device (cpu or cuda); invjax uses "
                 "JAX's default device")
  p.add_argument("--channels", type=int, default=16)
  p.add_argument("--train-steps", type=int, default=300)
  p.add_argument("--check-n", type=int, default=500,
                 help="samples for the C4 agreement check")
  p.add_argument("--skip-check", action="store_true")
  p.add_argument("--zero-tolerance", type=float, default=0.0,
                 help="agreement: TV, SV (stds) at or below this count as 0 "
                 "in NV = TV/SV on both sides (GPU round-off; e.g. 1e-6)")
  p.add_argument("--skip-timing", action="store_true")
  p.add_argument("--peer-batch-size", type=int, default=128)
  p.add_argument("--images-per-step", type=int, default=1024,
                 help="invjax batch_size = this // T")
  p.add_argument("--repeats", type=int, default=1)
  p.add_argument("--peer-budget", type=float, default=900.0,
                 help="seconds; skip a tmeasures run predicted to be longer")
  p.add_argument("--peer-python", default=str(PEER_PYTHON),
                 help="a Python with torch and tmeasures 1.2.11 (default: "
                 "the .venv-peer made by setup_peer_env.sh)")
  p.add_argument("--data-dir", default=None,
                 help="data directory (default: $INVJAX_DATA or ../shared/data)")
  p.add_argument("--out", default=None,
                 help="Markdown table path (default benchmarks/results/"
                 "vs_tmeasures_<device>.md; --quick: not written)")
  args = p.parse_args()
  try:
    args.sizes = _parse_sizes("200x16" if args.quick else args.sizes)
  except ValueError as e:
    p.error(str(e))
  if args.quick:
    args.check_n = min(args.check_n, 200)
  if args.data_dir is None and "INVJAX_DATA" not in os.environ:
    args.data_dir = str(ROOT.parent / "shared" / "data")

  model, variables, images = _train(args)
  ok = True
  if not args.skip_check:
    ok = agreement(model, variables, images, args)
  if not args.skip_timing:
    out = args.out or (None if args.quick else str(
        ROOT / "benchmarks" / "results" / f"vs_tmeasures_{args.device}.md"))
    print("\n" + timing(model, variables, images, args, out))
    if out:
      print(f"wrote {out}")
  sys.exit(0 if ok else 1)


if __name__ == "__main__":
  main()
