"""Layer-wise NV: stable over seeds, changed by the dataset and the transforms.

Command::

    invjax experiment seeds_vs_shift --out DIR --no-checkpoints
    invjax experiment seeds_vs_shift --set preset=gpu    # 10 seeds, 16/set
    invjax experiment seeds_vs_shift --smoke --out /tmp/s   # digits, seconds
    invjax sweep experiments/seeds_vs_shift.py --out DIR    # cells only

Sweeps dataset × training augmentation × seed. Datasets: MNIST, and
CIFAR-10 resized to 28×28 in grey (ITU-R 601 luma, ``cifar_grey``) and in
colour (``cifar_colour``, 3 channels: SimpleConv takes any number); only
CIFAR-10's test batch is available, so its 10,000 images are split into
training and measured images, as in `architectures_cifar10`; ``digits``
(scikit-learn's, upsampled) stands in for MNIST in smoke mode. All stay in
[0, 1] and are not standardized, so zero padding is black in all.
Transformation sets (`transformation_set`, ``num_transformations`` = n
each): rotation (n angles evenly over 360°), scale (n factors, geometric in
``scale_range``), translation (n shifts of ``max_shift`` px in n evenly
spaced directions) and their affine product (`invjax.transforms.affine`:
2 rotations × 2 scales × 2 shifts, always 8). Augmentations: none, or one
of the sets (each sample gets one random element of the set per step,
`invjax.train.TrainConfig.augment`).

Training is the cost and measuring is cheap, so there is one cell (one
trained SimpleConv) per (``dataset``, ``augment``, ``seed``), and each cell
measures its model's normalized variance NV = TV / SV
(`invjax.measures.normalized_variance`, every layer) under *every*
transformation set, results ``nv_<set>``. The groups compared are
(dataset, regime, measured set), each with one result per seed: regime
"plain" is the model trained without augmentation, "augmented" the model
trained with augmentation by the measured set itself. Seeds run one at a
time (no `run_group`: vmapped convolutions train several times slower on
XLA:CPU, benchmarks/ensemble_cpu.md).

How "held" is decided, per layer ℓ (NV per layer, S seeds per group):

* seed spread s_g(ℓ) = the standard deviation over seeds (ddof = 1) of
  group g; seeds agree when the median, over groups and layers, of the
  coefficient of variation s_g(ℓ) / |mean_g(ℓ)| is below ``seed_cv``;
* across datasets: for each regime and measured set, every pair of
  datasets' groups; across transformation sets: for each dataset and regime, every
  pair of measured sets. For each such comparison of groups a and b,
  Welch's t-test (`invjax.significance.compare_layers`, two-sided) and

      ratio(ℓ) = |mean_a(ℓ) − mean_b(ℓ)| / sqrt((s_a(ℓ)² + s_b(ℓ)²) / 2);

* a layer changes with the dataset (the transformation set) when more than
  half of its dataset (set) comparisons have Welch p < ``alpha`` = 0.01
  (no correction for the number of layers; with 3 seeds per group and
  about 2–4 Welch degrees of freedom, p < 0.01 needs ratio ≳ 4);
* the finding held when seeds agree and more than half of the layers change
  with the dataset and more than half with the transformation set; "did
  not hold" when neither changes; otherwise "partly". For the plain model
  the groups of two sets are the same three models measured twice, so the
  Welch test there treats paired values as independent (conservative when
  the seeds' NV are positively correlated across sets).

Runtime: CPU full (MNIST, CIFAR grey and CIFAR colour, 5 augmentations, 5
seeds = 75 models of SimpleConv C = 8 for 250 steps on 3,000 images; 300
images measured under 4 sets of 8): 8.4 min on 2 idle CPU cores for the
committed run (2026-12-01). Smoke mode (digits and CIFAR grey, 2 seeds, 2
sets of 4, 4 steps; its accuracies under the sets are skipped): about 15 s
on idle cores. GPU preset (10 seeds, C = 32, 3,000 steps, 16
transformations per set, 1,000 measured images): about 10–15 min on one
H100 (an estimate: the GPU settings have not been timed).

Result of the committed run: held. Seeds agree (median coefficient of
variation 0.051); every layer changes with the dataset and with the
transformation set (Welch p < 0.01 in 79% of the comparisons; median gap /
seed spread 3.9 and 4.9). With 3 seeds the same rule said "did not hold"
(0 of 15 layers for the datasets, 5 of 15 for the sets, at median gaps of
4.1 and 5.5 seed spreads): Welch then has 2–4 degrees of freedom and
p < 0.01 needs a gap of about 8 spreads, hence the 5 seeds.

Caveat: the affine set is the grid of each factor's extremes (±90°, scales
0.6 and 1.4, ±4 px) without the identity, so a model augmented with it
never sees an upright image at its own scale: its clean accuracy is near
chance (MNIST 0.11), although its accuracy under the set is 0.80.

Expected result (Quiroga, Torrents-Barrena, Lanzarini, Puig,
"Transformational measures of neural network invariance", arXiv:2310.17404,
2023): layer-wise invariance is stable across random initializations
(seeds) but changes with the dataset and with the transformation set.
"""

