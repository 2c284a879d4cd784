"""An invariance regularizer lowers the sensitivity to every perturbation.

Command::

    invjax experiment spectral_decay --out DIR --no-checkpoints
    invjax experiment spectral_decay --smoke                 # seconds
    invjax experiment spectral_decay --set preset=gpu        # paper scale
    invjax sweep experiments/spectral_decay.py --out DIR     # cells only

A sweep with one cell per (``model``, ``reg_weight``, ``seed``):

* ``model = "cnn"``: SimpleConv (C = ``channels``) trained with cross-entropy
  plus λ·(orbit logit spread) over C4 = `invjax.transforms.rot90`, the
  regularizer `invjax.train.Regularizer` (`invjax.objectives.
  invariance_error`, ``kind="logit_spread"``: (1/|G|) Σ_g ‖f(g·x) − f̄(x)‖²,
  on the untransformed training images, as `genuine_invariance` trains its
  regularized model), for λ = ``reg_weight`` in ``reg_weights`` (0, 0.1, 0.3,
  1, 3; at λ = 0 the error is computed and logged but not trained on);
* ``model = "gcnn"``: `invjax.models.C4GCNN` (channels (C, 2C, 2C), max
  spatial pooling, ``gcnn_steps`` at ``gcnn_learning_rate``), exactly
  rot90-invariant by weight tying, trained with λ = 0: the reference;

each for ``num_seeds`` seeds (seed, seed + 1, ...). Every cell is measured
on the same ``n_measure`` test images, with the same random perturbations
(drawn from ``data_seed``, common to all cells):

* sensitivity to the group: logit invariance LI = Σ_g‖z(g·x) − z̄‖² /
  Σ_g‖z(g·x)‖² (`invjax.measures.logit_invariance`) and NV
  (`invjax.measures.normalized_variance`) at the logits; and the relative
  logit change under a quarter turn, ``rot_rel`` = mean over g ≠ e of
  ‖f(g·x) − f(x)‖ / ‖f(x)‖;
* sensitivity outside the group: (a) ``noise_rel``, the same relative change
  under Gaussian noise of matched norm, ‖f(x + δ) − f(x)‖ / ‖f(x)‖ with δ
  isotropic and ‖δ‖ = ‖g·x − x‖, one draw per g ≠ e, averaged
  (`matched_noise`, `relative_change`); (b) ``jvp_norm``, the mean of
  ‖J(x) u‖ over ``num_directions`` random unit directions u, J = ∂f/∂x the
  input-output Jacobian of the logits (`directional_norms`, `jax.jvp`;
  E‖J u‖² = ‖J‖_F² / D for u uniform on the sphere of R^D); (c) ``sigma1``
  .. ``sigma{top_k}``, the top singular values of J(x) of ``n_spectral``
  images by subspace (power) iteration with `jax.jvp` and `jax.vjp`
  (`top_singular_values`; ``power_iterations`` steps, then Rayleigh–Ritz);
* ``logit_norm`` ‖f(x)‖ (a smaller logit scale alone lowers (b) and (c) but
  not (a)), and, from it, (b) and (c) per unit of logit norm (``jvp_rel``,
  ``sigma1_rel``, computed in `summarize`; reported, not decided on); clean
  and rotated test accuracy.

These are saved per cell as the result ``"sensitivity"`` (one "layer" per
quantity, one value per image; `invjax.similarity.as_result`), beside
``"nv"`` and ``"li"``; the table is ``results.parquet``.

Claim (Moskalev, Sepliarskaia, Bekkers, Smeulders, "On genuine invariance
learning without weight-tying", TAG-ML workshop at ICML 2023): a network
trained with an invariance regularizer "chooses to achieve the invariance to
a specific transformation group by reducing the sensitivity to any input
perturbation" (the spectrum of its input-output Jacobian decays), unlike the
weight-tied G-CNN, whose invariance is specific to its group.

Decision, for each non-group measure m ∈ {noise_rel, jvp_norm, sigma1}
(per-cell means over images): (i) m falls with λ for the regularized CNN:
Spearman's ρ(λ, m) over the five λ is negative for every seed, and the
pooled ρ over all (λ, seed) cells is negative with p < ``alpha``
(`scipy.stats.spearmanr`, two-sided); (ii) the G-CNN is not less sensitive
than the unregularized CNN (λ = 0): Welch's t-test over seeds
(`invjax.significance.compare_layers`), one-sided "G-CNN < CNN", p ≥
``alpha``. "held." if (i) and (ii) hold for all three measures; "did not
hold." if (i) holds for none; otherwise "partly: ...".

Runtime: CPU full (MNIST, 4,000 training images, 250 steps of 32 images,
C = 8; the G-CNN 500 steps; 500 measured images, 32 for the spectrum;
2 seeds × (5 λ + G-CNN) = 12 cells): 2.4 min on 2 CPU cores (the committed
run, 9–20 s per cell, on a machine that had gone nearly idle; the same run
took 14 min under a load average of 12–14); smoke mode 17 s (cold compile
cache, 2 nearly idle cores). GPU preset (60,000 images, 3,000 steps of
128, C = 32, 5 seeds, 1,000 images, 128 for the spectrum): about 15 min on
one H100 (an estimate: the GPU settings have not been timed).

Result of the committed run (results/spectral_decay): partly. The absolute
Jacobian measures fall with λ ((b) ×0.47, (c) σ₁ ×0.54 from λ = 0 to 3,
Spearman ρ −0.96 and −0.86), and the G-CNN is more sensitive than the
unregularized CNN on every measure (×1.7–2.7), as claimed; but the logits
shrink as much (×0.39), the matched-norm noise sensitivity (a) does not
fall (ρ 0.10), and per unit of logit norm (b) and (c) rise with λ (ρ 0.64,
0.69): on this scale the regularizer lowers the output scale, not the
sensitivity relative to it.
"""

