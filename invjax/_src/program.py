"""The compiled programs of one `invjax.measure` plan.

A `Plan` holds everything static about a run (activations, transformations,
measures, layer specs, batch and transformation-chunk sizes, mesh);
`build_program` turns it into pure functions (init, one step per pass, end of
pass, finalize) and `Programs` jits them, donating the carried states.
`invjax._src.engine` streams the data through them.
"""

from __future__ import annotations

import functools
import types

import jax
import jax.numpy as jnp
from jax.experimental.layout import Layout, with_layout_constraint
from jax.sharding import NamedSharding, PartitionSpec as P

from invjax._src import base
from invjax._src import transforms
from invjax._src import units


def row_major(x: jax.Array) -> jax.Array:
  """Pins a (B, Tc, ...) tile of activations to row-major order on CUDA.

  Left free, XLA:GPU lays a tapped activation out with the sample axis minor
  so that SV's reduction over samples becomes a row reduction, and pays a
  transposed copy of every tap for it (`benchmarks/hlo_traffic.py` counts
  the bytes, H200 target). In row-major order that reduction, a column
  reduction, reads the tile where it lies. Other backends are left to XLA:
  the effect was measured for CUDA only.
  """
  pin = lambda x: with_layout_constraint(x, Layout(tuple(range(x.ndim))))
  return jax.lax.platform_dependent(x, cuda=pin, default=lambda x: x)


# Units per block of a unit-wise reduce on CPU: (B, Tc, U) float32 slices
# (2 MB at B = 64, Tc = 16) stay in cache between the cut and the reduce's
# few passes; 1024 and more ran slower on ResNet-18, 256 on both models.
UNIT_BLOCK = 512


# A measurement of at least LONG_RUN orbit images (N × T) reduces the blocks
# in LONG_RUN_LOOPS loops by layer order (`units.loop_groups`): the loop over
# the first layers' blocks runs on a second core while the forward pass
# computes the last layers. Each loop compiles its own kernels, which only a
# long run repays. SimpleConv, 2 CPU cores (benchmarks/results/cpu.md): NV's
# steady state 1.45× → 1.24× the forward pass's, its compile 2.0× → 3.6× the
# forward's (NV + ANOVA + Goodfellow 4.3× → 8.0×); 2^15 orbit images at
# 28 × 28 take about 20 s of forward passes there.
LONG_RUN = 1 << 15
LONG_RUN_LOOPS = 3


def reduce_loops(orbit_images: int | None, mesh=None) -> int:
  """The ``loops`` of `units.layout`: `LONG_RUN_LOOPS` where the blocks are
  reduced (`unit_block`) and the run holds at least `LONG_RUN` orbit images,
  else 1. None (a batch source without ``len()``) counts as short: the
  compile time is paid before the length is known, and a source that knows
  its length can say so."""
  long_run = orbit_images is not None and orbit_images >= LONG_RUN
  return LONG_RUN_LOOPS if long_run and unit_block(mesh) else 1


def unit_block(mesh=None) -> int:
  """The ``block`` of `units.layout`: `UNIT_BLOCK` on one CPU device, else 0
  (each layer whole: accelerators pay a launch per block, and a mesh's
  partitioner would reduce each block across devices)."""
  blocked = mesh is None and jax.default_backend() == "cpu"
  return UNIT_BLOCK if blocked else 0


class Plan:
  """Everything static about one set of compiled measure programs."""

  def __init__(self, acts, ts, measures, layers, specs, spatial, b, tc, nc,
               input_hw, num_classes, mesh, need_untransformed, has_labels,
               loops=1):
    self.acts, self.ts, self.measures = acts, ts, measures
    self.layers, self.specs, self.spatial = layers, specs, spatial
    self.b, self.tc, self.nc = b, tc, nc
    self.input_hw, self.num_classes = input_hw, num_classes
    self.mesh = mesh
    self.need_untransformed = need_untransformed
    self.has_labels = has_labels
    self.loops = loops                  # `reduce_loops`
    self.members = acts.members         # None, or K ensemble members
    self.num_passes = max(m.requires.passes for m in measures)

  def layers_for(self, m: base.Measure) -> list[str]:
    return [l for l in self.layers
            if self.spatial[l] or not m.requires.inverse]

  def unit_layout(self, m: base.Measure) -> units.Layout | None:
    """The shared unit axis of a unit-wise measure's layers (reduced in
    blocks of `unit_block` units, in ``self.loops`` loops), else None."""
    layers = self.layers_for(m)
    if m.unitwise is None or not layers:
      return None
    return units.layout(layers, self.specs, unit_block(self.mesh),
                        self.loops)


