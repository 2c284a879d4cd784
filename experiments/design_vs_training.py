"""The NV profile over depth belongs to the architecture, not its training.

Command::

    invjax experiment design_vs_training --out DIR --no-checkpoints
    invjax experiment design_vs_training --set num_seeds=3
    invjax experiment design_vs_training --smoke --out /tmp/d
    invjax sweep experiments/design_vs_training.py --out DIR  # cells only

Quiroga, Torrents-Barrena, Lanzarini and Puig ("Invariance and
same-equivariance measures for convolutional neural networks", CLEI
Electronic Journal 24(1), 2021) state that "the distribution of invariance
across the layers of a network has a well defined structure that is
dependent only on the network design and not on the training process".
This experiment tests it. Four architectures (SimpleConv,
AllConvolutional, VGG16D, ResNet18 of `invjax.models`, at small widths on
the CPU as in `architectures_cifar10`) × three **training processes** ×
``num_seeds`` seeds, one sweep cell each (``architecture``, ``training``,
``seed``):

* ``random_init``: the initialization alone, no training;
* ``adam_cosine``: the default of `invjax.train.TrainConfig` (Adam, cosine
  decay to 0) at learning rate ``adam_learning_rate``, ``steps`` updates;
* ``sgd_constant``: SGD with momentum ``sgd_momentum`` and a constant
  learning rate ``sgd_learning_rate``, the same number of updates.

A cell's seed s fixes the initialization (split(PRNGKey(s))[1], as in
`invjax.train.fit`), the batch order and the dropout keys, so the
``random_init`` profile of seed s is exactly where both trainings of seed
s start. "Training process" therefore covers: trained or not, the
optimizer and its schedule (Adam + cosine vs SGD + momentum + constant
rate, each at its own learning rate) and the seed (initialization, batch
order, dropout). It does not cover the data (one MNIST subset for all),
the number of steps, the batch size, weight decay or augmentation.
Augmentation is left out on purpose: it is known to lower NV in the last
layers (`mnist_rotation_augmentation`, experiment 1), so the claim cannot
hold for it as stated; the paper's own claim is about unaugmented models.

Every cell measures every layer's normalized variance NV = TV / SV
(`invjax.measures.normalized_variance`) under ``num_rotations`` rotations
on ``n_measure`` held-out images. A **profile** is the per-layer mean NV
against relative depth (layer i of L at 100·i/(L−1)%,
`invjax.plot.relative_depth`), linearly interpolated to ``depth_points``
evenly spaced depths in [0, 100]% (`profile`). The similarity of two
profiles is the Pearson correlation of their interpolated values (their
shape; the mean |ΔNV| over the grid, which also sees their level, is
reported beside it). The test (`permutation_test`): with architecture
labels on the profiles,

    statistic = mean r over pairs of the same architecture
                − mean r over pairs of different architectures,

and p = (1 + #{permutations with statistic ≥ observed}) / (1 +
``permutations``), the architecture labels shuffled over the profiles
(group sizes kept; NumPy generator seeded by ``permutation_seed``). It is
run on all profiles, on the trained profiles only (optimizer, schedule and
seed vary) and on the pairs of one random-init and one trained profile only
(the claim at its strongest: training itself does not move the profile
away from the architecture's). An exploratory table, added after the first
full run showed that training mostly moves the last layers, repeats the
all-profiles and random-init-vs-trained tests on the grid points up to
``depth_cutoffs`` (80, 90, 95%); the expected finding is judged on the
whole depth only.

Data: ``n_train`` stratified MNIST training images (default 3,000) and
``n_measure`` stratified test images (default 200) from ``$INVJAX_DATA``
or ``../shared/data``; ``--set dataset=digits`` uses scikit-learn's
bundled digits as the other digit experiments (smoke mode does).

Runtime: CPU full (4 architectures × 3 trainings × 3 seeds = 36 profiles,
24 of them trained; widths 8, 200 steps, 200 images × 16 rotations): 172 s
on 2 idle CPU cores with an empty compile cache (2026-12-01), most of it
compiling and training ResNet18 and VGG16D; with ``num_seeds=2`` 136 s.
Smoke mode (SimpleConv and AllConvolutional, 2 seeds) about 30 s. GPU
preset (``preset=gpu``: 60,000 MNIST images, the papers' MNIST widths,
3,000 steps, 5 seeds): an estimate of 20–30 min on one H100 (the GPU
settings have not been run).

Expected result (the paper's claim): profiles of one architecture are more
alike than profiles of different architectures whatever the training
process — statistic > 0 with p < ``alpha`` — and this holds between the
random-init and the trained profiles too.
"""

