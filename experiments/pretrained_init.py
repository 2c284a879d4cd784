"""Does pretraining on another dataset change a fine-tuned model's invariance?

Command::

    invjax experiment pretrained_init --out DIR --no-checkpoints
    invjax experiment pretrained_init --set preset=gpu     # paper-scale
    invjax sweep experiments/pretrained_init.py --out DIR  # cells only

Two tasks, each a 10-class problem on 28×28 grey images in [0, 1]: MNIST
(``task=mnist``; the bundled digits with ``--dataset digits``) and CIFAR-10
in greyscale (``task=cifar_grey``: ITU-R 601 luma of the whole 32×32 image,
resized to 28×28; the 10,000-image test batch is split into a stratified
``n_measure`` held out and at most ``n_train`` training images, as
`architectures_cifar10` does). SimpleConv is fine-tuned on a task from

* ``init=random``: `model.init` with the cell's seed;
* ``init=pretrained``: the weights of SimpleConv trained (``pretrain_steps``,
  no augmentation unless ``pretrain_augment=rot90``) on the *other* task,
  whose own initialization is that same seed, so that random and pretrained
  models of one seed differ only by the pretraining. Every weight is
  transferred, the class head too (both tasks have 10 classes);

each without (``augment=none``) and with (``augment=rot90``: one random
quarter turn per sample) augmentation during fine-tuning, from ``num_seeds``
seeds. Cells ``init=source`` measure the pretrained model itself on the
task's data, not fine-tuned: the invariance a fine-tuned model could retain.
With ``pretrain_steps == steps`` and no pretraining augmentation, the source
of seed s is the network of the cell (other task, random, none, s): same
seed, data and steps, so their values coincide (in results.md: a task's
"source" on the ``other`` images equals the other task's random-init,
unaugmented model on its ``test`` images).
One pretraining per (pretraining task, seed) is shared by its cells: it
trains in the run directory's ``checkpoints/pretrain_<task>_seed<s>`` (the
first cell that needs it trains it, the others restore it; shards on
different hosts sharing one folder should run the ``init=source`` cells
first).

Measured under C4 = ``rot90()`` on every layer, on three input
distributions of ``n_measure`` images: ``test`` (the task's held-out
images), ``other`` (the other task's held-out images) and ``noise``
(U[0, 1]^{28×28}, `genuine_invariance.noise_images`):

* G-EED (Kvinge et al.), cosine distance to the orbit centroid,
  ``geed()``: (1/|X||G|) Σ_x Σ_g [1 − cos(f(g·x), c(x))], c(x) the orbit
  mean of f;
* the same divided by the mean cosine distance between consecutive
  samples' centroids, ``geed(normalize="pairwise")``, which makes
  distributions and models of different spread comparable (the criterion);
* equivariant G-EED, ``geed(equivariant=True)``: the distance between
  ρ(g)⁻¹·f(g·x) and f(x) on the spatial layers (conv1..conv5, pools).

Held? For each (task, fine-tuning augmentation, distribution), Welch's
two-sided t-test (`invjax.significance.compare_layers`) of pretrained vs
random initialization of the pairwise-normalized G-EED at the logits over
the seeds, at level ``alpha``; also the effect in units of the seed spread,
|mean_pre − mean_rand| / sqrt((s_pre² + s_rand²)/2), and, without
augmentation, the retention r = (mean_pre − mean_rand) / (mean_source −
mean_rand) (0: no trace of the pretraining, 1: as invariant as the
pretrained model). "held." when at least half of the comparisons are
significant and r > 0 on the test images of every task; "did not hold."
when none is significant; "partly: ..." otherwise. Reported beside it, not
part of the criterion (it was added after the first run showed it): the
same test and r on every layer (no augmentation, test images), uncorrected
for the 15 layers (about 0.75 false positives per task at α = 0.05).

Result of the committed CPU run: partly. At the logits 3 of 12 comparisons
are significant, all with rotation augmentation, where the pretrained
models stay *less* invariant than the random ones (e.g. MNIST test 0.051
vs 0.030, p = 0.003); without augmentation the logits keep almost nothing
of the pretraining (r = 0.04 on MNIST, 0.12 on CIFAR grey, p > 0.3). The
hidden layers do keep it: p < 0.05 with r = 0.25–0.61 in 10 of 15 layers
of the CIFAR-grey models (conv2..fc1), and with r = 0.59–1.97 in 5 of 15
of the MNIST models (conv2..conv3_act), so the pretraining's invariance
survives fine-tuning inside the network but not at its output.

Runtime: CPU full (MNIST and CIFAR grey, 3,000 training images each, 500
measured per distribution; SimpleConv C = 8, fc = 32; 300 pretraining and
300 fine-tuning steps of 64; 3 seeds: 6 pretrainings, 24 fine-tunings, 30
cells): 13.4 min wall on 2 CPU cores shared with four other jobs (load
average 8–14), 5.1 min of CPU time, so about 4 min on 2 idle cores (an
estimate from the CPU time). Smoke mode (digits, task mnist only, no
augmentation, 2 seeds, 10 steps; 6 cells): 33 s wall and 21 s of CPU
time on 2 CPU cores at load average 9; GPU preset (``preset=gpu``:
60,000 MNIST and 9,000 CIFAR grey training images, 1,000 measured, C = 32,
fc = 128, 3,000 steps each, 5 seeds: 10 pretrainings, 40 fine-tunings):
about 30 min on one H100 (an estimate: the GPU settings have not been
timed).

Expected result (Kvinge, Emerson, Jorgenson, Vasquez, Doster, Lew, "In
What Ways Are Deep Neural Networks Invariant and How Should We Measure
This?", NeurIPS 2022, which asks "whether initializing a model with
pretrained weights has an effect on a trained model's invariance"): it
does — a model fine-tuned from pretrained weights keeps traces of the
pretrained model's invariance, and the invariance that augmentation gives is
not the same as the pretrained one.
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

from experiments import _runner  # pylint: disable=wrong-import-position

TASKS = ("mnist", "cifar_grey")
INITS = ("random", "pretrained")
AUGMENTS = ("none", "rot90")
DISTS = ("test", "other", "noise")
# The MeasureResults of a cell: name -> geed() keyword arguments.
MEASURES = {"geed": {}, "geed_pair": {"normalize": "pairwise"},
            "geed_eq": {"equivariant": True}}

DEFAULTS = dict(
    dataset="mnist",        # the MNIST task's images: "mnist" or "digits"
    data_seed=0,
    n_train=3000,           # training images per task
    n_measure=500,          # images per distribution
    tasks=list(TASKS),      # the fine-tuning tasks (cells)
    augments=list(AUGMENTS),  # fine-tuning augmentations (cells)
    num_seeds=3,
    channels=8,             # SimpleConv C
    fc=32,
    steps=300,              # fine-tuning steps
    pretrain_steps=300,
    pretrain_augment="none",  # or "rot90"
    batch_size=64,
    learning_rate=2e-3,
    schedule="cosine",
    measure_batch_size=100,
    alpha=0.05,             # level of Welch's test
    task=None,              # a cell's task, set by get_sweep
    init=None,              # a cell's initialization
    augment=None,           # a cell's fine-tuning augmentation
)

# Digits for MNIST, one task (pretrained on CIFAR grey), no augmentation
# (another train step to compile), two seeds: 6 cells.
SMOKE = dict(dataset="digits", n_train=200, n_measure=16, tasks=["mnist"],
             augments=["none"], num_seeds=2, channels=4, fc=8, steps=10,
             pretrain_steps=10, batch_size=32, measure_batch_size=16)

PRESETS = {
    "gpu": dict(n_train=60000, n_measure=1000, num_seeds=5, channels=32,
                fc=128, steps=3000, pretrain_steps=3000, batch_size=128),
}

LOGITS = "logits"


def get_config(smoke: bool = False, **overrides) -> _runner.Config:
  """The config; ``smoke`` for tiny settings, overrides as ``key=value``."""
  config = _runner.make_config(DEFAULTS, smoke=smoke, smoke_settings=SMOKE,
                               presets=PRESETS, overrides=overrides)
  _runner.check_choice(config, "dataset", ("mnist", "digits"))
  _runner.check_choice(config, "pretrain_augment", AUGMENTS)
  for key, allowed in (("tasks", TASKS), ("augments", AUGMENTS)):
    if not config[key] or set(config[key]) - set(allowed):
      raise ValueError(f"{key} must be a non-empty subset of "
                       f"{list(allowed)}, got {config[key]!r}")
  if config.num_seeds < 2:
    raise ValueError(f"num_seeds must be ≥ 2 to measure a spread, got "
                     f"{config.num_seeds}")
  return config


def get_sweep(config: _runner.Config | None = None) -> list[dict]:
  """The cells: (task, init, augment, seed), and the sources (task, seed)."""
  from invjax import sweep  # pylint: disable=g-import-not-at-top
  config = (get_config() if config is None else
            _runner.resolve(get_config, config))
  seeds = [config.seed + i for i in range(config.num_seeds)]
  cells = []
  for task in config.tasks:
    cells += sweep.product(task=[task], init=["source"], augment=["none"],
                           seed=seeds)
    cells += sweep.product(task=[task], init=list(INITS),
                           augment=list(config.augments), seed=seeds)
  return cells


def other_task(task: str) -> str:
  return TASKS[1 - TASKS.index(task)]


def load_task(config, task: str):
  """``(train_x, train_y, test_x, test_y)`` of a task (cached per process)."""
  key = (str(_runner.data_dir(config)), int(config.data_seed),
         int(config.n_train), int(config.n_measure))
  if task == "mnist":
    return _runner.cached_digit_data(config.dataset, *key)
  return _runner.cifar10_28(*key)


def build(config):
  from invjax import models  # pylint: disable=g-import-not-at-top
  return models.SimpleConv(channels=config.channels, fc=config.fc)


def _run_dir(outdir) -> pathlib.Path:
  """The run directory of cell folder ``outdir`` (``run/cells/<id>``)."""
  outdir = pathlib.Path(outdir)
  return outdir.parent.parent if outdir.parent.name == "cells" else outdir


_PRETRAINED: dict[str, object] = {}


def pretrained(config, task: str, seed: int, outdir):
  """SimpleConv trained on ``task`` from ``seed``; trained once per run.

  The workdir ``<run>/checkpoints/pretrain_<task>_seed<s>`` is the shared
  record: a finished one is restored, not retrained (`invjax.train.fit`
  resumes at its last step), and within a process the weights are kept.
  """
  from invjax import transforms as tr  # pylint: disable=g-import-not-at-top
  label = f"pretrain_{task}_seed{seed}"
  if config.pretrain_augment != "none":
    label += f"_{config.pretrain_augment}"
  run_dir = _run_dir(outdir)
  key = str(run_dir / "checkpoints" / label)
  if key not in _PRETRAINED:
    x, y, _, _ = load_task(config, task)
    _PRETRAINED[key] = _runner.fit(
        build(config), config, x, y, outdir=run_dir, label=label, seed=seed,
        steps=config.pretrain_steps,
        augment=tr.rot90() if config.pretrain_augment == "rot90" else None)
  return _PRETRAINED[key]


def inputs(config, task: str) -> dict[str, np.ndarray]:
  """The measured distributions of ``task``: test, other, noise."""
  # pylint: disable-next=g-import-not-at-top
  from experiments import genuine_invariance
  _, _, test_x, _ = load_task(config, task)
  _, _, other_x, _ = load_task(config, other_task(task))
  n = len(test_x)
  return {"test": test_x, "other": other_x[:n],
          "noise": genuine_invariance.noise_images(n, config.data_seed)}


def run(config, outdir) -> dict:
  """One cell, as `invjax sweep` calls it (presets, smoke mode resolved)."""
  return run_cell(_runner.resolve(get_config, config), outdir)


def run_cell(config: _runner.Config, outdir) -> dict:
  """Trains (or takes) one model and measures it on three distributions.

  Returns:
    ``{"<measure>_<dist>": MeasureResult}`` for every `MEASURES` × `DISTS`.
  """
  import invjax  # pylint: disable=g-import-not-at-top
  from invjax import measures as ms  # pylint: disable=g-import-not-at-top
  from invjax import transforms as tr  # pylint: disable=g-import-not-at-top
  _runner.check_choice(config, "task", TASKS)
  _runner.check_choice(config, "init", INITS + ("source",))
  _runner.check_choice(config, "augment", AUGMENTS)
  task, seed = config.task, int(config.seed)
  c4 = tr.rot90()
  model = build(config)
  train_x, train_y, test_x, test_y = load_task(config, task)
  record = {}
  start = None
  if config.init != "random":
    source = other_task(task)
    start = pretrained(config, source, seed, outdir)
    _, _, sx, sy = load_task(config, source)
    record["pretrain_accuracy"] = _runner.evaluate(model, start, sx, sy, c4)
  if config.init == "source":
    variables = start
  else:
    variables = _runner.fit(
        model, config, train_x, train_y, outdir=outdir,
        label=f"{task}_{config.init}_{config.augment}_seed{seed}", seed=seed,
        augment=c4 if config.augment == "rot90" else None, variables=start)
  record["accuracy"] = _runner.evaluate(model, variables, test_x, test_y, c4)
  _runner.write_cell_record(outdir, record)
  acts = invjax.capture.linen(model, variables)
  out = {}
  for dist, images in inputs(config, task).items():
    results = invjax.measure(
        acts, images, c4, [ms.geed(**kw) for kw in MEASURES.values()],
        batch_size=config.measure_batch_size, layers=_runner.not_output,
        progress=_runner.progress(config))
    for name, result in zip(MEASURES, results):
      out[f"{name}_{dist}"] = _runner.maybe_compact(result, config)
  return out


# ----------------------------------------------------------------------------
# Summary.
# ----------------------------------------------------------------------------


def _mean_std(v) -> str:
  v = np.asarray(v, np.float64)
  return f"{v.mean():.4g} ± {v.std(ddof=1):.2g}"


def _median_retention(per_layer: dict) -> float:
  return float(np.nanmedian([v["retention"] for v in per_layer.values()]))


def compare(pre, rand, layer: str, alpha: float) -> dict:
  """Pretrained vs random at ``layer``: means, spreads, Welch's test.

  ``effect`` is |mean_pre − mean_rand| / sqrt((s_pre² + s_rand²)/2), the
  gap in units of the seed spread (ddof = 1).
  """
  from invjax import significance  # pylint: disable=g-import-not-at-top
  a = np.array([r.per_layer[layer] for r in pre], np.float64)
  b = np.array([r.per_layer[layer] for r in rand], np.float64)
  test = significance.compare_layers(pre, rand, test="welch", alpha=alpha,
                                     layers=[layer])[layer]
  spread = float(np.sqrt((a.var(ddof=1) + b.var(ddof=1)) / 2))
  gap = float(a.mean() - b.mean())
  return dict(pretrained_mean=a.mean(), pretrained_std=a.std(ddof=1),
              random_mean=b.mean(), random_std=b.std(ddof=1), diff=gap,
              effect=abs(gap) / spread if spread > 0 else float("inf"),
              statistic=float(test["statistic"]),
              pvalue=float(test["pvalue"]),
              significant=bool(test["significant"]))


def summarize(config: _runner.Config, table, outdir) -> dict:
  """Tests pretrained vs random initialization from the cells' results."""
  from invjax import plot  # pylint: disable=g-import-not-at-top
  from invjax import significance  # pylint: disable=g-import-not-at-top
  del table  # compare_layers and seed_spread take the results themselves
  cells = _runner.cell_ids(sys.modules[__name__], config)
  results, accuracy = {}, {}
  for overrides, cell in zip(get_sweep(config), cells):
    key = (overrides["task"], overrides["init"], overrides["augment"])
    for name, (result,) in _runner.cell_results(outdir, cell).items():
      results.setdefault(key, {}).setdefault(name, []).append(result)
    accuracy.setdefault(key, []).append(
        _runner.read_cell_record(outdir, cell))
  seeds = [config.seed + i for i in range(config.num_seeds)]
  alpha = float(config.alpha)

  # The criterion: pairwise-normalized G-EED at the logits.
  comparisons, rows, retention = {}, [], {}
  for task in config.tasks:
    for aug in config.augments:
      for dist in DISTS:
        name = f"geed_pair_{dist}"
        c = compare(results[(task, "pretrained", aug)][name],
                    results[(task, "random", aug)][name], LOGITS, alpha)
        src = np.array([r.per_layer[LOGITS] for r in
                        results[(task, "source", "none")][name]])
        c["source_mean"] = float(src.mean())
        if aug == "none":
          denom = c["source_mean"] - c["random_mean"]
          c["retention"] = c["diff"] / denom if denom else float("nan")
          if dist == "test":
            retention[task] = c["retention"]
        comparisons[f"{task}/{aug}/{dist}"] = c
        rows.append([task, aug, dist,
                     f"{c['random_mean']:.4g} ± {c['random_std']:.2g}",
                     f"{c['pretrained_mean']:.4g} ± "
                     f"{c['pretrained_std']:.2g}",
                     _mean_std(src), c["effect"], c["pvalue"],
                     c.get("retention", "")])

  # The other measures, in-distribution: G-EED at the logits and the
  # equivariant G-EED of the last spatial layer (and over spatial layers).
  other_rows, others = [], {}
  for task in config.tasks:
    eq = results[(task, "random", config.augments[0])]["geed_eq_test"][0]
    last_spatial = [l for l in eq.layers if np.isfinite(eq.per_layer[l])][-1]
    for aug in config.augments:
      for name, layer in (("geed_test", LOGITS),
                          ("geed_eq_test", last_spatial)):
        c = compare(results[(task, "pretrained", aug)][name],
                    results[(task, "random", aug)][name], layer, alpha)
        others[f"{task}/{aug}/{name}/{layer}"] = c
        other_rows.append([task, aug, name, layer,
                           f"{c['random_mean']:.4g} ± {c['random_std']:.2g}",
                           f"{c['pretrained_mean']:.4g} ± "
                           f"{c['pretrained_std']:.2g}", c["effect"],
                           c["pvalue"]])

  # Descriptive, not the criterion: the same comparison on every layer
  # (no augmentation, test images), with the retention of each layer.
  layer_rows, per_layer, toward = [], {}, {}
  for task in config.tasks:
    pre = results[(task, "pretrained", "none")]["geed_pair_test"]
    rand = results[(task, "random", "none")]["geed_pair_test"]
    src = results[(task, "source", "none")]["geed_pair_test"]
    tests = significance.compare_layers(pre, rand, test="welch",
                                        alpha=alpha)
    per_layer[task] = {}
    for layer, t in tests.items():
      m_pre, m_rand, m_src = (float(np.mean([r.per_layer[layer] for r in g]))
                              for g in (pre, rand, src))
      denom = m_src - m_rand
      r = (m_pre - m_rand) / denom if denom else float("nan")
      per_layer[task][layer] = dict(
          pretrained_mean=m_pre, random_mean=m_rand, source_mean=m_src,
          retention=r, pvalue=float(t["pvalue"]),
          significant=bool(t["significant"]))
      layer_rows.append([task, layer, m_rand, m_pre, m_src, r,
                         float(t["pvalue"])])
    toward[task] = [l for l, v in per_layer[task].items()
                    if v["retention"] > 0 and v["significant"]]

  acc_rows = []
  for (task, init, aug), recs in accuracy.items():
    clean = [r["accuracy"]["accuracy"] for r in recs]
    rot = [r["accuracy"]["transformed_accuracy"] for r in recs]
    acc_rows.append([task, init, aug, _mean_std(clean), _mean_std(rot)])

  for task in config.tasks:
    groups = {f"{init}, {aug}": results[(task, init, aug)]["geed_pair_test"]
              for init in INITS for aug in config.augments}
    groups["source (not fine-tuned)"] = results[(task, "source", "none")][
        "geed_pair_test"]
    _runner.save_figure(outdir, f"geed_pair_{task}", plot.seed_spread(
        groups, title=f"{task}: pairwise G-EED under rot90, test images"))

  n_sig = sum(c["significant"] for c in comparisons.values())
  n_all = len(comparisons)
  retains = all(np.isfinite(r) and r > 0 for r in retention.values())
  if n_sig == 0:
    verdict = "did not hold."
  elif 2 * n_sig >= n_all and retains:
    verdict = "held."
  else:
    verdict = (f"partly: {n_sig} of {n_all} comparisons at the logits "
               "significant; retention at the logits on test images " +
               ", ".join(f"{t} {r:.2f}" for t, r in retention.items()) +
               "; hidden layers significantly closer to the source in " +
               ", ".join(f"{t} {len(v)} of {len(per_layer[t])}"
                         for t, v in toward.items()) + ".")
  findings = [
      "Pairwise G-EED at the logits, pretrained vs random initialization "
      f"(Welch p < {alpha:g}): {n_sig} of {n_all} (task, augmentation, "
      "distribution) comparisons significant: " + "; ".join(
          f"{k} {c['diff']:+.3g} (p = {c['pvalue']:.2g})"
          for k, c in comparisons.items()) + ".",
      "Retention without augmentation, test images ((pretrained − random) "
      "/ (source − random); 1: as invariant as the pretrained model): "
      + ", ".join(f"{t} {r:.2f}" for t, r in retention.items()) + ".",
      "Every layer, no augmentation, test images (descriptive: per-layer "
      "tests, uncorrected for the number of layers): pretrained "
      "significantly closer to the source than random in " + "; ".join(
          f"{t} {len(v)} of {len(per_layer[t])} layers"
          + (f" ({', '.join(v)})" if v else "")
          for t, v in toward.items()) + "; median retention over layers "
      + ", ".join(f"{t} {_median_retention(d):.2f}"
                  for t, d in per_layer.items()) + ".",
      f"Expected finding (initialization changes the fine-tuned model's "
      f"invariance: ≥ half the comparisons significant, retention > 0 in "
      f"every task) {verdict}",
  ]
  return {
      "tables": [
          _runner.table(
              f"Pairwise-normalized G-EED under rot90 at the logits, over "
              f"{len(seeds)} seeds (mean ± std; 0 = invariant); effect = "
              "|gap| / seed spread", ["task", "fine-tune aug.", "inputs",
                                      "random init", "pretrained init",
                                      "source (not fine-tuned)", "effect",
                                      "Welch p", "retention"], rows),
          _runner.table(
              "Test images: G-EED at the logits, equivariant G-EED at the "
              "last spatial layer", ["task", "fine-tune aug.", "measure",
                                     "layer", "random init",
                                     "pretrained init", "effect", "Welch p"],
              other_rows),
          _runner.table(
              "Every layer, no augmentation, test images: pairwise G-EED "
              "(mean over seeds), retention and Welch p (pretrained vs "
              "random)", ["task", "layer", "random init", "pretrained init",
                          "source", "retention", "Welch p"], layer_rows),
          _runner.table("Accuracy on the task's test images (mean ± std; "
                        "rot90: all four quarter turns)",
                        ["task", "init", "fine-tune aug.", "clean", "rot90"],
                        acc_rows),
      ],
      "findings": findings,
      "metrics": {
          "comparisons": comparisons, "other_measures": others,
          "retention": retention, "per_layer_no_augment_test": per_layer,
          "accuracy": {"/".join(k): v for k, v in accuracy.items()},
          "significant": n_sig, "comparisons_total": n_all,
          "expected_held": verdict == "held."},
      "seeds": seeds,
  }
