"""STIR and CKA matrices of models varying in seed, architecture, loss, data.

Command::

    invjax experiment shared_invariance_matrix --out DIR --no-checkpoints
    invjax experiment shared_invariance_matrix --set preset=gpu
    invjax sweep experiments/shared_invariance_matrix.py --out DIR  # cells

What is swept: nine digit classifiers (`MODELS`), each trained once in a
cell of its own, every one from its own seed (``seed`` + its index):

    cnn_a, cnn_b          SimpleConv, cross-entropy, training half 0
    allconv_a, allconv_b  AllConvolutional, cross-entropy, half 0
    gcnn_a, gcnn_b        C4GCNN (p4 G-CNN), cross-entropy, half 0
    cnn_ls                SimpleConv, label smoothing (ε = 0.1), half 0
    cnn_mse               SimpleConv, squared error of the logits against
                          the one-hot targets, half 0
    cnn_half1             SimpleConv, cross-entropy, training half 1

The two halves are disjoint, class-stratified halves of the training images
(the bundled digits at 28×28 not held out; ``--dataset mnist``: of
``n_train`` MNIST images). A last cell (``model=pairs``) reads the nine
trained models back from their cells' checkpoints and compares every
ordered pair on ``n_measure`` held-out images X with Nanda et al.'s STIR,

    STIR(b | a) = CKA(b(X), b(X′_a)),
    X′_a = argmin_{X′ ∈ [0, 1]^d} ‖a(X′) − a(X)‖₂ / ‖a(X)‖₂ (per image),

from random noise (`invjax.similarity.invert_representation`, the inversion
`invjax.similarity.stir` runs; ``stir_steps`` normalised gradient steps of
L2 length ``stir_step_size``), averaged over ``stir_seeds`` starts, and
with plain linear CKA(a(X), b(X)) (Kornblith et al. 2019). Each model is
inverted once and its X′_a is scored on every model, which is STIR by its
definition (`invjax.similarity.stir` inverts both models of each pair it is
given: 72 inversions for nine models instead of nine, with a different X′_a
in every pair). The representation of a model is the input of its final
linear classifier: SimpleConv ``fc1_act``, AllConvolutional ``conv8_act``
averaged over space (its logits are a linear map of that average), C4GCNN
``rotation_pool``. The diagonal, STIR(m | m), is the sanity check: near 1
when the inversion has converged. The values go into the sweep table as
MeasureResults (`invjax.similarity.as_result`) whose "layers" are the pair
names ``"b|a"`` (STIR(b | a)) and ``"a|b"`` (CKA, a before b in `MODELS`).

Runtime: CPU full (digits, halves of 866 images, C = 8, 500 steps, 64
measured images, 200 inversion steps): the committed run took 341 s wall
(189 s of CPU time) on 2 CPU cores shared with other jobs, with JAX's
persistent compile cache warm from an identical earlier run, which took
651 s wall (240 s CPU) at a load of ~12 with a cold cache and gave the same
numbers; about 4–5 min on 2 idle cores (an estimate from the CPU time);
smoke mode (three models, 10 steps, 10 inversion steps; no loss pair, so
the loss claim is not decided): 24 s wall on 2 lightly shared cores,
compile-bound. GPU preset (``preset=gpu``: MNIST halves of 30,000, C = 32,
5,000 steps, 1,000 measured images, the paper's 1,000 inversion steps, 3
starts): about 20–30 min on one H100 (an estimate: the GPU settings have
not been timed).

Expected result (Nanda, Speicher, Kolling, Dickerson, Gummadi, Weller,
"Measuring Representational Robustness of Neural Networks Through Shared
Invariances", ICML 2022): shared invariance (1) falls with architectural
difference, (2) depends on the training loss and (3) is asymmetric. Each
claim is decided on its own, from the off-diagonal STIR values:

1. Architecture, among the six cross-entropy models on half 0: the mean
   STIR over ordered pairs of the same architecture (different seeds)
   exceeds the mean over pairs of different architectures, by a one-sided
   Welch t-test at ``alpha`` = 0.05.
2. Loss, among the four SimpleConvs on half 0: the mean STIR over pairs
   trained with different losses is below the mean over the cross-entropy
   seed pair (cnn_a, cnn_b), by a one-sided Welch t-test at ``alpha``.
3. Asymmetry: |STIR(a | b) − STIR(b | a)| > ``asymmetry_threshold`` (0.05)
   for at least one pair.

The pair values share models, so they are not independent samples; the
t-tests are a guide to the size of the effect, not exact p-values. The
finding held if all three hold; "partly" names the ones that did. The
data axis (cnn_half1 against the half-0 SimpleConvs) is reported beside
them, with no claim attached.
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

# pylint: disable-next=g-import-not-at-top,wrong-import-position
from experiments import _runner

# name -> (architecture, loss, training half). Model i trains from seed
# ``config.seed + i`` (its index here), so no two models share an
# initialization or a batch order.
MODELS = {
    "cnn_a": ("SimpleConv", "ce", 0),
    "cnn_b": ("SimpleConv", "ce", 0),
    "allconv_a": ("AllConvolutional", "ce", 0),
    "allconv_b": ("AllConvolutional", "ce", 0),
    "gcnn_a": ("C4GCNN", "ce", 0),
    "gcnn_b": ("C4GCNN", "ce", 0),
    "cnn_ls": ("SimpleConv", "label_smoothing", 0),
    "cnn_mse": ("SimpleConv", "squared_error", 0),
    "cnn_half1": ("SimpleConv", "ce", 1),
}

PAIRS = "pairs"   # the `model` of the cell that compares the trained models

# The input of each architecture's final linear classifier; AllConvolutional
# is averaged over space (see `features`).
FEATURES = {"SimpleConv": "fc1_act", "AllConvolutional": "conv8_act",
            "C4GCNN": "rotation_pool"}

DEFAULTS = dict(
    dataset="digits",
    data_seed=0,
    n_train=10000,          # before halving (digits: all not held out)
    n_measure=64,           # images X whose inversions are compared
    models=list(MODELS),    # the compared models, in matrix order
    channels=8,             # SimpleConv C, AllConv F; the G-CNN (C/2, C, C)
    fc=32,
    steps=500,              # training steps
    batch_size=64,
    learning_rate=3e-3,
    schedule="cosine",
    label_smoothing=0.1,
    stir_steps=200,         # inversion steps (Nanda et al.: 1,000)
    stir_step_size=0.1,     # L2 step in input space (28×28 in [0, 1])
    stir_seeds=1,           # random starts per inversion, STIR averaged
    alpha=0.05,             # level of the one-sided Welch tests
    asymmetry_threshold=0.05,
    model=None,             # a cell's model (or "pairs"), set by get_sweep
)

SMOKE = dict({k: v for k, v in _runner.SMOKE_DIGITS.items() if k in DEFAULTS},
             models=["cnn_a", "cnn_b", "gcnn_a"], stir_steps=10)

PRESETS = {
    "gpu": dict(dataset="mnist", n_train=60000, n_measure=1000, channels=32,
                fc=128, steps=5000, batch_size=128, learning_rate=2e-3,
                stir_steps=1000, stir_seeds=3),
}


def get_config(smoke: bool = False, **overrides) -> _runner.Config:
  """The config; ``smoke`` for tiny settings, overrides as ``key=value``."""
  config = _runner.digit_config(DEFAULTS, smoke=smoke, smoke_settings=SMOKE,
                                presets=PRESETS, overrides=overrides)
  unknown = [m for m in config.models if m not in MODELS]
  if unknown or len(set(config.models)) < 2 or len(
      set(config.models)) != len(config.models):
    raise ValueError(f"models must be two or more distinct names of "
                     f"{list(MODELS)}; got {config.models}")
  return config


def get_sweep(config: _runner.Config | None = None) -> list[dict]:
  """One cell per model, then the ``pairs`` cell that compares them."""
  config = (get_config() if config is None else
            _runner.resolve(get_config, config))
  return [{"model": m} for m in config.models] + [{"model": PAIRS}]


# ----------------------------------------------------------------------------
# Models, losses, data.
# ----------------------------------------------------------------------------


def build(name: str, config):
  """``(model, loss_fn, half, seed)`` of model ``name``."""
  from invjax import models  # pylint: disable=g-import-not-at-top
  arch, loss, half = MODELS[name]
  c = config.channels
  if arch == "SimpleConv":
    model = models.SimpleConv(channels=c, fc=config.fc)
  elif arch == "AllConvolutional":
    model = models.AllConvolutional(filters=c)
  else:
    model = models.C4GCNN(channels=(max(1, c // 2), c, c))
  seed = config.seed + list(MODELS).index(name)
  return model, loss_function(loss, config.label_smoothing), half, seed


def loss_function(kind: str, smoothing: float):
  """``(logits, labels) -> scalar``: the training loss of kind ``kind``.

  ``ce``: softmax cross-entropy; ``label_smoothing``: cross-entropy against
  (1 − ε)·onehot + ε/K (Szegedy et al. 2016); ``squared_error``: the mean
  over the batch of Σ_k (z_k − onehot_k)², the square loss on the logits z
  (Hui & Belkin, ICLR 2021).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  if kind == "ce":
    return None     # `invjax.train.fit`'s default, the cross-entropy

  def loss(logits, labels):
    onehot = jax.nn.one_hot(labels, logits.shape[-1], dtype=logits.dtype)
    if kind == "label_smoothing":
      return optax.softmax_cross_entropy(
          logits, optax.smooth_labels(onehot, smoothing)).mean()
    return jnp.sum((logits - onehot) ** 2, axis=-1).mean()

  return loss