from __future__ import annotations

import functools
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
from experiments import mnist_rotation_augmentation as exp1  # pylint: disable=g-import-not-at-top,wrong-import-position

ARCHITECTURES = ("SimpleConv", "AllConvolutional", "VGG16D", "ResNet18")
TRAININGS = ("random_init", "adam_cosine", "sgd_constant")

DEFAULTS = dict(
    dataset="mnist",        # "mnist" or "digits" (bundled)
    data_seed=0,
    n_train=3000,
    n_measure=200,
    architectures=list(ARCHITECTURES),
    trainings=list(TRAININGS),
    num_seeds=3,            # seeds seed, ..., seed + num_seeds − 1
    simpleconv_channels=8,
    simpleconv_fc=32,
    allconv_filters=8,
    vgg_base=8,
    vgg_fc=32,
    resnet_width=8,
    steps=200,
    batch_size=64,
    adam_learning_rate=3e-3,   # adam_cosine
    sgd_learning_rate=0.05,    # sgd_constant
    sgd_momentum=0.9,
    num_rotations=16,
    measure_batch_size=50,
    depth_points=20,        # the common grid of relative depths
    # Exploratory (chosen after the first full run): the tests again on the
    # grid points at most this deep, i.e. without the final layers.
    depth_cutoffs=[80.0, 90.0, 95.0],
    permutations=2000,
    permutation_seed=0,
    alpha=0.01,
    architecture=None,      # a cell's architecture, set by get_sweep
    training=None,          # a cell's training process, set by get_sweep
)

# Smoke mode: the two cheapest architectures (VGG16D and ResNet18 take most
# of a minute each to compile on 2 CPU cores), the digit experiments' smoke
# sizes (SimpleConv C = 4, fc = 8 shares their compiled programs).
SMOKE = dict(_runner.SMOKE_DIGITS, architectures=["SimpleConv",
                                                  "AllConvolutional"],
             simpleconv_channels=4, simpleconv_fc=8, allconv_filters=2,
             vgg_base=2, vgg_fc=8, resnet_width=2, num_rotations=4,
             num_seeds=2, permutations=200)
del SMOKE["channels"], SMOKE["fc"]

PRESETS = {
    "gpu": dict(n_train=60000, n_measure=1000, num_seeds=5,
                simpleconv_channels=128, simpleconv_fc=128,
                allconv_filters=32, vgg_base=16, vgg_fc=64, resnet_width=64,
                steps=3000, batch_size=128, measure_batch_size=100),
}


def get_config(smoke: bool = False, **overrides) -> _runner.Config:
  """The config; ``smoke`` for tiny settings, overrides as ``key=value``."""
  config = _runner.make_config(DEFAULTS, smoke=smoke, smoke_settings=SMOKE,
                               presets=PRESETS, overrides=overrides)
  _runner.check_choice(config, "dataset", ("mnist", "digits"))
  for key, known in (("architectures", ARCHITECTURES),
                     ("trainings", TRAININGS)):
    unknown = set(config[key]) - set(known)
    if unknown:
      raise ValueError(f"unknown {key} {sorted(unknown)}; known: "
                       f"{list(known)}")
  if len(config.architectures) < 2:
    raise ValueError("the test compares architectures: architectures needs "
                     f"at least 2, got {config.architectures}")
  if config.num_seeds < 1 or len(config.trainings) * config.num_seeds < 2:
    raise ValueError("each architecture needs at least 2 profiles "
                     "(trainings × num_seeds ≥ 2)")
  if config.depth_points < 2:
    raise ValueError(f"depth_points must be ≥ 2, got {config.depth_points}")
  return config