def build_program(plan: Plan):
  """The pure functions of a measure run, to be jitted by `Programs`.

  Returns a namespace of ``init() -> (states, counts)``; ``step(g)``, the
  function of one chunk in global pass g, ``(params, states, counts, images
  (K, B, H, W, C), mask (K, B), labels (K, B) | None, tparams, tmask)
  -> (states, counts, samples)`` (samples: a small output to wait on);
  ``end_pass(g)``, ``states -> states``; ``has_end_pass(g)``; and
  ``finalize(states) -> [{layer: outputs}]``.

  A measure's states are ``{layer: state}``, or, for a unit-wise measure
  (`base.Unitwise`), one state over all its layers' units (`units`).
  """
  acts, action, measures = plan.acts, plan.ts.action, plan.measures
  b, tc, nc, k = plan.b, plan.tc, plan.nc, plan.num_classes
  layers = plan.layers
  any_inverse = any(m.requires.inverse for m in measures)
  max_passes = plan.num_passes

  def constrain(x):
    if plan.mesh is None:
      return x
    spec = P("data", *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(plan.mesh, spec))

  def pin(tile):
    # A sharded tile's layout is the partitioner's; an ensemble's (vmapped)
    # is XLA's too: the layout pin has no batching rule.
    if plan.mesh is not None or plan.members:
      return tile
    return row_major(tile)

  def forward(params, imgs):
    out = acts.apply(params, imgs)
    missing = [l for l in layers if l not in out]
    if missing:
      raise ValueError(f"the activations function did not return {missing}")
    return {l: out[l] for l in layers}

  # A unit-wise measure keeps one state for all its layers (`units`).
  unit_layouts = [plan.unit_layout(m) for m in measures]

  def stack_classes(s):
    if not k:
      return s
    return jax.tree.map(lambda v: jnp.broadcast_to(v, (k,) + v.shape), s)

  def init_state(m, lay):
    if lay is not None:
      spec = units.flat_spec(plan.specs[lay.layers[0]], lay)
      return stack_classes(units.widen(m.init(spec), lay.capacity, m.name))
    return {l: stack_classes(m.init(plan.specs[l]))
            for l in plan.layers_for(m)}

  def per_class(fn, state, block):
    """fn(state, block), or over each class's state and samples."""
    if not k:
      return fn(state, block)
    class_masks = (block.labels[None, :] == jnp.arange(k)[:, None]) & (
        block.mask[None, :])
    return jax.vmap(lambda s, cm: fn(s, block._replace(mask=cm)))(
        state, class_masks)

  def update(m, state, block):
    return per_class(m.update, state, block)

  def unit_job(m, state, p):
    fold = m.unitwise.fold
    if k:
      fold = jax.vmap(fold, in_axes=(0, 0, None))
    return units.Job(functools.partial(per_class, m.unitwise.reduce), fold,
                     state, m.name, p)

  def local_pass(m, g):
    """Measure m's own pass at global pass g, or None when m is idle.

    Multi-pass measures start early so that every measure's last pass is the
    last global pass: single-pass measures then share the final sweep.
    """
    p = g - (max_passes - m.requires.passes)
    return p if p >= 0 else None

  def needs_transformed(g):
    return any(local_pass(m, g) is not None and
               local_pass(m, g) not in m.requires.untransformed_passes
               for m in measures)

  def finite_masks(mask, tiles, untransformed):
    """Per layer: mask & the samples whose activations there are finite.

    A sample with a NaN or inf activation in a layer (in any transformation
    of the tile, or untransformed) is left out of that layer's statistics;
    measures select rows by the mask, so its values reach no sum.
    """
    masks = {}
    for l in layers:
      ok = mask
      for src in (tiles, untransformed):
        if src is not None:
          # The flat view the unit-wise reduce reads (`update_all`): read
          # as (B, Tc, H, W, C), XLA:CPU wrote a tapped layer's bias add out
          # twice, once per view.
          a = units.flatten(src[l], 2 if src is tiles else 1)
          # A sum is non-finite iff a term is (or it overflows float32,
          # where the statistics would too), and reduces faster than all().
          ok = ok & jnp.isfinite(jnp.sum(a, axis=tuple(range(1, a.ndim))))
      masks[l] = ok
    return masks

  def count_excluded(counts, mask, masks, labels):
    """Adds the samples left out for non-finite activations, per class."""
    new = {}
    for l in layers:
      excluded = mask & ~masks[l]
      if k:
        excluded = excluded[:, None] & (labels[:, None] == jnp.arange(k))
      new[l] = counts[l] + jnp.sum(excluded, axis=0, dtype=jnp.int32)
    return new

  def update_all(states, g, src_of, untransformed, masks, labels, t_index,
                 t_mask, first, last):
    def block_of(src, p, l, flat=False):
      x = None if src is None else src[l]
      ident = None if untransformed is None else untransformed[l]
      if flat:
        x, ident = units.flatten(x, 2), units.flatten(ident, 1)
      return base.Block(
          x=x, mask=masks[l], t_index=t_index, t_mask=t_mask, first=first,
          last=last, labels=labels, untransformed=ident, pass_index=p,
          whole_orbit=nc == 1)

    new_states = list(states)
    # Unit-wise measures over the same layers and activations share one
    # pass over their units (`units.update`): each block is cut once.
    shared = {}
    for i, (m, lay, st) in enumerate(zip(measures, unit_layouts, states)):
      p = local_pass(m, g)
      if p is None:
        continue
      src = src_of(m, p)
      if lay is not None:
        shared.setdefault((lay, id(src)), (src, []))[1].append((i, m, p))
      else:
        new_states[i] = {l: update(m, s, block_of(src, p, l))
                         for l, s in st.items()}
    for (lay, _), (src, group) in shared.items():
      jobs = [unit_job(m, states[i], p) for i, m, p in group]
      new = units.update(jobs, lay,
                         lambda l: block_of(src, 0, l, flat=True))
      for (i, _, _), st in zip(group, new):
        new_states[i] = st
    return new_states

  def batch_step(params, carry, inputs, tparams, tmask, g):
    states, counts = carry
    imgs, mask, labels = inputs
    labels = labels if plan.has_labels else None
    imgs = constrain(imgs)
    untransformed = forward(params, imgs) if plan.need_untransformed else None
    # Exclusions are counted once, in the last sweep, which every measure
    # shares; a sample left out of any chunk of its orbit counts once.
    last_sweep = g == max_passes - 1

    if not needs_transformed(g):
      # Every active measure reads only the untransformed activations: one
      # forward pass of B images instead of B × T.
      masks = finite_masks(mask, None, untransformed)
      states = update_all(states, g, lambda m, p: None, untransformed, masks,
                          labels, jnp.arange(tc), tmask[0], jnp.array(True),
                          jnp.array(True))
      if last_sweep:
        counts = count_excluded(counts, mask, masks, labels)
    else:
      def chunk_step(carry, chunk):
        states, kept = carry
        tp, tm, ci = chunk
        chunk_set = transforms.TransformationSet(tp, action)
        x = constrain(chunk_set.orbit(imgs))                   # (B,Tc,H,W,C)
        out = forward(params, x.reshape((b * tc,) + x.shape[2:]))
        out = {l: pin(a.reshape((b, tc) + a.shape[1:]))
               for l, a in out.items()}
        inverted = {}
        if any_inverse:
          for l in layers:
            if plan.spatial[l]:
              inverted[l] = pin(chunk_set.unorbit(out[l], plan.input_hw))
        src_of = lambda m, p: (
            None if p in m.requires.untransformed_passes else
            inverted if m.requires.inverse else out)
        masks = finite_masks(mask, out, untransformed)
        states = update_all(states, g, src_of, untransformed, masks, labels,
                            ci * tc + jnp.arange(tc), tm, ci == 0,
                            ci == nc - 1)
        return (states, {l: kept[l] & masks[l] for l in layers}), None

      chunks = (tparams, tmask, jnp.arange(nc))
      carry = (states, {l: mask for l in layers})
      if nc == 1:
        carry, _ = chunk_step(carry, jax.tree.map(lambda a: a[0], chunks))
      else:
        carry, _ = jax.lax.scan(chunk_step, carry, chunks)
      states, kept = carry
      if last_sweep:
        counts = count_excluded(counts, mask, kept, labels)
    return states, counts

  def end_pass(m, state, g):
    p = local_pass(m, g)
    if m.end_pass is None or p is None:
      return state
    if k:
      return jax.vmap(lambda s: m.end_pass(s, p))(state)
    return m.end_pass(state, p)

  members = plan.members

  def per_member(fn):
    """fn over each member's states (and params): a vmap for an ensemble."""
    return jax.vmap(fn) if members else fn

  def init_program():
    states = [init_state(m, lay) for m, lay in zip(measures, unit_layouts)]
    counts = {l: jnp.zeros((max(k, 1),), jnp.int32) for l in layers}
    if members:
      states, counts = jax.tree.map(
          lambda v: jnp.broadcast_to(v, (members,) + v.shape),
          (states, counts))
    return states, counts

  def step(g):
    def step_program(params, states, counts, images, mask, labels, tparams,
                     tmask):
      lab = labels if labels is not None else jnp.zeros(mask.shape, jnp.int32)

      # An ensemble's members share the transformed images (unbatched
      # under the vmap, so computed once) and differ from the forward on.
      one = lambda p, c, inputs: batch_step(p, c, inputs, tparams, tmask, g)
      if members:
        one = jax.vmap(one, in_axes=(0, 0, None))

      def body(carry, inputs):
        return one(params, carry, inputs), None

      (states, counts), _ = jax.lax.scan(
          body, (states, counts), (images, mask, lab))
      # The states are donated to the next step, so the host cannot wait on
      # them; this count is ready when the step is.
      return states, counts, jnp.sum(mask, dtype=jnp.int32)
    return step_program

  def has_end_pass(g):
    return any(m.end_pass is not None and local_pass(m, g) is not None
               for m in measures)

  def end_all(g):
    @per_member
    def end_pass_program(states):
      return [end_pass(m, st, g) if lay is not None else
              {l: end_pass(m, s, g) for l, s in st.items()}
              for m, lay, st in zip(measures, unit_layouts, states)]
    return end_pass_program

  @per_member
  def finalize_program(states):
    def finalize(m, s, spec):
      if k:
        return jax.vmap(lambda s: m.finalize(s, spec))(s)
      return m.finalize(s, spec)

    def finalize_units(m, lay, st):
      # All layers at once; `split_outputs` cuts them apart on the host.
      spec = units.flat_spec(plan.specs[lay.layers[0]], lay)
      return dict(finalize(m, st, spec))

    return [finalize_units(m, lay, st) if lay is not None else
            {l: dict(finalize(m, s, plan.specs[l])) for l, s in st.items()}
            for m, lay, st in zip(measures, unit_layouts, states)]

  def split_outputs(outputs):
    """Host copies of finalize's outputs as ``[{layer: outputs}]``."""
    split = []
    for m, lay, out in zip(measures, unit_layouts, outputs):
      if lay is not None:
        shapes = {l: plan.specs[l].shape for l in lay.layers}
        out = units.split(out, lay, shapes, m.name)
      split.append(out)
    return split

  return types.SimpleNamespace(init=init_program, step=step,
                               end_pass=end_all, has_end_pass=has_end_pass,
                               finalize=finalize_program,
                               split_outputs=split_outputs)