def load_data(config):
  """``(halves, test_x, test_y)``: two disjoint stratified training halves
  ``[(x, y), (x, y)]`` and the held-out images X."""
  from invjax import data  # pylint: disable=g-import-not-at-top
  train_x, train_y, test_x, test_y = _runner.load_digit_data(config)
  first = data.stratified_indices(train_y, len(train_y) // 2,
                                  seed=config.data_seed + 2)
  second = np.setdiff1d(np.arange(len(train_y)), first)
  halves = [(train_x[i], train_y[i]) for i in (first, second)]
  return halves, test_x, test_y


def features(model, variables):
  """images -> (n, d) representation; one function object per model."""
  import invjax  # pylint: disable=g-import-not-at-top
  layer = FEATURES[type(model).__name__]
  acts = invjax.capture.linen(model, variables, layers=[layer])

  def fn(x):
    a = acts(x)[layer]
    # AllConvolutional's logits are a 1×1 conv of conv8_act averaged over
    # space, so that average is its classifier's input.
    return a.mean(axis=(1, 2)) if a.ndim == 4 else a

  return fn


# ----------------------------------------------------------------------------
# The cells.
# ----------------------------------------------------------------------------


def run(config, outdir) -> dict:
  """One cell, as `invjax sweep` calls it (presets, smoke mode resolved)."""
  return run_cell(_runner.resolve(get_config, config), outdir)


