"""Training Flax Linen classifiers: a jit-compiled step, checkpoints, resume.

`fit` minimizes the cross-entropy, optionally plus an invariance regularizer
(Moskalev et al.'s invariance error, `invjax.objectives.invariance_error`),

    L(θ) = (1/B) Σ_i CE(f_θ(a_i·x_i), y_i) + λ · IE_G(f_θ; x_1..x_B),

where a_i is a random element of the augmentation set (if any) drawn per
sample inside the compiled step, and G the regularizer's group. A run is a
pure function of its `TrainConfig`: the batch at step s and the step's random
keys depend only on ``(seed, s)``, so a run interrupted and resumed from its
Orbax checkpoint ends bit-identical to an uninterrupted one (same machine).

With a workdir (``fit(..., workdir=...)``) a run keeps its config,
metrics log and Orbax checkpoints there, and may be killed at any instant and
rerun: `invjax._src.workdir` holds that code, the workdir's layout and its
crash-safety contract.

Reference:
  Moskalev, Sepliarskaia, Bekkers, Smeulders. "On genuine invariance learning
  without weight-tying", TAG-ML workshop at ICML 2023.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from invjax._src import capture as capture_lib
from invjax._src import evaluate as evaluate_lib
from invjax._src import files
from invjax._src import train_config as config_lib
from invjax._src import train_step as step_lib
from invjax._src import transforms
from invjax._src import workdir as workdir_lib

Array = jax.Array
TrainState = workdir_lib.TrainState

# --------------------------------------------------------------------------
# Checkpoints (the code: `invjax._src.workdir`).
# --------------------------------------------------------------------------


def load_checkpoint(workdir: str, *, step: int | None = None) -> TrainState:
  """The TrainState of a workdir's latest checkpoint (or of ``step``).

  The optimizer state comes back with its optax structure (rebuilt from
  ``workdir/config.json``) and every leaf with its saved dtype; an
  ensemble's (``fit(..., seeds=...)``) comes back stacked, as fit returns
  it. A latest
  checkpoint that cannot be restored (damaged files) is skipped for the
  newest one that can, with a warning naming it; nothing is moved.

  Raises:
    ValueError: if the workdir holds no checkpoint (at ``step``), or none
      (or not the one at ``step``) can be restored; the message names the
      checkpoint directories.
  """
  ensemble = _saved_seeds(workdir) is not None

  def optimizer(fields):
    tx = config_lib.make_optimizer(config_lib.TrainConfig(**fields))
    if ensemble:
      # The optimizer state of stacked members: (K, ...) leaves, Adam's
      # count included.
      return optax.GradientTransformation(jax.vmap(tx.init),
                                          jax.vmap(tx.update))
    return tx

  return workdir_lib.load_checkpoint(workdir, step, optimizer)


def _saved_seeds(workdir: str) -> list[int] | None:
  """The ensemble seeds in ``workdir/config.json``; None for one model.

  Unreadable files read as None here: `workdir_lib.load_checkpoint` reads
  the file again and warns or raises about them.
  """
  try:
    with open(os.path.join(os.fspath(workdir), "config.json")) as f:
      return json.load(f)["config"].get("seeds")
  except Exception:  # pylint: disable=broad-except
    return None


# --------------------------------------------------------------------------
# The training loop.
# --------------------------------------------------------------------------


def fit(model: nn.Module, cfg: config_lib.TrainConfig, train_images: Any,
        train_labels: Any, *, eval_data: Sequence[Any] | None = None,
        workdir: str | None = None, progress: bool = False,
        until: int | None = None,
        loss_fn: Callable[[Array, Array], Array] | None = None,
        callback: Callable[[dict], None] | None = None,
        variables: dict | None = None,
        seeds: Sequence[int] | None = None) -> TrainState:
  """Trains ``model`` on (images, labels) as ``cfg`` says.

  Randomness: the initialization uses split(PRNGKey(seed))[1]; update s
  uses fold_in(PRNGKey(seed), s) (augmentation, regularizer subset,
  dropout) and the samples of positions [s·B, (s+1)·B) of a stream of
  per-epoch permutations (NumPy PCG64 seeded with (seed, epoch)).

  Metrics lines (``workdir/metrics.jsonl`` and ``callback``): at every
  ``log_every``-th step and the last, ``{"step", "loss", "ce", "reg", "lr",
  "batch_accuracy", "grad_norm", "time"}`` with loss/ce/reg/batch_accuracy/
  grad_norm averaged over the steps since the previous ``log_every``-th
  step, ``lr`` the rate of the last update and ``time`` the seconds since
  this call started; at evaluation steps ``"eval_accuracy"`` (and
  ``"eval_transformed_accuracy"``) in the same line (a line of their own
  when the step is not a log step).

  Ensembles (``seeds=(s_1, ..., s_K)``): K members that differ only in
  their seed train as one compiled program, the step `jax.vmap`-ped over
  members; member k's initialization, batch order and per-step keys are
  exactly those of ``fit`` with ``seed=s_k``, so it ends equal to that run
  up to float round-off (vmapped kernels may sum in another order). The
  returned state's ``variables`` and ``opt_state`` leaves have a leading
  axis K in the order of ``seeds`` (``step`` is an int), ready for
  ``invjax.capture.linen(model, state.variables, ensemble=True)``. Its
  metrics lines have the same keys, each per-member metric (loss, ce, reg,
  batch_accuracy, grad_norm, eval_*) a list of K floats in seed order;
  ``step``, ``lr`` (shared) and ``time`` stay single numbers. A workdir
  records ``"seeds"`` in config.json (with ``"seed": null``), checkpoints
  the stacked state and resumes exactly as a single run does; a workdir
  of a single run or of other seeds is refused.

  Resuming (a workdir with checkpoints): training continues from the latest
  checkpoint that restores. Its damaged successors are moved to
  ``workdir/damaged_checkpoints/``, with a warning naming each; an empty or
  cut-short ``config.json`` is rewritten, with a warning. The metrics log
  is cut back to the checkpoint, and the lines written from there on equal
  an uninterrupted run's but for ``time`` (when ``log_every`` and
  ``eval_every`` are unchanged); a line written only because an earlier
  call stopped there (``until``, a smaller ``steps``) is removed or reduced
  to what an uninterrupted run logs at that step.

  Args:
    model: a Linen classifier with a ``train`` keyword (all `invjax.models`).
    cfg: the TrainConfig.
    train_images: (N, H, W, C) floats; train_labels: (N,) ints.
    eval_data: optional ``(images, labels)`` or ``(images, labels,
      transformations)``, evaluated with `evaluate` every ``eval_every``
      steps and at the end.
    workdir: when given: config.json, metrics.jsonl and Orbax checkpoints
      (every ``checkpoint_every`` steps and at the end) there, and a run
      with the same workdir resumes from its latest checkpoint.
    progress: show a tqdm bar on stderr (steps, ETA, and the loss of the
      latest metrics line).
    until: stop after this many steps (checkpointing there) as if the run
      had been interrupted; rerun without it to finish.
    loss_fn: ``(logits, labels) -> scalar`` instead of the cross-entropy.
    callback: called with each metrics record.
    variables: initial variables instead of ``model.init`` (with
      ``seeds``: stacked, every leaf with a leading axis K).
    seeds: train an ensemble, one member per seed (distinct ints >= 0);
      replaces ``cfg.seed``, which must then be left at its default 0
      (a non-zero ``cfg.seed`` with ``seeds`` is refused as ambiguous).

  Returns:
    The final TrainState(step, variables, opt_state); with ``seeds`` its
    variables and opt_state leaves are stacked, (K, ...).

  Raises:
    ValueError: on malformed data, a config that is not a TrainConfig,
      malformed ``seeds`` (or ``seeds`` with a non-zero ``cfg.seed``), a
      workdir holding a different run or one past ``cfg.steps``, damaged
      workdir files (the message names the file), or checkpoints none of
      which restores (the message names their directories; move them aside
      to start over).
  """
  if not isinstance(cfg, config_lib.TrainConfig):
    raise ValueError(f"cfg must be a TrainConfig, got {type(cfg).__name__}")
  seeds = _check_seeds(seeds, cfg)
  images, labels = evaluate_lib.check_data(train_images, train_labels)
  n = images.shape[0]
  if eval_data is not None:
    if not isinstance(eval_data, (tuple, list)) or len(eval_data) not in (2, 3):
      raise ValueError("eval_data must be (images, labels) or (images, "
                       "labels, transformations)")
    eval_x, eval_y = evaluate_lib.check_data(eval_data[0], eval_data[1])
    eval_ts = eval_data[2] if len(eval_data) == 3 else None
    if eval_ts is not None:
      transforms.check_set(eval_ts, "eval_data's transformations")
  end = cfg.steps
  if until is not None:
    if not isinstance(until, int) or not 1 <= until <= cfg.steps:
      raise ValueError(f"until must be an int in [1, {cfg.steps}], got "
                       f"{until!r}")
    end = until
  loss_fn = loss_fn or evaluate_lib.cross_entropy

  tx = config_lib.make_optimizer(cfg)
  if seeds is None:
    if variables is None:
      variables = step_lib.init_variables(model, cfg.seed,
                                          jnp.asarray(images[:1]))
    opt_state = tx.init(variables["params"])
  else:
    if variables is None:
      variables = step_lib.init_ensemble(
          model, jnp.asarray(seeds, jnp.int32), jnp.asarray(images[:1]))
    else:
      capture_lib.ensemble_size(variables, "variables", len(seeds))
    opt_state = jax.vmap(tx.init)(variables["params"])
  start = 0
  window: list[dict] = []

  metrics_path = manager = None
  if workdir is not None:
    workdir = os.fspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    record = {"config": cfg.to_dict(), "model": repr(model)}
    if seeds is not None:
      # In the config, so that the resume check compares it (a single run
      # has no "seeds" and its "seed" is an int).
      record["config"].update(seed=None, seeds=list(seeds))
    workdir_lib.check_resume_config(workdir, record)
    workdir_lib.write_config(workdir, record)
    metrics_path = os.path.join(workdir, "metrics.jsonl")
    manager = workdir_lib.checkpoint_manager(workdir)
    try:
      steps = sorted(manager.all_steps(), reverse=True)
      if steps and steps[0] > cfg.steps:
        raise ValueError(f"workdir {workdir!r} has a checkpoint at step "
                         f"{steps[0]}, beyond steps={cfg.steps}")
      saved_window = None
      if steps:
        handed, manager = manager, None   # Closed there if all fail.
        manager, start, (state, saved_window), bad = (
            workdir_lib.restore_first_good(
                handed, workdir, steps, lambda m, s: (
                    workdir_lib.restore_checkpoint(m, s, variables,
                                                   opt_state),
                    _window_from_disk(workdir_lib.read_window(m, s),
                                      seeds))))
        _, variables, opt_state = state
        moved = (workdir_lib.set_aside(manager, workdir,
                                       [s for s, _ in bad]) if bad
                 else [])
        for (s, e), dest in zip(bad, moved):
          warnings.warn(f"checkpoint {workdir_lib.step_dir(workdir, s)} "
                        f"(step {s}) cannot be restored ({e}); resuming from "
                        f"step {start}" + (f", the damaged checkpoint moved "
                                           f"to {dest}" if dest else ""),
                        stacklevel=2)
      workdir_lib.truncate_metrics(metrics_path, start,
                                   cfg if start < end else None)
      if start < end and start % cfg.log_every:
        if saved_window is None:
          warnings.warn(
              f"the checkpoint at step {start} under {workdir!r} has no "
              "record of the step metrics since the last log line (an "
              "older invjax wrote it, or its _CHECKPOINT_METADATA is lost); "
              f"the first metrics line after step {start} averages only "
              "the steps from there", stacklevel=2)
        else:
          window = saved_window
    except BaseException:
      if manager is not None:
        manager.close()
      raise

  try:
    state = _train_loop(model, cfg, loss_fn, images, labels, variables,
                        opt_state, start, end, n, window,
                        manager, metrics_path, callback, progress,
                        (eval_x, eval_y, eval_ts) if eval_data is not None
                        else None, seeds)
  finally:
    if manager is not None:
      manager.close()
  return state


def _check_seeds(seeds: Any, cfg: config_lib.TrainConfig
                 ) -> tuple[int, ...] | None:
  """``seeds`` as a tuple of ints (None: one model, ``cfg.seed``)."""
  if seeds is None:
    return None
  if isinstance(seeds, np.ndarray) and seeds.ndim == 1:
    seeds = seeds.tolist()
  if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
    raise ValueError(f"seeds must be a sequence of ints, got {seeds!r}")
  out = []
  for s in seeds:
    if (not isinstance(s, (int, np.integer)) or isinstance(s, bool) or
        s < 0):
      raise ValueError(f"seeds must be ints >= 0, got {s!r} in {seeds!r}")
    out.append(int(s))
  if not out:
    raise ValueError("seeds is empty; give at least one seed (or leave it "
                     "None to train one model with cfg.seed)")
  if len(set(out)) != len(out):
    raise ValueError(f"seeds has repeats ({out}); members that share a "
                     "seed would be identical")
  if cfg.seed != 0:
    raise ValueError(f"both cfg.seed={cfg.seed} and seeds={out} given: with "
                     "seeds= each member takes its seed from seeds; leave "
                     "cfg.seed at its default 0 and list every member's "
                     "seed in seeds")
  return tuple(out)


def _window_to_disk(window: Sequence[dict],
                    seeds: tuple[int, ...] | None) -> list[dict]:
  """An ensemble's per-step metrics (K,) as scalars ``"loss:k"``.

  The checkpoint metadata holds scalars only (`workdir_lib._encode_window`).
  """
  if seeds is None:
    return list(window)
  host = jax.device_get(list(window))
  return [{f"{k}:{i}": v[i] for k, v in m.items() for i in range(len(seeds))}
          for m in host]


def _window_from_disk(window: list[dict] | None,
                      seeds: tuple[int, ...] | None) -> list[dict] | None:
  """Inverse of `_window_to_disk`; None when a member's entry is missing."""
  if window is None or seeds is None:
    return window
  try:
    return [{k: np.stack([m[f"{k}:{i}"] for i in range(len(seeds))])
             for k in {key.rsplit(":", 1)[0] for key in m}} for m in window]
  except KeyError:
    return None   # Treated as an unrecorded window (a warning, no error).


