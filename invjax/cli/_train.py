"""``invjax train``: trains a classifier (augmentation, regularizer, resume).

Its parser (`_add_train_parser`) and command (`_train_command`), for
`invjax.cli.main`.
"""

from __future__ import annotations

import argparse

import numpy as np

from invjax.cli._flags import _add_compile_cache_flag

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