def run_cell(config: _runner.Config, outdir) -> dict:
  """A model cell trains its model; the pairs cell compares them all."""
  if config.model == PAIRS:
    return compare(config, outdir)
  _runner.check_choice(config, "model", list(MODELS))
  from invjax import similarity  # pylint: disable=g-import-not-at-top
  model, loss_fn, half, seed = build(config.model, config)
  halves, test_x, test_y = load_data(config)
  train_x, train_y = halves[half]
  variables = _runner.fit(model, config, train_x, train_y, outdir=outdir,
                          label=config.model, seed=seed, loss_fn=loss_fn)
  acc = _runner.evaluate(model, variables, test_x, test_y)["accuracy"]
  arch, loss, _ = MODELS[config.model]
  _runner.write_cell_record(outdir, dict(
      accuracy=acc, seed=seed, arch=arch, loss=loss, half=half,
      n_train=len(train_y)))
  return {"accuracy": similarity.as_result(
      "accuracy", {config.model: acc}, settings=dict(seed=seed))}


def trained_variables(config, outdir) -> dict:
  """{model: variables} read back from the model cells' checkpoints.

  Raises:
    ValueError: a model cell that has not finished (e.g. another shard's).
  """
  import invjax.train as T  # pylint: disable=g-import-not-at-top
  run_dir = pathlib.Path(outdir).parent.parent
  ids = _runner.cell_ids(sys.modules[__name__], config)
  out, missing = {}, []
  for name, cell in zip(config.models, ids):
    directory = _runner.cell_path(run_dir, cell)
    workdir = directory / "checkpoints" / name
    if not (directory / "DONE").is_file() or not workdir.is_dir():
      missing.append(cell)
      continue
    out[name] = T.load_checkpoint(str(workdir)).variables
  if missing:
    raise ValueError(f"the pairs cell needs every model cell finished, with "
                     f"its checkpoints, in {run_dir}; missing: "
                     f"{', '.join(missing)}")
  return out