from __future__ import annotations

import functools
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
    dataset="mnist",        # "mnist" or "digits"
    data_seed=0,            # data subsets and the common perturbations
    n_train=4000,
    n_measure=500,          # images for NV, LI, (a) and (b)
    n_spectral=32,          # images whose Jacobian spectrum is estimated (c)
    num_seeds=2,
    reg_weights=[0.0, 0.1, 0.3, 1.0, 3.0],  # λ of the regularized CNN
    channels=8,             # SimpleConv C; the G-CNN uses (C, 2C, 2C)
    fc=32,
    steps=250,
    batch_size=32,
    learning_rate=2e-3,
    # The G-CNN learns slowly with mean spatial pooling at the CNN's rate
    # (MNIST, (4, 8, 8), 300 steps: 0.37 test accuracy at 2e-3, 0.52 at
    # 1e-2); (8, 16, 16) with max pooling reaches 0.84 in 500 steps at 5e-3.
    gcnn_learning_rate=5e-3,
    gcnn_steps=500,
    gcnn_spatial_pool="max",
    schedule="cosine",
    reg_kind="logit_spread",
    num_directions=4,       # random unit directions per image (b)
    top_k=3,                # singular values per image (c)
    power_iterations=20,
    measure_batch_size=100,
    alpha=0.05,             # significance level of both tests
    model=None,             # a cell's: "cnn" or "gcnn", set by get_sweep
    reg_weight=0.0,         # a cell's λ, set by get_sweep
)

SMOKE = dict(_runner.SMOKE_DIGITS, gcnn_steps=10, n_spectral=4,
             num_seeds=2, reg_weights=[0.0, 3.0], num_directions=2, top_k=2,
             power_iterations=30)

PRESETS = {
    "gpu": dict(n_train=60000, n_measure=1000, n_spectral=128, num_seeds=5,
                channels=32, fc=128, steps=3000, gcnn_steps=3000,
                batch_size=128),
}

MODELS = ("cnn", "gcnn")
# The non-group measures of the decision, and the group ones reported.
NON_GROUP = ("noise_rel", "jvp_norm", "sigma1")
GROUP = ("li", "nv", "rot_rel")
SCALE_FREE = ("jvp_rel", "sigma1_rel")  # reported, not in the decision


