"""`TrainConfig` and `Regularizer`: what a training run is, validated.

A run of `invjax.train.fit` is a pure function of its `TrainConfig` (steps,
batch size, learning-rate schedule, optimizer, seed, augmentation set and
invariance regularizer); `make_optimizer` and `learning_rate_schedule` turn
it into optax objects.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from invjax._src import transforms

Array = jax.Array

_SCHEDULES = ("cosine", "constant")
_OPTIMIZERS = ("adam", "sgd", "adamw")
_REG_KINDS = ("logit_spread", "kl")


# --------------------------------------------------------------------------
# Configuration.
# --------------------------------------------------------------------------


class Regularizer(NamedTuple):
  """Adds ``weight · invariance_error`` over ``transformations`` to the loss.

  Attributes:
    transformations: a TransformationSet G (e.g. `rot90()`); every training
      sample's orbit under G is evaluated in each step.
    weight: λ ≥ 0 (with 0 the error is still computed and logged as
      ``reg``, to monitor an unregularized run).
    kind: ``"logit_spread"`` (1/|G|) Σ_g ‖f(g·x) − f̄(x)‖² or ``"kl"``
      (1/|G|) Σ_g KL(p(g·x) ‖ p̄(x)); see `objectives.invariance_error`.
    num_samples: use a random subset of this many group elements per step
      (key derived from the step key); None uses all of G.
  """
  transformations: Any
  weight: float = 1.0
  kind: str = "logit_spread"
  num_samples: int | None = None


def _describe_transformations(ts: Any) -> dict | None:
  if ts is None:
    return None
  params = np.asarray(ts.parameters, np.float64)
  return {"action": repr(ts.action), "size": int(params.shape[0]),
          "parameters": np.round(params, 6).tolist()}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Everything that determines a training run.

  Attributes:
    steps: number of optimizer updates.
    batch_size: samples per update.
    learning_rate: peak learning rate.
    schedule: ``"cosine"`` (decays to 0 at ``steps``) or ``"constant"``;
      see `learning_rate_schedule`.
    warmup_steps: linear warmup from 0 over this many steps.
    optimizer: ``"adam"``, ``"sgd"`` (with ``momentum``) or ``"adamw"``.
    momentum: SGD momentum (0 for plain SGD).
    weight_decay: decoupled for ``"adamw"``; an L2 term (``wd · θ`` added to
      the gradient) for ``"adam"`` and ``"sgd"``.
    seed: initialization, batch order and every per-step random draw.
    augment: optional TransformationSet; each sample gets one uniformly
      random element, inside the compiled step.
    regularizer: optional `Regularizer`.
    log_every: write a metrics line every this many steps (and at the end).
    eval_every: evaluate ``eval_data`` every this many steps (and at the
      end); None: only at the end.
    checkpoint_every: checkpoint every this many steps (and at the end);
      None: only at the end.
  """
  steps: int = 300
  batch_size: int = 64
  learning_rate: float = 1e-3
  schedule: str = "cosine"
  warmup_steps: int = 0
  optimizer: str = "adam"
  momentum: float = 0.9
  weight_decay: float = 0.0
  seed: int = 0
  augment: Any = None
  regularizer: Regularizer | None = None
  log_every: int = 50
  eval_every: int | None = None
  checkpoint_every: int | None = None

  def __post_init__(self):
    def positive_int(name, allow_none=False, minimum=1):
      v = getattr(self, name)
      if v is None and allow_none:
        return
      if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or (
          v < minimum):
        raise ValueError(f"{name} must be an int >= {minimum}, got {v!r}")

    positive_int("steps")
    positive_int("batch_size")
    positive_int("warmup_steps", minimum=0)
    positive_int("seed", minimum=0)
    positive_int("log_every")
    positive_int("eval_every", allow_none=True)
    positive_int("checkpoint_every", allow_none=True)
    if not self.warmup_steps <= self.steps:
      raise ValueError(f"warmup_steps ({self.warmup_steps}) exceeds steps "
                       f"({self.steps})")
    if not (np.isfinite(self.learning_rate) and self.learning_rate > 0):
      raise ValueError(f"learning_rate must be positive, got "
                       f"{self.learning_rate!r}")
    if self.schedule not in _SCHEDULES:
      raise ValueError(f"schedule must be one of {_SCHEDULES}, got "
                       f"{self.schedule!r}")
    if self.optimizer not in _OPTIMIZERS:
      raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got "
                       f"{self.optimizer!r}")
    if not 0 <= self.momentum < 1:
      raise ValueError(f"momentum must be in [0, 1), got {self.momentum!r}")
    if not self.weight_decay >= 0:
      raise ValueError(f"weight_decay must be >= 0, got "
                       f"{self.weight_decay!r}")
    if self.augment is not None:
      transforms.check_set(self.augment, "augment")
    reg = self.regularizer
    if reg is not None:
      if not isinstance(reg, Regularizer):
        raise ValueError("regularizer must be a Regularizer, got "
                         f"{type(reg).__name__}")
      transforms.check_set(reg.transformations, "regularizer.transformations")
      if reg.kind not in _REG_KINDS:
        raise ValueError(f"regularizer.kind must be one of {_REG_KINDS}, got "
                         f"{reg.kind!r}")
      if not (np.isfinite(reg.weight) and reg.weight >= 0):
        raise ValueError(f"regularizer.weight must be >= 0, got "
                         f"{reg.weight!r}")
      t = int(np.shape(reg.transformations.parameters)[0])
      if reg.num_samples is not None and (
          not isinstance(reg.num_samples, int) or
          not 2 <= reg.num_samples <= t):
        raise ValueError(f"regularizer.num_samples must be None or an int in "
                         f"[2, {t}], got {reg.num_samples!r}")

  def to_dict(self) -> dict:
    """A JSON-able description (transformation sets as their parameters)."""
    out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
    out["augment"] = _describe_transformations(self.augment)
    reg = self.regularizer
    if reg is not None:
      out["regularizer"] = {
          "transformations": _describe_transformations(reg.transformations),
          "weight": float(reg.weight), "kind": reg.kind,
          "num_samples": reg.num_samples}
    for k, v in out.items():
      if isinstance(v, np.generic):
        out[k] = v.item()
    return out


