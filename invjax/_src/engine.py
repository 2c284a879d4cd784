"""`invjax.measure`: a whole network over a dataset, streamed in chunks.

The flow for one batch of B samples (everything inside one `jax.jit`):

    images (B, H, W, C)
      ── transformations (vmap over B and Tc) ──▶ (B·Tc, H, W, C)
      ── activations fn ──▶ {layer: (B, Tc, ...)}
      ── [inverse transform for same-equivariance] ──▶ measure.update

The data arrive as a stream (`sources`): an (N, H, W, C) array is cut into
chunks of K batches on the host (a `jax.Array` on the device is sliced in
place), and any other batch source is read K batches at a time. One compiled step runs a
`lax.scan` over a chunk's K batches (and over transformation chunks of Tc
when `transform_chunk` is set) and carries the measures' states, donated,
from one step to the next; small programs initialize, end a pass and
finalize them. Memory is therefore bounded by one tile and two chunks of
images, not by N or T. The measures' states are mergeable statistics; on a
`jax.sharding.Mesh` the samples of each batch are split over the ``"data"``
axis and XLA turns the per-batch reductions into collectives (GSPMD), so the
program is the same on one CPU and on a pod slice.
"""

from __future__ import annotations

import functools
import math
import os
import types
import warnings
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.layout import Layout, with_layout_constraint
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from invjax._src import base
from invjax._src import capture
from invjax._src import capture_callable
from invjax._src import hosts
from invjax._src import result as result_lib
from invjax._src import resume
from invjax._src import sources
from invjax._src import transforms

_CACHE: dict[Any, Any] = {}
# The tqdm bar of the running call, advanced by `_run` between steps.
_PROGRESS = types.SimpleNamespace(bar=None)

def _as_measures(measures: Any) -> tuple[list[base.Measure], bool]:
  if isinstance(measures, base.Measure):
    return [measures], True
  measures = list(measures)
  if not measures:
    raise ValueError("no measure given")
  for m in measures:
    if not isinstance(m, base.Measure):
      raise TypeError(f"expected invjax Measure objects, got {type(m)}")
  names = [(m.name, m.settings) for m in measures]
  if len(set(names)) != len(names):
    raise ValueError("the same measure is listed twice")
  return measures, False


def _row_major(x: jax.Array) -> jax.Array:
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


def _advance_bar(batches: int) -> None:
  bar = _PROGRESS.bar
  if bar is not None and batches:
    bar.update(batches)


class _Plan:
  """Everything static about one set of compiled measure programs."""

  def __init__(self, acts, ts, measures, layers, specs, spatial, b, tc, nc,
               input_hw, num_classes, mesh, need_untransformed, has_labels):
    self.acts, self.ts, self.measures = acts, ts, measures
    self.layers, self.specs, self.spatial = layers, specs, spatial
    self.b, self.tc, self.nc = b, tc, nc
    self.input_hw, self.num_classes = input_hw, num_classes
    self.mesh = mesh
    self.need_untransformed = need_untransformed
    self.has_labels = has_labels
    self.members = acts.members         # None, or K ensemble members
    self.num_passes = max(m.requires.passes for m in measures)

  def layers_for(self, m: base.Measure) -> list[str]:
    return [l for l in self.layers
            if self.spatial[l] or not m.requires.inverse]


