"""One state for all the layers of a unit-wise measure (`base.Unitwise`).

The engine lays a unit-wise measure's layers side by side along one unit
axis: layer l's units (its activations, flattened) are entries
[offset_l, offset_l + F_l) of the last axis of every state leaf. The tiles
are reduced into partials on that axis and one ``fold`` merges them all: the
merge is compiled once, not once per layer shape.

On CPU the reduce is shared too (`Layout.block`): one loop over blocks of U
units of every layer calls ``reduce`` on (B, Tc, U) slices, so its kernels
are compiled once instead of once per layer shape. XLA:CPU compiles every
distinct kernel, and these were half of a measure program's kernels
(benchmarks/results/compile_time_cpu.md). A layer of fewer than U units is
one block, padded; the state has room for its padding after its units
(`Layout.capacity`), and a later block writes over the padding's partials.
A long run splits the loop into a few, each over consecutive layers
(`Layout.loops`, `loop_groups`), so that the first layers' blocks are
reduced while the forward pass computes the last ones.
Accelerators reduce each layer whole: a loop of small kernels there would
cost a launch (and on GPUs a host round trip) per block.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from invjax._src import base
from invjax._src import stats


class Layout(NamedTuple):
  """Where each layer's units lie along the shared unit axis."""
  layers: tuple[str, ...]
  sizes: tuple[int, ...]      # F_l, the layer's activations per sample
  offsets: tuple[int, ...]
  total: int                  # Σ F_l
  block: int = 0              # U: reduce in blocks of U units; 0: by layer
  capacity: int = 0           # units in the state: total + room to pad
  loops: int = 1              # the blocks in this many loops, by layer order

  def slices(self):
    """(layer, offset, size) for each layer, in order."""
    return zip(self.layers, self.offsets, self.sizes)


def layout(layers: Sequence[str], specs: dict[str, base.LayerSpec],
           block: int = 0, loops: int = 1) -> Layout:
  """The layers' units side by side; ``block``: reduce in blocks of at most
  that many units (0, or layers all of one size: a reduce per layer);
  ``loops``: that many loops over the blocks, each over consecutive layers
  (at most one per layer; see `loop_groups`)."""
  sizes = tuple(math.prod(specs[l].shape) for l in layers)
  offsets = tuple(sum(sizes[:i]) for i in range(len(sizes)))
  total = sum(sizes)
  if len(set(sizes)) < 2:
    # One layer shape: the per-layer kernels are compiled once already.
    block = 0
  block = min(block, max(sizes))
  capacity = max([total] + [o + block for o, f in zip(offsets, sizes)
                            if f < block])
  loops = max(1, min(loops, len(layers))) if block else 1
  return Layout(tuple(layers), sizes, offsets, total, block, capacity, loops)


def flat_spec(spec: base.LayerSpec, lay: Layout) -> base.LayerSpec:
  """The spec of all of ``lay``'s units (with the padding room after them,
  as one more entry of ``layer_sizes``), with ``spec``'s other fields."""
  room = lay.capacity - lay.total
  return spec._replace(name="+".join(lay.layers), shape=(lay.capacity,),
                       layer_sizes=lay.sizes + ((room,) if room else ()))


def flatten(x: jax.Array | None, lead: int) -> jax.Array | None:
  """(lead axes..., *shape) -> (lead axes..., F); None stays None."""
  return None if x is None else x.reshape(x.shape[:lead] + (-1,))


def widen(tree: Any, units: int, name: str) -> Any:
  """Broadcasts every leaf's unit axis (last, size 1 or ``units``) to units.

  Raises:
    ValueError: a leaf does not end with a unit axis (the measure breaks the
      `base.Unitwise` contract).
  """
  def one(v):
    if v.ndim == 0 or v.shape[-1] not in (1, units):
      raise ValueError(
          f"{name}: every leaf of a unit-wise measure's state and partials "
          f"must end with the unit axis (size {units} or 1), got shape "
          f"{v.shape} (see invjax base.Unitwise)")
    return jnp.broadcast_to(v, v.shape[:-1] + (units,))
  return jax.tree.map(one, tree)


