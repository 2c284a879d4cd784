"""One state for all the layers of a unit-wise measure (`base.Unitwise`).

The engine lays a unit-wise measure's layers side by side along one unit
axis: layer l's units (its activations, flattened) are entries
[offset_l, offset_l + F_l) of the last axis of every state leaf. Each layer's
tile is reduced on its own slice of the state, the partials are joined along
the same axis, and one ``fold`` merges them all: the merge is compiled once,
not once per layer shape.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from invjax._src import base


class Layout(NamedTuple):
  """Where each layer's units lie along the shared unit axis."""
  layers: tuple[str, ...]
  sizes: tuple[int, ...]      # F_l, the layer's activations per sample
  offsets: tuple[int, ...]
  total: int                  # Σ F_l

  def slices(self):
    """(layer, offset, size) for each layer, in order."""
    return zip(self.layers, self.offsets, self.sizes)


def layout(layers: Sequence[str],
           specs: dict[str, base.LayerSpec]) -> Layout:
  sizes = tuple(math.prod(specs[l].shape) for l in layers)
  offsets = tuple(sum(sizes[:i]) for i in range(len(sizes)))
  return Layout(tuple(layers), sizes, offsets, sum(sizes))


def flat_spec(spec: base.LayerSpec, lay: Layout) -> base.LayerSpec:
  """The spec of all of ``lay``'s units, with ``spec``'s other fields."""
  return spec._replace(name="+".join(lay.layers), shape=(lay.total,),
                       layer_sizes=lay.sizes)


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


def update(reduce: Callable[[Any, base.Block], Any],
           fold: Callable[[Any, Any, base.Block], Any], lay: Layout,
           state: Any, block_of: Callable[[str], base.Block],
           name: str) -> Any:
  """One update of all of ``lay``'s layers: a reduce per layer, on its
  slice of the state and its flat block ``block_of(layer)``, and one fold
  of the joined partials."""
  parts = [widen(reduce(take(state, offset, size), block_of(l)), size, name)
           for l, offset, size in lay.slices()]
  # The fold reads the chunk's position only: the tiles are in the parts.
  where = block_of(lay.layers[0])._replace(x=None, mask=None, labels=None,
                                           untransformed=None)
  return fold(state, join(parts), where)


def split(outputs: dict[str, Any], lay: Layout,
          shapes: dict[str, tuple[int, ...]],
          name: str) -> dict[str, dict[str, Any]]:
  """All units' (…, F) finalize outputs as ``{layer: (…, *shape) outputs}``.

  Plain indexing, so that it runs on host (NumPy) arrays as well.
  """
  for key, v in outputs.items():
    if v.ndim == 0 or v.shape[-1] != lay.total:
      raise ValueError(
          f"{name}: a unit-wise measure's finalize must return one value per "
          f"unit, got {key!r} of shape {v.shape} for {lay.total} units")
  return {l: {key: v[..., offset:offset + size].reshape(v.shape[:-1] +
                                                        shapes[l])
              for key, v in outputs.items()}
          for l, offset, size in lay.slices()}
