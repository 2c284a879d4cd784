"""The `invjax` command line.

    invjax measure  # digits, a quickly trained CNN, NV under rotations
    invjax measure --dataset mnist --data-dir ../shared/data --transform rot90
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

_TRANSFORMS = ("rotation", "rot90", "flips", "scale", "translation")
_MEASURES = ("normalized_variance", "transformation_variance",
             "sample_variance", "normalized_variance_same_equivariance")


def _add_compile_cache_flag(parser: argparse.ArgumentParser) -> None:
  parser.add_argument(
      "--no-compile-cache", action="store_true",
      help="do not keep compiled programs in JAX's persistent cache "
      "(default: on, in $INVJAX_COMPILE_CACHE or ~/.cache/invjax/jax; "
      "INVJAX_NO_COMPILE_CACHE=1 also turns it off)")


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


_PLOT_KINDS = ("heatmap", "curves", "seeds")


def _add_plot_parser(sub) -> None:
  p = sub.add_parser(
      "plot", help="draw result files (heat map, per-layer curves, seeds)",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Draws invjax result files (.npz, from `invjax measure` or "
      "MeasureResult.save) to an image file.",
      epilog="""kinds:
  heatmap  one file: every unit of every layer, one column per layer
  curves   one or more files: the per-layer mean of each, one curve per file
           (labels: --labels, one per file; default the file names)
  seeds    several files, one per random seed: per-layer mean +- std per
           group; give --labels with one label per file, and files with
           the same label form one group (--mark-significant stars layers
           where two groups differ)

