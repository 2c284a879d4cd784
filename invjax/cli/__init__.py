"""The `invjax` command line.

    invjax measure  # digits, a quickly trained CNN, NV under rotations
    invjax measure --dataset mnist --data-dir ../shared/data --transform rot90

This module holds `main` (the parser and the dispatch) and the ``measure``
command; the other subcommands, each a parser and a command, are in
``invjax/cli/_plot.py``, ``_train.py``, ``_experiment.py`` and ``_sweep.py``
(the top layer: they import invjax's public modules, nothing imports them).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from invjax.cli._experiment import _add_experiment_parser
from invjax.cli._experiment import _experiment_command
from invjax.cli._flags import _add_compile_cache_flag
from invjax.cli._plot import _add_plot_parser
from invjax.cli._plot import _plot_command
from invjax.cli._sweep import _add_sweep_parser
from invjax.cli._sweep import _sweep_command
from invjax.cli._train import _add_train_parser
from invjax.cli._train import _train_command

_TRANSFORMS = ("rotation", "rot90", "flips", "scale", "translation")
_MEASURES = ("normalized_variance", "transformation_variance",
             "sample_variance", "normalized_variance_same_equivariance")


def _transformations(name: str, n: int, image_size: tuple[int, int]):
  from invjax import transforms as tr  # pylint: disable=g-import-not-at-top
  if name == "rotation":
    return tr.rotation(np.linspace(-180.0, 180.0, n, endpoint=False))
  if name == "rot90":
    return tr.rot90()
  if name == "flips":
    return tr.flips()
  if name == "scale":
    return tr.scale(np.linspace(0.5, 1.25, n))
  shift = 0.15 * min(image_size)
  d = np.linspace(-shift, shift, max(int(round(np.sqrt(n))), 2))
  return tr.translation([(dy, dx) for dy in d for dx in d])


def _load(dataset: str, data_dir: str | None):
  from invjax import data  # pylint: disable=g-import-not-at-top
  if dataset == "digits":
    return data.load_digits()
  if dataset == "mnist":
    return data.load_mnist("test", data_dir=data_dir)
  return data.load_cifar10("test", data_dir=data_dir)


def _measure_command(args: argparse.Namespace) -> int:
  import invjax  # pylint: disable=g-import-not-at-top
  from invjax import models  # pylint: disable=g-import-not-at-top
  from invjax import train  # pylint: disable=g-import-not-at-top

  images, labels = _load(args.dataset, args.data_dir)
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels)
  if args.num_samples > images.shape[0]:
    raise SystemExit(f"--num-samples {args.num_samples} exceeds the "
                     f"{images.shape[0]} images of {args.dataset}")
  rng = np.random.default_rng(args.seed)
  order = rng.permutation(images.shape[0])
  test, trainset = order[:args.num_samples], order[args.num_samples:]
  model = models.SimpleConv(num_classes=int(labels.max()) + 1,
                            channels=args.channels)
  t0 = time.perf_counter()
  cfg = train.TrainConfig(steps=args.steps, batch_size=64,
                          learning_rate=1e-3, schedule="constant",
                          seed=args.seed, log_every=max(args.steps, 1))
  variables = train.fit(model, cfg, images[trainset], labels[trainset],
                        progress=not args.quiet).variables
  acc = train.evaluate(model, variables, images[test],
                       labels[test])["accuracy"]
  print(f"trained SimpleConv for {args.steps} steps in "
        f"{time.perf_counter() - t0:.1f}s: test accuracy {acc:.3f}")

  ts = _transformations(args.transform, args.num_transformations,
                        images.shape[1:3])
  measure = getattr(invjax.measures, args.measure)()
  acts = invjax.capture.linen(model, variables)
  t0 = time.perf_counter()
  result = invjax.measure(acts, images[test], ts, measure,
                          batch_size=args.batch_size, progress=not args.quiet)
  print(f"{args.measure} over {len(test)} samples x {len(ts)} "
        f"{args.transform} transformations in {time.perf_counter() - t0:.1f}s")
  width = max(len(l) for l in result.layers)
  for layer in result.layers:
    print(f"  {layer:<{width}}  {result.per_layer[layer]:.4f}")
  result.save(args.output)
  print(f"wrote {args.output}")
  return 0


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog="invjax", description="Layer-wise invariance of neural networks.")
  sub = parser.add_subparsers(dest="command", required=True)
  m = sub.add_parser(
      "measure", help="train a small CNN and measure every layer",
      description="Trains a SimpleConv for a few seconds and measures every "
      "layer's invariance; prints per-layer values and writes a result file "
      "(load it with invjax.load_result).")
  m.add_argument("--dataset", choices=("digits", "mnist", "cifar10"),
                 default="digits", help="digits needs no download (default)")
  m.add_argument("--data-dir", default=None,
                 help="folder with mnist/ or cifar10/ (default: $INVJAX_DATA)")
  m.add_argument("--transform", choices=_TRANSFORMS, default="rotation")
  m.add_argument("--num-transformations", type=int, default=16)
  m.add_argument("--measure", choices=_MEASURES, default="normalized_variance")
  m.add_argument("--num-samples", type=int, default=500,
                 help="held-out samples measured (the rest train the model)")
  m.add_argument("--steps", type=int, default=300, help="training steps")
  m.add_argument("--channels", type=int, default=16)
  m.add_argument("--batch-size", type=int, default=100)
  m.add_argument("--seed", type=int, default=0)
  m.add_argument("--output", default="invjax_result.npz")
  m.add_argument("--quiet", action="store_true",
                 help="no progress bars (on stderr)")
  _add_compile_cache_flag(m)
  _add_plot_parser(sub)
  _add_experiment_parser(sub)
  _add_train_parser(sub)
  _add_sweep_parser(sub)
  args = parser.parse_args(argv)
  if args.command in ("measure", "train", "experiment", "sweep"):
    # Before anything compiles: most of a short command's time on CPU is
    # compiling programs that the previous run of it compiled already.
    from invjax._src import compile_cache  # pylint: disable=g-import-not-at-top
    compile_cache.enable_unless_disabled(args.no_compile_cache)
  if args.command == "measure":
    return _measure_command(args)
  if args.command == "plot":
    return _plot_command(args)
  if args.command == "train":
    return _train_command(args)
  if args.command == "sweep":
    return _sweep_command(args)
  if args.command == "experiment":
    args.argv = list(sys.argv[2:] if argv is None else argv[1:])
    return _experiment_command(args)
  return 2
