"""Shared invariance (STIR) between CNN seeds and between a CNN and a G-CNN.

Command::

    invjax experiment shared_invariance
    invjax experiment shared_invariance --dataset mnist
    invjax sweep experiments/shared_invariance.py --out DIR  # one cell

A sweep of one cell, the whole experiment (see `get_sweep`).

Trains two SimpleConvs (seeds s, s + 1) and a C4GCNN on the same data and
compares their penultimate representations (SimpleConv ``fc1_act``, C4GCNN
``rotation_pool``) on held-out images with Nanda et al.'s STIR
(`invjax.similarity.stir`):

    STIR(m2 | m1) = CKA(m2(X), m2(X′)),  X′: inputs m1 represents like X,

found by representation inversion from random noise (`steps` normalized
gradient steps in [0, 1]), in both directions, beside plain linear CKA
(Kornblith et al. 2019) of m1(X) and m2(X).

Runtime: CPU full (digits, 100 images, 300 inversion steps, C = 8): 2–3
min on 2 CPU cores; smoke mode about 30 s. GPU preset (``preset=gpu``:
MNIST, 1,000 images, the paper's 1,000 steps, 3 seeds per inversion): a
few minutes on one H100 (an estimate: the GPU settings have not been timed).

Expected result (the hypothesis tested, after Nanda et al., ICML 2022, who
argue that CKA on natural inputs can overstate what two models share): STIR
is below CKA for every pair, and two seeds of the same architecture share
more invariances (higher STIR) than a SimpleConv and a G-CNN; STIR is
asymmetric for the latter pair — inputs the G-CNN represents alike include
rotated images the CNN tells apart, so STIR(CNN | G-CNN) should be the
lowest value.
"""

from __future__ import annotations

import pathlib
import sys

# `invjax sweep experiments/<name>.py` imports this file by its path: the
# repository root must be importable for the `experiments` package.
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

import numpy as np

from experiments import _runner  # pylint: disable=g-import-not-at-top,wrong-import-position

DEFAULTS = dict(
    dataset="digits",
    data_seed=0,
    n_train=10000,
    n_measure=100,          # images X whose inversions are compared
    channels=8,
    fc=32,
    steps=800,              # training steps
    batch_size=64,
    learning_rate=2e-3,
    schedule="cosine",
    stir_steps=300,         # inversion steps (Nanda et al.: 1,000)
    stir_step_size=0.1,     # L2 step in input space (28×28 in [0, 1])
    stir_seeds=1,           # random starts per sample, averaged
)

SMOKE = dict({k: v for k, v in _runner.SMOKE_DIGITS.items() if k in DEFAULTS},
             stir_steps=10)

PRESETS = {
    "gpu": dict(dataset="mnist", n_train=60000, n_measure=1000, channels=32,
                fc=128, steps=5000, batch_size=128, stir_steps=1000,
                stir_seeds=3),
}

FEATURES = {"SimpleConv": "fc1_act", "C4GCNN": "rotation_pool"}


def get_config(smoke: bool = False, **overrides) -> _runner.Config:
  """The config; ``smoke`` for tiny settings, overrides as ``key=value``."""
  config = _runner.make_config(DEFAULTS, smoke=smoke, smoke_settings=SMOKE,
                               presets=PRESETS, overrides=overrides)
  _runner.check_choice(config, "dataset", ("digits", "mnist"))
  return config


def features(model, variables):
  """images -> penultimate features (n, d); one function object per model."""
  import invjax  # pylint: disable=g-import-not-at-top
  layer = FEATURES[type(model).__name__]
  acts = invjax.capture.linen(model, variables, layers=[layer])

  def fn(x):
    return acts(x)[layer]

  return fn


