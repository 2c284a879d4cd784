"""Planning a measure call: validate it, size it, fetch its compiled programs.

`prepare` checks the inputs of `invjax.measure` (network, data, labels,
transformations, measures, batch and chunk sizes, mesh, processes), reads the
layer shapes from one abstract evaluation of the network, and builds the
`program.Plan`, whose `program.Programs` are cached in `PROGRAMS` under
everything the traced programs close over. `size_checks` runs the measures'
degrees-of-freedom checks on the data or on each class.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh

from invjax._src import base
from invjax._src import capture
from invjax._src import capture_callable
from invjax._src import hosts
from invjax._src import program
from invjax._src import sources
from invjax._src import transforms

# Compiled programs by plan key: a second call with the same network, shapes
# and measures reuses them (no retrace, no recompile).
PROGRAMS: dict[Any, program.Programs] = {}


def as_measures(measures: Any) -> tuple[list[base.Measure], bool]:
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


def first_member(params: Any, members: int) -> Any:
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


def size_checks(measures: list[base.Measure], num_t: int, n: int,
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
      why = "; ".join(f"class {c}, {w}" for c, w in out.items())
      raise ValueError(f"stratify=True: no class can be measured: {why}")
  return excluded


def prepare(activations, images, transformations, measures, *, batch_size,
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
  measures, single = as_measures(measures)
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
    excluded = size_checks(measures, num_t, n, classes if stratify else None,
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
    member_params = first_member(acts.params, acts.members)
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
  if n is not None:
    orbit_images = n * num_t
  elif source.num_batches is not None:       # a stream with len()
    orbit_images = source.num_batches * b * num_t
  else:
    orbit_images = None
  loops = program.reduce_loops(orbit_images, mesh)
  plan = program.Plan(acts, transformations, measures, names, specs, spatial,
                      b, tc, nc, (h, w), num_classes, mesh,
                      any(m.requires.untransformed for m in measures),
                      has_labels, loops)
  # Everything the traced programs close over: a new image or layer shape
  # must build new programs, not retrace the old ones.
  key = (acts.key, transformations.action, tuple(m.key for m in measures),
         tuple((l, specs[l].shape, str(specs[l].dtype)) for l in names),
         (h, w, c), str(dtype), num_t, b, tc, nc, num_classes, mesh,
         has_labels, acts.members, loops)
  programs = PROGRAMS.get(key)
  if programs is None:
    programs = PROGRAMS[key] = program.Programs(plan)

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
