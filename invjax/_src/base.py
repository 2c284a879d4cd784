"""The one abstraction every invjax measure implements.

A measure is a `Measure`: a small NamedTuple of pure functions over *mergeable
statistics*, in the spirit of optax's `GradientTransformation`:

    state = measure.init(spec)                  # per layer
    state = measure.update(state, block)        # block.x: (B, T, *shape)
      # = measure.unitwise.fold(state, measure.unitwise.reduce(state, block),
      #                         block), where the units are independent
    state = measure.merge(state_a, state_b)     # disjoint sample sets
    outputs = measure.finalize(state, spec)     # {"values": (*shape), ...}

What a measure needs from the engine beyond its blocks (the untransformed
activations, inverse warps, several passes, a single device) it declares
once, in its `Requirements`.

`invjax.measure` streams a dataset through these functions inside one compiled
XLA program (`lax.scan` over sample batches). The same per-block maths is
available without streaming through `Measure.__call__(block)`, which is a plain,
differentiable function suitable for training losses.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
State = Any


class LayerSpec(NamedTuple):
  """Static description of one tapped layer, handed to `Measure.init`.

  Attributes:
    name: layer path, e.g. ``"Conv_0"``.
    shape: activation shape of one sample, without the batch axis.
    dtype: activation dtype.
    num_transformations: T, the size of the transformation set (unpadded).
    num_padded_transformations: T rounded up to a multiple of the transform
      chunk; rows past T are padding (`Block.t_mask` is False there).
    batch_size: B, the number of samples in every block.
    layer_sizes: for the flat spec of several layers' units side by side
      (a `Unitwise` measure's state), each layer's number of units, in
      order; () for one layer.
  """
  name: str
  shape: tuple[int, ...]
  dtype: Any
  num_transformations: int
  num_padded_transformations: int
  batch_size: int
  layer_sizes: tuple[int, ...] = ()


class Block(NamedTuple):
  """One (sample batch × transformation chunk) tile of one layer.

  Attributes:
    x: (B, Tc, *shape) activations of the transformed samples. For measures
      requiring ``inverse`` the inverse transformation has been applied to
      each feature map first (same-equivariance).
    mask: (B,) bool, False for padding samples.
    t_index: (Tc,) int32 global index of each transformation in the set:
      consecutive, ``start + arange(Tc)``.
    t_mask: (Tc,) bool, False for padding transformations.
    first: () bool, True on the first transformation chunk of a batch.
    last: () bool, True on the last transformation chunk of a batch.
    labels: (B,) int32 class labels, or None when none were given.
    untransformed: (B, *shape) activations of the untransformed samples when
      the measure requires them (``Requirements.untransformed``), else None.
    pass_index: which pass over the data this is (Python int; multi-pass
      measures only).
    whole_orbit: (Python bool) the tile holds every transformation of its
      samples (one transformation chunk), so a measure may compute orbit
      statistics directly instead of accumulating them over chunks.
  """
  x: Array
  mask: Array
  t_index: Array
  t_mask: Array
  first: Array
  last: Array
  labels: Array | None = None
  untransformed: Array | None = None
  pass_index: int = 0
  whole_orbit: bool = True


class Requirements(NamedTuple):
  """What a measure needs from the engine, read in one place.

  Attributes:
    untransformed: hand ``update`` the untransformed activations
      (``Block.untransformed``): one more forward pass of each batch.
    inverse: map each feature map back by the inverse transformation before
      ``update`` (same-equivariance); layers that are not (B, h, w, c)
      feature maps are skipped, with a note.
    passes: passes over the data (Goodfellow's thresholds need 2 or 3).
    untransformed_passes: the passes whose ``update`` reads only
      ``Block.untransformed`` (``Block.x`` is then None): the engine skips the
      transformed forward pass for them. The engine schedules a multi-pass
      measure so that its last pass is the last sweep over the data, shared
      with the single-pass measures.
    shardable: ``update`` may run under a mesh (XLA's partitioner splits
      it); False for a Pallas kernel, which the partitioner cannot split.
  """
  untransformed: bool = False
  inverse: bool = False
  passes: int = 1
  untransformed_passes: tuple[int, ...] = ()
  shardable: bool = True


class Unitwise(NamedTuple):
  """`Measure.update` split at the unit axis, for measures whose units are
  independent (each unit's statistics read only that unit's activations).

  ``update(state, block) == fold(state, reduce(state, block), block)``, where
  ``reduce`` reads the tile and returns per-unit statistics of it (a
  "partial") and ``fold`` merges them into the state. The engine calls both
  on flat layers: ``spec.shape == (F,)``, ``block.x`` (B, Tc, F),
  ``block.untransformed`` (B, F). It keeps one state for all of a measure's
  layers, their units side by side, calls ``reduce`` on each layer's slice
  of the state (on CPU: on blocks of U units cut from every layer, a
  smaller layer zero-padded) and ``fold`` once on all units: the kernels are
  compiled once per measure instead of once per layer shape (XLA:CPU
  compiles each distinct kernel), which is most of a measure program's
  compile time.

  For that, every leaf of the state and of a partial ends with the unit
  axis, of size F or of size 1 when all units share the value (a count): the
  engine broadcasts the size-1 ones, places layers side by side along it and
  slices it. ``fold`` must not read ``block.x``, ``block.untransformed``,
  ``block.mask`` or ``block.labels`` (None there): what depends on them
  belongs to the partial. ``end_pass`` works unit by unit, and ``finalize``
  too: the engine finalizes all layers' units in one call, with a flat spec
  whose ``layer_sizes`` says which units are whose (ANOVA's Bonferroni level
  depends on the layer's size), and expects (F,) outputs.

  Attributes:
    reduce: ``(state, Block) -> partial``.
    fold: ``(state, partial, Block) -> state``.
  """
  reduce: Callable[[State, Block], Any]
  fold: Callable[[State, Any, Block], State]


class Measure(NamedTuple):
  """A measure as pure functions over mergeable per-layer statistics.

  Attributes:
    name: short name, e.g. ``"normalized_variance"``.
    init: ``LayerSpec -> state``.
    update: ``(state, Block) -> state``. Must ignore rows with ``mask`` False
      and columns with ``t_mask`` False.
    merge: ``(state, state) -> state``: combine statistics of disjoint sample
      sets (between whole batches). The engine carries one state through
      the batches of a run; ``merge`` is the user-facing way to combine runs
      over parts of a dataset (e.g. shards measured apart), and the contract
      test (`tests/test_contract.py`) checks for every factory that merging
      the states of two halves equals the whole.
    finalize: ``(state, spec) -> {"values": (*shape), ...}``; ``spec`` is the
      layer's `LayerSpec` (static shapes need not live in the state). A
      ratio measure also returns ``"numerator"`` and ``"denominator"``:
      per-feature-map values are then the ratio of spatial means (tmeasures'
      ``AverageFeatureMaps``).
    settings: hashable ``((key, value), ...)`` recorded in results; two
      measures with equal name and settings compute the same thing.
    requires: what the engine must provide (`Requirements`).
    end_pass: ``(state, pass_index) -> state`` called after each pass.
    check: optional ``(num_samples, num_transformations) -> None`` that
      raises a ValueError when statistics over that many samples and
      transformations have no degrees of freedom (so the measure would
      report a meaningless, often perfect, score). The engine calls it on
      the dataset, or on each class of a stratified run (a class that fails
      is left out of the class average, with a note), and `measure_block`
      on its batch; `__call__`, the bare maths, follows the single-row rule
      instead (a statistic over ≤ ddof values is 0). See `size_check`.
    unitwise: optional `Unitwise` split of ``update``, which the engine
      uses to compile the measure once for all layers.
  """
  name: str
  init: Callable[[LayerSpec], State]
  update: Callable[[State, Block], State]
  merge: Callable[[State, State], State]
  finalize: Callable[[State, LayerSpec], Mapping[str, Array]]
  settings: tuple[tuple[str, Any], ...] = ()
  requires: Requirements = Requirements()
  end_pass: Callable[[State, int], State] | None = None
  check: Callable[[int, int], None] | None = None
  unitwise: Unitwise | None = None

  @property
  def key(self) -> tuple[Any, ...]:
    """Hashable identity used to cache compiled programs."""
    return (self.name, self.settings, self.requires)

  def __call__(self, x: Array, *, labels: Array | None = None,
               untransformed: Array | None = None,
               identity: Array | None = None) -> Mapping[str, Array]:
    """Evaluates the measure on one in-memory block, without streaming.

    Pure and differentiable (where the measure is): use it inside a loss.

    Args:
      x: (B, T, *shape) activations (already inverse-transformed for
        same-equivariance measures).
      labels: optional (B,) int labels.
      untransformed: (B, *shape) untransformed activations, for measures
        that need them.
      identity: deprecated name of ``untransformed``.

    Returns:
      The ``finalize`` outputs, e.g. ``{"values": (*shape), ...}``.
    """
    if identity is not None:
      warnings.warn("Measure(..., identity=) is deprecated: pass "
                    "untransformed=", DeprecationWarning, stacklevel=2)
      if untransformed is not None:
        raise ValueError("pass untransformed= only (identity= is its old "
                         "name)")
      untransformed = identity
    x = jnp.asarray(x)
    if x.ndim < 2:
      raise ValueError(
          f"{self.name}: expected a block of shape (B, T, ...), got {x.shape}")
    b, t = x.shape[:2]
    spec = LayerSpec("block", tuple(x.shape[2:]), x.dtype, t, t, b)
    state = self.init(spec)
    for p in range(self.requires.passes):
      block = Block(x=x, mask=jnp.ones((b,), bool),
                    t_index=jnp.arange(t, dtype=jnp.int32),
                    t_mask=jnp.ones((t,), bool), first=jnp.array(True),
                    last=jnp.array(True), labels=labels,
                    untransformed=untransformed, pass_index=p)
      state = self.update(state, block)
      if self.end_pass is not None:
        state = self.end_pass(state, p)
    return self.finalize(state, spec)


def settings_tuple(**settings: Any) -> tuple[tuple[str, Any], ...]:
  """Sorted, hashable settings for `Measure.settings`."""
  return tuple(sorted(settings.items()))


def size_check(name: str, *, min_samples: int = 1,
               min_transformations: int = 1,
               why: str = "") -> Callable[[int, int], None]:
  """A `Measure.check` asking for at least this many samples and transformations.

  Args:
    name: the measure's name, for the message.
    min_samples: the fewest samples its statistics are defined for.
    min_transformations: the fewest transformations.
    why: what the minimum comes from, e.g. ``"ddof=1"``.
  """
  because = f" ({why})" if why else ""

  def check(num_samples: int, num_transformations: int) -> None:
    if num_transformations < min_transformations:
      raise ValueError(
          f"{name} needs at least {min_transformations} transformations"
          f"{because}, got T = {num_transformations}: its statistics over "
          "each orbit would have no degrees of freedom")
    if num_samples < min_samples:
      raise ValueError(
          f"{name} needs at least {min_samples} samples{because}, got "
          f"{num_samples}: its statistics over samples would have no "
          "degrees of freedom")

  return check
