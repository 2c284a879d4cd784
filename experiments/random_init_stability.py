"""Layer-wise NV barely depends on the random initialization.

Command::

    invjax experiment random_init_stability --out DIR --no-checkpoints
    invjax experiment random_init_stability --set preset=gpu   # 30 seeds
    invjax experiment random_init_stability --set ensemble=False  # one by one
    invjax sweep experiments/random_init_stability.py --out DIR  # cells only

Trains SimpleConv from ``num_seeds`` seeds (seed, seed + 1, ...), each
without and with rotation augmentation, and measures every layer's
normalized variance under 16 rotations (as `mnist_rotation_augmentation`).
Reports the per-layer mean ± standard deviation over seeds (the
`invjax.plot.seed_spread` figure), Welch's t-test of plain vs augmented per
layer (`invjax.significance.compare_layers`) and, per layer, the ratio of the
augmented-vs-plain gap to the across-seed spread,

    ratio = |mean_aug − mean_plain| / sqrt((std_aug² + std_plain²) / 2).

A sweep with one cell per (``model``, ``seed``): ``model`` = plain,
augmented; ``seed`` = seed, ..., seed + num_seeds − 1. The cells of one
model differ only in their seed, so they run as one group (`run_group`):
the seeds train together as one vmapped program (`invjax.train.fit(...,
seeds=)`) and are measured together in one `invjax.measure` call on
``capture.linen(..., ensemble=True)``; each member's result equals that
seed trained and measured alone to float round-off (``--set ensemble=False``
runs the cells one at a time). Both `invjax sweep` and `invjax experiment`
take the cells from the resolved config (``--set num_seeds=3``, smoke
mode); `invjax experiment` also writes the summary.

Data: the bundled digits (500 measured, 1,297 train); ``--dataset mnist``
uses MNIST as `mnist_rotation_augmentation` does.

Runtime: CPU full (5 seeds × 2 models, C = 8, 600 steps): 18.5 min on 2
busy CPU cores as two ensembles of 5 (the committed run, 2026-12-01;
vmapped convolutions train several times slower on XLA:CPU, see
benchmarks/ensemble_cpu.md), about 3 min with ``--set ensemble=False``
(one seed at a time, the run before sweeps); smoke mode (2 seeds) about
40 s. GPU preset (30 seeds, MNIST, C = 32, 3,000 steps): about 20 min on
one H100 (an estimate: the GPU settings have not been timed).

Expected result (Quiroga et al., "Measuring (in)variances in convolutional
networks", 2020/2023): the NV profile is a property of the architecture and
the training data, not of the initialization — the across-seed spread is
much smaller than the gap between the plain and the augmented model in the
final layers (ratio ≫ 1, Welch p < 0.01 there).
"""

from __future__ import annotations

import pathlib
import sys

import numpy as np

# `invjax sweep experiments/<name>.py` imports this file by its path: the
# repository root must be importable for the `experiments` package.
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from experiments import _runner  # pylint: disable=g-import-not-at-top,wrong-import-position
from experiments import mnist_rotation_augmentation as exp1  # pylint: disable=g-import-not-at-top,wrong-import-position

DEFAULTS = dict(
    dataset="digits",
    data_seed=0,
    n_train=10000,
    n_measure=500,
    num_seeds=5,
    channels=8,
    fc=32,
    steps=600,
    batch_size=64,
    learning_rate=2e-3,
    schedule="cosine",
    num_rotations=16,
    augment_rotations=64,
    measure_batch_size=100,
    alpha=0.01,             # significance level of the per-layer test
    ensemble=True,          # False: train and measure one seed at a time
    model=None,             # a cell's model, set by get_sweep
)

MODELS = ("plain", "augmented")

SMOKE = dict(_runner.SMOKE_DIGITS, num_seeds=2, num_rotations=4,
             augment_rotations=8)

PRESETS = {
    "gpu": dict(dataset="mnist", n_train=60000, n_measure=1000, num_seeds=30,
                channels=32, fc=128, steps=3000, batch_size=128),
}


def get_config(smoke: bool = False, **overrides) -> _runner.Config:
  """The config; ``smoke`` for tiny settings, overrides as ``key=value``."""
  config = _runner.digit_config(DEFAULTS, smoke=smoke, smoke_settings=SMOKE,
                                presets=PRESETS, overrides=overrides)
  if config.num_seeds < 2:
    raise ValueError(f"num_seeds must be ≥ 2 to measure a spread, got "
                     f"{config.num_seeds}")
  return config


def get_sweep(config: _runner.Config | None = None) -> list[dict]:
  """The cells: every (model, seed), the model varying slowest."""
  from invjax import sweep  # pylint: disable=g-import-not-at-top
  config = (get_config() if config is None else
            _runner.resolve(get_config, config))
  return sweep.product(model=list(MODELS), seed=[
      config.seed + i for i in range(config.num_seeds)])


def _setup(config):
  from invjax import models  # pylint: disable=g-import-not-at-top
  _runner.check_choice(config, "model", MODELS)
  data = _runner.load_digit_data(config)
  measured = exp1.rotations(config.num_rotations)
  augment = (exp1.rotations(config.augment_rotations)
             if config.model == "augmented" else None)
  model = models.SimpleConv(num_classes=10, channels=config.channels,
                            fc=config.fc)
  return model, data, measured, augment


def run(config, outdir) -> dict:
  """One cell, as `invjax sweep` calls it (presets, smoke mode resolved)."""
  return run_cell(_runner.resolve(get_config, config), outdir)


def run_group(configs, outdirs) -> list[dict]:
  """Cells differing only in seed, as `invjax sweep` calls it: an ensemble."""
  return run_group_cells([_runner.resolve(get_config, c) for c in configs],
                         outdirs)


