"""Rotation augmentation lowers the normalized variance of the last layers.

Command::

    invjax experiment mnist_rotation_augmentation                 # digits
    invjax experiment mnist_rotation_augmentation --dataset mnist
    invjax experiment mnist_rotation_augmentation --set preset=gpu
    invjax sweep experiments/mnist_rotation_augmentation.py --out DIR  # cells

Trains Quiroga et al.'s SimpleConv twice from the same seed, without and with
rotation augmentation (one random angle of 64 per sample and step), then
measures every layer's normalized variance NV = TV / SV (Quiroga et al.,
CACIC 2019 / JCS&T 2020) under 16 rotations on held-out images, and the
accuracy on clean and on rotated test images. A sweep of two cells
(``model`` = plain, augmented), summarized into results.md.

Data: by default scikit-learn's bundled digits upsampled to 28×28 (no
download): 500 stratified images are measured, the other 1,297 train.
``--dataset mnist`` trains on 10,000 stratified MNIST training images and
measures 1,000 stratified test images (the papers' 10%); the data come from
``$INVJAX_DATA`` or ``../shared/data``.

Runtime: CPU full (the default, digits, C = 16, 1,000 steps): 97 s on 2
CPU cores (measured from a fresh clone, 2026-12-01); MNIST about 6 min; smoke mode (``--smoke``) about 40 s. GPU
preset (``preset=gpu``: MNIST 60,000 images, C = 32, 6,000 steps): a few
minutes on one H100 (an estimate: the GPU settings have not been timed).

Expected result (Quiroga et al.): the two models have similar NV in the first
layers (local features are not rotation invariant), and the augmented model's
NV is clearly lower in the final layers (fc1, logits), with much higher
accuracy on rotated test images at a small cost in clean accuracy.
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

DEFAULTS = dict(
    dataset="digits",       # "digits" (bundled) or "mnist"
    data_seed=0,            # seed of the stratified splits
    n_train=10000,          # at most this many training images
    n_measure=500,          # held-out images measured (mnist: 1,000)
    channels=16,            # SimpleConv C
    fc=64,                  # SimpleConv hidden units
    steps=1000,
    batch_size=64,
    learning_rate=2e-3,
    schedule="cosine",
    num_rotations=16,       # measured rotations, evenly over 360°
    augment_rotations=64,   # augmentation angles, evenly over 360°
    measure_batch_size=100,
    model=None,             # a cell's model, set by get_sweep
)

MODELS = ("plain", "augmented")

SMOKE = dict(_runner.SMOKE_DIGITS, num_rotations=4, augment_rotations=8)

PRESETS = {
    "gpu": dict(dataset="mnist", n_train=60000, n_measure=1000, channels=32,
                fc=128, steps=6000, batch_size=128),
}


def get_config(smoke: bool = False, **overrides) -> _runner.Config:
  """The config; ``smoke`` for tiny settings, overrides as ``key=value``."""
  return _runner.digit_config(DEFAULTS, smoke=smoke, smoke_settings=SMOKE,
                              presets=PRESETS, overrides=overrides)


def rotations(n: int):
  from invjax import transforms as tr  # pylint: disable=g-import-not-at-top
  return tr.rotation(np.linspace(-180.0, 180.0, n, endpoint=False))


def train_and_measure(model, config, data, *, outdir, label: str, seed: int,
                      augment, measured):
  """Trains ``model``, then its accuracy and every layer's NV under ``measured``.

  Returns:
    ``(variables, accuracy dict, MeasureResult)``; the training workdir is
    ``outdir/checkpoints/<label>``.
  """
  import invjax  # pylint: disable=g-import-not-at-top
  train_x, train_y, test_x, test_y = data
  variables = _runner.fit(model, config, train_x, train_y, outdir=outdir,
                          label=label, seed=seed, augment=augment)
  accuracy = _runner.evaluate(model, variables, test_x, test_y, measured)
  result = invjax.measure(
      invjax.capture.linen(model, variables), test_x, measured,
      invjax.measures.normalized_variance(),
      batch_size=config.measure_batch_size, layers=_runner.not_output,
      progress=_runner.progress(config))
  return variables, accuracy, result


def get_sweep(config: _runner.Config | None = None) -> list[dict]:
  """The cells: one per model (plain, augmented), both from ``config.seed``."""
  del config  # the same two cells for every config
  return [{"model": m} for m in MODELS]


def run(config, outdir) -> dict:
  """One cell, as `invjax sweep` calls it (presets, smoke mode resolved)."""
  return run_cell(_runner.resolve(get_config, config), outdir)


def run_cell(config: _runner.Config, outdir) -> dict:
  """Trains the cell's model, measures it; ``{"nv": MeasureResult}``."""
  from invjax import models  # pylint: disable=g-import-not-at-top
  _runner.check_choice(config, "model", MODELS)
  data = _runner.load_digit_data(config)
  _runner.log(f"  {config.dataset}: {len(data[1])} training, "
              f"{len(data[3])} measured images")
  measured = rotations(config.num_rotations)
  augment = (rotations(config.augment_rotations)
             if config.model == "augmented" else None)
  model = models.SimpleConv(num_classes=10, channels=config.channels,
                            fc=config.fc)
  _, accuracy, result = train_and_measure(
      model, config, data, outdir=outdir, label=config.model,
      seed=config.seed, augment=augment, measured=measured)
  _runner.write_cell_record(outdir, {"accuracy": accuracy})
  return {"nv": _runner.maybe_compact(result, config)}