def _build_program(plan: _Plan):
  """The pure functions of a measure run, to be jitted by `_Programs`.

  Returns a namespace of ``init() -> (states, counts)``; ``step(g)``, the
  function of one chunk in global pass g, ``(params, states, counts, images
  (K, B, H, W, C), mask (K, B), labels (K, B) | None, tparams, tmask)
  -> (states, counts, samples)`` (samples: a small output to wait on);
  ``end_pass(g)``, ``states -> states``; ``has_end_pass(g)``; and
  ``finalize(states) -> [{layer: outputs}]``.
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
    return _row_major(tile)

  def forward(params, imgs):
    out = acts.apply(params, imgs)
    missing = [l for l in layers if l not in out]
    if missing:
      raise ValueError(f"the activations function did not return {missing}")
    return {l: out[l] for l in layers}

  def init_state(m):
    states = {}
    for l in plan.layers_for(m):
      s = m.init(plan.specs[l])
      if k:
        s = jax.tree.map(lambda v: jnp.broadcast_to(v, (k,) + v.shape), s)
      states[l] = s
    return states

  def update(m, state, block):
    if not k:
      return m.update(state, block)
    class_masks = (block.labels[None, :] == jnp.arange(k)[:, None]) & (
        block.mask[None, :])
    return jax.vmap(lambda s, cm: m.update(s, block._replace(mask=cm)))(
        state, class_masks)

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
          a = src[l]
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
    new_states = []
    for m, st in zip(measures, states):
      p = local_pass(m, g)
      if p is None:
        new_states.append(st)
        continue
      src = src_of(m, p)
      st = dict(st)
      for l in st:
        block = base.Block(
            x=None if src is None else src[l], mask=masks[l], t_index=t_index,
            t_mask=t_mask, first=first, last=last, labels=labels,
            untransformed=None if untransformed is None else untransformed[l],
            pass_index=p,
            whole_orbit=nc == 1)
        st[l] = update(m, st[l], block)
      new_states.append(st)
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
    states = [init_state(m) for m in measures]
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
      return [{l: end_pass(m, s, g) for l, s in st.items()}
              for m, st in zip(measures, states)]
    return end_pass_program

  @per_member
  def finalize_program(states):
    def finalize(m, s, spec):
      if k:
        return jax.vmap(lambda s: m.finalize(s, spec))(s)
      return m.finalize(s, spec)
    return [{l: dict(finalize(m, s, plan.specs[l])) for l, s in st.items()}
            for m, st in zip(measures, states)]

  return types.SimpleNamespace(init=init_program, step=step,
                               end_pass=end_all, has_end_pass=has_end_pass,
                               finalize=finalize_program)


class _Programs:
  """The jitted programs of one plan: init, a step per pass, end, finalize.

  Each step donates the states and counts it carries, so they are updated
  in place and never exist twice on the device.
  """

  def __init__(self, plan: _Plan):
    self._fns = _build_program(plan)
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
    self.finalize = (jax.jit(self._fns.finalize) if mesh is None else
                     jax.jit(self._fns.finalize, in_shardings=(self.rep,),
                             out_shardings=self.rep))

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


def _first_member(params: Any, members: int) -> Any:
  """Member 0's parameters of an ensemble, checking the leading axis."""
  if (not isinstance(members, (int, np.integer)) or isinstance(members, bool)
      or members < 1):
    raise ValueError(f"Activations.members must be a positive int, got "
                     f"{members!r}")
  leaves = jax.tree.leaves(params)
  bad = [getattr(v, "shape", ()) for v in leaves
         if getattr(v, "shape", ())[:1] != (members,)]
  if not leaves or bad:
    raise ValueError(
        f"an ensemble of {members} members needs every parameter with a "
        f"leading axis of {members}; found shapes {bad[:3]}")
  return jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape[1:], v.dtype),
                      params)


def _size_checks(measures: list[base.Measure], num_t: int, n: int,
                 classes: np.ndarray | None,
                 sizes: np.ndarray | None) -> list[dict[int, str]]:
  """Runs `Measure.check` on the data, or on each class of a stratified run.

  Returns, per measure, {class: why} of the classes left out of the class
  average (too small, or without a sample).

  Raises:
    ValueError: unstratified, from the check; stratified, when no class
      can be measured.
  """
  excluded = [{} for _ in measures]
  if classes is None:
    for m in measures:
      if m.check is not None:
        m.check(n, num_t)
    return excluded
  for m, out in zip(measures, excluded):
    for label, size in zip(classes, sizes):
      try:
        if size == 0:
          raise ValueError("no sample of this class in the data")
        if m.check is not None:
          m.check(int(size), num_t)
      except ValueError as e:
        out[int(label)] = f"{int(size)} samples: {e}"
    if len(out) == len(classes):
      raise ValueError(f"stratify=True: no class can be measured: "
                       f"{'; '.join(f'class {c}, {w}' for c, w in out.items())}")
  return excluded