def bar_figure(metrics: dict):
  """STIR in both directions beside linear CKA, one group of bars per pair."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 3.2))
  keys = (("m2_given_m1", "STIR(m2 | m1)"), ("m1_given_m2", "STIR(m1 | m2)"),
          ("cka", "linear CKA"))
  x = np.arange(len(metrics))
  for i, (key, label) in enumerate(keys):
    ax.bar(x + (i - 1) * 0.27, [v[key] for v in metrics.values()], 0.27,
           label=label)
  ax.set_xticks(x, [p.replace(" vs ", "\nvs ") for p in metrics])
  ax.set_ylim(0, 1.05)
  ax.set_ylabel("similarity")
  ax.legend(fontsize=8)
  return fig


def experiment(config: _runner.Config, outdir) -> dict:
  """Trains three models and computes STIR and CKA for two pairs."""
  import jax  # pylint: disable=g-import-not-at-top
  from invjax import models  # pylint: disable=g-import-not-at-top
  from invjax import similarity  # pylint: disable=g-import-not-at-top

  train_x, train_y, test_x, test_y = _runner.load_digit_data(config)
  c = config.channels
  specs = {
      f"SimpleConv_s{config.seed}": (
          models.SimpleConv(channels=c, fc=config.fc), config.seed),
      f"SimpleConv_s{config.seed + 1}": (
          models.SimpleConv(channels=c, fc=config.fc), config.seed + 1),
      f"C4GCNN_s{config.seed}": (
          models.C4GCNN(channels=(max(1, c // 2), c, c)), config.seed),
  }
  fns, accuracy = {}, {}
  for label, (model, seed) in specs.items():
    variables = _runner.fit(model, config, train_x, train_y, outdir=outdir,
                            label=label, seed=seed)
    accuracy[label] = _runner.evaluate(model, variables, test_x, test_y)
    fns[label] = features(model, variables)
  a, b, g = list(specs)
  pairs = [(a, b), (a, g)]
  rows, metrics = [], {}
  key = jax.random.PRNGKey(config.seed)
  for i, (m1, m2) in enumerate(pairs):
    out = similarity.stir(fns[m1], fns[m2], test_x,
                          key=jax.random.fold_in(key, i),
                          steps=config.stir_steps,
                          step_size=config.stir_step_size,
                          num_seeds=config.stir_seeds)
    r = {k: float(v) for k, v in out._asdict().items()}
    metrics[f"{m1} vs {m2}"] = r
    rows.append([m1, m2, r["m2_given_m1"], r["m1_given_m2"], r["cka"]])
    _runner.log(f"  {m1} vs {m2}: STIR {r['m2_given_m1']:.3f} / "
                f"{r['m1_given_m2']:.3f}, CKA {r['cka']:.3f}")
  np.savez(pathlib.Path(outdir) / "stir.npz",
           pairs=np.array([f"{m1} vs {m2}" for m1, m2 in pairs]),
           columns=np.array(["m2_given_m1", "m1_given_m2", "cka"]),
           values=np.array([[metrics[f"{m1} vs {m2}"][k] for k in
                             ("m2_given_m1", "m1_given_m2", "cka")]
                            for m1, m2 in pairs]))
  _runner.save_figure(outdir, "stir", bar_figure(metrics))
  same = metrics[f"{a} vs {b}"]
  cross = metrics[f"{a} vs {g}"]
  stir_same = min(same["m2_given_m1"], same["m1_given_m2"])
  stir_cross = min(cross["m2_given_m1"], cross["m1_given_m2"])
  below_cka = all(max(v["m2_given_m1"], v["m1_given_m2"]) < v["cka"]
                  for v in metrics.values())
  held = bool(stir_same > stir_cross and below_cka)
  asym = abs(cross["m2_given_m1"] - cross["m1_given_m2"])
  findings = [
      f"Same architecture ({a}, {b}): STIR {same['m2_given_m1']:.3f} / "
      f"{same['m1_given_m2']:.3f}, CKA {same['cka']:.3f}.",
      f"SimpleConv vs C4GCNN: STIR(G-CNN | CNN) {cross['m2_given_m1']:.3f}, "
      f"STIR(CNN | G-CNN) {cross['m1_given_m2']:.3f} (asymmetry "
      f"{asym:.3f}), CKA {cross['cka']:.3f}.",
      "Expected finding (STIR below CKA for every pair, and same-"
      "architecture seeds share more invariance than CNN vs G-CNN) "
      + ("held." if held else "did not hold."),
  ]
  acc_rows = [[m, accuracy[m]["accuracy"]] for m in specs]
  return {
      "tables": [
          _runner.table(
              f"Shared invariance on {len(test_y)} held-out images "
              f"({config.stir_steps} inversion steps)",
              ["m1", "m2", "STIR(m2 | m1)", "STIR(m1 | m2)", "linear CKA"],
              rows),
          _runner.table("Accuracy", ["model", "accuracy"], acc_rows),
      ],
      "findings": findings,
      "metrics": {"pairs": metrics, "accuracy": accuracy,
                  "expected_held": held},
      "seeds": [s for _, s in specs.values()],
  }


# A sweep of one cell, the whole experiment: STIR and CKA compare pairs of
# models, so the three trained networks must be together in one run.


def get_sweep(config: _runner.Config | None = None) -> list[dict]:
  """One cell: the whole experiment."""
  del config
  return [{}]


def run(config, outdir) -> dict:
  """The cell, as `invjax sweep` calls it (presets, smoke mode resolved)."""
  return run_cell(_runner.resolve(get_config, config), outdir)


def run_cell(config: _runner.Config, outdir) -> dict:
  """Runs `experiment` in the cell's folder; its MeasureResults."""
  return _runner.whole_cell(experiment, config, outdir)


def summarize(config: _runner.Config, table, outdir) -> dict:
  """The cell's summary; its figures and files copied to ``outdir``."""
  del table
  return _runner.whole_summary(sys.modules[__name__], config, outdir)