def compare(config: _runner.Config, outdir) -> dict:
  """STIR for every ordered pair and linear CKA for every pair.

  Saves ``features.npz`` (every model's representation of X and of every
  model's inversions X′, float32) and ``stir_matrix.npz``; returns the
  STIR, CKA and inversion-loss MeasureResults.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from invjax import similarity  # pylint: disable=g-import-not-at-top
  names = list(config.models)
  variables = trained_variables(config, outdir)
  _, test_x, _ = load_data(config)
  fns = {m: features(build(m, config)[0], variables[m]) for m in names}
  on_x = {m: fns[m](test_x) for m in names}
  key = jax.random.PRNGKey(config.seed)
  n = len(names)
  stir = np.zeros((n, n))     # [i, j] = STIR(m_j | m_i): m_i inverted
  inv_loss = {}
  saved = {f"{m}@X": np.asarray(on_x[m]) for m in names}
  for i, a in enumerate(names):
    sums = np.zeros(n)
    losses = []
    for s in range(config.stir_seeds):
      inv = similarity.invert_representation(
          fns[a], test_x, key=jax.random.fold_in(jax.random.fold_in(key, i),
                                                 s),
          steps=config.stir_steps, step_size=config.stir_step_size)
      losses.append(float(np.mean(inv.loss)))
      for j, b in enumerate(names):
        on_inv = fns[b](inv.x)
        if s == 0:
          saved[f"{b}@{a}"] = np.asarray(on_inv)
        sums[j] += float(similarity.linear_cka(on_x[b], on_inv))
    stir[i] = sums / config.stir_seeds
    inv_loss[a] = float(np.mean(losses))
    _runner.log(f"  inverted {a}: relative loss {inv_loss[a]:.3f}, "
                f"STIR(m | {a}) = " + ", ".join(f"{v:.3f}" for v in stir[i]))
  cka = np.eye(n)
  for i in range(n):
    for j in range(i + 1, n):
      cka[i, j] = cka[j, i] = float(similarity.linear_cka(on_x[names[i]],
                                                          on_x[names[j]]))
  np.savez_compressed(pathlib.Path(outdir) / "features.npz", **saved)
  np.savez(pathlib.Path(outdir) / "stir_matrix.npz", models=np.array(names),
           stir=stir, cka=cka,
           inversion_loss=np.array([inv_loss[m] for m in names]))
  settings = dict(n=len(test_x), stir_steps=config.stir_steps,
                  stir_step_size=config.stir_step_size,
                  stir_seeds=config.stir_seeds, models=names)
  return {
      "stir": similarity.as_result(
          "stir", {f"{b}|{a}": stir[i, j] for i, a in enumerate(names)
                   for j, b in enumerate(names)}, settings=settings),
      "linear_cka": similarity.as_result(
          "linear_cka", {f"{names[i]}|{names[j]}": cka[i, j]
                         for i in range(n) for j in range(i + 1, n)},
          settings=settings),
      "inversion_loss": similarity.as_result(
          "inversion_loss", inv_loss, settings=settings),
  }


# ----------------------------------------------------------------------------
# The summary.
# ----------------------------------------------------------------------------


def matrices(table, names):
  """``(stir, cka)`` (n, n) from the sweep table; stir[i, j] = STIR(m_j |
  m_i), NaN where the table has no value."""
  n = len(names)
  stir, cka = np.full((n, n), np.nan), np.eye(n)
  index = {m: i for i, m in enumerate(names)}
  for result, layer, value in zip(table["result"], table["layer"],
                                  table["value"]):
    if result not in ("stir", "linear_cka"):
      continue
    x, y = layer.split("|")
    if result == "stir":
      stir[index[y], index[x]] = value
    else:
      cka[index[x], index[y]] = cka[index[y], index[x]] = value
  return stir, cka


def pair_values(stir, names, keep):
  """Off-diagonal STIR(b | a) of the ordered pairs (a, b) with
  ``keep(a, b)``."""
  return np.array([stir[i, j] for i, a in enumerate(names)
                   for j, b in enumerate(names) if i != j and keep(a, b)])


def one_sided_welch(larger, smaller) -> float:
  """p of Welch's t-test that mean(larger) > mean(smaller); NaN when a
  group has fewer than 2 values."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  if len(larger) < 2 or len(smaller) < 2:
    return float("nan")
  return float(stats.ttest_ind(larger, smaller, equal_var=False,
                               alternative="greater").pvalue)