def get_config(smoke: bool = False, **overrides) -> _runner.Config:
  """The config; ``smoke`` for tiny settings, overrides as ``key=value``."""
  config = _runner.make_config(DEFAULTS, smoke=smoke, smoke_settings=SMOKE,
                               presets=PRESETS, overrides=overrides)
  _runner.check_choice(config, "dataset", ("mnist", "digits"))
  if config.model is not None:
    _runner.check_choice(config, "model", MODELS)
  if config.num_seeds < 2:
    raise ValueError(f"num_seeds must be ≥ 2 for the tests, got "
                     f"{config.num_seeds}")
  if len(config.reg_weights) < 2 or 0.0 not in config.reg_weights:
    raise ValueError(f"reg_weights needs 0 and at least one λ > 0, got "
                     f"{config.reg_weights}")
  return config


def get_sweep(config: _runner.Config | None = None) -> list[dict]:
  """The cells: every (λ, seed) of the CNN, then the G-CNN's seeds."""
  config = (get_config() if config is None else
            _runner.resolve(get_config, config))
  seeds = [config.seed + i for i in range(config.num_seeds)]
  cells = [dict(model="cnn", reg_weight=float(w), seed=s)
           for w in config.reg_weights for s in seeds]
  return cells + [dict(model="gcnn", reg_weight=0.0, seed=s) for s in seeds]


# ----------------------------------------------------------------------------
# Sensitivity: small pure functions of ``fn: images (B, H, W, C) -> logits
# (B, K)``. ``fn`` must treat samples independently (eval mode), so that the
# Jacobian of the batch is block diagonal and one batched jvp/vjp gives
# every image's own J(x_i) v_i / J(x_i)ᵀ u_i.
# ----------------------------------------------------------------------------


def _norms(a, xp=np):
  """Euclidean norm of each sample: (B, ...) -> (B,)."""
  return xp.sqrt(xp.sum(a.reshape(a.shape[0], -1) ** 2, axis=-1))


