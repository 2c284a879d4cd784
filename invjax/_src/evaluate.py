"""Evaluating Flax Linen classifiers: accuracy, plain and under a group.

`evaluate` reads a dataset in fixed-size padded batches (one compiled
program) and counts correct predictions, also over every transformation of
each sample (``transformations=``); an ensemble's members are evaluated one
after another.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from invjax._src import capture as capture_lib
from invjax._src import sources
from invjax._src import transforms

Array = jax.Array

# --------------------------------------------------------------------------
# Evaluation.
# --------------------------------------------------------------------------


def cross_entropy(logits: Array, labels: Array) -> Array:
  """Mean softmax cross-entropy of (B, K) logits and (B,) integer labels."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def logits_fn(model: nn.Module, variables: dict) -> Callable[[Array], Array]:
  """``f(images (N, H, W, C)) -> (N, K)`` logits in eval mode (jitted)."""
  apply = jax.jit(lambda v, x: model.apply(v, x, train=False))
  return lambda images: apply(variables, jnp.asarray(images))


@functools.partial(jax.jit, static_argnums=0)
def _count_correct(model, variables, x, y, mask):
  pred = jnp.argmax(model.apply(variables, x, train=False), axis=-1)
  return jnp.sum((pred == y) & mask)


@functools.partial(jax.jit, static_argnums=0)
def _count_correct_transformed(model, variables, ts, x, y, mask):
  xt = ts.orbit(x)                  # (B, T, H, W, C)
  b, t = xt.shape[:2]
  z = model.apply(variables, xt.reshape((b * t,) + xt.shape[2:]), train=False)
  pred = jnp.argmax(z.reshape((b, t) + z.shape[1:]), axis=-1)
  return jnp.sum((pred == y[:, None]) & mask[:, None])


def check_data(images: Any, labels: Any) -> tuple[np.ndarray, np.ndarray]:
  images = np.asarray(images)
  labels = np.asarray(labels)
  if images.ndim != 4:
    raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
  if labels.shape != (images.shape[0],):
    raise ValueError(f"labels must be ({images.shape[0]},) to match the "
                     f"images, got shape {labels.shape}")
  if images.shape[0] == 0:
    raise ValueError("no images")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got {labels.dtype}")
  return images.astype(np.float32, copy=False), labels.astype(np.int32)


def evaluate(model: nn.Module, variables: dict, images: Any, labels: Any, *,
             transformations: Any = None, batch_size: int = 256,
             ensemble: bool = False) -> dict | list[dict]:
  """Clean and transformed accuracy (eval mode).

  accuracy = (1/N) Σ_i [argmax f(x_i) = y_i]; with transformations t_1..t_T,
  transformed_accuracy = (1/(N·T)) Σ_i Σ_j [argmax f(t_j(x_i)) = y_i].

  Args:
    model: a Linen classifier taking ``train=``.
    variables: its variables.
    images: (N, H, W, C) floats; labels: (N,) ints.
    transformations: optional TransformationSet.
    batch_size: images per forward pass (for the transformed accuracy,
      ``max(1, batch_size // T)`` samples, i.e. about ``batch_size`` images).
    ensemble: ``variables`` are K members' stacked (every leaf (K, ...), as
      ``fit(..., seeds=...)`` returns them); each member is evaluated in
      turn, by the same compiled programs.

  Returns:
    ``{"accuracy": float}`` plus ``"transformed_accuracy"`` when
    transformations are given; with ``ensemble``, a list of K of those.

  Raises:
    ValueError: malformed data or batch size; with ``ensemble``, leaves
      without a common leading axis.
  """
  if ensemble:
    k = capture_lib.ensemble_size(variables, "variables")
    return [evaluate(model, jax.tree.map(lambda v, i=i: v[i], variables),
                     images, labels, transformations=transformations,
                     batch_size=batch_size) for i in range(k)]
  images, labels = check_data(images, labels)
  if not isinstance(batch_size, int) or batch_size < 1:
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  n = images.shape[0]
  size = min(batch_size, n)
  correct = 0
  for (x, y), mask in sources.padded_batches((images, labels), size):
    correct += int(_count_correct(model, variables, x, y, mask))
  out = {"accuracy": correct / n}
  if transformations is not None:
    transforms.check_set(transformations, "transformations")
    t = int(transformations.parameters.shape[0])
    size = min(max(1, batch_size // t), n)
    correct = 0
    for (x, y), mask in sources.padded_batches((images, labels), size):
      correct += int(_count_correct_transformed(model, variables,
                                                transformations, x, y, mask))
    out["transformed_accuracy"] = correct / (n * t)
  return out