from __future__ import annotations

import itertools
import pathlib
import sys

import numpy as np

# `invjax sweep experiments/<name>.py` imports this file by its path: the
# repository root must be importable for the `experiments` package.
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

from experiments import _runner  # pylint: disable=g-import-not-at-top,wrong-import-position

DATASETS = ("digits", "mnist", "cifar_grey", "cifar_colour")
SETS = ("rotation", "scale", "translation", "affine")

DEFAULTS = dict(
    datasets=["mnist", "cifar_grey", "cifar_colour"],
    augmentations=["none", *SETS],  # "none" or a set: the trained models
    sets=list(SETS),                 # the sets every model is measured under
    num_seeds=5,
    data_seed=0,
    n_train=3000,           # training images per dataset
    n_measure=300,          # measured images per dataset
    num_transformations=8,  # per set (the affine product is always 8)
    max_shift=4.0,          # translation length, pixels (~15% of 28)
    scale_range=[0.6, 1.4],
    channels=8,
    fc=32,
    steps=250,
    batch_size=64,
    learning_rate=2e-3,
    schedule="cosine",
    measure_batch_size=100,
    alpha=0.01,             # Welch significance level per layer
    seed_cv=0.1,            # seeds agree: median std/|mean| below this
    set_accuracy=True,      # also the accuracy under each measured set
    dataset=None,           # a cell's dataset, set by get_sweep
    augment=None,           # a cell's augmentation, set by get_sweep
)

# Smoke mode: digits for MNIST, two sets of 4, two augmentations, 2 seeds.
SMOKE = dict(datasets=["digits", "cifar_grey"], augmentations=["none",
                                                               "rotation"],
             sets=["rotation", "translation"], num_seeds=2, n_train=128,
             n_measure=16, num_transformations=4, channels=4, fc=8, steps=4,
             batch_size=32, measure_batch_size=16, set_accuracy=False)

PRESETS = {
    "gpu": dict(num_seeds=10, n_train=9000, n_measure=1000,
                num_transformations=16, channels=32, fc=128, steps=3000,
                batch_size=128),
}


def get_config(smoke: bool = False, **overrides) -> _runner.Config:
  """The config; ``smoke`` for tiny settings, overrides as ``key=value``."""
  config = _runner.make_config(DEFAULTS, smoke=smoke, smoke_settings=SMOKE,
                               presets=PRESETS, overrides=overrides)
  for key, choices in (("datasets", DATASETS), ("sets", SETS),
                       ("augmentations", ("none", *config.sets))):
    unknown = set(config[key]) - set(choices)
    if unknown:
      raise ValueError(f"{key}: unknown {sorted(unknown)}; choose from "
                       f"{list(choices)}")
  if config.num_seeds < 2:
    raise ValueError(f"num_seeds must be ≥ 2 to measure a spread, got "
                     f"{config.num_seeds}")
  if len(config.datasets) < 2 or len(config.sets) < 2:
    raise ValueError("datasets and sets need two entries each to compare")
  return config


def get_sweep(config: _runner.Config | None = None) -> list[dict]:
  """The cells: every (dataset, augment, seed), the dataset slowest."""
  from invjax import sweep  # pylint: disable=g-import-not-at-top
  config = (get_config() if config is None else
            _runner.resolve(get_config, config))
  return sweep.product(
      dataset=list(config.datasets), augment=list(config.augmentations),
      seed=[config.seed + i for i in range(config.num_seeds)])