def take(tree: Any, offset: int, size: int) -> Any:
  """Units [offset, offset + size) of every leaf."""
  return jax.tree.map(
      lambda v: jax.lax.slice_in_dim(v, offset, offset + size, axis=-1), tree)


def join(trees: Sequence[Any]) -> Any:
  """The layers' trees side by side along the unit axis."""
  if len(trees) == 1:
    return trees[0]
  return jax.tree.map(lambda *vs: jnp.concatenate(vs, axis=-1), *trees)


class Job(NamedTuple):
  """One unit-wise measure's update in a shared pass over the layers."""
  reduce: Callable[[Any, base.Block], Any]
  fold: Callable[[Any, Any, base.Block], Any]
  state: Any
  name: str
  pass_index: int = 0


def update(jobs: Sequence[Job], lay: Layout,
           block_of: Callable[[str], base.Block]) -> list[Any]:
  """One update of every job's state over all of ``lay``'s layers.

  Each job's ``reduce`` runs on each layer's flat block ``block_of(layer)``
  (whole, or in blocks of ``lay.block`` units, cut once for all jobs) and
  its slice of the job's state; one ``fold`` per job merges the joined
  partials. The jobs share the blocks' activations and differ in pass; the
  moments they take of the same block are computed once
  (`stats.shared_moments`).
  """
  blocks = {l: block_of(l) for l in lay.layers}
  if lay.block:
    joined = _reduce_blocks(jobs, lay, blocks)
  else:
    def reduce(job, l, offset, size):
      part = job.reduce(take(job.state, offset, size),
                        blocks[l]._replace(pass_index=job.pass_index))
      return widen(part, size, job.name)
    with stats.shared_moments():
      joined = [join([reduce(job, *layer) for layer in lay.slices()])
                for job in jobs]
  # The fold reads the chunk's position only: the tiles are in the parts.
  where = blocks[lay.layers[0]]._replace(x=None, mask=None, labels=None,
                                         untransformed=None)
  return [job.fold(job.state, part, where._replace(pass_index=job.pass_index))
          for job, part in zip(jobs, joined)]


def block_table(lay: Layout) -> np.ndarray:
  """(blocks, 3) int32: each block's layer, first unit in it, and first
  unit in the state, in increasing order of the last.

  A layer of F ≥ U units is cut at 0, U, 2U, … and its last block ends at
  F (overlapping the one before: the same units give the same partials).
  A layer of F < U units is one block, zero-padded to U: its padding's
  partials land on the next units of the state, which a later block (or
  the room at the end) holds.
  """
  rows = []
  for i, (offset, size) in enumerate(zip(lay.offsets, lay.sizes)):
    starts = range(0, max(size - lay.block, 0) + 1, lay.block)
    starts = list(starts) + ([size - lay.block] if size > lay.block and
                             size % lay.block else [])
    rows += [(i, s, offset + s) for s in starts]
  return np.array(rows, np.int32).reshape(-1, 3)


def loop_groups(lay: Layout) -> list[range]:
  """``lay.loops`` runs of consecutive layers (indices), of about equal
  units each; fewer where a layer holds more than a run's share."""
  ends = np.cumsum(lay.sizes)
  cuts = {int(np.argmin(np.abs(ends - lay.total * g / lay.loops))) + 1
          for g in range(1, lay.loops)}
  cuts = sorted(c for c in cuts if 0 < c < len(lay.sizes))
  bounds = [0] + cuts + [len(lay.sizes)]
  return [range(a, z) for a, z in zip(bounds, bounds[1:])]