def summarize(config: _runner.Config, table, outdir) -> dict:
  """Tables, findings, metrics and figures from the two cells' results."""
  from invjax import plot  # pylint: disable=g-import-not-at-top
  del table  # the results themselves are needed for the figures
  results, accuracy = {}, {}
  for label, cell in zip(MODELS, _runner.cell_ids(
      sys.modules[__name__], config)):
    results[label] = _runner.cell_results(outdir, cell)["nv"][0]
    accuracy[label] = _runner.read_cell_record(outdir, cell)["accuracy"]
  n_measured = results["plain"].settings.get("num_samples")
  # One colour scale for both heat maps, so that their colours compare.
  lo, hi = plot.shared_scale(results)
  for label, result in results.items():
    _runner.save_figure(outdir, f"heatmap_{label}", plot.heatmap(
        result, label=label, vmin=lo, vmax=hi))
  _runner.save_figure(outdir, "layer_curves", plot.layer_curves(results))

  plain, aug = results["plain"], results["augmented"]
  layers = plain.layers
  rows = [[l, plain.per_layer[l], aug.per_layer[l],
           aug.per_layer[l] / plain.per_layer[l]] for l in layers]
  acc_rows = [[label, accuracy[label]["accuracy"],
               accuracy[label]["transformed_accuracy"]]
              for label in ("plain", "augmented")]
  final = [l for l in ("fc1_act", "logits") if l in layers]
  lower_final = all(aug.per_layer[l] < plain.per_layer[l] for l in final)
  higher_rot = (accuracy["augmented"]["transformed_accuracy"] >
                accuracy["plain"]["transformed_accuracy"])
  findings = [
      "NV of the final layers (" + ", ".join(
          f"{l}: plain {plain.per_layer[l]:.3f} vs augmented "
          f"{aug.per_layer[l]:.3f}" for l in final) + ") is "
      + ("lower" if lower_final else "NOT lower") + " with augmentation.",
      f"Rotated-test accuracy: plain "
      f"{accuracy['plain']['transformed_accuracy']:.3f}, augmented "
      f"{accuracy['augmented']['transformed_accuracy']:.3f} ("
      + ("higher" if higher_rot else "NOT higher") + " with augmentation).",
      "Expected finding " + ("held." if lower_final and higher_rot
                             else "did not hold."),
  ]
  metrics = {
      "accuracy": accuracy,
      "nv_per_layer": {k: r.per_layer for k, r in results.items()},
      "expected_held": bool(lower_final and higher_rot),
  }
  return {
      "tables": [
          _runner.table(f"Normalized variance per layer "
                        f"({config.num_rotations} rotations, "
                        f"{n_measured} images)",
                        ["layer", "NV plain", "NV augmented",
                         "augmented / plain"], rows),
          _runner.table("Accuracy (rotated: mean over every image × "
                        "rotation)", ["model", "clean", "rotated"],
                        acc_rows),
      ],
      "findings": findings,
      "metrics": metrics,
      "seeds": [config.seed],
  }
