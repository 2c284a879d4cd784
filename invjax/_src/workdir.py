"""A training run's workdir: its checkpoints, config.json and metrics log.

`invjax.train.fit` trains; this module keeps what a run leaves on disk and
reads it back (`load_checkpoint`, resuming). Layout:

    workdir/config.json       the TrainConfig and the model, checked on resume
    workdir/metrics.jsonl     one JSON object per logged / evaluated step
    workdir/checkpoints/<s>/  Orbax checkpoints {step, variables, opt_state};
                              their step metadata also holds the per-step
                              metrics since the last log line
    workdir/damaged_checkpoints/<s>/  checkpoints that could not be restored,
                              moved aside when `fit` resumed from an earlier one

Crash safety: a run may be killed at any instant and rerun. config.json is
written atomically (a temporary file renamed over it); metrics.jsonl is
appended to, and on every start it is cut back to the checkpoint the run
resumes from, dropping a torn last line; checkpoints are committed by Orbax
with a rename. The metrics lines after a resume equal an uninterrupted run's
(but for ``time``), also when the checkpoint step is not a log step: the
metrics of the steps since the last line are saved with each checkpoint.
A checkpoint whose files are damaged is skipped, with a warning, for the
newest one that restores; when none does, `fit` and `load_checkpoint` raise
a ValueError naming the checkpoint directory (no run silently restarts).
`fit` moves damaged checkpoints aside, never deletes them (`load_checkpoint`
moves nothing). The reports Orbax and TensorStore leave behind after a
failed read (asyncio's "exception was never retrieved",
`sys.unraisablehook`'s "Exception ignored in", each with a whole store
spec) are dropped, and only those.

This module does not import `invjax._src.train` (which builds on it).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import sys
import warnings
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
import optax

from invjax._src import files

# Fields that may change between a run and its resumption: they do not alter
# the sequence of updates (steps only extends the run; with the cosine
# schedule it also stretches the decay, which is the caller's choice).
_RESUMABLE_FIELDS = ("steps", "log_every", "eval_every", "checkpoint_every")
# The averaged per-step metrics of a log line (``lr``: the last step's).
WINDOW_KEYS = ("loss", "ce", "reg", "batch_accuracy", "grad_norm")
# Where a checkpoint's step metadata keeps the unlogged per-step metrics.
_WINDOW_METADATA = "invjax_log_window"


class TrainState(NamedTuple):
  """Where a run stands: completed updates, model variables, optimizer state.

  ``variables`` is the full Flax dict (``params`` plus ``batch_stats`` for
  batch-norm models).
  """
  step: int
  variables: dict
  opt_state: Any


# --------------------------------------------------------------------------
# Checkpoints.
# --------------------------------------------------------------------------


def checkpoint_manager(workdir: str, sub: str = "checkpoints",
                       max_to_keep: int = 3):
  """Orbax checkpoints under ``workdir/sub`` (a measurement uses its own)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  # Synchronous saves: a checkpoint is complete when `save` returns, so an
  # interruption right after it loses nothing.
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=False)
  return ocp.CheckpointManager(
      os.path.join(os.path.abspath(workdir), sub), options=options)


def save_checkpoint(manager, state: TrainState,
                    window: Sequence[dict] = ()) -> None:
  """Saves ``state``; ``window``: the step metrics since the last log line.

  The window goes into the step's Orbax metadata, which Orbax writes before
  it commits the step directory, so a checkpoint never exists without it.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  tree = {"step": np.asarray(state.step, np.int64),
          "variables": state.variables, "opt_state": state.opt_state}
  meta = {_WINDOW_METADATA: _encode_window(window, int(state.step))}
  manager.save(int(state.step), args=ocp.args.StandardSave(tree), force=True,
               custom_metadata=meta)
  manager.wait_until_finished()


def _encode_window(window: Sequence[dict], step: int) -> dict:
  # Hex floats with their dtype: exact (a resumed mean is bit-identical to
  # an uninterrupted one's) and JSON-safe for NaN and inf.
  host = jax.device_get(list(window))
  return {"end_step": step,
          "metrics": [{k: [np.asarray(v).dtype.str, float(v).hex()]
                       for k, v in m.items()} for m in host]}


def read_window(manager, step: int) -> list[dict] | None:
  """The saved step metrics since the last log line; None if not recorded."""
  try:
    saved = manager.metadata(step).custom_metadata or {}
    w = saved[_WINDOW_METADATA]
    if w["end_step"] != step:
      return None
    return [{k: np.asarray(float.fromhex(v), dtype=np.dtype(t))[()]
             for k, (t, v) in m.items()} for m in w["metrics"]]
  except Exception:  # pylint: disable=broad-except
    # Old checkpoints lack it; a lost or torn metadata file only costs the
    # exact first log line after the resume, not the (intact) state.
    return None


def restore_checkpoint(manager, step: int, variables: dict,
                       opt_state: Any) -> TrainState:
  """Restores into the structure and dtypes of ``variables``/``opt_state``."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  target = {"step": np.asarray(0, np.int64), "variables": variables,
            "opt_state": opt_state}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  tree = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  return TrainState(int(tree["step"]), tree["variables"], tree["opt_state"])