def run_cell(config: _runner.Config, outdir) -> dict:
  """One seed alone: trains it, measures it; ``{"nv": MeasureResult}``."""
  model, data, measured, augment = _setup(config)
  _, acc, result = exp1.train_and_measure(
      model, config, data, outdir=outdir,
      label=f"{config.model}_seed{config.seed}", seed=config.seed,
      augment=augment, measured=measured)
  _runner.write_cell_record(outdir, {"accuracy": acc})
  return {"nv": _runner.maybe_compact(result, config)}


def run_group_cells(configs: list[_runner.Config], outdirs) -> list[dict]:
  """Seeds of one model as one ensemble: one training, one measurement.

  The ensemble's checkpoints go to the first cell's folder, named after the
  seeds (a rerun of the same unfinished cells resumes them).
  """
  import invjax  # pylint: disable=g-import-not-at-top
  config = configs[0]
  seeds = [int(c.seed) for c in configs]
  model, (train_x, train_y, test_x, test_y), measured, augment = _setup(
      config)
  label = f"{config.model}_seeds{'-'.join(map(str, seeds))}"
  variables = _runner.fit(model, config, train_x, train_y, outdir=outdirs[0],
                          label=label, seeds=seeds, augment=augment)
  accuracy = _runner.evaluate(model, variables, test_x, test_y, measured,
                              ensemble=True)
  # One program measures every member: a list of K results, in seed order.
  results = invjax.measure(
      invjax.capture.linen(model, variables, ensemble=True), test_x,
      measured, invjax.measures.normalized_variance(),
      batch_size=config.measure_batch_size, layers=_runner.not_output,
      progress=_runner.progress(config))
  out = []
  for outdir, acc, result in zip(outdirs, accuracy, results):
    _runner.write_cell_record(outdir, {"accuracy": acc})
    out.append({"nv": _runner.maybe_compact(result, config)})
  return out


def summarize(config: _runner.Config, table, outdir) -> dict:
  """Compares the spreads over seeds from the cells' results."""
  from invjax import plot  # pylint: disable=g-import-not-at-top
  from invjax import significance  # pylint: disable=g-import-not-at-top
  del table  # compare_layers and seed_spread take the results themselves
  cells = _runner.cell_ids(sys.modules[__name__], config)
  groups = {"plain": [], "augmented": []}
  accuracy = {"plain": [], "augmented": []}
  for overrides, cell in zip(get_sweep(config), cells):
    groups[overrides["model"]].append(
        _runner.cell_results(outdir, cell)["nv"][0])
    accuracy[overrides["model"]].append(
        _runner.read_cell_record(outdir, cell)["accuracy"])
  seeds = [config.seed + i for i in range(config.num_seeds)]

  _runner.save_figure(outdir, "seed_spread", plot.seed_spread(groups))
  tests = significance.compare_layers(groups["augmented"], groups["plain"],
                                      test="welch", alpha=config.alpha)
  layers = groups["plain"][0].layers
  per_layer = {}
  rows = []
  for layer in layers:
    a = np.array([r.per_layer[layer] for r in groups["augmented"]])
    p = np.array([r.per_layer[layer] for r in groups["plain"]])
    spread = float(np.sqrt((a.std(ddof=1) ** 2 + p.std(ddof=1) ** 2) / 2))
    gap = float(abs(a.mean() - p.mean()))
    ratio = gap / spread if spread > 0 else float("inf")
    t = tests[layer]
    per_layer[layer] = dict(
        plain_mean=p.mean(), plain_std=p.std(ddof=1), augmented_mean=a.mean(),
        augmented_std=a.std(ddof=1), gap=gap, spread=spread, ratio=ratio,
        statistic=float(t["statistic"]), pvalue=float(t["pvalue"]))
    rows.append([layer, f"{p.mean():.4g} ± {p.std(ddof=1):.2g}",
                 f"{a.mean():.4g} ± {a.std(ddof=1):.2g}", ratio,
                 float(t["pvalue"])])
  final = [l for l in ("fc1_act", "logits") if l in layers]
  held = all(per_layer[l]["ratio"] > 3 and per_layer[l]["pvalue"] <
             config.alpha for l in final)
  acc_rows = []
  for label in ("plain", "augmented"):
    clean = np.array([a["accuracy"] for a in accuracy[label]])
    rot = np.array([a["transformed_accuracy"] for a in accuracy[label]])
    acc_rows.append([label, f"{clean.mean():.3f} ± {clean.std(ddof=1):.3f}",
                     f"{rot.mean():.3f} ± {rot.std(ddof=1):.3f}"])
  findings = [
      "Gap / across-seed spread in the final layers: " + ", ".join(
          f"{l} {per_layer[l]['ratio']:.1f} (Welch p = "
          f"{per_layer[l]['pvalue']:.2g})" for l in final) + ".",
      f"Median ratio over all layers: "
      f"{np.median([v['ratio'] for v in per_layer.values()]):.1f}.",
      "Expected finding (spread ≪ gap in the final layers: ratio > 3, "
      f"p < {config.alpha}) " + ("held." if held else "did not hold."),
  ]
  return {
      "tables": [
          _runner.table(f"NV per layer over {len(seeds)} seeds (mean ± std)",
                        ["layer", "plain", "augmented", "gap / spread",
                         "Welch p"], rows),
          _runner.table("Accuracy over seeds (mean ± std)",
                        ["model", "clean", "rotated"], acc_rows),
      ],
      "findings": findings,
      "metrics": {"per_layer": per_layer, "accuracy": accuracy,
                  "expected_held": bool(held)},
      "seeds": seeds,
  }
