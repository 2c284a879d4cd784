"""``invjax experiment``: runs a reproducible paper experiment.

Its parser (`_add_experiment_parser`) and command (`_experiment_command`),
for `invjax.cli.main`. The experiments themselves are in ``experiments/``.
"""

from __future__ import annotations

import argparse
import sys

from invjax.cli._flags import _add_compile_cache_flag


def _add_experiment_parser(sub) -> None:
  e = sub.add_parser(
      "experiment", help="run a reproducible paper experiment",
      description="Runs one of the experiments in experiments/ and writes "
      "its config, results (.npz), figures and results.md to a run "
      "directory (default experiments/runs/NAME/TIMESTAMP).")
  e.add_argument("name", nargs="?", help="experiment name (see --list)")
  e.add_argument("--list", action="store_true", help="list the experiments")
  e.add_argument("--smoke", action="store_true",
                 help="tiny data and few steps: checks the pipeline")
  e.add_argument("--out", default=None, help="output directory")
  e.add_argument("--seed", type=int, default=None, help="base seed")
  e.add_argument("--dataset", default=None,
                 help="dataset (digits, mnist, cifar10; per experiment)")
  e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a config value (repeatable); "
                 "preset=gpu selects the paper-scale settings")
  e.add_argument("--no-checkpoints", action="store_true",
                 help="delete the training checkpoints at the end")
  e.add_argument("--quiet", action="store_true",
                 help="no progress lines or bars (bars go to stderr)")
  _add_compile_cache_flag(e)


def _experiment_command(args: argparse.Namespace) -> int:
  import pathlib  # pylint: disable=g-import-not-at-top
  import shlex  # pylint: disable=g-import-not-at-top
  # experiments/ sits beside the invjax package in the repository and is not
  # installed, so make the checkout importable.
  root = str(pathlib.Path(__file__).resolve().parents[2])
  if root not in sys.path:
    sys.path.insert(0, root)
  try:
    from experiments import _runner  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise SystemExit(f"invjax experiment needs the repository checkout "
                     f"(experiments/ next to invjax/): {e}") from e
  if args.list or not args.name:
    for name in _runner.names():
      doc = (_runner.get_experiment(name).__doc__ or "").strip()
      print(f"{name:<30} {doc.splitlines()[0] if doc else ''}")
    return 0 if args.list else 2
  overrides = {}
  try:
    overrides = _runner.parse_set(args.set)
    if args.no_checkpoints:
      overrides["keep_checkpoints"] = False
    # Validate the name and every setting before any work starts.
    checked = dict(overrides)
    for key in ("seed", "dataset"):
      if getattr(args, key) is not None:
        checked[key] = getattr(args, key)
    _runner.get_experiment(args.name).get_config(smoke=args.smoke, **checked)
  except ValueError as e:
    raise SystemExit(f"invjax experiment: {e}") from e
  outdir, summary = _runner.run_experiment(
      args.name, smoke=args.smoke, out=args.out, seed=args.seed,
      dataset=args.dataset, overrides=overrides, quiet=args.quiet,
      compile_cache=not args.no_compile_cache,
      command=shlex.join(["invjax", "experiment"] + args.argv))
  print(summary["markdown"].split("## Provenance")[0].rstrip())
  print(f"\nwrote {outdir}")
  return 0