examples:
  invjax plot invjax_result.npz -o heatmap.png
  invjax plot plain.npz aug.npz --kind curves --labels plain augmented -o c.png
  invjax plot small.npz deep.npz --kind curves --depth relative -o depth.png
  invjax plot p0.npz p1.npz p2.npz a0.npz a1.npz a2.npz --kind seeds \\
      --labels plain plain plain aug aug aug --mark-significant -o seeds.png""")
  p.add_argument("results", nargs="+", metavar="RESULT.npz",
                 help="result files written by MeasureResult.save")
  p.add_argument("--kind", choices=_PLOT_KINDS, default="heatmap",
                 help="what to draw (default: heatmap)")
  p.add_argument("-o", "--output", default="invjax_plot.png",
                 help="image file; the extension picks the format (.png, "
                 ".pdf, .svg; default: invjax_plot.png)")
  p.add_argument("--depth", choices=("index", "relative"), default="index",
                 help="x axis of curves/seeds: layer names (index) or "
                 "0-100%% of each model's depth (relative), for models of "
                 "different depth")
  p.add_argument("--labels", nargs="+", default=None,
                 help="one label per file (curves, seeds)")
  p.add_argument("--title", default=None)
  p.add_argument("--log", action="store_true", help="log-scale y axis")
  p.add_argument("--no-sort", action="store_true",
                 help="heatmap: keep the unit order instead of sorting")
  p.add_argument("--mark-significant", action="store_true",
                 help="seeds, two groups: star layers whose means differ")
  p.add_argument("--test", choices=("welch", "tukey"), default="welch",
                 help="seeds: the per-layer test (default: welch)")
  p.add_argument("--alpha", type=float, default=0.05,
                 help="seeds: significance level (default: 0.05)")


def _plot_command(args: argparse.Namespace) -> int:
  import os  # pylint: disable=g-import-not-at-top
  import invjax  # pylint: disable=g-import-not-at-top

  def fail(msg: str):
    raise SystemExit(f"invjax plot: error: {msg}")

  for path in args.results:
    if not os.path.isfile(path):
      fail(f"no such result file: {path}")
  if args.labels is not None and len(args.labels) != len(args.results):
    fail(f"--labels gives {len(args.labels)} labels for "
         f"{len(args.results)} files; give one label per file")
  results = []
  for path in args.results:
    try:
      results.append(invjax.load_result(path))
    except (ValueError, OSError, KeyError) as e:
      fail(f"cannot read {path} as an invjax result: {e}")
  yscale = "log" if args.log else "linear"
  try:
    if args.kind == "heatmap":
      if len(results) != 1:
        fail(f"--kind heatmap draws one file, got {len(results)}; use "
             "--kind curves to compare files")
      fig = invjax.plot.heatmap(results[0], sort=not args.no_sort,
                                title=args.title)
    elif args.kind == "curves":
      labels = args.labels or [os.path.splitext(os.path.basename(p))[0]
                               for p in args.results]
      fig = invjax.plot.layer_curves(results, labels=labels,
                                     depth=args.depth, title=args.title,
                                     yscale=yscale)
    else:
      if args.labels is None:
        fail("--kind seeds needs --labels, one per file; files with the "
             "same label form one group (e.g. --labels a a a b b b)")
      groups: dict = {}
      for label, r in zip(args.labels, results):
        groups.setdefault(label, []).append(r)
      fig = invjax.plot.seed_spread(
          groups, depth=args.depth, title=args.title,
          mark_significant=True if args.mark_significant else None,
          test=args.test, alpha=args.alpha, yscale=yscale)
      if args.mark_significant:
        a, b = list(groups)
        table = invjax.plot.compare_layers(groups[a], groups[b],
                                           test=args.test, alpha=args.alpha)
        width = max(len(l) for l in table)
        print(f"{args.test}: {a} vs {b}")
        for layer, row in table.items():
          star = " *" if row["significant"] else ""
          print(f"  {layer:<{width}}  {row['mean_a']:.4g} vs "
                f"{row['mean_b']:.4g}  p={row['pvalue']:.3g}{star}")
    fig.savefig(args.output, dpi=120)
  except ValueError as e:
    fail(str(e))
  print(f"wrote {args.output}")
  return 0


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
  root = str(pathlib.Path(__file__).resolve().parents[1])
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


_TRAIN_MODELS = ("simpleconv", "allconv", "vgg16d", "resnet18", "c4gcnn")


def _add_train_parser(sub) -> None:
  t = sub.add_parser(
      "train", help="train a classifier (augmentation, invariance "
      "regularizer, checkpoints)",
      description="Trains one of invjax.models on a dataset with "
      "invjax.train.fit, optionally with augmentation and Moskalev et al.'s "
      "invariance-error regularizer, and prints the held-out clean and "
      "transformed accuracy. WORKDIR gets config.json, metrics.jsonl (JSON "
      "lines), Orbax checkpoints and eval.json; rerunning the same command "
      "resumes from the latest checkpoint.",
      epilog="example: invjax train --model simpleconv --dataset digits "
      "--steps 300 --augment rot90 --regularizer logit_spread "
      "--workdir runs/digits_reg")
  t.add_argument("--model", choices=_TRAIN_MODELS, default="simpleconv")
  t.add_argument("--width", type=int, default=16,
                 help="channels of the first layer (SimpleConv channels, "
                 "AllConv filters, VGG16D base, ResNet width, C4-GCNN "
                 "first block); default 16")
  t.add_argument("--batch-norm", action="store_true",
                 help="models with batch normalization")
  t.add_argument("--dataset", choices=("digits", "mnist", "cifar10"),
                 default="digits", help="digits needs no download "
                 "(default; 20%% held out)")
  t.add_argument("--data-dir", default=None,
                 help="folder with mnist/ or cifar10/ (default: $INVJAX_DATA)")
  t.add_argument("--num-train", type=int, default=None,
                 help="stratified subset of the training set")
  t.add_argument("--num-test", type=int, default=None,
                 help="stratified subset of the test set")
  t.add_argument("--steps", type=int, default=500, help="optimizer updates")
  t.add_argument("--batch-size", type=int, default=64)
  t.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
  t.add_argument("--schedule", choices=("cosine", "constant"),
                 default="cosine")
  t.add_argument("--warmup-steps", type=int, default=0)
  t.add_argument("--optimizer", choices=("adam", "sgd", "adamw"),
                 default="adam")
  t.add_argument("--weight-decay", type=float, default=0.0)
  t.add_argument("--augment", choices=("none", "rotation", "rot90"),
                 default="none",
                 help="one random transformation per sample and step")
  t.add_argument("--regularizer", choices=("none", "logit_spread", "kl"),
                 default="none", help="add reg-weight x invariance error "
                 "over the --transform set")
  t.add_argument("--reg-weight", type=float, default=1.0)
  t.add_argument("--reg-samples", type=int, default=None,
                 help="random group elements per step for the regularizer "
                 "(default: the whole set)")
  t.add_argument("--transform", choices=("rot90", "rotation"),
                 default="rot90", help="the set of the regularizer and of "
                 "the transformed accuracy (default rot90)")
  t.add_argument("--num-rotations", type=int, default=16,
                 help="angles of the rotation sets, evenly spaced over 360°")
  t.add_argument("--seed", type=int, default=0)
  t.add_argument("--log-every", type=int, default=50)
  t.add_argument("--eval-every", type=int, default=None)
  t.add_argument("--checkpoint-every", type=int, default=100)
  t.add_argument("--workdir", default="invjax_run",
                 help="checkpoints and metrics (default ./invjax_run)")
  t.add_argument("--quiet", action="store_true",
                 help="no progress bar (on stderr: steps, ETA, loss)")
  _add_compile_cache_flag(t)


def _train_command(args: argparse.Namespace) -> int:
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from invjax import data  # pylint: disable=g-import-not-at-top
  from invjax import models  # pylint: disable=g-import-not-at-top
  from invjax import train  # pylint: disable=g-import-not-at-top
  from invjax import transforms as tr  # pylint: disable=g-import-not-at-top
  from invjax._src import files  # pylint: disable=g-import-not-at-top

  def fail(msg: str):
    raise SystemExit(f"invjax train: {msg}")

  if args.width < 1:
    fail(f"--width must be positive, got {args.width}")
  if args.num_rotations < 2:
    fail(f"--num-rotations must be at least 2, got {args.num_rotations}")
  if args.dataset == "digits":
    images, labels = data.load_digits()
    test = data.stratified_indices(labels, len(labels) // 5, seed=args.seed)
    is_train = np.ones(len(labels), bool)
    is_train[test] = False
    x_train, y_train = images[is_train], labels[is_train]
    x_test, y_test = images[test], labels[test]
  else:
    load = data.load_mnist if args.dataset == "mnist" else data.load_cifar10
    try:
      x_train, y_train = load("train", data_dir=args.data_dir)
      x_test, y_test = load("test", data_dir=args.data_dir)
    except (OSError, ValueError) as e:
      fail(str(e))
  for n, name in ((args.num_train, "train"), (args.num_test, "test")):
    if n is None:
      continue
    x, y = (x_train, y_train) if name == "train" else (x_test, y_test)
    if not 1 <= n <= len(y):
      fail(f"--num-{name} must be in [1, {len(y)}], got {n}")
    x, y = data.stratified_subset(x, y, n, seed=args.seed)
    if name == "train":
      x_train, y_train = x, y
    else:
      x_test, y_test = x, y
  x_train, (mean, std) = data.standardize(np.asarray(x_train, np.float32))
  x_test, _ = data.standardize(np.asarray(x_test, np.float32), mean=mean,
                               std=std)
  num_classes = int(max(y_train.max(), y_test.max())) + 1

  w, bn = args.width, args.batch_norm
  model = {
      "simpleconv": lambda: models.SimpleConv(
          num_classes, channels=w, fc=4 * w, batch_norm=bn),
      "allconv": lambda: models.AllConvolutional(
          num_classes, filters=w, batch_norm=bn),
      "vgg16d": lambda: models.VGG16D(num_classes, base=w, fc=4 * w,
                                      batch_norm=bn),
      "resnet18": lambda: models.ResNet18(num_classes, width=w,
                                          batch_norm=bn),
      "c4gcnn": lambda: models.C4GCNN(num_classes,
                                      channels=(w, 2 * w, 4 * w),
                                      batch_norm=bn),
  }[args.model]()

  def transformation_set(name):
    if name == "rot90":
      return tr.rot90()
    return tr.rotation(np.linspace(-180.0, 180.0, args.num_rotations,
                                   endpoint=False))

  ts = transformation_set(args.transform)
  try:
    cfg = train.TrainConfig(
        steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr,
        schedule=args.schedule, warmup_steps=args.warmup_steps,
        optimizer=args.optimizer, weight_decay=args.weight_decay,
        seed=args.seed,
        augment=None if args.augment == "none"
        else transformation_set(args.augment),
        regularizer=None if args.regularizer == "none" else train.Regularizer(
            ts, weight=args.reg_weight, kind=args.regularizer,
            num_samples=args.reg_samples),
        log_every=args.log_every, eval_every=args.eval_every,
        checkpoint_every=args.checkpoint_every)
  except ValueError as e:
    fail(str(e))
  print(f"training {args.model} on {len(y_train)} {args.dataset} images "
        f"for {args.steps} steps (workdir {args.workdir})")
  try:
    state = train.fit(model, cfg, x_train, y_train,
                      eval_data=(x_test, y_test, ts), workdir=args.workdir,
                      progress=not args.quiet)
  except ValueError as e:
    fail(str(e))
  result = train.evaluate(model, state.variables, x_test, y_test,
                          transformations=ts)
  result.update(step=int(state.step), num_test=int(len(y_test)),
                transform=args.transform)
  files.atomic_write_text(os.path.join(args.workdir, "eval.json"),
                          json.dumps(result, indent=1))
  print(f"step {state.step}: test accuracy {result['accuracy']:.4f}, "
        f"{args.transform} accuracy {result['transformed_accuracy']:.4f} "
        f"({len(y_test)} held-out images)")
  return 0


def _add_sweep_parser(sub) -> None:
  s = sub.add_parser(
      "sweep", help="run a sweep file's cells (resumable, sharded) into one "
      "table",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      description="Runs the cells of a sweep file (get_config, get_sweep, "
      "run; see invjax.sweep) that are not complete in DIR, each into "
      "DIR/cells/<id>/, then writes the tidy table DIR/results.parquet "
      "(invjax.sweep.load). Rerunning skips completed cells and resumes "
      "interrupted ones.",
      epilog="""examples:
  invjax sweep my_sweep.py --out runs/s --list          # cells and their state
  invjax sweep my_sweep.py --out runs/s                 # every cell, here
  invjax sweep my_sweep.py --out runs/s \\
      --shard $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT   # one array task
  invjax sweep my_sweep.py --out runs/s --collect       # rebuild the table""")
  s.add_argument("file", metavar="FILE", help="the sweep file (.py)")
  s.add_argument("--out", default=None, metavar="DIR",
                 help="the sweep's folder (default: runs/<file name>)")
  s.add_argument("--shard", default="0/1", metavar="i/n",
                 help="run only cells k with k mod n = i (default 0/1: all)")
  s.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                 help="override a base-config value for every cell "
                 "(repeatable; not a swept key)")
  s.add_argument("--list", action="store_true",
                 help="list the shard's cells (done, started, todo) and exit")
  s.add_argument("--collect", action="store_true",
                 help="rebuild DIR/results.parquet from every complete cell "
                 "(after shards on several hosts) and exit")
  s.add_argument("--quiet", action="store_true",
                 help="no progress bar (on stderr)")
  _add_compile_cache_flag(s)


