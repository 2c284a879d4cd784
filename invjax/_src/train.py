"""A small, explicit training loop for Flax Linen classifiers (optax)."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def train_classifier(model: nn.Module, images: np.ndarray, labels: np.ndarray,
                     *, steps: int = 200, batch_size: int = 64,
                     learning_rate: float = 1e-3, seed: int = 0,
                     augment: Any = None,
                     loss_fn: Callable[..., jax.Array] | None = None,
                     progress: bool = False) -> dict:
  """Trains `model` with Adam; returns its variables.

  Each step draws a batch with ``fold_in(seed, step)`` so a run is a pure
  function of its seed. With ``augment`` (a TransformationSet) every sample
  gets one random element of the set, inside the compiled step.

  Args:
    model: a Linen module mapping (B, H, W, C) images to logits.
    images: (N, H, W, C) float images; labels: (N,) ints.
    steps, batch_size, learning_rate, seed: the usual.
    augment: optional TransformationSet for data augmentation.
    loss_fn: ``(logits, labels) -> loss``; cross-entropy by default.
    progress: show a tqdm bar.
  """
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
  loss_fn = loss_fn or cross_entropy
  init_key, key = jax.random.split(jax.random.PRNGKey(seed))
  variables = jax.jit(model.init)(init_key, jnp.asarray(images[:1]))
  tx = optax.adam(learning_rate)
  opt_state = tx.init(variables["params"])
  data_x, data_y = jnp.asarray(images), jnp.asarray(labels)
  n = images.shape[0]

  @jax.jit
  def step(variables, opt_state, i):
    k = jax.random.fold_in(key, i)
    k_idx, k_aug = jax.random.split(k)
    idx = jax.random.randint(k_idx, (batch_size,), 0, n)
    x, y = data_x[idx], data_y[idx]
    if augment is not None:
      j = jax.random.randint(k_aug, (batch_size,), 0, len(augment))
      params = augment.parameters[j]
      x = jax.vmap(augment.action.forward)(params, x)

    def loss(p):
      return loss_fn(model.apply({**variables, "params": p}, x), y)

    value, grads = jax.value_and_grad(loss)(variables["params"])
    updates, opt_state = tx.update(grads, opt_state, variables["params"])
    params = optax.apply_updates(variables["params"], updates)
    return {**variables, "params": params}, opt_state, value

  it = range(steps)
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    it = tqdm(it, desc="train", unit="step")
  for i in it:
    variables, opt_state, _ = step(variables, opt_state, i)
  return variables


def accuracy(model: nn.Module, variables: dict, images: np.ndarray,
             labels: np.ndarray, *, batch_size: int = 512) -> float:
  """Fraction of correctly classified images."""
  apply = jax.jit(lambda x: jnp.argmax(model.apply(variables, x), -1))
  correct = 0
  for s in range(0, images.shape[0], batch_size):
    correct += int(jnp.sum(apply(images[s:s + batch_size]) ==
                           labels[s:s + batch_size]))
  return correct / images.shape[0]