def claims(stir, names, config) -> dict:
  """The three claims' numbers and verdicts (see the module docstring)."""
  arch = {m: MODELS[m][0] for m in names}
  ce0 = [m for m in names if MODELS[m][1:] == ("ce", 0)]
  cnn0 = [m for m in names if MODELS[m][0] == "SimpleConv" and
          MODELS[m][2] == 0]
  loss = {m: MODELS[m][1] for m in names}
  within = pair_values(stir, names, lambda a, b: a in ce0 and b in ce0 and
                       arch[a] == arch[b])
  across = pair_values(stir, names, lambda a, b: a in ce0 and b in ce0 and
                       arch[a] != arch[b])
  same_loss = pair_values(stir, names, lambda a, b: a in cnn0 and b in cnn0
                          and loss[a] == loss[b])
  other_loss = pair_values(stir, names, lambda a, b: a in cnn0 and b in cnn0
                           and loss[a] != loss[b])
  out = {}
  for key, big, small in (("architecture", within, across),
                          ("loss", same_loss, other_loss)):
    mean_big = float(big.mean()) if len(big) else float("nan")
    mean_small = float(small.mean()) if len(small) else float("nan")
    p = one_sided_welch(big, small)
    out[key] = dict(mean_same=mean_big, mean_different=mean_small,
                    n_same=len(big), n_different=len(small), pvalue=p,
                    held=bool(mean_big > mean_small and p < config.alpha))
  asym = np.abs(stir - stir.T)
  np.fill_diagonal(asym, np.nan)
  i, j = np.unravel_index(np.nanargmax(asym), asym.shape)
  over = int(np.nansum(asym > config.asymmetry_threshold) // 2)
  # Each architecture's seed pairs against its pairs with the others: the
  # pooled means above can hide an architecture whose seeds share little.
  out["per_architecture"] = {
      k: dict(within=float(np.mean(w)) if len(w) else float("nan"),
              across=float(np.mean(x)) if len(x) else float("nan"))
      for k in dict.fromkeys(arch[m] for m in ce0)
      for w, x in [(pair_values(stir, names, lambda a, b, k=k: a in ce0 and
                                b in ce0 and arch[a] == arch[b] == k),
                    pair_values(stir, names, lambda a, b, k=k: a in ce0 and
                                b in ce0 and arch[a] != arch[b] and
                                k in (arch[a], arch[b])))]}
  out["asymmetry"] = dict(
      max=float(asym[i, j]), pair=[names[i], names[j]],
      stir_ij=float(stir[i, j]), stir_ji=float(stir[j, i]),
      pairs_over_threshold=over, pairs=n_pairs(len(names)),
      mean=float(np.nanmean(asym)),
      held=bool(asym[i, j] > config.asymmetry_threshold))
  return out


def n_pairs(n: int) -> int:
  return n * (n - 1) // 2


def heatmaps(stir, cka, names):
  """STIR, CKA and STIR − STIRᵀ as heatmaps, the models on both axes."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  n = len(names)
  fig, axes = plt.subplots(1, 3, figsize=(4.2 * 3, 4.0))
  panels = (
      (stir, "STIR(column | row)\n(row model inverted)", "viridis", 0, 1),
      (cka, "linear CKA", "viridis", 0, 1),
      (stir - stir.T, "STIR(col | row) − STIR(row | col)", "RdBu_r",
       -np.nanmax(np.abs(stir - stir.T)), np.nanmax(np.abs(stir - stir.T))))
  for ax, (m, title, cmap, lo, hi) in zip(axes, panels):
    image = ax.imshow(m, cmap=cmap, vmin=lo, vmax=hi)
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set_title(title, fontsize=9)
    for i in range(n):
      for j in range(n):
        ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center",
                fontsize=5.5, color="w" if cmap == "viridis" and
                m[i, j] < 0.6 * hi else "k")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
  fig.tight_layout()
  return fig


def summarize(config: _runner.Config, table, outdir) -> dict:
  """The STIR and CKA matrices, the three claims and the accuracies."""
  import shutil  # pylint: disable=g-import-not-at-top
  names = list(config.models)
  module = sys.modules[__name__]
  ids = _runner.cell_ids(module, config)
  records = {m: _runner.read_cell_record(outdir, c)
             for m, c in zip(names, ids)}
  shutil.copyfile(_runner.cell_path(outdir, ids[-1]) / "stir_matrix.npz",
                  pathlib.Path(outdir) / "stir_matrix.npz")
  stir, cka = matrices(table, names)
  loss_rows = table[table["result"] == "inversion_loss"]
  inv_loss = dict(zip(loss_rows["layer"], loss_rows["value"]))
  _runner.save_figure(outdir, "stir_matrix", heatmaps(stir, cka, names))
  c = claims(stir, names, config)
  diag = np.diag(stir)
  ca, cl, cs = c["architecture"], c["loss"], c["asymmetry"]
  verdict = {k: "held" if c[k]["held"] else "did not hold" for k in
             ("architecture", "loss", "asymmetry")}
  # The data axis, descriptive: the half-1 SimpleConv against the half-0
  # cross-entropy SimpleConvs, beside the half-0 seed pair.
  half0 = [m for m in names if MODELS[m] == ("SimpleConv", "ce", 0)]
  data_line = None
  if "cnn_half1" in names and half0:
    k = names.index("cnn_half1")
    vals = [stir[k, names.index(m)] for m in half0] + [
        stir[names.index(m), k] for m in half0]
    data_line = (f"Training data: STIR between cnn_half1 and the half-0 "
                 f"SimpleConvs {np.mean(vals):.3f} (mean of {len(vals)}), "
                 f"between the half-0 seeds {cl['mean_same']:.3f}.")
  findings = [
      f"Sanity check: STIR(m | m) from {diag.min():.3f} to {diag.max():.3f} "
      f"(mean relative inversion loss {np.mean(list(inv_loss.values())):.3f}"
      f"; 1 is a perfect inversion's).",
      f"Architecture: mean STIR within an architecture {ca['mean_same']:.3f} "
      f"(n = {ca['n_same']}) vs across {ca['mean_different']:.3f} "
      f"(n = {ca['n_different']}), one-sided Welch p = {ca['pvalue']:.2g}: "
      f"{verdict['architecture']}.",
      f"Loss: mean STIR between SimpleConvs with different losses "
      f"{cl['mean_different']:.3f} (n = {cl['n_different']}) vs between "
      f"cross-entropy seeds {cl['mean_same']:.3f} (n = {cl['n_same']}), "
      f"one-sided Welch p = {cl['pvalue']:.2g}: {verdict['loss']}.",
      f"Asymmetry: largest |STIR(a | b) − STIR(b | a)| = {cs['max']:.3f} "
      f"({cs['pair'][1]} | {cs['pair'][0]} = {cs['stir_ij']:.3f}, "
      f"{cs['pair'][0]} | {cs['pair'][1]} = {cs['stir_ji']:.3f}); "
      f"{cs['pairs_over_threshold']} of {cs['pairs']} pairs over "
      f"{config.asymmetry_threshold}: {verdict['asymmetry']}.",
  ]
  findings.insert(2, "Per architecture, STIR between its seeds vs with the "
                  "other architectures: " + ", ".join(
                      f"{k} {v['within']:.3f} vs {v['across']:.3f}"
                      for k, v in c["per_architecture"].items()) + ".")
  off = ~np.eye(len(names), dtype=bool)
  findings.append(f"STIR beside CKA: mean off-diagonal STIR "
                  f"{stir[off].mean():.3f}, linear CKA {cka[off].mean():.3f}"
                  f"; STIR < CKA for {int(np.sum(stir[off] < cka[off]))} of "
                  f"{int(off.sum())} ordered pairs.")
  if data_line:
    findings.append(data_line)
  held = [k for k in verdict if c[k]["held"]]
  if len(held) == 3:
    last = "held."
  elif not held:
    last = "did not hold."
  else:
    last = "partly: " + "; ".join(f"{k} {v}" for k, v in verdict.items()
                                  ) + "."
  findings.append("Expected finding (shared invariance falls with "
                  "architectural difference, depends on the loss, and is "
                  "asymmetric) " + last)
  header = ["inverted \\ measured"] + names
  acc_rows = [[m, *MODELS[m], records[m]["seed"], records[m]["n_train"],
               records[m]["accuracy"], inv_loss.get(m, float("nan"))]
              for m in names]
  return {
      "tables": [
          _runner.table(
              f"STIR(column | row) on {config.n_measure} held-out images "
              f"({config.stir_steps} inversion steps; row: the model "
              "inverted)", header,
              [[a, *stir[i]] for i, a in enumerate(names)]),
          _runner.table("Linear CKA", [""] + names,
                        [[a, *cka[i]] for i, a in enumerate(names)]),
          _runner.table("Models", ["model", "architecture", "loss",
                                   "training half", "seed", "training images",
                                   "accuracy", "inversion loss"], acc_rows),
      ],
      "findings": findings,
      "metrics": {"models": names, "stir": stir, "cka": cka, "claims": c,
                  "accuracy": {m: records[m]["accuracy"] for m in names},
                  "inversion_loss": inv_loss,
                  "expected_held": len(held) == 3},
      "seeds": [records[m]["seed"] for m in names],
  }