@functools.lru_cache(maxsize=2)
def _load(dataset, root, data_seed, n_train, n_measure):
  return _runner.load_digit_data(dict(
      dataset=dataset, data_dir=root, data_seed=data_seed, n_train=n_train,
      n_measure=n_measure))


def load_data(config):
  """``(train_x, train_y, measure_x, measure_y)``, read once per process."""
  return _load(config.dataset, str(_runner.data_dir(config)),
               config.data_seed, config.n_train, config.n_measure)


def build(name: str, config):
  """Architecture ``name`` at the config's width."""
  from invjax import models  # pylint: disable=g-import-not-at-top
  if name == "SimpleConv":
    return models.SimpleConv(channels=config.simpleconv_channels,
                             fc=config.simpleconv_fc)
  if name == "AllConvolutional":
    return models.AllConvolutional(filters=config.allconv_filters)
  if name == "VGG16D":
    return models.VGG16D(base=config.vgg_base, fc=config.vgg_fc)
  return models.ResNet18(width=config.resnet_width)


def optimizer_settings(training: str, config) -> dict:
  """`_runner.fit` keywords of a trained process (optimizer, schedule, η)."""
  if training == "adam_cosine":
    return dict(optimizer="adam", schedule="cosine",
                learning_rate=config.adam_learning_rate)
  if training == "sgd_constant":
    return dict(optimizer="sgd", momentum=config.sgd_momentum,
                schedule="constant", learning_rate=config.sgd_learning_rate)
  raise ValueError(f"{training!r} is not a trained process")


def get_sweep(config: _runner.Config | None = None) -> list[dict]:
  """The cells: every (architecture, training, seed), seed fastest."""
  from invjax import sweep  # pylint: disable=g-import-not-at-top
  config = (get_config() if config is None else
            _runner.resolve(get_config, config))
  return sweep.product(
      architecture=list(config.architectures),
      training=list(config.trainings),
      seed=[config.seed + i for i in range(config.num_seeds)])


def run(config, outdir) -> dict:
  """One cell, as `invjax sweep` calls it (presets, smoke mode resolved)."""
  return run_cell(_runner.resolve(get_config, config), outdir)