def _prepare(activations, images, transformations, measures, *, batch_size,
             labels, stratify, layers, transform_chunk, mesh,
             classes=None):
  """Validates inputs and builds (or fetches) the compiled programs.

  Returns:
    (step, args, context): the jitted step of the last pass (the sweep every
    measure shares) with abstract arguments for one chunk, for lowering and
    memory analysis (`step.lower(*args).compile()`), and everything
    `measure` needs to run: the programs, the data source, the plan.
  """
  acts = capture_callable.as_activations(activations)
  num_t = transforms.check_set(transformations)
  measures, single = _as_measures(measures)
  if (not isinstance(batch_size, (int, np.integer)) or
      isinstance(batch_size, bool) or batch_size <= 0):
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  tc = num_t if transform_chunk is None else transform_chunk
  if not isinstance(tc, (int, np.integer)) or tc <= 0:
    raise ValueError(f"transform_chunk must be a positive int, got {tc!r}")
  tc = min(int(tc), num_t)
  nc = math.ceil(num_t / tc)
  if classes is not None:
    classes = np.unique(np.asarray(classes))
    if classes.ndim != 1 or not np.issubdtype(classes.dtype, np.integer):
      raise ValueError(f"classes must be a list of integer labels, got "
                       f"{classes!r}")
    if not stratify:
      raise ValueError("classes= is for stratify=True")

  devices = 1
  if mesh is not None:
    if not isinstance(mesh, Mesh) or "data" not in mesh.axis_names:
      raise ValueError("mesh must be a jax.sharding.Mesh with a 'data' axis")
    devices = mesh.shape["data"]
    single_device = [f"{m.name}{dict(m.settings)}" for m in measures
                     if not m.requires.shardable]
    if single_device:
      raise ValueError(
          f"{', '.join(single_device)} runs on one device (e.g. "
          "implementation='pallas': XLA's partitioner cannot split its "
          "kernel); use implementation='xla' with mesh=")
    # The program leaves layout decisions to XLA's partitioner, which needs
    # Auto axes; `jax.make_mesh` may default to Explicit ones.
    mesh = Mesh(mesh.devices, mesh.axis_names,
                axis_types=(AxisType.Auto,) * len(mesh.axis_names))
  # B rounds up to whole devices; a source's batches may be shorter.
  per_device = lambda b: math.ceil(b / devices) * devices
  procs = hosts.count()
  if procs > 1:
    if mesh is None:
      raise ValueError(
          f"{procs} processes (jax.distributed) need mesh=, a Mesh over "
          "every process's devices with a 'data' axis")
    if stratify and classes is None:
      raise ValueError(
          f"stratify=True in {procs} processes needs classes=[...]: each "
          "process sees only its own labels")

  excluded = None                       # streams: known after pass 0
  if sources.is_array(images):
    images = sources.check_images(images)
    n, h, w, c = (int(s) for s in images.shape)
    dtype = images.dtype
    if labels is not None:
      labels = sources.check_labels(labels, n)
    if stratify and labels is None:
      raise ValueError("stratify=True needs labels")
    sizes = None
    if stratify:
      if classes is None:
        classes, labels = np.unique(labels, return_inverse=True)
      else:
        labels = sources.class_index(labels, classes, "in labels")
      labels = labels.astype(np.int32)
      sizes = np.bincount(labels, minlength=len(classes))
    elif labels is not None:
      labels = labels.astype(np.int32)
    if procs > 1:
      n = int(hosts.total(n))
      sizes = None if sizes is None else hosts.total(sizes)
    excluded = _size_checks(measures, num_t, n, classes if stratify else None,
                            sizes)
    b = per_device(int(batch_size) if procs > 1 else min(int(batch_size), n))
    source = sources.ArraySource(images, labels, b // procs)
    if procs > 1:
      # Every process steps through as many chunks as the longest part.
      source.align(int(hosts.allgather(source.num_batches).max()),
                   sources.chunk_batches(b, None))
  else:
    if labels is not None:
      raise ValueError(
          "labels= goes with an (N, H, W, C) array; a batch source yields "
          "(images, labels) batches instead")
    if stratify and classes is None:
      raise ValueError(
          "stratify=True with a batch source needs classes=[...], the labels "
          "to measure (the classes must be known before the first batch)")
    b = per_device(int(batch_size))
    source = sources.StreamSource(images, b // procs, stratify, classes)
    if procs > 1:
      source.k = sources.chunk_batches(b, None)   # alike in every process
    if stratify and not source.has_labels:
      raise ValueError("stratify=True needs labels: yield (images, labels) "
                       "batches")
    h, w, c = source.hwc
    dtype = source.dtype
    n = None
  multi = [m.name for m in measures if m.requires.passes > 1]
  if source.one_shot and multi:
    passes = max(m.requires.passes for m in measures)
    raise ValueError(
        f"{', '.join(multi)} reads the data {passes} times, but images is a "
        "one-shot iterator (iter(data) is data, e.g. "
        "a generator): pass a re-iterable source whose iter() starts over "
        "(a list of batches, an object with __iter__, a loader)")

  # Layer shapes from one abstract evaluation of the model.
  probe = jax.ShapeDtypeStruct((b * tc, h, w, c), dtype)
  member_params = acts.params
  if acts.members:
    member_params = _first_member(acts.params, acts.members)
  shapes = jax.eval_shape(acts.apply, member_params, probe)
  if not shapes:
    raise ValueError("the activations function returned no activations")
  names = capture.select_layers(list(shapes), layers)
  specs, spatial = {}, {}
  for l in names:
    s = shapes[l]
    if s.shape[:1] != (b * tc,):
      raise ValueError(
          f"layer {l!r} has shape {s.shape}: its first axis must be the batch")
    if jnp.issubdtype(s.dtype, jnp.complexfloating):
      raise ValueError(
          f"layer {l!r} has complex activations ({s.dtype}); the measures are "
          "defined for real ones: return their real and imaginary parts as "
          "two layers, or their magnitude (jnp.abs), from the activations "
          "function")
    specs[l] = base.LayerSpec(l, tuple(s.shape[1:]), s.dtype, num_t, nc * tc, b)
    spatial[l] = len(s.shape) == 4       # (B, h, w, c): a feature map
  notes = {}
  for m in measures:
    if m.requires.inverse:
      for l in names:
        if not spatial[l]:
          notes.setdefault(m.name, {})[l] = (
              "skipped: same-equivariance needs spatial feature maps "
              f"(B, h, w, c); this layer has shape {specs[l].shape}")

  tparams = sources.pad_rows(np.asarray(transformations.parameters), nc * tc)
  tmask = np.arange(nc * tc) < num_t
  tparams = tparams.reshape((nc, tc) + tparams.shape[1:])
  tmask = tmask.reshape(nc, tc)

  has_labels = (labels is not None if isinstance(source, sources.ArraySource)
                else source.has_labels)
  num_classes = len(classes) if stratify else 0
  plan = _Plan(acts, transformations, measures, names, specs, spatial, b, tc,
               nc, (h, w), num_classes, mesh,
               any(m.requires.untransformed for m in measures), has_labels)
  # Everything the traced programs close over: a new image or layer shape
  # must build new programs, not retrace the old ones.
  key = (acts.key, transformations.action, tuple(m.key for m in measures),
         tuple((l, specs[l].shape, str(specs[l].dtype)) for l in names),
         (h, w, c), str(dtype), num_t, b, tc, nc, num_classes, mesh,
         has_labels, acts.members)
  programs = _CACHE.get(key)
  if programs is None:
    programs = _CACHE[key] = _Programs(plan)

  k = source.k
  abstract = lambda shape, dt: jax.ShapeDtypeStruct(shape, dt)
  states = jax.eval_shape(programs.init)
  args = (acts.params, states[0], states[1],
          abstract((k, b, h, w, c), dtype), abstract((k, b), bool),
          abstract((k, b), np.int32) if has_labels else None,
          tparams, tmask)
  context = dict(single=single, measures=measures, names=names, notes=notes,
                 classes=classes if stratify else None, n=n, b=b, tc=tc,
                 num_t=num_t, excluded=excluded, source=source,
                 programs=programs, plan=plan, tparams=tparams, tmask=tmask)
  return programs.step(plan.num_passes - 1), args, context


def _run(ctx: dict[str, Any], ckpt: resume.Checkpoints | None = None
         ) -> tuple[list[Any], dict[str, np.ndarray]]:
  """Streams the source through the programs; returns (outputs, counts).

  Two chunks at most are on the device: the one a step is computing and the
  next, copied while it computes. The host waits for the step before the
  one it has just dispatched, never that one, so the device always has a
  step queued; without the wait an in-memory source would be queued onto
  the device whole.

  With ``ckpt``, the run starts from its newest checkpoint (if any) and
  saves one every ``ckpt.every`` chunks, at the end of every pass and at
  the end (`resume`).
  """
  programs, source, plan = ctx["programs"], ctx["source"], ctx["plan"]
  put = lambda x, sharding: None if x is None else jax.device_put(x, sharding)
  multi = hosts.count() > 1
  # Several processes: a chunk holds this process's rows of each batch.
  put_chunk = (functools.partial(hosts.global_chunk, batch_size=plan.b)
               if multi else put)
  params = jax.device_put(plan.acts.params, programs.rep)
  tparams = put(ctx["tparams"], programs.rep)
  tmask = put(ctx["tmask"], programs.rep)
  start, skip, saved = 0, 0, 0
  restored = None if ckpt is None else ckpt.restore(
      jax.eval_shape(programs.init))
  if restored is None:
    states, counts = programs.init()
  else:
    pos, (states, counts) = restored
    states, counts = put((states, counts), programs.rep)
    start, skip, saved = pos.pass_, pos.chunks, pos.step
    if start > 0 and isinstance(source, sources.StreamSource):
      source.restore(pos.n, pos.sizes, pos.num_batches)
    if start > 0:
      _after_first_pass(ctx)

  def position(g, chunks):
    stream = isinstance(source, sources.StreamSource) and source.n is not None
    return resume.Position(
        g, chunks, saved, source.n if stream else None,
        [int(v) for v in source.sizes] if stream else None,
        source.num_batches if stream else None)

  bar = _PROGRESS.bar
  if bar is not None and (start or skip):
    per_pass = source.num_batches or 0
    bar.update(min(start * per_pass + skip * source.k,
                   bar.total or 1 << 62))
  for g in range(start, plan.num_passes):
    step = programs.step(g)
    done = skip if g == start else 0
    chunks = source.chunks(g, done)
    if multi:
      chunks = _lockstep(chunks, source)
    waiting, waiting_batches = None, 0
    for chunk in chunks:
      images = put_chunk(chunk.images, programs.chunk)
      mask = put_chunk(chunk.mask, programs.mask)
      labels = put_chunk(chunk.labels, programs.mask)
      states, counts, samples = step(params, states, counts, images, mask,
                                     labels, tparams, tmask)
      done += 1
      saved += 1
      if ckpt is not None and ckpt.every and done % ckpt.every == 0:
        # Before the next step: it takes the states over (donated).
        ckpt.save(position(g, done), (states, counts))
      if waiting is not None:
        waiting.block_until_ready()
        # The bar advances here, on the host, not from a callback inside
        # the step: JAX's persistent cache never stores a program with a
        # host callback.
        _advance_bar(waiting_batches)
      waiting, waiting_batches = samples, chunk.batches
    if waiting is not None and _PROGRESS.bar is not None:
      waiting.block_until_ready()
      _advance_bar(waiting_batches)
    source.end_pass(g)
    if g == 0:
      _after_first_pass(ctx)
    end = programs.end_pass(g)
    if end is not None:
      states = end(states)
    saved += 1
    if ckpt is not None:
      ckpt.save(position(g + 1, 0), (states, counts))
  return jax.device_get((programs.finalize(states), counts))


def _lockstep(chunks, source):
  """The chunks of this process while any process has one (masked after)."""
  chunks = iter(chunks)
  while True:
    chunk = next(chunks, None)
    if not hosts.agree_more(chunk is not None):
      return
    yield chunk if chunk is not None else source.empty_chunk()


def _after_first_pass(ctx: dict[str, Any]) -> None:
  """Checks a batch source's sizes once its first pass has counted them."""
  source = ctx["source"]
  if ctx["excluded"] is not None:
    return
  n, sizes = source.n, source.sizes
  if hosts.count() > 1:
    n, sizes = int(hosts.total(n)), hosts.total(sizes)
  ctx["n"] = n
  ctx["excluded"] = _size_checks(ctx["measures"], ctx["num_t"], n,
                                 ctx["classes"], sizes)
  bar = _PROGRESS.bar
  if bar is not None and bar.total is None:
    bar.total = source.num_batches * ctx["plan"].num_passes
    bar.refresh()


def measure(activations: Any, images: Any, transformations: Any,
            measures: base.Measure | Sequence[base.Measure], *,
            batch_size: int = 64, labels: Any = None, stratify: bool = False,
            classes: Sequence[int] | None = None,
            layers: Any = None, transform_chunk: int | None = None,
            mesh: Mesh | None = None, progress: bool = False,
            workdir: str | None = None, checkpoint_every: int | None = None):
  """Measures every tapped layer of a network over a dataset, streamed.

  Args:
    activations: an `invjax.capture` Activations (from `capture.linen`,
      `capture.nnx`) or any callable ``images (B,H,W,C) -> {layer: (B, ...)}``.
    images: the data, in one of two forms:

      * an (N, H, W, C) floating-point array (NumPy, a memory map, or a
        `jax.Array`, which is sliced where it lies);
      * a batch source: an iterable yielding batches of at most
        ``batch_size`` samples, each ``images`` (B, H, W, C), a tuple
        ``(images, labels)`` or a dict with ``"image"`` (and ``"label"``)
        entries; a list of arrays, a grain loader, a tf.data wrapper, any
        object whose ``__iter__`` starts over. Short batches are fine
        anywhere (they are padded and masked). A one-shot iterator
        (``iter(x) is x``: a generator, ``iter(list)``) can be read once, so
        it only serves measures of one pass: with a multi-pass one
        (`measures.goodfellow`) it is a ValueError. Every pass must yield
        the same samples (in any order); their number is counted on the
        host as the first pass goes by.
    transformations: an `invjax.transforms` TransformationSet of T elements.
    measures: one `Measure` or a list of them, computed together in one pass.
    batch_size: samples per step; memory is bounded by one batch × T (or ×
      ``transform_chunk``). A last partial batch is padded and masked.
    labels: optional (N,) integer labels of an array (a batch source yields
      its own).
    stratify: compute every measure per class, in the same pass, and return
      per-class results (``result.per_class``) plus their elementwise mean.
    classes: the labels to stratify by. Required with a batch source (its
      classes must be known before the first batch; a label outside them is
      a ValueError when its batch is read); for an array, default: those in
      ``labels``. A listed class without samples is left out of the class
      average, with a note.
    layers: optional layer filter (names, a name, or a predicate).
    transform_chunk: process the transformations Tc at a time (bounds memory
      when T is large); results equal the unchunked ones to float32
      round-off (the sums run in another order: ~1e-5 relative at T = 360).
    mesh: a `jax.sharding.Mesh` with a ``"data"`` axis: the samples of each
      batch are sharded over it and statistics are reduced by collectives.
      Several processes (``jax.distributed``): the mesh spans every
      process's devices, and each process passes only its own part of the
      data: an array, or a source of batches, of its rows of every global
      batch, ``batch_size / jax.process_count()`` of them (``batch_size`` is
      global, as on one host, so the results and their settings do not
      depend on the number of hosts; process p's rows come after process
      p − 1's in each batch, as its devices do in the mesh). The parts may
      differ in length; a stratified run needs ``classes=``. The results
      equal a one-process run on the same global batches (to the order of
      the cross-device sums) and are returned in every process.
    progress: show a tqdm bar that advances per batch while the step runs.
    workdir: a directory for the measurement's checkpoints (`resume`): with
      it, a run killed at any point and called again with the same
      arguments resumes from its newest checkpoint, and its result equals an
      uninterrupted run's bit for bit; a completed run only finalizes. A
      workdir of another measurement (model parameters, data, measures,
      transformations or settings differ) is a ValueError. A batch source
      must yield the same batches in the same order on every call (the
      batches a checkpoint holds are read again and dropped).
    checkpoint_every: with ``workdir``, save every this many chunks (of K
      batches, about 1024 images) besides the end of each pass; None: only
      at the end of each pass.

  Returns:
    A `MeasureResult` (or a list, one per measure when a list was given);
    for an ensemble (``activations.members`` = K, e.g. from
    ``capture.linen(model, stacked_variables, ensemble=True)``), a list of
    K of those, one per member, each equal to measuring that member alone
    and all computed in one program.

  Raises:
    ValueError: on malformed inputs or batches, complex activations, or a
      dataset too small for a measure's statistics (`Measure.check`: e.g.
      ddof ≥ T or ddof ≥ N for the variance family). In a stratified run a
      class too small is left out of the class average instead, with a
      note. For a batch source, N and the class sizes are known once the
      first pass is over, so the checks run then.

  Memory: the data reach the device K batches at a time (K ≤ 8, about 1024
  images): one chunk is computed while the next is copied, and the
  measures' states are updated in place (donated), so the device holds one
  tile of activations, two chunks of images and the states, whatever N.
  An array is never copied whole, on the host or to the device.

  A sample whose activations in a layer hold a NaN or inf (in any of its
  transformations, or untransformed) is left out of that layer's statistics
  and counted in ``result.nonfinite_samples[layer]``, with a note and a
  RuntimeWarning; the other samples' statistics are what they would be
  without it.
  """
  if checkpoint_every is not None and (
      not isinstance(checkpoint_every, (int, np.integer)) or
      isinstance(checkpoint_every, bool) or checkpoint_every <= 0):
    raise ValueError("checkpoint_every must be a positive int, got "
                     f"{checkpoint_every!r}")
  if checkpoint_every is not None and workdir is None:
    raise ValueError("checkpoint_every= needs workdir=, where the "
                     "checkpoints go")
  _, _, ctx = _prepare(
      activations, images, transformations, measures, batch_size=batch_size,
      labels=labels, stratify=stratify, layers=layers,
      transform_chunk=transform_chunk, mesh=mesh, classes=classes)
  ckpt = None
  if workdir is not None:
    if hosts.count() > 1:
      raise ValueError("workdir= is for one process; several processes "
                       "(jax.distributed) cannot resume a measurement yet")
    workdir = os.fspath(workdir)
    source, plan = ctx["source"], ctx["plan"]
    first = getattr(source, "first_batch", None)
    classes_ = ctx["classes"]
    resume.check_record(workdir, resume.record(
        acts=plan.acts, specs=plan.specs, measures=ctx["measures"],
        transformations=transformations,
        data=resume.data_fingerprint(images, labels, first),
        settings=dict(batch_size=ctx["b"], transform_chunk=transform_chunk,
                      stratify=bool(stratify),
                      classes=None if classes_ is None else
                      [int(c) for c in classes_])))
    ckpt = resume.Checkpoints(workdir, checkpoint_every)
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    known = ctx["source"].num_batches
    _PROGRESS.bar = tqdm(
        total=known * ctx["plan"].num_passes if known else None, unit="batch",
        desc="invjax.measure")
  try:
    outputs, counts = _run(ctx, ckpt)
  finally:
    if ckpt is not None:
      ckpt.close()
    bar = _PROGRESS.bar
    if bar is not None:
      bar.close()
      _PROGRESS.bar = None
  members = ctx["plan"].members
  if not members:
    _warn_nonfinite(counts, ctx["names"])
    return _results(ctx, outputs, counts, stratify)
  out = []
  for i in range(members):
    take = lambda tree, i=i: jax.tree.map(lambda v: v[i], tree)
    _warn_nonfinite(take(counts), ctx["names"])
    out.append(_results(ctx, take(outputs), take(counts), stratify))
  return out


def _results(ctx: dict[str, Any], outputs: list[Any],
             counts: dict[str, np.ndarray], stratify: bool):
  """The MeasureResults of one network from the finalized outputs."""
  results = []
  for m, out, excluded in zip(ctx["measures"], outputs, ctx["excluded"]):
    # Pytrees leave jit with sorted dict keys: restore execution order.
    out = {l: out[l] for l in ctx["names"] if l in out}
    settings = dict(m.settings)
    settings.update(num_samples=ctx["n"], batch_size=ctx["b"],
                    num_transformations=ctx["num_t"],
                    transform_chunk=ctx["tc"], stratified=bool(stratify))
    notes = ctx["notes"].get(m.name, {})

    def result(outputs, counts_of):
      res = result_lib.MeasureResult.from_outputs(m.name, settings, outputs,
                                                  notes)
      res.nonfinite_samples = {l: counts_of(l) for l in outputs}
      for l, c in res.nonfinite_samples.items():
        if c:
          result_lib.add_note(res.notes, l, _excluded_note(c))
      return res

    if ctx["classes"] is None:
      results.append(result(out, lambda l: int(counts[l].sum())))
    else:
      per_class = {
          int(label): result(
              {l: {k: v[i] for k, v in o.items()} for l, o in out.items()},
              lambda l, i=i: int(counts[l][i]))
          for i, label in enumerate(ctx["classes"])}
      avg = result_lib.average_classes(per_class, excluded, notes)
      for l, c in avg.nonfinite_samples.items():
        if c:
          result_lib.add_note(avg.notes, l, _excluded_note(c))
      results.append(avg)
  return results[0] if ctx["single"] else results


def _excluded_note(count: int) -> str:
  return (f"{count} sample{'s' * (count != 1)} with NaN or inf activations "
          "here left out of the statistics")


def _warn_nonfinite(counts: dict[str, np.ndarray], names: list[str]) -> None:
  bad = {l: int(counts[l].sum()) for l in names if counts[l].sum()}
  if bad:
    worst = max(bad.values())
    warnings.warn(
        f"invjax.measure: up to {worst} sample(s) had NaN or inf activations "
        f"in {len(bad)} layer(s) ({', '.join(list(bad)[:3])}"
        f"{', ...' if len(bad) > 3 else ''}) and were left out of those "
        "layers' statistics; result.nonfinite_samples counts them",
        RuntimeWarning, stacklevel=3)


def measure_block(activations: Any, images: jax.Array, transformations: Any,
                  measure: base.Measure, *, params: Any = None,
                  layers: Any = None) -> dict[str, dict[str, jax.Array]]:
  """One batch, no streaming: differentiable, for use inside a loss.

  Args:
    activations: as in `measure`.
    images: (B, H, W, C) images.
    transformations: a TransformationSet of T elements.
    measure: a `Measure`.
    params: model parameters to use instead of ``activations.params`` (so
      ``jax.grad`` with respect to them works).
    layers: optional layer filter.

  Returns:
    {layer: finalize outputs}, e.g. ``out[layer]["values"]``.
  """
  acts = capture_callable.as_activations(activations)
  params = acts.params if params is None else params
  b, h, w = images.shape[:3]
  x = transformations.orbit(images)                              # (B,T,H,W,C)
  t = x.shape[1]
  out = acts.apply(params, x.reshape((b * t,) + x.shape[2:]))
  names = capture.select_layers(list(out), layers)
  if measure.check is not None:
    measure.check(b, transformations.parameters.shape[0])
  untransformed = (acts.apply(params, images) if measure.requires.untransformed
                   else None)
  results = {}
  for l in names:
    a = out[l].reshape((b, t) + out[l].shape[1:])
    if measure.requires.inverse:
      if a.ndim != 5:
        continue
      a = transformations.unorbit(a, (h, w))
    results[l] = measure(
        a, untransformed=None if untransformed is None else untransformed[l])
  return results