def _log_record(window: Sequence[dict], step: int, t0: float,
                ensemble: bool = False) -> dict:
  host = jax.device_get(list(window))
  record = {"step": step}
  for k in workdir_lib.WINDOW_KEYS:
    if ensemble:
      # Per member, averaged over the steps as a single run's line is.
      per_step = np.stack([m[k] for m in host]).astype(np.float64)
      record[k] = [float(np.mean(per_step[:, i]))
                   for i in range(per_step.shape[1])]
    else:
      record[k] = float(np.mean([m[k] for m in host], dtype=np.float64))
  lr = np.asarray(host[-1]["lr"])
  record["lr"] = float(lr.reshape(-1)[0])  # Equal for every member.
  record["time"] = round(time.perf_counter() - t0, 3)
  return record


def _train_loop(model, cfg, loss_fn, images, labels, variables,
                opt_state, start, end, n, window, manager,
                metrics_path, callback, progress, eval_set,
                seeds=None) -> TrainState:
  spec = step_lib.step_spec(model, cfg, loss_fn)
  reg = cfg.regularizer
  reg_ts = None if reg is None else reg.transformations
  reg_weight = jnp.float32(0.0 if reg is None else reg.weight)
  data_x, data_y = jnp.asarray(images), jnp.asarray(labels)
  t0 = time.perf_counter()
  # The step metrics since the last log_every-th step; a line at the last
  # step (not a log step) summarizes them without starting a new window, so
  # the checkpoint there carries them on to the run that resumes.
  window = list(window)
  cache: dict = {}
  ensemble = seeds is not None
  if ensemble:
    caches = [{} for _ in seeds]
    seeds_arr = jnp.asarray(seeds, jnp.int32)
  bar = None
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    # tqdm's default bar shows the ETA; total is where this call stops.
    bar = tqdm(total=end, initial=min(start, end), desc="train",
               unit="step")
  last_saved = start if manager is not None else None
  for s in range(start, end):
    if ensemble:
      # Each member's own batch: its rows of (K, B).
      idx = np.stack([step_lib.batch_indices(seed, s, cfg.batch_size, n, c)
                      for seed, c in zip(seeds, caches)])
      variables, opt_state, metrics = step_lib.ensemble_train_step(
          spec, variables, opt_state, data_x, data_y, idx, seeds_arr, s,
          cfg.augment, reg_ts, reg_weight)
    else:
      idx = step_lib.batch_indices(cfg.seed, s, cfg.batch_size, n, cache)
      variables, opt_state, metrics = step_lib.train_step(
          spec, variables, opt_state, data_x, data_y, idx, cfg.seed, s,
          cfg.augment, reg_ts, reg_weight)
    window.append(metrics)
    done = s + 1
    record = {}
    if done % cfg.log_every == 0 or done == end:
      record = _log_record(window, done, t0, ensemble)
      if done % cfg.log_every == 0:
        window = []
      if bar is not None:
        # Shown by the update below, with the step it belongs to.
        # An ensemble shows its members' mean loss.
        bar.set_postfix(loss=f"{np.mean(record['loss']):.4f}",
                        refresh=False)
    if eval_set is not None and (
        done == cfg.steps or done == end or
        (cfg.eval_every is not None and done % cfg.eval_every == 0)):
      ex, ey, ets = eval_set
      res = evaluate_lib.evaluate(model, variables, ex, ey,
                                  transformations=ets, ensemble=ensemble)
      if ensemble:
        res = {k: [r[k] for r in res] for k in res[0]}
      record.setdefault("step", done)
      record.update({f"eval_{k}": v for k, v in res.items()})
    if record:
      workdir_lib.append_jsonl(metrics_path, record, callback)
    if manager is not None and (
        done == end or (cfg.checkpoint_every is not None and
                        done % cfg.checkpoint_every == 0)):
      # The log lines up to here reach the disk before the checkpoint that
      # says they were written.
      files.fsync_file(metrics_path)
      workdir_lib.save_checkpoint(
          manager, TrainState(done, variables, opt_state),
          _window_to_disk(window, seeds))
      last_saved = done
    if bar is not None:
      bar.update(1)
  if bar is not None:
    bar.close()
  if manager is not None and last_saved != end and start < end:
    workdir_lib.save_checkpoint(
        manager, TrainState(end, variables, opt_state),
        _window_to_disk(window, seeds))
  return TrainState(max(start, end), variables, opt_state)
