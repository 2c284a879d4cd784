"""A measurement's workdir: checkpoints of `invjax.measure`, and resuming.

`invjax.measure(..., workdir=path, checkpoint_every=k)` keeps here what a
run killed at any instant needs to go on where it stopped:

    workdir/measure.json            what is measured (model, data, measures,
                                    settings), checked on resume
    workdir/measure_checkpoints/<s>/  Orbax checkpoints of the measures'
                                    states and counts after s chunks (plus
                                    one per pass end), with the position in
                                    the data: pass and chunks consumed

A checkpoint is written every k chunks, at the end of every pass and when
the measurement is complete (a rerun then only finalizes). Called again with
the same workdir, `invjax.measure` restores the newest checkpoint that reads
back, skips the chunks it holds, and continues; the states are saved and
restored exactly and every later step is the same program on the same
inputs, so the result equals an uninterrupted run's bit for bit.

What a source needs: the same batches in the same order on every call,
from the start of the data (a re-iterable source whose ``iter()`` starts
over, or a generator rebuilt by the caller; a shuffling loader with a fixed
seed, such as grain's with its seed set, qualifies). The batches a
checkpoint holds are read again and dropped, so resuming costs one read of
the consumed part of the current pass, not its compute. The first batch is
hashed into the record, so a source that starts elsewhere is refused; later
batches are trusted.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, NamedTuple

import jax
import numpy as np

from invjax._src import files
from invjax._src import workdir as workdir_lib

_RECORD = "measure.json"
_CHECKPOINTS = "measure_checkpoints"
# Rows of an in-memory array hashed for its fingerprint: enough to tell two
# datasets apart, cheap next to a pass over N images.
_SAMPLED_ROWS = 64


class Position(NamedTuple):
  """Where a measurement stands: ``chunks`` chunks of pass ``pass_`` done.

  ``pass_ == num_passes`` means complete. ``n`` and ``sizes`` are the
  sample count and class sizes of a batch source once its first pass is
  over (None before).
  """
  pass_: int
  chunks: int
  step: int
  n: int | None = None
  sizes: list[int] | None = None
  num_batches: int | None = None


def _digest(arrays) -> str:
  h = hashlib.sha256()
  for a in jax.tree.leaves(arrays):
    a = np.ascontiguousarray(np.asarray(a))
    h.update(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
  return h.hexdigest()[:16]


def data_fingerprint(images: Any, labels: Any, first_batch: Any) -> dict:
  """Shape, dtype and a hash of sampled rows (array) or of the first batch."""
  if first_batch is not None:
    return {"kind": "batch source", "first_batch": _digest(first_batch)}
  n = int(images.shape[0])
  rows = np.unique(np.linspace(0, n - 1, min(n, _SAMPLED_ROWS)).astype(int))
  sample = np.asarray(images[rows])
  return {"kind": "array", "shape": list(images.shape),
          "dtype": str(images.dtype), "rows": _digest(sample),
          "labels": None if labels is None else _digest(labels)}


STATE_LAYOUT = 3


def record(*, acts: Any, specs: dict, measures: list, transformations: Any,
           data: dict, settings: dict) -> dict:
  """The JSON record of what a measurement computes, for `check_record`.

  The model is its description (a Linen module's class, a function's name),
  a hash of its parameters and its layers' shapes; the code of a function is
  not looked into.
  """
  return {
      # The layout of the saved states: 2 since unit-wise measures keep one
      # state for all their layers (`units`), 3 since that state may have
      # room for a padded block (`units.Layout.capacity`); checkpoints of
      # another layout cannot be restored.
      "state_layout": STATE_LAYOUT,
      "model": {"description": acts.description,
                "params": _digest(acts.params),
                "layers": [[l, list(s.shape), str(s.dtype)]
                           for l, s in specs.items()]},
      "data": data,
      "measures": [[m.name, repr(m.settings)] for m in measures],
      "transformations": {
          "action": type(transformations.action).__name__,
          "parameters": _digest(np.asarray(transformations.parameters))},
      "settings": settings,
  }


def check_record(workdir: str, rec: dict) -> None:
  """Writes ``rec`` to a fresh workdir, or checks it against the saved one.

  Raises:
    ValueError: the workdir holds another measurement (names what differs).
  """
  path = os.path.join(workdir, _RECORD)
  rec = json.loads(json.dumps(rec))          # tuples → lists, as saved
  try:
    with open(path) as f:
      saved = json.load(f)
  except FileNotFoundError:
    saved = None
  except (json.JSONDecodeError, UnicodeDecodeError):
    # Written atomically: a damaged file is not ours to overwrite.
    raise ValueError(f"{path} is not a measurement record (invalid JSON); "
                     "use another workdir") from None
  if saved is None:
    if os.path.isdir(os.path.join(workdir, _CHECKPOINTS)):
      raise ValueError(
          f"workdir {workdir!r} has measurement checkpoints but no "
          f"{_RECORD}: they cannot be checked against this measurement; use "
          "another workdir")
    os.makedirs(workdir, exist_ok=True)
    files.atomic_write_text(path, json.dumps(rec, indent=1))
    return
  if not isinstance(saved, dict):
    raise ValueError(f"{path} is not a measurement record; use another "
                     "workdir")
  diff = sorted(k for k in set(saved) | set(rec) if saved.get(k) != rec.get(k))
  if diff:
    detail = "; ".join(f"{k}: saved {saved.get(k)!r}, now {rec.get(k)!r}"
                       for k in diff)
    raise ValueError(
        f"workdir {workdir!r} holds a measurement of a different "
        f"{', '.join(diff)} ({detail[:600]}); use a new workdir for a new "
        "measurement")


class Checkpoints:
  """Saves and restores a measurement's states at chunk boundaries."""

  def __init__(self, workdir: str, every: int | None):
    self.workdir, self.every = os.path.abspath(workdir), every
    self._manager = workdir_lib.checkpoint_manager(self.workdir, _CHECKPOINTS,
                                                   max_to_keep=2)

  def restore(self, abstract_states: Any
              ) -> tuple[Position, Any] | None:
    """(position, (states, counts)) of the newest readable checkpoint."""
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    steps = sorted(self._manager.all_steps(), reverse=True)
    if not steps:
      return None
    target = {"states": abstract_states,
              "position": jax.ShapeDtypeStruct((3,), np.int64)}
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)

    def restore(manager, step):
      tree = manager.restore(step, args=ocp.args.StandardRestore(abstract))
      meta = manager.metadata(step).custom_metadata or {}
      return tree, meta

    # A damaged newest checkpoint (a kill inside Orbax's commit) falls back
    # to the one before; Orbax keeps two.
    self._manager, _, (tree, meta), _ = workdir_lib.restore_first_good(
        self._manager, self.workdir, steps, restore, _CHECKPOINTS, 2)
    g, chunks, step = (int(v) for v in tree["position"])
    pos = Position(g, chunks, step, meta.get("n"), meta.get("sizes"),
                   meta.get("num_batches"))
    return pos, tree["states"]

  def save(self, pos: Position, states: Any) -> None:
    import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
    tree = {"states": jax.device_get(states),
            "position": np.asarray([pos.pass_, pos.chunks, pos.step],
                                   np.int64)}
    meta = {"n": pos.n, "sizes": pos.sizes, "num_batches": pos.num_batches}
    self._manager.save(pos.step, args=ocp.args.StandardSave(tree),
                       custom_metadata=meta, force=True)
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
