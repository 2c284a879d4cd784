"""One training update of `fit`, compiled: initialization, the step, its batch.

`batch_indices` draws update s's samples as a pure function of (seed, s);
`train_step` is one jitted update (cross-entropy plus the optional invariance
regularizer, see `invjax._src.train`), `ensemble_train_step` the same for K
members at once (a vmap over members). Their static part is a `StepSpec`, so
equal models and settings share one compilation.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from invjax._src import objectives
from invjax._src import train_config as config_lib

Array = jax.Array


def batch_indices(seed: int, step: int, batch_size: int, n: int,
                  cache: dict) -> np.ndarray:
  """Sample indices of update ``step``: a pure function of (seed, step).

  The data stream is the concatenation of per-epoch permutations (NumPy's
  PCG64 seeded with (seed, epoch), drawn on the host so no device program
  is compiled per dataset size); update s takes stream positions
  [s·B, (s + 1)·B). Every sample is seen once per epoch.
  """
  pos = step * batch_size + np.arange(batch_size)
  epochs, offsets = pos // n, pos % n
  out = np.empty(batch_size, np.int32)
  for e in np.unique(epochs):
    e = int(e)
    if e not in cache:
      if len(cache) > 2:
        cache.clear()
      rng = np.random.Generator(np.random.PCG64([seed, e]))
      cache[e] = rng.permutation(n).astype(np.int32)
    sel = epochs == e
    out[sel] = cache[e][offsets[sel]]
  return out


def _init_body(model: nn.Module, seed: Array, sample: Array) -> dict:
  init_key = jax.random.split(jax.random.PRNGKey(seed))[1]
  return model.init(init_key, sample, train=False)


# Jitted with the model static, so equal models share one compilation
# (Flax's initializers are slow to compile on CPU).
init_variables = jax.jit(_init_body, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def init_ensemble(model: nn.Module, seeds: Array, sample: Array) -> dict:
  """Each member's `init_variables`, stacked: leaves (K, ...), seeds (K,)."""
  return jax.vmap(lambda s: _init_body(model, s, sample))(seeds)


@dataclasses.dataclass(frozen=True)
class StepSpec:
  """The static (hashable) part of a train step: one compilation each."""
  model: nn.Module
  cfg: config_lib.TrainConfig  # With augment, regularizer, seed etc. cleared.
  loss_fn: Callable[[Array, Array], Array]
  has_reg: bool             # The weight is traced: λ = 0 still logs it.
  reg_kind: str
  reg_num_samples: int | None


def step_spec(model, cfg: config_lib.TrainConfig, loss_fn) -> StepSpec:
  reg = cfg.regularizer
  static_cfg = dataclasses.replace(
      cfg, augment=None, regularizer=None, seed=0, log_every=1,
      eval_every=None, checkpoint_every=None)
  return StepSpec(model, static_cfg, loss_fn,
                  reg is not None,
                  "logit_spread" if reg is None else reg.kind,
                  None if reg is None else reg.num_samples)


def train_step_body(spec: StepSpec, variables, opt_state, data_x, data_y,
                    idx, seed, step_index, augment, reg_ts, reg_weight):
  """One update: (variables, opt_state, metrics) after update ``step_index``.

  ``augment`` and ``reg_ts`` are TransformationSets (or None), traced, as is
  the regularizer's weight.
  """
  model, tx = spec.model, config_lib.make_optimizer(spec.cfg)
  key = jax.random.fold_in(jax.random.PRNGKey(seed), step_index)
  k_aug, k_reg, k_drop, k_drop_reg = jax.random.split(key, 4)
  x, y = data_x[idx], data_y[idx]
  clean = x
  if augment is not None:
    j = jax.random.randint(k_aug, (x.shape[0],), 0,
                           augment.parameters.shape[0])
    x = jax.vmap(augment.action.forward)(augment.parameters[j], x)
  state = {k: v for k, v in variables.items() if k != "params"}
  mutable = list(state)

  def apply(params, images, drop_key):
    # Train mode: batch statistics of this batch, dropout on.
    out = model.apply({**state, "params": params}, images, train=True,
                      rngs={"dropout": drop_key}, mutable=mutable or False)
    return out if mutable else (out, {})

  def loss(params):
    logits, new_state = apply(params, x, k_drop)
    ce = spec.loss_fn(logits, y)
    metrics = {"ce": ce,
               "batch_accuracy": jnp.mean(jnp.argmax(logits, -1) == y)}
    total = ce
    if spec.has_reg:
      # The orbit pass runs in train mode too; its batch-norm statistic
      # updates are discarded (the running averages follow the CE batch).
      err = objectives.invariance_error(
          lambda p, imgs: apply(p, imgs, k_drop_reg)[0], params, clean,
          reg_ts, kind=spec.reg_kind,
          key=None if spec.reg_num_samples is None else k_reg,
          num_samples=spec.reg_num_samples)
      total = total + reg_weight * err
      metrics["reg"] = err
    else:
      metrics["reg"] = jnp.zeros((), ce.dtype)
    metrics["loss"] = total
    return total, (new_state, metrics)

  (_, (new_state, metrics)), grads = jax.value_and_grad(
      loss, has_aux=True)(variables["params"])
  updates, opt_state = tx.update(grads, opt_state, variables["params"])
  params = optax.apply_updates(variables["params"], updates)
  metrics["grad_norm"] = optax.tree.norm(grads)
  metrics["lr"] = config_lib.learning_rate_schedule(spec.cfg)(step_index)
  return {**variables, **new_state, "params": params}, opt_state, metrics


train_step = jax.jit(train_step_body, static_argnums=0)


@functools.partial(jax.jit, static_argnums=0)
def ensemble_train_step(spec: StepSpec, variables, opt_state, data_x,
                        data_y, idx, seeds, step_index, augment, reg_ts,
                        reg_weight):
  """`train_step` of K members in one program: a vmap over members.

  ``variables``, ``opt_state``, ``idx`` (K, B) and ``seeds`` (K,) carry the
  members' axis; the data, the step, the transformation sets and the
  regularizer's weight are shared. Metrics come back with a leading K.
  """
  one = functools.partial(train_step_body, spec)
  return jax.vmap(one, in_axes=(0, 0, None, None, 0, 0, None, None, None,
                                None))(
      variables, opt_state, data_x, data_y, idx, seeds, step_index, augment,
      reg_ts, reg_weight)