# Where a run stands (step, variables, opt_state); saved in checkpoints.


# --------------------------------------------------------------------------
# Schedule and optimizer.
# --------------------------------------------------------------------------


def learning_rate_schedule(cfg: TrainConfig) -> Callable[[Any], Array]:
  """The learning rate of update ``s`` (0-based), as an optax schedule.

  With W = ``warmup_steps``, S = ``steps`` and η = ``learning_rate``:
  η·s/W for s < W, then η (``"constant"``) or
  η·(1 + cos(π·min((s − W)/(S − W), 1)))/2 (``"cosine"``: η at s = W, 0 at
  s = S, Loshchilov & Hutter, SGDR, ICLR 2017).
  """
  lr, warmup, total = cfg.learning_rate, cfg.warmup_steps, cfg.steps

  def schedule(step):
    s = jnp.asarray(step, jnp.float32)
    if cfg.schedule == "cosine":
      t = jnp.clip((s - warmup) / max(total - warmup, 1), 0.0, 1.0)
      main = 0.5 * lr * (1.0 + jnp.cos(jnp.pi * t))
    else:
      main = jnp.full_like(s, lr)
    if warmup == 0:
      return main
    return jnp.where(s < warmup, lr * s / warmup, main)

  return schedule


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  """The optax optimizer of a config (learning rate from its schedule)."""
  sched = learning_rate_schedule(cfg)
  if cfg.optimizer == "adamw":
    return optax.adamw(sched, weight_decay=cfg.weight_decay)
  if cfg.optimizer == "adam":
    tx = optax.adam(sched)
  else:
    tx = optax.sgd(sched, momentum=cfg.momentum or None)
  if cfg.weight_decay > 0:
    tx = optax.chain(optax.add_decayed_weights(cfg.weight_decay), tx)
  return tx