def transformation_set(name: str, config):
  """The set ``name`` of `SETS`, of ``num_transformations`` elements.

  Each is built with `invjax.transforms.affine` (the other factors at the
  identity), which warps bit for bit like `transforms.rotation`, `scale`
  and `translation` but gives every set the same action, so sets of one
  size share one compiled measure program and one augmented train step.
  """
  from invjax import transforms as tr  # pylint: disable=g-import-not-at-top
  n = int(config["num_transformations"])
  lo, hi = config["scale_range"]
  d = float(config["max_shift"])
  if name == "rotation":
    return tr.affine(rotations=np.linspace(-180.0, 180.0, n, endpoint=False))
  if name == "scale":
    return tr.affine(scales=np.geomspace(lo, hi, n))
  if name == "translation":
    theta = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    return tr.affine(translations=np.stack(
        [d * np.sin(theta), d * np.cos(theta)], axis=1))
  if name == "affine":
    # Each factor's two extremes: 2 × 2 × 2 whatever n is, so that the
    # product stays as cheap to measure as the others.
    return tr.affine(rotations=[-90.0, 90.0], scales=[lo, hi],
                     translations=[(0.0, -d), (0.0, d)])
  raise ValueError(f"unknown transformation set {name!r}; choose from "
                   f"{list(SETS)}")


def load_data(config):
  """``(train_x, train_y, measure_x, measure_y)`` of ``config.dataset``.

  Cached per process: the cells of one dataset share it.
  """
  key = (str(_runner.data_dir(config)), int(config.data_seed),
         int(config.n_train), int(config.n_measure))
  if config.dataset in ("cifar_grey", "cifar_colour"):
    return _runner.cifar10_28(*key, colour=config.dataset == "cifar_colour")
  return _runner.cached_digit_data(config.dataset, *key)


def run(config, outdir) -> dict:
  """One cell, as `invjax sweep` calls it (presets, smoke mode resolved)."""
  return run_cell(_runner.resolve(get_config, config), outdir)


def run_cell(config: _runner.Config, outdir) -> dict:
  """Trains one model, measures it under every set: ``{"nv_<set>": ...}``."""
  import invjax  # pylint: disable=g-import-not-at-top
  from invjax import models  # pylint: disable=g-import-not-at-top
  _runner.check_choice(config, "dataset", DATASETS)
  _runner.check_choice(config, "augment", ("none", *config.sets))
  train_x, train_y, test_x, test_y = load_data(config)
  augment = (None if config.augment == "none" else
             transformation_set(config.augment, config))
  model = models.SimpleConv(num_classes=10, channels=config.channels,
                            fc=config.fc)
  variables = _runner.fit(
      model, config, train_x, train_y, outdir=outdir,
      label=f"{config.dataset}_{config.augment}_seed{config.seed}",
      seed=config.seed, augment=augment)
  accuracy = {"clean": _runner.evaluate(model, variables, test_x,
                                        test_y)["accuracy"]}
  out = {}
  for name in config.sets:
    ts = transformation_set(name, config)
    if config.set_accuracy:
      accuracy[name] = _runner.evaluate(
          model, variables, test_x, test_y, ts)["transformed_accuracy"]
    out[f"nv_{name}"] = _runner.maybe_compact(invjax.measure(
        invjax.capture.linen(model, variables), test_x, ts,
        invjax.measures.normalized_variance(),
        batch_size=config.measure_batch_size, layers=_runner.not_output,
        progress=_runner.progress(config)), config)
  _runner.write_cell_record(outdir, {"accuracy": accuracy})
  return out


def _groups(config, outdir):
  """{(dataset, regime, set): [MeasureResult per seed]} and accuracies."""
  groups, accuracy = {}, {}
  cells = _runner.cell_ids(sys.modules[__name__], config)
  for overrides, cell in zip(get_sweep(config), cells):
    d, aug = overrides["dataset"], overrides["augment"]
    results = _runner.cell_results(outdir, cell)
    accuracy.setdefault((d, aug), []).append(
        _runner.read_cell_record(outdir, cell)["accuracy"])
    for name in config.sets:
      if aug == "none":
        groups.setdefault((d, "plain", name), []).append(
            results[f"nv_{name}"][0])
      elif aug == name:
        groups.setdefault((d, "augmented", name), []).append(
            results[f"nv_{name}"][0])
  return groups, accuracy