def step_dir(workdir: str, step: int, sub: str = "checkpoints") -> str:
  return os.path.join(os.path.abspath(workdir), sub, str(step))


def set_aside(manager, workdir: str, steps: Sequence[int]
               ) -> list[str | None]:
  """Moves step directories to workdir/damaged_checkpoints/.

  Kept, not deleted: the damage may be recoverable by hand, and a later
  save at the same step would otherwise overwrite the evidence.

  Returns:
    Each step's new path (None where its directory was already gone).
  """
  dest_dir = os.path.join(workdir, "damaged_checkpoints")
  moved = []
  for s in steps:
    src = step_dir(workdir, s)
    if not os.path.isdir(src):
      moved.append(None)
      continue
    os.makedirs(dest_dir, exist_ok=True)
    dest, i = os.path.join(dest_dir, str(s)), 1
    while os.path.exists(dest):
      dest, i = os.path.join(dest_dir, f"{s}.{i}"), i + 1
    os.replace(src, dest)
    moved.append(dest)
  manager.reload()
  return moved


# --------------------------------------------------------------------------
# Restoring the newest good checkpoint.
# --------------------------------------------------------------------------


def _describe_error(e: BaseException) -> str:
  # Orbax wraps TensorStore's error (which says what is wrong: a missing
  # key, a short file) in one that prints the whole store spec; the spec is
  # cut off.
  while e.__cause__ is not None:
    e = e.__cause__
  text = str(e).strip().splitlines()[0] if str(e).strip() else ""
  for spec in (" See full TensorStore details", " [tensorstore_spec="):
    text = text.split(spec)[0]
  if len(text) > 300:
    text = text[:300] + "..."
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _from_orbax(tb) -> bool:
  while tb is not None:
    name = tb.tb_frame.f_code.co_filename
    if "orbax" in name or "tensorstore" in name:
      return True
    tb = tb.tb_next
  return False


class _DropOrbaxTasks(logging.Filter):
  """Drops asyncio's reports of failed Orbax reads nobody waited for."""

  def filter(self, record: logging.LogRecord) -> bool:
    exc = record.exc_info[1] if record.exc_info else None
    return not ("never retrieved" in str(record.msg) and exc is not None and
                _from_orbax(exc.__traceback__))


_DROP_ORBAX_TASKS = _DropOrbaxTasks()


def _orbax_unraisable(u) -> bool:
  code = getattr(u.object, "cr_code", None)
  return ((code is not None and "orbax" in code.co_filename) or
          _from_orbax(u.exc_traceback))


def _mute_failed_reads() -> None:
  """Keeps a failed Orbax restore from printing TensorStore store specs.

  When one array read fails, Orbax closes its event loop with the sibling
  reads still pending; as they finish and are finalized (whenever the
  garbage collector gets to them, often at exit) each prints a traceback
  with the full store spec of its array: asyncio's "exception was never
  retrieved", Python's "Exception ignored in". Our warning or error already
  names the checkpoint, so from the first failed restore on, asyncio's
  logger and `sys.unraisablehook` drop those reports (only those: the
  exception must come from Orbax or TensorStore code).
  """
  logging.getLogger("asyncio").addFilter(_DROP_ORBAX_TASKS)  # Idempotent.
  hook = sys.unraisablehook
  if not getattr(hook, "_invjax_drops_orbax", False):

    def unraisable(u):
      if not _orbax_unraisable(u):
        hook(u)

    unraisable._invjax_drops_orbax = True  # pylint: disable=protected-access
    sys.unraisablehook = unraisable
  gc.collect()