def initial_variables(model, seed: int, sample):
  """The variables `invjax.train.fit` starts from with seed ``seed``."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from invjax._src import train_step  # pylint: disable=g-import-not-at-top
  # fit's own jitted initializer (split(PRNGKey(seed))[1]), so the two share
  # one compilation and the random-init profile is the trained runs' start.
  return train_step.init_variables(model, seed, jnp.asarray(sample[:1]))


def run_cell(config: _runner.Config, outdir) -> dict:
  """Initializes or trains one network, measures it; ``{"nv": result}``."""
  import invjax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  _runner.check_choice(config, "architecture", ARCHITECTURES)
  _runner.check_choice(config, "training", TRAININGS)
  name, training, seed = config.architecture, config.training, config.seed
  train_x, train_y, test_x, test_y = load_data(config)
  model = build(name, config)
  if training == "random_init":
    variables = initial_variables(model, seed, train_x)
  else:
    variables = _runner.fit(
        model, config, train_x, train_y, outdir=outdir,
        label=f"{name}_{training}_seed{seed}", seed=seed,
        **optimizer_settings(training, config))
  accuracy = _runner.evaluate(model, variables, test_x, test_y)
  result = invjax.measure(
      invjax.capture.linen(model, variables), test_x,
      exp1.rotations(config.num_rotations),
      invjax.measures.normalized_variance(),
      batch_size=config.measure_batch_size, layers=_runner.not_output,
      progress=_runner.progress(config))
  n_params = sum(int(np.size(p)) for p in
                 jax.tree.leaves(variables["params"]))
  _runner.write_cell_record(outdir, {"accuracy": accuracy["accuracy"],
                                     "params": n_params})
  return {"nv": _runner.maybe_compact(result, config)}


# ----------------------------------------------------------------------------
# The analysis (NumPy only; the tests check it on synthetic profiles).
# ----------------------------------------------------------------------------


def depth_grid(points: int) -> np.ndarray:
  """``points`` evenly spaced relative depths in [0, 100]%."""
  return np.linspace(0.0, 100.0, int(points))


def profile(result, grid: np.ndarray) -> np.ndarray:
  """Per-layer mean NV on ``grid``: linear between layers at their
  `invjax.plot.relative_depth`; non-finite layers are skipped."""
  from invjax import plot  # pylint: disable=g-import-not-at-top
  v = np.array([result.per_layer[l] for l in result.layers], np.float64)
  x = plot.relative_depth(len(v))
  ok = np.isfinite(v)
  if not ok.any():
    return np.full(len(grid), np.nan)
  return np.interp(grid, x[ok], v[ok])


def correlations(profiles: np.ndarray) -> np.ndarray:
  """(P, P) Pearson correlations of the rows of ``profiles`` (P, G).

  A constant profile has no defined correlation: its row and column are
  NaN (and left out of every mean).
  """
  p = np.asarray(profiles, np.float64)
  c = p - p.mean(axis=1, keepdims=True)
  norm = np.sqrt((c * c).sum(axis=1))
  with np.errstate(invalid="ignore", divide="ignore"):
    u = c / norm[:, None]
    r = u @ u.T
  r[~np.isfinite(norm) | (norm == 0)] = np.nan
  r[:, ~np.isfinite(norm) | (norm == 0)] = np.nan
  return np.clip(r, -1.0, 1.0)


def mean_abs_differences(profiles: np.ndarray) -> np.ndarray:
  """(P, P) mean |Δ| over the grid between every two profiles."""
  p = np.asarray(profiles, np.float64)
  return np.abs(p[:, None, :] - p[None, :, :]).mean(axis=2)


def _pair_stat(values, same, mask):
  """mean over same-label pairs − mean over different-label pairs."""
  ok = mask & np.isfinite(values)
  w, a = ok & same, ok & ~same
  within = values[w].mean() if w.any() else np.nan
  across = values[a].mean() if a.any() else np.nan
  return within - across, within, across


def permutation_test(corr: np.ndarray, labels, *, pairs: np.ndarray | None
                     = None, num_permutations: int = 2000, seed: int = 0
                     ) -> dict:
  """Within-label minus across-label mean correlation, and its p-value.

  Args:
    corr: (P, P) symmetric similarities (`correlations`).
    labels: (P,) a label per profile (the architecture).
    pairs: optional (P, P) bool, the pairs (i < j) that count; default all.
    num_permutations: label shuffles (group sizes kept).
    seed: of the NumPy generator drawing them.

  Returns:
    ``{"statistic", "within", "across", "pvalue", "num_within",
    "num_across", "null_mean", "null_std", "num_permutations"}`` with
    p = (1 + #{shuffled statistic ≥ observed}) / (1 + num_permutations)
    (a shuffle whose statistic is undefined counts as not ≥).
  """
  labels = np.asarray(labels)
  n = len(labels)
  iu = np.triu_indices(n, 1)
  values = np.asarray(corr, np.float64)[iu]
  mask = (np.ones(len(values), bool) if pairs is None
          else np.asarray(pairs, bool)[iu])
  same = labels[iu[0]] == labels[iu[1]]
  stat, within, across = _pair_stat(values, same, mask)
  rng = np.random.default_rng(seed)
  null = np.empty(num_permutations)
  for k in range(num_permutations):
    lab = rng.permutation(labels)
    null[k] = _pair_stat(values, lab[iu[0]] == lab[iu[1]], mask)[0]
  exceed = int(np.sum(np.isfinite(null) & (null >= stat - 1e-12)))
  return dict(statistic=float(stat), within=float(within),
              across=float(across),
              pvalue=(1 + exceed) / (1 + num_permutations),
              num_within=int((mask & same & np.isfinite(values)).sum()),
              num_across=int((mask & ~same & np.isfinite(values)).sum()),
              null_mean=float(np.nanmean(null)),
              null_std=float(np.nanstd(null)),
              num_permutations=int(num_permutations))


def _pair_mean(matrix, keys, select) -> tuple[float, int]:
  """Mean of ``matrix[i, j]`` over pairs i < j with select(keys[i], keys[j])."""
  vals = [matrix[i, j] for i, j in itertools.combinations(range(len(keys)), 2)
          if select(keys[i], keys[j]) and np.isfinite(matrix[i, j])]
  return (float(np.mean(vals)) if vals else float("nan")), len(vals)


def _rand(k) -> bool:
  return k[1] == "random_init"


# Pair groups of the similarity table: (label, select(key_i, key_j)) with
# keys (architecture, training, seed).
PAIR_GROUPS = (
    ("same arch., same training, other seed",
     lambda a, b: a[0] == b[0] and a[1] == b[1]),
    ("same arch., random init vs trained, same seed (its start)",
     lambda a, b: a[0] == b[0] and _rand(a) != _rand(b) and a[2] == b[2]),
    ("same arch., random init vs trained, any seed",
     lambda a, b: a[0] == b[0] and _rand(a) != _rand(b)),
    ("same arch., Adam+cosine vs SGD+constant",
     lambda a, b: a[0] == b[0] and {a[1], b[1]} == {"adam_cosine",
                                                  "sgd_constant"}),
    ("same arch., all pairs", lambda a, b: a[0] == b[0]),
    ("other arch., random init vs random init",
     lambda a, b: a[0] != b[0] and _rand(a) and _rand(b)),
    ("other arch., trained vs trained",
     lambda a, b: a[0] != b[0] and not _rand(a) and not _rand(b)),
    ("other arch., random init vs trained",
     lambda a, b: a[0] != b[0] and _rand(a) != _rand(b)),
    ("other arch., all pairs", lambda a, b: a[0] != b[0]),
)


def analyze(keys, profiles: np.ndarray, *, num_permutations: int, seed: int,
            grid: np.ndarray | None = None, cutoffs=()) -> dict:
  """Similarities and the three permutation tests of ``profiles``.

  Args:
    keys: (architecture, training, seed) per profile.
    profiles: (P, G) interpolated profiles, in the order of ``keys``.
    num_permutations, seed: of `permutation_test`.
    grid: (G,) the relative depths of the profiles' columns (for
      ``cutoffs``).
    cutoffs: depths d (%): the all-profiles and random-init-vs-trained tests
      again on the columns with grid ≤ d (``"depth_ranges"``).

  Returns:
    ``{"corr", "mad", "groups", "tests", "per_architecture", "matrix",
    "architectures", "depth_ranges"}``.
  """
  keys = [tuple(k) for k in keys]
  corr = correlations(profiles)
  mad = mean_abs_differences(profiles)
  arch = np.array([k[0] for k in keys])
  random = np.array([_rand(k) for k in keys])
  groups = {}
  for label, select in PAIR_GROUPS:
    r, n = _pair_mean(corr, keys, select)
    d, _ = _pair_mean(mad, keys, select)
    groups[label] = dict(r=r, mad=d, pairs=n)
  tests = {}
  tests["all profiles"] = permutation_test(
      corr, arch, num_permutations=num_permutations, seed=seed)
  if (~random).sum() >= 2:
    sub = np.flatnonzero(~random)
    tests["trained only"] = permutation_test(
        corr[np.ix_(sub, sub)], arch[sub], num_permutations=num_permutations,
        seed=seed)
  if random.any() and (~random).any():
    tests["random init vs trained pairs"] = permutation_test(
        corr, arch, pairs=random[:, None] != random[None, :],
        num_permutations=num_permutations, seed=seed)
  names = list(dict.fromkeys(arch))
  per_arch = {}
  for a in names:
    rec = {}
    for label, select in (
        ("random_vs_trained_within", lambda x, y, a=a: x[0] == a == y[0]
         and _rand(x) != _rand(y)),
        ("random_vs_trained_across", lambda x, y, a=a: (x[0] == a) != (
            y[0] == a) and _rand(x) != _rand(y)),
        ("trained_vs_trained_within", lambda x, y, a=a: x[0] == a == y[0]
         and not _rand(x) and not _rand(y)),
        ("random_vs_random_within", lambda x, y, a=a: x[0] == a == y[0]
         and _rand(x) and _rand(y)),
        ("all_within", lambda x, y, a=a: x[0] == a == y[0]),
        ("all_across", lambda x, y, a=a: (x[0] == a) != (y[0] == a)),
    ):
      rec[label] = _pair_mean(corr, keys, select)[0]
    per_arch[a] = rec
  matrix = np.full((len(names), len(names)), np.nan)
  for i, a in enumerate(names):
    for j, b in enumerate(names):
      matrix[i, j] = _pair_mean(corr, keys, lambda x, y, a=a, b=b: (
          {x[0], y[0]} == {a, b} and (a == b or x[0] != y[0])))[0]
  ranges = {}
  for cut in cutoffs:
    cols = np.asarray(grid) <= float(cut) + 1e-9
    if cols.sum() < 3:
      raise ValueError(f"depth cutoff {cut}% keeps {int(cols.sum())} grid "
                       "points; at least 3 are needed")
    c = correlations(np.asarray(profiles)[:, cols])
    rec = {"points": int(cols.sum()), "all profiles": permutation_test(
        c, arch, num_permutations=num_permutations, seed=seed)}
    if random.any() and (~random).any():
      rec["random init vs trained pairs"] = permutation_test(
          c, arch, pairs=random[:, None] != random[None, :],
          num_permutations=num_permutations, seed=seed)
    ranges[float(cut)] = rec
  return dict(corr=corr, mad=mad, groups=groups, tests=tests,
              per_architecture=per_arch, matrix=matrix, architectures=names,
              depth_ranges=ranges)


def _matrix_figure(keys, corr):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n = len(keys)
  size = max(5.0, 0.28 * n + 2.5)
  fig, ax = plt.subplots(figsize=(size + 1.0, size))
  im = ax.imshow(corr, vmin=-1, vmax=1, cmap="RdBu_r")
  labels = [f"{a} {t} s{s}" for a, t, s in keys]
  ax.set_xticks(range(n), labels, rotation=90, fontsize=6)
  ax.set_yticks(range(n), labels, fontsize=6)
  bounds = [i for i in range(1, n) if keys[i][0] != keys[i - 1][0]]
  for b in bounds:
    ax.axhline(b - 0.5, color="k", linewidth=0.8)
    ax.axvline(b - 0.5, color="k", linewidth=0.8)
  fig.colorbar(im, ax=ax, label="Pearson r of NV profiles")
  ax.set_title("NV profile correlations (blocks: architectures)")
  return fig


def _profiles_figure(keys, profiles, grid):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(7, 4.5))
  names = list(dict.fromkeys(k[0] for k in keys))
  colours = {a: f"C{i}" for i, a in enumerate(names)}
  styles = {"random_init": ":", "adam_cosine": "-", "sgd_constant": "--"}
  seen = set()
  for key, p in zip(keys, profiles):
    a, t, _ = key
    label = None
    if (a, t) not in seen:
      seen.add((a, t))
      label = f"{a}, {t}"
    ax.plot(grid, p, color=colours[a], linestyle=styles.get(t, "-"),
            linewidth=1.2, alpha=0.85, label=label)
  ax.set_xlabel("relative depth (%)")
  ax.set_ylabel("normalized variance (layer mean)")
  ax.set_title(f"Interpolated NV profiles ({len(grid)} depths)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6, ncol=2)
  return fig


def summarize(config: _runner.Config, table, outdir) -> dict:
  """Profiles, similarities, permutation tests and figures from the cells."""
  from invjax import plot  # pylint: disable=g-import-not-at-top
  grid = depth_grid(config.depth_points)
  keys, profiles, results, records = [], [], {}, {}
  for overrides, cell in zip(get_sweep(config), _runner.cell_ids(
      sys.modules[__name__], config)):
    key = (overrides["architecture"], overrides["training"],
           int(overrides["seed"]))
    result = _runner.cell_results(outdir, cell)["nv"][0]
    keys.append(key)
    results[key] = result
    records[key] = _runner.read_cell_record(outdir, cell)
    profiles.append(profile(result, grid))
  profiles = np.array(profiles)
  out = analyze(keys, profiles, num_permutations=config.permutations,
                seed=config.permutation_seed, grid=grid,
                cutoffs=config.depth_cutoffs)
  seeds = sorted({k[2] for k in keys})
  n_measured = next(iter(results.values())).settings.get("num_samples")

  nv = table[table["measure"] == "normalized_variance"]
  _runner.save_figure(outdir, "profiles_by_architecture", plot.sweep_spread(
      nv, over="seed", facet="architecture", depth="relative", ncols=2,
      title="NV per layer: mean ± std over seeds, one curve per training"))
  _runner.save_figure(outdir, "profiles_interpolated",
                      _profiles_figure(keys, profiles, grid))
  _runner.save_figure(outdir, "profile_correlations",
                      _matrix_figure(keys, out["corr"]))

  depths = (0, 25, 50, 75, 100)
  rows = []
  for a in config.architectures:
    for t in config.trainings:
      ks = [k for k in keys if k[0] == a and k[1] == t]
      acc = np.array([records[k]["accuracy"] for k in ks])
      at = np.array([[np.interp(d, grid, profiles[keys.index(k)])
                      for d in depths] for k in ks])
      mean_nv = np.array([results[k].mean() for k in ks])
      rows.append([a, t, records[ks[0]]["params"],
                   len(results[ks[0]].layers),
                   f"{acc.mean():.3f} ± {acc.std():.3f}"]
                  + list(at.mean(axis=0)) + [mean_nv.mean()])
  group_rows = [[label, g["r"], g["mad"], g["pairs"]]
                for label, g in out["groups"].items()]
  test_rows = [[name, t["within"], t["across"], t["statistic"],
                f"{t['null_mean']:.3g} ± {t['null_std']:.2g}", t["pvalue"],
                f"{t['num_within']} / {t['num_across']}"]
               for name, t in out["tests"].items()]
  arch_rows = [[a, r["random_vs_trained_within"],
                r["random_vs_trained_across"],
                r["trained_vs_trained_within"], r["random_vs_random_within"],
                r["all_within"], r["all_across"]]
               for a, r in out["per_architecture"].items()]
  range_rows = []
  for cut, rec in list(out["depth_ranges"].items()) + [
      (100.0, dict(out["tests"], points=len(grid)))]:
    row = [f"≤ {cut:g}% ({rec['points']} points)"]
    for name in ("all profiles", "random init vs trained pairs"):
      t = rec.get(name)
      row += (["–"] * 3 if t is None else
              [t["within"], t["across"], t["pvalue"]])
    range_rows.append(row)
  names = out["architectures"]
  matrix_rows = [[a] + list(out["matrix"][i]) for i, a in enumerate(names)]

  t_all = out["tests"]["all profiles"]
  t_rt = out["tests"].get("random init vs trained pairs")
  t_tr = out["tests"].get("trained only")
  alpha = config.alpha
  held_all = t_all["statistic"] > 0 and t_all["pvalue"] < alpha
  held_rt = t_rt is not None and t_rt["statistic"] > 0 and (
      t_rt["pvalue"] < alpha)
  held = bool(held_all and held_rt)

  def test_line(name, t):
    return (f"{name}: within-architecture mean r {t['within']:.3f} vs "
            f"across {t['across']:.3f}, statistic {t['statistic']:.3f} "
            f"(shuffled labels {t['null_mean']:.3f} ± {t['null_std']:.3f}), "
            f"permutation p = {t['pvalue']:.2g} ({t['num_permutations']} "
            f"permutations, seed {config.permutation_seed})")

  findings = [
      "What \"training process\" covers here: trained or not (random "
      "initialization), the optimizer and schedule (Adam + cosine at "
      f"η = {config.adam_learning_rate:g} vs SGD + momentum "
      f"{config.sgd_momentum:g} at a constant η = "
      f"{config.sgd_learning_rate:g}; {config.steps} steps, batch "
      f"{config.batch_size}) and the seed ({len(seeds)} seeds: "
      "initialization, batch order, dropout; a random-init profile is the "
      "starting point of the trained profiles of its seed). Data, steps, "
      "batch size and weight decay are fixed; augmentation is left out "
      "(it lowers NV in the last layers, experiment 1).",
      test_line("All profiles", t_all) + ".",
  ]
  if t_tr is not None:
    findings.append(test_line("Trained profiles only", t_tr) + ".")
  if t_rt is not None:
    findings.append(test_line("Random-init vs trained pairs only", t_rt)
                    + "; per architecture, r(random init, trained) within "
                    "vs across: " + ", ".join(
                        f"{a} {r['random_vs_trained_within']:.3f} vs "
                        f"{r['random_vs_trained_across']:.3f}"
                        for a, r in out["per_architecture"].items()) + ".")
  if out["depth_ranges"]:
    findings.append(
        "Exploratory, chosen after seeing the full-depth result: without "
        "the final layers the random-init vs trained test gives " + ", ".join(
            f"p = {rec['random init vs trained pairs']['pvalue']:.2g} "
            f"(r within {rec['random init vs trained pairs']['within']:.3f}"
            f" vs across {rec['random init vs trained pairs']['across']:.3f})"
            f" up to {cut:g}% depth" for cut, rec in
            out["depth_ranges"].items()
            if "random init vs trained pairs" in rec)
        + " (table \"Depth range\"), against p = "
        + (f"{t_rt['pvalue']:.2g}" if t_rt is not None else "–")
        + " over the whole depth.")
  findings.append(
      "Expected finding (profiles more alike within an architecture than "
      f"across, p < {alpha}, for all profiles and for random-init vs "
      "trained pairs) " + ("held." if held else "did not hold."))
  metrics = dict(
      grid=grid, keys=[list(k) for k in keys], profiles=profiles,
      correlations=out["corr"], mean_abs_differences=out["mad"],
      pair_groups=out["groups"], tests=out["tests"],
      per_architecture=out["per_architecture"],
      architecture_matrix={a: dict(zip(names, out["matrix"][i]))
                           for i, a in enumerate(names)},
      depth_ranges={f"{c:g}": r for c, r in out["depth_ranges"].items()},
      accuracy={"/".join(map(str, k)): records[k]["accuracy"] for k in keys},
      per_layer={"/".join(map(str, k)): results[k].per_layer for k in keys},
      expected_held=held)
  return {
      "tables": [
          _runner.table(
              f"NV profiles ({config.num_rotations} rotations, {n_measured} "
              f"images; mean over {len(seeds)} seeds) at relative depth",
              ["architecture", "training", "params", "layers",
               "accuracy (mean ± std)"] + [f"NV@{d}%" for d in depths]
              + ["mean NV"], rows),
          _runner.table(
              f"Similarity of interpolated profiles ({config.depth_points} "
              "depths): Pearson r and mean |ΔNV|",
              ["pairs", "mean r", "mean |ΔNV|", "n pairs"], group_rows),
          _runner.table(
              "Permutation tests (architecture labels shuffled over "
              "profiles): statistic = mean r within − mean r across",
              ["profiles", "within", "across", "statistic",
               "shuffled (mean ± std)", "p", "pairs within / across"],
              test_rows),
          _runner.table(
              "Per architecture: mean r within it and against the others",
              ["architecture", "random vs trained (within)",
               "random vs trained, one of them this (across)",
               "trained vs trained (within)", "random vs random (within)",
               "all (within)", "all (across)"], arch_rows),
          _runner.table("Mean r between architectures (all trainings)",
                        ["architecture"] + names, matrix_rows),
          _runner.table(
              "Depth range (exploratory): the tests on the grid points up "
              "to a relative depth",
              ["depth range", "all: within r", "all: across r", "all: p",
               "random vs trained: within r", "random vs trained: across r",
               "random vs trained: p"], range_rows),
      ],
      "findings": findings,
      "metrics": metrics,
      "seeds": seeds,
  }