def _compare(a, b, layers, alpha):
  """Welch per layer plus the gap / seed-spread ratio."""
  from invjax import significance  # pylint: disable=g-import-not-at-top
  tests = significance.compare_layers(a, b, test="welch", alpha=alpha,
                                      layers=layers)
  out = {}
  for layer in layers:
    va = np.array([r.per_layer[layer] for r in a], np.float64)
    vb = np.array([r.per_layer[layer] for r in b], np.float64)
    spread = float(np.sqrt((va.var(ddof=1) + vb.var(ddof=1)) / 2))
    gap = float(abs(va.mean() - vb.mean()))
    out[layer] = dict(gap=gap, spread=spread,
                      ratio=gap / spread if spread > 0 else float("inf"),
                      statistic=tests[layer]["statistic"],
                      pvalue=tests[layer]["pvalue"])
  return out


def _label(key) -> str:
  return "/".join(key)


def summarize(config: _runner.Config, table, outdir) -> dict:
  """Seed spread against dataset and transformation-set differences."""
  from invjax import plot  # pylint: disable=g-import-not-at-top
  del table  # compare_layers and seed_spread take the results themselves
  groups, accuracy = _groups(config, outdir)
  layers = next(iter(groups.values()))[0].layers
  regimes = [r for r in ("plain", "augmented")
             if any(k[1] == r for k in groups)]

  for d, regime in itertools.product(config.datasets, regimes):
    sub = {name: groups[(d, regime, name)] for name in config.sets
           if (d, regime, name) in groups}
    if sub:
      _runner.save_figure(outdir, f"seed_spread_{d}_{regime}",
                          plot.seed_spread(sub, title=f"{d}, {regime}: NV "
                                           "over seeds per measured set"))

  # The comparisons: across datasets at a fixed regime and set, across sets
  # at a fixed dataset and regime.
  comparisons = []
  for regime, name in itertools.product(regimes, config.sets):
    for d1, d2 in itertools.combinations(config.datasets, 2):
      a, b = (d1, regime, name), (d2, regime, name)
      if a in groups and b in groups:
        comparisons.append(dict(kind="dataset", a=_label(a), b=_label(b),
                                per_layer=_compare(groups[a], groups[b],
                                                   layers, config.alpha)))
  for d, regime in itertools.product(config.datasets, regimes):
    for n1, n2 in itertools.combinations(config.sets, 2):
      a, b = (d, regime, n1), (d, regime, n2)
      if a in groups and b in groups:
        comparisons.append(dict(kind="set", a=_label(a), b=_label(b),
                                per_layer=_compare(groups[a], groups[b],
                                                   layers, config.alpha)))

  per_layer, rows = {}, []
  for layer in layers:
    v = {k: np.array([r.per_layer[layer] for r in g], np.float64)
         for k, g in groups.items()}
    stds = np.array([x.std(ddof=1) for x in v.values()])
    cvs = np.array([x.std(ddof=1) / abs(x.mean()) for x in v.values()])
    entry = dict(seed_std=float(np.median(stds)),
                 seed_cv=float(np.median(cvs)))
    for kind in ("dataset", "set"):
      mine = [c["per_layer"][layer] for c in comparisons if c["kind"] == kind]
      p = np.array([m["pvalue"] for m in mine])
      entry[kind] = dict(
          gap=float(np.median([m["gap"] for m in mine])),
          ratio=float(np.median([m["ratio"] for m in mine])),
          fraction_significant=float(np.mean(np.nan_to_num(p, nan=1.0)
                                             < config.alpha)),
          n=len(mine))
    per_layer[layer] = entry
    rows.append([layer, entry["seed_std"], entry["seed_cv"],
                 entry["dataset"]["gap"], entry["dataset"]["ratio"],
                 f"{entry['dataset']['fraction_significant']:.2f}",
                 entry["set"]["gap"], entry["set"]["ratio"],
                 f"{entry['set']['fraction_significant']:.2f}"])

  all_cv = np.array([np.array([r.per_layer[l] for r in g]).std(ddof=1)
                     / abs(np.mean([r.per_layer[l] for r in g]))
                     for g in groups.values() for l in layers])
  median_cv = float(np.median(all_cv))
  seeds_agree = median_cv < config.seed_cv
  by_dataset = [l for l in layers
                if per_layer[l]["dataset"]["fraction_significant"] > 0.5]
  by_set = [l for l in layers
            if per_layer[l]["set"]["fraction_significant"] > 0.5]
  dataset_held = len(by_dataset) > len(layers) / 2
  set_held = len(by_set) > len(layers) / 2
  if seeds_agree and dataset_held and set_held:
    verdict = "held."
  elif not dataset_held and not set_held:
    verdict = "did not hold."
  else:
    parts = [f"seeds agree: {'yes' if seeds_agree else 'no'}",
             f"dataset changes NV: {'yes' if dataset_held else 'no'}",
             f"transformation set changes NV: {'yes' if set_held else 'no'}"]
    verdict = "partly: " + "; ".join(parts) + "."

  show = [l for l in ("conv1", "pool1", "pool2", "conv5_act", "fc1_act",
                      "logits") if l in layers]
  group_rows = []
  for key, g in groups.items():
    vals = [np.array([r.per_layer[l] for r in g]) for l in show]
    group_rows.append([_label(key)] + [f"{x.mean():.3f} ± {x.std(ddof=1):.3f}"
                                       for x in vals])
  acc_rows = []
  for (d, aug), accs in accuracy.items():
    clean = np.array([a["clean"] for a in accs])
    row = [d, aug, f"{clean.mean():.3f} ± {clean.std(ddof=1):.3f}"]
    for name in config.sets:
      x = np.array([a.get(name, np.nan) for a in accs])
      row.append(f"{x.mean():.3f} ± {x.std(ddof=1):.3f}")
    acc_rows.append(row)

  n_data = sum(c["kind"] == "dataset" for c in comparisons)
  n_set = sum(c["kind"] == "set" for c in comparisons)
  frac_d = np.mean([per_layer[l]["dataset"]["fraction_significant"]
                    for l in layers])
  frac_s = np.mean([per_layer[l]["set"]["fraction_significant"]
                    for l in layers])
  findings = [
      f"Seeds: median coefficient of variation of NV over "
      f"{config.num_seeds} seeds, over {len(groups)} groups × {len(layers)} "
      f"layers, {median_cv:.3f} (threshold {config.seed_cv}); median seed "
      f"std {np.median([e['seed_std'] for e in per_layer.values()]):.3g}.",
      f"Datasets ({n_data} comparisons per layer): {len(by_dataset)} of "
      f"{len(layers)} layers differ (Welch p < {config.alpha} in more than "
      f"half of their comparisons); {100 * frac_d:.0f}% of all "
      f"(comparison, layer) pairs significant; median gap / seed spread "
      f"{np.median([e['dataset']['ratio'] for e in per_layer.values()]):.1f}"
      ".",
      f"Transformation sets ({n_set} comparisons per layer): {len(by_set)} "
      f"of {len(layers)} layers differ; {100 * frac_s:.0f}% of all pairs "
      f"significant; median gap / seed spread "
      f"{np.median([e['set']['ratio'] for e in per_layer.values()]):.1f}.",
      "Expected finding (seeds agree, and most layers change with the "
      f"dataset and with the transformation set at p < {config.alpha}) "
      + verdict,
  ]
  return {
      "tables": [
          _runner.table(
              f"Per layer: seed spread vs dataset and set differences "
              f"(medians over groups / comparisons; {config.num_seeds} "
              "seeds per group)",
              ["layer", "seed std", "seed CV", "Δ datasets",
               "Δ / spread", f"p < {config.alpha}", "Δ sets", "Δ / spread",
               f"p < {config.alpha}"], rows),
          _runner.table("NV per group (dataset/regime/measured set), mean "
                        "± std over seeds", ["group", *show], group_rows),
          _runner.table("Accuracy over seeds (clean; under each set)",
                        ["dataset", "augment", "clean", *config.sets],
                        acc_rows),
      ],
      "findings": findings,
      "metrics": {"per_layer": per_layer, "comparisons": comparisons,
                  "median_seed_cv": median_cv, "seeds_agree": seeds_agree,
                  "layers_by_dataset": by_dataset, "layers_by_set": by_set,
                  "accuracy": {f"{d}/{a}": v for (d, a), v in
                               accuracy.items()},
                  "expected_held": verdict == "held.", "verdict": verdict},
      "seeds": [config.seed + i for i in range(config.num_seeds)],
  }