def restore_first_good(manager, workdir: str, steps: Sequence[int],
                        restore: Callable[[Any, int], Any],
                        sub: str = "checkpoints", max_to_keep: int = 3
                        ) -> tuple[Any, int, Any, list[tuple[int, str]]]:
  """Restores the first of ``steps`` that ``restore(manager, step)`` can.

  Takes over ``manager``: after a failed try it is closed and a fresh one
  opened, since a restore that fails part way can leave Orbax's handler
  set up for the damaged layout and fail the next step too.

  Returns:
    ``(manager, step, restore(manager, step), bad)``: the manager to go on
    with, and ``bad`` the ``(step, error)`` of the steps tried before.

  Raises:
    ValueError: none restores (the message names each step's directory and
      its error); the manager is closed.
  """
  bad = []
  for s in steps:
    if manager is None:
      manager = checkpoint_manager(workdir, sub, max_to_keep)
    try:
      return manager, s, restore(manager, s), bad
    except Exception as e:  # pylint: disable=broad-except
      # Damaged files surface as ValueError, FileNotFoundError, JSON errors
      # or TensorStore's bare Exception, depending on which file is hit.
      bad.append((s, _describe_error(e)))
      manager.close()
      manager = None
    _mute_failed_reads()  # Outside the handler: `e` holds the reads.
  what = "; ".join(f"{step_dir(workdir, s, sub)}: {e}" for s, e in bad)
  many = len(bad) > 1
  # `from None`: the cause is summarized above; printed in full, it would
  # bring TensorStore's spec dump along.
  raise ValueError(
      f"{'no' if many else 'the'} checkpoint under "
      f"{os.path.dirname(step_dir(workdir, 0, sub))} "
      f"{'can' if many else 'cannot'} be restored (damaged or missing "
      f"files): {what}. Move the damaged step "
      f"director{'ies' if many else 'y'} aside to use an earlier "
      "checkpoint, or the checkpoints directory to start the run over"
  ) from None