def matched_noise(images: np.ndarray, transformed: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
  """x + δ, δ isotropic Gaussian with ‖δ‖ = ‖g·x − x‖ for each image.

  Args:
    images: (B, H, W, C) images x.
    transformed: (B, H, W, C) their transformations g·x.
    rng: draws the directions.

  Returns:
    (B, H, W, C) perturbed images, in the dtype of ``images``.
  """
  u = rng.standard_normal(images.shape)
  radius = _norms(np.asarray(transformed, np.float64)
                  - np.asarray(images, np.float64))
  delta = u * (radius / _norms(u)).reshape((-1,) + (1,) * (u.ndim - 1))
  return (images + delta).astype(images.dtype)


def relative_change(fn, images, perturbed):
  """‖f(x') − f(x)‖ / ‖f(x)‖ per image: (B,) for (B, H, W, C) inputs."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  z, zp = fn(images), fn(perturbed)
  return _norms(zp - z, jnp) / _norms(z, jnp)


def directional_norms(fn, images, directions):
  """‖J(x) u‖ for u = d/‖d‖, per image and direction.

  Args:
    fn: logits of a batch (samples independent).
    images: (B, H, W, C).
    directions: (R, B, H, W, C); each is normalized per image.

  Returns:
    (B, R) norms of the Jacobian-vector products (`jax.jvp`).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  units = directions / jax.vmap(lambda d: _norms(d, jnp))(directions)[
      (...,) + (None,) * (directions.ndim - 2)]
  jv = jax.lax.map(lambda u: jax.jvp(fn, (images,), (u,))[1], units)
  return jnp.sqrt(jnp.sum(jv ** 2, axis=-1)).T


def top_singular_values(fn, images, init, iterations: int):
  """The top k singular values of each image's Jacobian J(x_i) = ∂f/∂x_i.

  Subspace iteration V ← orth(JᵀJ V) from ``init``, each step one `jax.jvp`
  and one `jax.vjp` per column (of the linearization at x), then
  Rayleigh–Ritz: the singular values of J V. Each estimate is at most the
  true value and converges to it at the rate (σ_{k+1}/σ_j)^{2·iterations}.

  Args:
    fn: logits of a batch (samples independent).
    images: (B, H, W, C).
    init: (k, B, H, W, C) starting directions (random normal).
    iterations: subspace iterations.

  Returns:
    (B, min(k, K)) singular values, descending.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  _, jvp = jax.linearize(fn, images)
  _, vjp = jax.vjp(fn, images)
  k = init.shape[0]

  def orth(v):
    # Per image: the (D, k) columns, orthonormalized by QR.
    m = v.reshape(k, v.shape[1], -1).transpose(1, 2, 0)
    q, _ = jnp.linalg.qr(m)
    return q.transpose(2, 0, 1).reshape(v.shape)

  def step(_, v):
    return orth(jax.vmap(lambda u: vjp(u)[0])(jax.vmap(jvp)(v)))

  v = jax.lax.fori_loop(0, iterations, step, orth(init))
  jv = jax.vmap(jvp)(v).transpose(1, 2, 0)  # (B, K, k)
  return jnp.linalg.svd(jv, compute_uv=False)


# ----------------------------------------------------------------------------
# Cells.
# ----------------------------------------------------------------------------


def build(config):
  from invjax import models  # pylint: disable=g-import-not-at-top
  c = config.channels
  if config.model == "gcnn":
    return models.C4GCNN(channels=(c, 2 * c, 2 * c),
                         spatial_pool=config.gcnn_spatial_pool)
  return models.SimpleConv(channels=c, fc=config.fc)


@functools.lru_cache(maxsize=None)
def _programs(model, iterations: int):
  """The jitted sensitivity programs of ``model``, shared by its cells."""
  import jax  # pylint: disable=g-import-not-at-top

  def logits(variables):
    return lambda x: model.apply(variables, x)  # eval mode

  def probe(variables, images, perturbed, dirs):
    # One program (one compilation) for (a), (b) and ‖f(x)‖: (B, P + R + 1)
    # columns, the P perturbations' relative changes, the R directional
    # norms, the logit norm.
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    f = logits(variables)
    change = jax.vmap(lambda p: relative_change(f, images, p))(perturbed)
    return jnp.concatenate([change.T, directional_norms(f, images, dirs),
                            _norms(f(images), jnp)[:, None]], axis=1)

  def spectrum(variables, images, init):
    return top_singular_values(logits(variables), images, init, iterations)

  return jax.jit(probe), jax.jit(spectrum)


def _batched(fn, variables, *arrays, batch_size: int, axis=None):
  """``fn(variables, *arrays)`` over batches of the sample axis.

  ``axis``: the sample axis of each array (default 0 for all). The last
  batch is padded with copies of the first sample and the padding dropped,
  so every call has one shape.
  """
  axis = axis or (0,) * len(arrays)
  n = arrays[0].shape[axis[0]]
  b = min(batch_size, n)
  pad = -n % b
  padded = [np.concatenate([a, np.repeat(np.take(a, [0], ax), pad, ax)], ax)
            for a, ax in zip(arrays, axis)]
  out = [np.asarray(fn(variables, *[np.take(a, np.arange(s, s + b), ax)
                                    for a, ax in zip(padded, axis)]),
                    np.float64) for s in range(0, n + pad, b)]
  return np.concatenate(out)[:n]


def perturbations(config, images: np.ndarray):
  """The common random perturbations of ``images`` (from ``data_seed``).

  Returns:
    ``(rotated, noisy, directions, init)``: (T−1, B, ...) the quarter
    turns g ≠ e of each image; (T−1, B, ...) matched-norm noise, one draw
    per g; (R, B, ...) random directions; (k, n_spectral, ...) the power
    iteration's starting directions.
  """
  from invjax import transforms as tr  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng([config.data_seed, 9])
  orbit = np.asarray(tr.rot90().orbit(images))  # (B, 4, H, W, C)
  rotated = orbit[:, 1:].transpose(1, 0, 2, 3, 4)
  noisy = np.stack([matched_noise(images, r, rng) for r in rotated])
  dirs = rng.standard_normal((config.num_directions,) + images.shape
                             ).astype(np.float32)
  init = rng.standard_normal(
      (config.top_k, config.n_spectral) + images.shape[1:]).astype(np.float32)
  return rotated, noisy, dirs, init


def sensitivity(config, model, variables, images: np.ndarray) -> dict:
  """Per-image sensitivities of one trained model (see the module doc)."""
  probe, spectrum = _programs(model, config.power_iterations)
  rotated, noisy, dirs, init = perturbations(config, images)
  p = len(rotated)
  cols = _batched(probe, variables, images,
                  np.concatenate([rotated, noisy]), dirs,
                  batch_size=config.measure_batch_size, axis=(0, 1, 1))
  sigma = np.asarray(spectrum(variables, images[:config.n_spectral], init),
                     np.float64)
  out = {"rot_rel": cols[:, :p].mean(axis=1),
         "noise_rel": cols[:, p:2 * p].mean(axis=1),
         "jvp_norm": cols[:, 2 * p:-1].mean(axis=1)}
  out.update({f"sigma{j + 1}": sigma[:, j] for j in range(sigma.shape[1])})
  out["logit_norm"] = cols[:, -1]
  return out


def run(config, outdir) -> dict:
  """One cell, as `invjax sweep` calls it (presets, smoke mode resolved)."""
  return run_cell(_runner.resolve(get_config, config), outdir)


def run_cell(config: _runner.Config, outdir) -> dict:
  """Trains one model, measures it; its ``nv``, ``li``, ``sensitivity``."""
  import invjax  # pylint: disable=g-import-not-at-top
  import invjax.train as T  # pylint: disable=g-import-not-at-top
  from invjax import measures as ms  # pylint: disable=g-import-not-at-top
  from invjax import similarity  # pylint: disable=g-import-not-at-top
  from invjax import transforms as tr  # pylint: disable=g-import-not-at-top
  _runner.check_choice(config, "model", MODELS)
  train_x, train_y, test_x, test_y = _runner.load_digit_data(config)
  c4 = tr.rot90()
  model = build(config)
  weight = float(config.reg_weight)
  kwargs = {}
  if config.model == "cnn":
    # λ = 0 too, so every CNN cell runs one compiled step (λ is traced).
    kwargs["regularizer"] = T.Regularizer(c4, weight=weight,
                                          kind=config.reg_kind)
  elif weight != 0:
    raise ValueError(f"the G-CNN is trained with λ = 0, got {weight}")
  train_config = (config if config.model == "cnn" else
                  dict(config, learning_rate=config.gcnn_learning_rate,
                       steps=config.gcnn_steps))
  variables = _runner.fit(model, train_config, train_x, train_y, outdir=outdir,
                          label=f"{config.model}_reg{weight:g}_seed"
                          f"{config.seed}", seed=config.seed, **kwargs)
  accuracy = _runner.evaluate(model, variables, test_x, test_y, c4)
  nv, li = invjax.measure(
      invjax.capture.linen(model, variables), test_x, c4,
      [ms.normalized_variance(), ms.logit_invariance()],
      batch_size=config.measure_batch_size, layers="logits",
      progress=_runner.progress(config))
  values = sensitivity(config, model, variables, test_x)
  sens = similarity.as_result("sensitivity", values, settings=dict(
      n_measure=len(test_x), n_spectral=config.n_spectral,
      num_directions=config.num_directions, top_k=config.top_k,
      power_iterations=config.power_iterations))
  _runner.write_cell_record(outdir, {"accuracy": accuracy})
  _runner.log(f"  {config.model} λ = {weight:g} seed {config.seed}: acc "
              f"{accuracy['accuracy']:.3f}, LI {li.per_layer['logits']:.3g}, "
              + ", ".join(f"{k} {sens.per_layer[k]:.3g}" for k in NON_GROUP))
  return {"nv": _runner.maybe_compact(nv, config),
          "li": _runner.maybe_compact(li, config), "sensitivity": sens}


# ----------------------------------------------------------------------------
# Summary.
# ----------------------------------------------------------------------------


def cell_values(result: dict) -> dict:
  """A cell's scalars: the sensitivity means, and NV and LI at the logits.

  Also the scale-free (b) and (c), mean_i ‖J(x_i) u‖ / ‖f(x_i)‖ and
  mean_i σ₁(J(x_i)) / ‖f(x_i)‖ (``jvp_rel``, ``sigma1_rel``): a network
  whose logits shrink has a smaller Jacobian without being any less
  sensitive relative to its outputs, which (a) already is.
  """
  sens = result["sensitivity"][0]
  out = dict(sens.per_layer)
  per_image = {k: np.asarray(v, np.float64)
               for k, v in sens.per_activation.items()}
  norm = per_image["logit_norm"]
  out["jvp_rel"] = float(np.mean(per_image["jvp_norm"] / norm))
  sigma1 = per_image["sigma1"]
  out["sigma1_rel"] = float(np.mean(sigma1 / norm[:len(sigma1)]))
  out["nv"] = result["nv"][0].per_layer["logits"]
  out["li"] = result["li"][0].per_layer["logits"]
  return out


def one_sided_less(test: dict) -> float:
  """One-sided p of "mean_a < mean_b" from a two-sided Welch test."""
  p, t = float(test["pvalue"]), float(test["statistic"])
  if not np.isfinite(p):
    return float("nan")
  return p / 2 if t < 0 else 1 - p / 2


def _plot_vs_lambda(weights, seeds, cnn, gcnn, keys, labels):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, axes = plt.subplots(1, len(keys), figsize=(3.2 * len(keys), 3.0))
  for ax, key, label in zip(axes, keys, labels):
    v = cnn[key]  # (seeds, λ)
    for i, s in enumerate(seeds):
      ax.plot(weights, v[i], "o", color="C0", alpha=0.4, ms=4,
              label="CNN seeds" if i == 0 else None)
    ax.plot(weights, v.mean(0), "-", color="C0", label="CNN mean")
    g = gcnn[key]
    ax.axhspan(g.min(), g.max(), color="C3", alpha=0.15)
    ax.axhline(g.mean(), color="C3", ls="--", label="G-CNN (λ = 0)")
    ax.set_xscale("symlog", linthresh=0.1)
    ax.set_xlabel("λ")
    ax.set_title(label, fontsize=9)
  axes[0].legend(fontsize=7)
  fig.tight_layout()
  return fig


def _plot_spectrum(weights, cnn, gcnn, k):
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(4.2, 3.2))
  idx = np.arange(1, k + 1)
  for j, w in enumerate(weights):
    ax.plot(idx, [cnn[f"sigma{i}"][:, j].mean() for i in idx], "o-",
            color=plt.cm.viridis(j / max(1, len(weights) - 1)),
            label=f"CNN λ = {w:g}")
  ax.plot(idx, [gcnn[f"sigma{i}"].mean() for i in idx], "s--", color="C3",
          label="G-CNN")
  ax.set_yscale("log")
  ax.set_xticks(idx)
  ax.set_xlabel("singular value index")
  ax.set_ylabel("σ_i of ∂logits/∂x (mean over images, seeds)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig


def summarize(config: _runner.Config, table, outdir) -> dict:
  """Spearman over λ, Welch G-CNN vs CNN, tables and figures."""
  from scipy import stats  # pylint: disable=g-import-not-at-top
  from invjax import significance  # pylint: disable=g-import-not-at-top
  del table  # the cells' results themselves
  cells = _runner.cell_ids(sys.modules[__name__], config)
  sweep = get_sweep(config)
  weights = [float(w) for w in config.reg_weights]
  seeds = [config.seed + i for i in range(config.num_seeds)]
  results, values, accuracy = {}, {}, {}
  for overrides, cell in zip(sweep, cells):
    key = (overrides["model"], overrides["reg_weight"], overrides["seed"])
    results[key] = _runner.cell_results(outdir, cell)
    values[key] = cell_values(results[key])
    accuracy[key] = _runner.read_cell_record(outdir, cell)["accuracy"]
  k = int(config.top_k)
  n_measured = int(results[key]["sensitivity"][0].settings["n_measure"])
  keys = list(values[key])
  # (seeds, λ) arrays for the CNN, (seeds,) for the G-CNN.
  cnn = {q: np.array([[values[("cnn", w, s)][q] for w in weights]
                      for s in seeds]) for q in keys}
  gcnn = {q: np.array([values[("gcnn", 0.0, s)][q] for s in seeds])
          for q in keys}
  for q, get in (("accuracy", "accuracy"), ("rot_accuracy",
                                            "transformed_accuracy")):
    cnn[q] = np.array([[accuracy[("cnn", w, s)][get] for w in weights]
                       for s in seeds])
    gcnn[q] = np.array([accuracy[("gcnn", 0.0, s)][get] for s in seeds])

  # (i) Spearman ρ(λ, m): per seed over the λ, and pooled over all cells.
  spearman = {}
  for q in NON_GROUP + SCALE_FREE + GROUP:
    per_seed = [float(stats.spearmanr(weights, cnn[q][i]).statistic)
                for i in range(len(seeds))]
    pooled = stats.spearmanr(np.tile(weights, len(seeds)), cnn[q].ravel())
    spearman[q] = dict(per_seed=per_seed, pooled=float(pooled.statistic),
                       pvalue=float(pooled.pvalue))
  # (ii) G-CNN vs the unregularized CNN, Welch over seeds.
  sens = {(m, w, s): r["sensitivity"][0] for (m, w, s), r in results.items()}
  welch = significance.compare_layers(
      [sens[("gcnn", 0.0, s)] for s in seeds],
      [sens[("cnn", 0.0, s)] for s in seeds], test="welch",
      alpha=config.alpha, layers=list(NON_GROUP))
  alpha = config.alpha
  falls, not_less = {}, {}
  for q in NON_GROUP:
    sp = spearman[q]
    falls[q] = bool(all(r < 0 for r in sp["per_seed"]) and sp["pooled"] < 0
                    and sp["pvalue"] < alpha)
    welch[q]["p_less"] = one_sided_less(welch[q])
    not_less[q] = bool(not welch[q]["p_less"] < alpha)
  ok = {q: falls[q] and not_less[q] for q in NON_GROUP}
  if all(ok.values()):
    verdict = "held."
  elif not any(falls.values()):
    verdict = "did not hold."
  else:
    verdict = "partly: " + "; ".join(
        f"{q} {'falls' if falls[q] else 'does not fall'} with λ"
        + ("" if not_less[q] else ", but the G-CNN is less sensitive")
        for q in NON_GROUP) + "."

  def ms(a):
    return f"{a.mean():.3g} ± {a.std(ddof=1):.2g}"

  cols = ["accuracy", "rot_accuracy", "li", "nv", "rot_rel", "noise_rel",
          "jvp_norm"] + [f"sigma{i}" for i in range(1, k + 1)] + [
              "logit_norm", "jvp_rel", "sigma1_rel"]
  rows = [[f"CNN λ = {w:g}"] + [ms(cnn[q][:, j]) for q in cols]
          for j, w in enumerate(weights)]
  rows.append(["G-CNN"] + [ms(gcnn[q]) for q in cols])
  test_rows = [[q, ", ".join(f"{r:.2f}" for r in spearman[q]["per_seed"]),
                spearman[q]["pooled"], spearman[q]["pvalue"],
                gcnn[q].mean() / cnn[q][:, 0].mean(), welch[q]["p_less"],
                "yes" if ok[q] else "no"] for q in NON_GROUP]
  test_rows += [[q, ", ".join(f"{r:.2f}" for r in spearman[q]["per_seed"]),
                 spearman[q]["pooled"], spearman[q]["pvalue"],
                 gcnn[q].mean() / cnn[q][:, 0].mean(), "",
                "(group)" if q in GROUP else "(scale-free)"]
                for q in SCALE_FREE + GROUP]

  # Figures: every measure against λ, and the spectra.
  _runner.save_figure(outdir, "sensitivity_vs_lambda", _plot_vs_lambda(
      weights, seeds, cnn, gcnn, ["li", "rot_rel", "noise_rel", "jvp_norm",
                                  "sigma1", "logit_norm"],
      ["LI (logits)", "rot90 ‖Δf‖/‖f‖", "(a) noise ‖Δf‖/‖f‖",
       "(b) mean ‖J u‖", "(c) σ₁(J)", "‖f(x)‖"]))
  _runner.save_figure(outdir, "jacobian_spectrum",
                      _plot_spectrum(weights, cnn, gcnn, k))

  lam_max = weights[-1]
  ratio = {q: cnn[q][:, -1].mean() / cnn[q][:, 0].mean()
           for q in keys + ["accuracy"]}
  scale_falls = [q for q in SCALE_FREE if spearman[q]["pooled"] < 0
                 and spearman[q]["pvalue"] < alpha]
  scale_line = ("Per unit of logit norm, (b) and (c) have pooled ρ "
                + ", ".join(f"{q} {spearman[q]['pooled']:.2f} (p = "
                            f"{spearman[q]['pvalue']:.2g})"
                            for q in SCALE_FREE) + ": " + (
                    "they fall with λ as well." if len(scale_falls) == 2
                    else "where (b) or (c) falls with λ, it follows the "
                    f"shrinking logits (×{ratio['logit_norm']:.2g}), not "
                    "a lower sensitivity relative to the outputs."))
  findings = [
      f"From λ = 0 to λ = {lam_max:g} (means over {len(seeds)} seeds), the "
      "CNN's group sensitivity falls: LI at the logits ×"
      f"{ratio['li']:.2g}, rot90 relative change ×{ratio['rot_rel']:.2g}; "
      "outside the group: (a) matched-norm noise ×"
      f"{ratio['noise_rel']:.2g}, (b) ‖J u‖ ×{ratio['jvp_norm']:.2g}, "
      f"(c) σ₁ ×{ratio['sigma1']:.2g}; logit norm ×"
      f"{ratio['logit_norm']:.2g}; per unit of logit norm, (b) ×"
      f"{ratio['jvp_rel']:.2g} and (c) ×{ratio['sigma1_rel']:.2g}; "
      "clean accuracy "
      f"{cnn['accuracy'][:, 0].mean():.3f} → "
      f"{cnn['accuracy'][:, -1].mean():.3f}.",
      "Spearman ρ(λ, m), pooled over cells: " + ", ".join(
          f"{q} {spearman[q]['pooled']:.2f} (p = {spearman[q]['pvalue']:.2g})"
          for q in NON_GROUP + SCALE_FREE + GROUP) + ".",
      "G-CNN / unregularized CNN: " + ", ".join(
          f"{q} {gcnn[q].mean() / cnn[q][:, 0].mean():.2g} (Welch one-sided "
          f"p(G-CNN < CNN) = {welch[q]['p_less']:.2g})" for q in NON_GROUP)
      + f"; G-CNN clean accuracy {gcnn['accuracy'].mean():.3f}, LI "
      f"{gcnn['li'].mean():.2g}.",
      scale_line,
      "Expected finding (each of noise_rel, jvp_norm, sigma1 falls with λ: "
      f"every seed's ρ < 0 and pooled p < {alpha:g}; and the G-CNN is not "
      f"less sensitive than the λ = 0 CNN: one-sided Welch p ≥ {alpha:g}) "
      + verdict,
  ]
  return {
      "tables": [
          _runner.table(
              f"Per model (mean ± std over {len(seeds)} seeds; "
              f"{n_measured} measured images, σ on the first "
              f"{config.n_spectral})",
              ["model", "clean acc", "rot90 acc", "LI", "NV", "rot rel",
               "(a) noise rel", "(b) ‖J u‖"]
              + [f"(c) σ{i}" for i in range(1, k + 1)]
              + ["‖f(x)‖", "(b) / ‖f‖", "(c) σ1 / ‖f‖"], rows),
          _runner.table(
              "Decision: Spearman ρ(λ, m) of the CNN (per seed; pooled, "
              "two-sided p) and the G-CNN against the λ = 0 CNN",
              ["measure", "ρ per seed", "ρ pooled", "p", "G-CNN / CNN(0)",
               "Welch p (G < CNN)", "holds"], test_rows),
      ],
      "findings": findings,
      "metrics": {
          "cells": {f"{m}/{w:g}/{s}": v for (m, w, s), v in values.items()},
          "accuracy": {f"{m}/{w:g}/{s}": a
                       for (m, w, s), a in accuracy.items()},
          "spearman": spearman,
          "welch": {q: {k2: float(v) for k2, v in welch[q].items()}
                    for q in NON_GROUP},
          "falls_with_lambda": falls, "gcnn_not_less": not_less,
          "verdict": verdict, "expected_held": verdict == "held."},
      "seeds": seeds,
  }