class Programs:
  """The jitted programs of one plan: init, a step per pass, end, finalize.

  Each step donates the states and counts it carries, so they are updated
  in place and never exist twice on the device.
  """

  def __init__(self, plan: Plan):
    self.plan = plan
    self._fns = build_program(plan)
    self._steps, self._ends = {}, {}
    self._mesh = mesh = plan.mesh
    if mesh is None:
      self._jit = jax.jit
      self.rep = self.chunk = self.mask = None
    else:
      rep = NamedSharding(mesh, P())
      self.rep = rep
      self.chunk = NamedSharding(mesh, P(None, "data", None, None, None))
      self.mask = NamedSharding(mesh, P(None, "data"))
      self._jit = functools.partial(jax.jit, out_shardings=rep)
    self._has_labels = plan.has_labels
    self.init = self._jit(self._fns.init)
    self._finalize = (jax.jit(self._fns.finalize) if mesh is None else
                      jax.jit(self._fns.finalize, in_shardings=(self.rep,),
                              out_shardings=self.rep))

  def finalize(self, states) -> list[dict]:
    """The finalized outputs, ``[{layer: outputs}]``, copied to the host.

    A unit-wise measure is finalized on all its layers' units at once and
    cut into layers here, in NumPy: slicing on the device would compile a
    kernel per layer and output.
    """
    return self._fns.split_outputs(jax.device_get(self._finalize(states)))

  def step(self, g: int):
    fn = self._steps.get(g)
    if fn is None:
      kwargs = {}
      if self._mesh is not None:
        rep = self.rep
        kwargs["in_shardings"] = (
            rep, rep, rep, self.chunk, self.mask,
            self.mask if self._has_labels else None, rep, rep)
      fn = self._steps[g] = self._jit(self._fns.step(g), donate_argnums=(1, 2),
                                      **kwargs)
    return fn

  def end_pass(self, g: int):
    """The end of global pass g, or None where no measure has one."""
    if not self._fns.has_end_pass(g):
      return None
    fn = self._ends.get(g)
    if fn is None:
      fn = self._ends[g] = self._jit(self._fns.end_pass(g), donate_argnums=0)
    return fn