def load_checkpoint(workdir: str, step: int | None,
                    make_optimizer: Callable[[dict],
                                             optax.GradientTransformation]
                    ) -> TrainState:
  """`invjax.train.load_checkpoint`, given how to build the optimizer.

  Args:
    workdir: the run's workdir.
    step: the checkpoint's step; None: the latest that restores.
    make_optimizer: the optax optimizer of the optimizer's fields of a
      saved config (a dict: steps, learning_rate, schedule, warmup_steps,
      optimizer, momentum, weight_decay).

  Returns:
    The checkpoint's TrainState; its warnings are attributed to the caller
    of `invjax.train.load_checkpoint`.

  Raises:
    ValueError: as `invjax.train.load_checkpoint`.
  """
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  ckpt_dir = os.path.join(os.path.abspath(workdir), "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise ValueError(f"no checkpoints under {workdir!r}")
  manager = checkpoint_manager(workdir)
  try:
    steps = sorted(manager.all_steps(), reverse=True)
    if step is not None:
      steps = [step] if step in steps else []
    if not steps:
      raise ValueError(f"no checkpoint{'' if step is None else f' at {step}'}"
                       f" under {workdir!r}")
    saved = _read_config(workdir, "the optimizer state is returned as "
                         "nested dicts, not its optax structure",
                         stacklevel=4)
    tx = None
    if saved is not None:
      fields = {k: v for k, v in saved["config"].items()
                if k in ("steps", "learning_rate", "schedule", "warmup_steps",
                         "optimizer", "momentum", "weight_decay")}
      tx = make_optimizer(fields)

    def restore(m, s):
      raw = m.restore(s, args=ocp.args.StandardRestore())
      if tx is None:
        return TrainState(int(raw["step"]), raw["variables"], raw["opt_state"])
      opt_state = jax.eval_shape(tx.init, raw["variables"]["params"])
      return restore_checkpoint(m, s, raw["variables"], opt_state)

    handed, manager = manager, None     # Closed there if all fail.
    manager, good, state, bad = restore_first_good(handed, workdir, steps,
                                                   restore)
    for s, e in bad:
      warnings.warn(f"checkpoint {step_dir(workdir, s)} (step {s}) cannot "
                    f"be restored ({e}); returning step {good}'s",
                    stacklevel=3)
    return state
  finally:
    if manager is not None:
      manager.close()


# --------------------------------------------------------------------------
# config.json and metrics.jsonl.
# --------------------------------------------------------------------------


def write_config(workdir: str, record: dict) -> None:
  """Writes the run record to ``workdir/config.json``, atomically."""
  files.atomic_write_text(os.path.join(workdir, "config.json"),
                          json.dumps(record, indent=1))


def _read_config(workdir: str, torn_means: str,
                 stacklevel: int = 3) -> dict | None:
  """The run record in ``workdir/config.json``; None when there is none.

  An empty or cut-short file (a write killed midway, e.g. by an older
  invjax, which rewrote it in place) reads as absent, with a warning that
  ends with ``torn_means``: the checkpoints are still good and `fit`
  rewrites it. Anything else that is not a run record is an error.

  Raises:
    ValueError: the file is complete but not a run record (names the file).
  """
  path = os.path.join(workdir, "config.json")
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except FileNotFoundError:
    return None
  text = raw.decode("utf-8", errors="replace").strip(" \t\r\n\x00")
  try:
    record = json.loads(text)
  except json.JSONDecodeError as e:
    # A prefix of our JSON either lacks the closing brace or fails at its
    # very end; an error inside a complete-looking file is other damage.
    if not text.endswith("}") or e.pos >= len(text) - 1:
      warnings.warn(f"{path} is empty or cut short (a write was "
                    f"interrupted); {torn_means}", stacklevel=stacklevel)
      return None
    raise ValueError(f"{path} is not valid JSON ({e}); it should hold the "
                     "run's config and model, as fit writes it. Remove it "
                     "to resume without the check that the checkpoints "
                     "belong to this run") from None
  if not (isinstance(record, dict) and isinstance(record.get("config"), dict)
          and "model" in record):
    raise ValueError(f"{path} does not hold an invjax run record (a JSON "
                     "object with 'config' and 'model'); is this workdir "
                     "another program's?")
  return record


def check_resume_config(workdir: str, record: dict) -> None:
  saved = _read_config(workdir, "it is rewritten with this run's config "
                       "and model, which cannot be checked against the "
                       "checkpoints'", stacklevel=4)
  if saved is None:
    return
  diff = [k for k in set(saved["config"]) | set(record["config"])
          if k not in _RESUMABLE_FIELDS and
          saved["config"].get(k) != record["config"].get(k)]
  if saved.get("model") != record["model"]:
    diff.append("model")
  if diff:
    raise ValueError(
        f"workdir {workdir!r} holds a run with a different "
        f"{', '.join(sorted(diff))}; use a new workdir (only "
        f"{', '.join(_RESUMABLE_FIELDS)} may change on resume)")


def append_jsonl(path: str | None, record: dict,
                 callback: Callable[[dict], None] | None) -> None:
  if callback is not None:
    callback(dict(record))
  if path is not None:
    # Appended, not rewritten: a kill mid-write tears only this line, which
    # the next start drops (`truncate_metrics`).
    with open(path, "a") as f:
      f.write(json.dumps(record) + "\n")


def truncate_metrics(path: str, step: int, cfg: Any = None) -> None:
  """Cuts the metrics log back to what a run at ``step`` has written.

  Drops the lines after ``step`` (written after the checkpoint the run
  resumes from) and a torn last line. With ``cfg`` (the run continues under
  it), the line at ``step`` is reduced to what an uninterrupted run writes
  there: its loss part only at a log step, its eval part only at an eval
  step; a line that a shorter or ``until`` run wrote only because it ended
  there goes.

  Args:
    path: the metrics log.
    step: the step the run resumes from.
    cfg: the TrainConfig the run continues under (its ``log_every`` and
      ``eval_every`` are read), or None.

  Raises:
    ValueError: a line other than the last is damaged, or has no step (the
      message names the file).
  """
  records, torn = files.read_jsonl(path)
  kept = []
  for i, r in enumerate(records):
    if not isinstance(r.get("step"), int):
      raise ValueError(f"{path}, record {i + 1}: no integer 'step' ({r!r}); "
                       "is this an invjax metrics log?")
    if r["step"] > step:
      continue
    if r["step"] == step and cfg is not None:
      r = dict(r)
      if step % cfg.log_every:
        for k in WINDOW_KEYS + ("lr", "time"):
          r.pop(k, None)
      if cfg.eval_every is None or step % cfg.eval_every:
        for k in [k for k in r if k.startswith("eval_")]:
          del r[k]
      if set(r) == {"step"}:
        continue
    kept.append(r)
  if torn or kept != records:
    files.atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in kept))
