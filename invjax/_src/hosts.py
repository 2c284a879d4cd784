"""The processes of a multi-host `invjax.measure` (`jax.distributed`).

Under ``jax.distributed.initialize`` every process runs the same program on
its own devices and reads only its own part of the data: each process's
source yields its rows of every batch, ``batch_size / process_count`` of
them, and `global_chunk` assembles the global (K, B, ...) chunk from them
with `jax.make_array_from_process_local_data` over the mesh's ``"data"``
axis (process p holding the rows of its devices, in the mesh's order). The
processes agree on what they read with small all-gathers (`agree_*`):
how many chunks each pass has, how many samples and classes the data has,
so a process whose part is shorter feeds masked chunks, and no collective
waits forever.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np


def count() -> int:
  return jax.process_count()


def allgather(x: Any) -> np.ndarray:
  """(processes, ...) stack of every process's ``x`` (one small collective)."""
  # pylint: disable-next=g-import-not-at-top
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(np.asarray(x)))


def agree_more(has_chunk: bool) -> bool:
  """Whether any process still has a chunk in this pass."""
  return bool(allgather(np.int32(has_chunk)).any())


def total(x: Any) -> np.ndarray:
  """The sum over processes of a count (or an array of counts)."""
  return allgather(x).sum(axis=0)


def global_chunk(local: np.ndarray | None, sharding: Any,
                 batch_size: int) -> jax.Array | None:
  """(K, B, ...) global array from this process's (K, B / P, ...) rows."""
  if local is None:
    return None
  local = np.asarray(local)
  shape = (local.shape[0], batch_size) + local.shape[2:]
  return jax.make_array_from_process_local_data(sharding, local, shape)
