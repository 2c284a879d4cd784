"""Layer-wise NV barely depends on the random initialization.

Command::

    invjax experiment random_init_stability
    invjax experiment random_init_stability --set preset=gpu   # 30 seeds

Trains SimpleConv from ``num_seeds`` seeds (seed, seed + 1, ...), each
without and with rotation augmentation, and measures every layer's
normalized variance under 16 rotations (as `mnist_rotation_augmentation`).
Reports the per-layer mean ± standard deviation over seeds (the
`invjax.plot.seed_spread` figure), Welch's t-test of plain vs augmented per
layer (`invjax.plot.compare_layers`) and, per layer, the ratio of the
augmented-vs-plain gap to the across-seed spread,

    ratio = |mean_aug − mean_plain| / sqrt((std_aug² + std_plain²) / 2).

Data: the bundled digits (500 measured, 1,297 train); ``--dataset mnist``
uses MNIST as `mnist_rotation_augmentation` does.

Runtime: CPU full (5 seeds × 2 models, C = 8, 600 steps): 3–5 min on 2
CPU cores; smoke mode (2 seeds) about 40 s. GPU preset (30 seeds, MNIST,
C = 32, 3,000 steps): about 20 min on one H100 (an estimate: the GPU
settings have not been timed).

Expected result (Quiroga et al., "Measuring (in)variances in convolutional
networks", 2020/2023): the NV profile is a property of the architecture and
the training data, not of the initialization — the across-seed spread is
much smaller than the gap between the plain and the augmented model in the
final layers (ratio ≫ 1, Welch p < 0.01 there).
"""

from __future__ import annotations

import numpy as np

from experiments import _runner
from experiments import mnist_rotation_augmentation as exp1

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
)

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


def run(config: _runner.Config, outdir) -> dict:
  """Trains every seed with and without augmentation; compares the spreads."""
  from invjax import models  # pylint: disable=g-import-not-at-top
  from invjax import plot  # pylint: disable=g-import-not-at-top

  data = _runner.load_digit_data(config)
  measured = exp1.rotations(config.num_rotations)
  augment = exp1.rotations(config.augment_rotations)
  model = models.SimpleConv(num_classes=10, channels=config.channels,
                            fc=config.fc)
  seeds = [config.seed + i for i in range(config.num_seeds)]
  groups = {"plain": [], "augmented": []}
  accuracy = {"plain": [], "augmented": []}
  for seed in seeds:
    for label, aug in (("plain", None), ("augmented", augment)):
      _, acc, result = exp1.train_and_measure(
          model, config, data, outdir=outdir, label=f"{label}_seed{seed}",
          seed=seed, augment=aug, measured=measured)
      accuracy[label].append(acc)
      groups[label].append(result)

  _runner.save_figure(outdir, "seed_spread", plot.seed_spread(groups))
  tests = plot.compare_layers(groups["augmented"], groups["plain"],
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