def _sweep_command(args: argparse.Namespace) -> int:
  import os  # pylint: disable=g-import-not-at-top
  from invjax import sweep  # pylint: disable=g-import-not-at-top
  from invjax._src import sweep_cells  # pylint: disable=g-import-not-at-top

  def fail(msg: str):
    raise SystemExit(f"invjax sweep: error: {msg}")

  out = args.out or os.path.join(
      "runs", os.path.splitext(os.path.basename(args.file))[0])
  try:
    shard = sweep.parse_shard(args.shard)
    settings = sweep.parse_set(args.set)
    module = sweep.load_module(args.file)
    if args.list:
      rows = sweep.status(module, out, shard=shard, settings=settings)
      for cell, state in rows:
        print(f"{cell.index:>4}  {state:<7}  {cell.id}  "
              f"{json.dumps(cell.overrides, sort_keys=True)}")
      done = sum(state == "done" for _, state in rows)
      print(f"{done} of {len(rows)} cells done (shard {shard[0]}/{shard[1]},"
            f" {out})")
      return 0
    if args.collect:
      table = sweep.collect(out)
    else:
      table = sweep.run(module, out, shard=shard, settings=settings,
                        progress=not args.quiet)
    everything = sweep.status(module, out, settings=settings)
  except ValueError as e:
    fail(str(e))
  done = sum(state == "done" for _, state in everything)
  print(f"{done} of {len(everything)} cells complete in {out}; "
        f"{os.path.join(out, sweep_cells.TABLE_FILE)}: {len(table)} rows")
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


if __name__ == "__main__":
  sys.exit(main())