def _reduce_blocks(jobs: Sequence[Job], lay: Layout,
                   blocks: dict[str, base.Block]) -> list[Any]:
  """Every job's partials over all layers from loops over their blocks of
  U units (each block cut once, for all jobs).

  One loop per run of layers (`loop_groups`), each over its own layers'
  taps only: XLA:CPU runs an operation once its operands are ready, so the
  loop over the first layers' blocks can run on one core while the forward
  pass computes the last layers on the other. One loop would wait for the
  whole forward pass; each loop compiles its own kernels.
  """
  table = block_table(lay)
  pieces = []
  for group in loop_groups(lay):
    rows = table[(table[:, 0] >= group.start) & (table[:, 0] < group.stop)]
    first = lay.offsets[group.start]
    end = (lay.offsets[group.stop] if group.stop < len(lay.layers)
           else lay.capacity)
    # A padded block spills its junk partials past the run's last layer,
    # onto units the next run writes: kept in this run's room, cut off.
    room = max(end, int(rows[:, 2].max()) + lay.block) - first
    local = rows - np.array([group.start, 0, first], np.int32)
    parts = _block_loop(jobs, lay.block, [blocks[lay.layers[i]] for i in group],
                        [lay.sizes[i] for i in group], local, first, room)
    pieces.append([take(p, 0, end - first) for p in parts])
  return [join(list(p)) for p in zip(*pieces)]


def _block_loop(jobs: Sequence[Job], u: int, tiles: Sequence[base.Block],
                sizes: Sequence[int], table: np.ndarray, first: int,
                room: int) -> list[Any]:
  """Every job's partials over ``room`` units from ``first`` of the state,
  from one loop over the blocks in ``table`` (rows of `block_table`, their
  layers indexing ``tiles`` and their state units counted from first)."""

  def source(tile: base.Block, size: int):
    """The branch that cuts U units from this layer (or pads it to U)."""
    def cut(start):
      if size < u:
        cut_one = lambda v: jnp.pad(
            v, [(0, 0)] * (v.ndim - 1) + [(0, u - size)])
      else:
        cut_one = lambda v: jax.lax.dynamic_slice_in_dim(v, start, u, -1)
      return (jax.tree.map(cut_one, (tile.x, tile.untransformed)),
              tile.mask)
    return cut

  branches = [source(t, f) for t, f in zip(tiles, sizes)]
  table = jnp.asarray(table)

  def partials(i):
    layer, start, at = table[i, 0], table[i, 1], table[i, 2]
    (x, untransformed), mask = jax.lax.switch(layer, branches, start)
    parts = []
    with stats.shared_moments():
      for job in jobs:
        block = tiles[0]._replace(x=x, untransformed=untransformed,
                                  mask=mask, pass_index=job.pass_index)
        units = jax.tree.map(
            lambda v: jax.lax.dynamic_slice_in_dim(v, first + at, u, -1),
            job.state)
        parts.append(widen(job.reduce(units, block), u, job.name))
    return parts, at

  def body(i, joined):
    parts, at = partials(i)
    return jax.tree.map(
        lambda j, p: jax.lax.dynamic_update_slice_in_dim(j, p, at, -1),
        joined, parts)

  shapes, _ = jax.eval_shape(partials, 0)
  joined = jax.tree.map(
      lambda v: jnp.zeros(v.shape[:-1] + (room,), v.dtype), shapes)
  return jax.lax.fori_loop(0, table.shape[0], body, joined)


def split(outputs: dict[str, Any], lay: Layout,
          shapes: dict[str, tuple[int, ...]],
          name: str) -> dict[str, dict[str, Any]]:
  """All units' (…, F) finalize outputs as ``{layer: (…, *shape) outputs}``.

  Plain indexing, so that it runs on host (NumPy) arrays as well.
  """
  for key, v in outputs.items():
    if v.ndim == 0 or v.shape[-1] != lay.capacity:
      raise ValueError(
          f"{name}: a unit-wise measure's finalize must return one value per "
          f"unit, got {key!r} of shape {v.shape} for {lay.capacity} units")
  return {l: {key: v[..., offset:offset + size].reshape(v.shape[:-1] +
                                                        shapes[l])
              for key, v in outputs.items()}
          for l, offset, size in lay.slices()}
