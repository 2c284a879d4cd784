"""`invjax.measure`: a whole network over a whole dataset as one XLA program.

The flow for one batch of B samples (everything inside one `jax.jit`):

    images (B, H, W, C)
      ── transformations (vmap over B and Tc) ──▶ (B·Tc, H, W, C)
      ── activations fn ──▶ {layer: (B, Tc, ...)}
      ── [inverse transform for same-equivariance] ──▶ measure.update

`lax.scan` runs that over the N / B batches (and over transformation chunks of
Tc when `transform_chunk` is set), so memory is bounded by one tile, not by N
or T. The measures' states are mergeable statistics; on a `jax.sharding.Mesh`
the samples of each batch are split over the ``"data"`` axis and XLA turns
the per-batch reductions into collectives (GSPMD), so the program is the same
on one CPU and on a pod slice.
"""

from __future__ import annotations

import math
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
from invjax._src import result as result_lib

_CACHE: dict[Any, Any] = {}
# The bar lives in a plain namespace, not threading.local: XLA runs host
# callbacks on its own threads.
_PROGRESS = types.SimpleNamespace(bar=None)


def _check_images(images: Any) -> Any:
  shape = getattr(images, "shape", None)
  if shape is None:
    images = np.asarray(images)
    shape = images.shape
  if len(shape) != 4:
    raise ValueError(
        f"images must have shape (N, H, W, C) (rank 4), got rank {len(shape)} "
        f"with shape {tuple(shape)}")
  if shape[0] == 0:
    raise ValueError("images is empty: the dataset has no samples (N = 0)")
  if min(shape[1:]) == 0:
    raise ValueError(f"images has an empty spatial/channel axis: {shape}")
  if not jnp.issubdtype(images.dtype, jnp.floating):
    raise ValueError(
        f"images must be floating point, got dtype {images.dtype}; convert "
        "them, e.g. images.astype(np.float32) / 255")
  bad = (np.size(images) - np.count_nonzero(np.isfinite(images))
         if isinstance(images, np.ndarray)
         else int(jnp.size(images) - jnp.sum(jnp.isfinite(images))))
  if bad:
    raise ValueError(f"images contain {bad} non-finite values (NaN or inf)")
  _warn_layout(images)
  return images


def _warn_layout(images: Any) -> None:
  """Warns about images that look channels-first or unscaled 0..255 pixels.

  Neither is an error: a (N, 3, 32, 32) array is a valid stack of 3×32
  "images", and the warps are linear with zero padding, so they treat any
  value range alike. But both are far more often a mistake, which would
  rotate the wrong axes or feed a network pixels 255× what it was trained on.
  """
  n, h, w, c = images.shape
  if h in (1, 3) and c > 4:
    warnings.warn(
        f"images have shape {tuple(images.shape)}, which looks channels-first "
        "(N, C, H, W); invjax expects (N, H, W, C) and would transform the "
        "wrong axes: use images.transpose(0, 2, 3, 1)", UserWarning,
        stacklevel=4)
  sample = np.asarray(images[:256], np.float32)
  if (sample.min() >= 0 and 1.5 < sample.max() <= 255 and
      np.all(sample == np.round(sample))):
    warnings.warn(
        "images hold whole numbers up to 255, like unscaled pixels; invjax "
        "measures what it is given, but networks are usually trained on "
        "images / 255 (or standardized ones): scale them the way the model "
        "expects", UserWarning, stacklevel=4)


def _check_labels(labels: Any, n: int) -> np.ndarray:
  labels = np.asarray(labels)
  if labels.shape != (n,):
    raise ValueError(
        f"labels must have shape (N,) = ({n},), got {labels.shape}")
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
  return labels


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


def _check_transformations(ts: Any) -> int:
  if not (hasattr(ts, "parameters") and hasattr(ts, "action")):
    raise TypeError(
        "transformations must be an invjax TransformationSet (see "
        f"invjax.transforms), got {type(ts)}")
  t = int(ts.parameters.shape[0])
  if t == 0:
    raise ValueError("the transformation set is empty")
  return t


def _pad_rows(a: np.ndarray, rows: int, fill_first: bool) -> np.ndarray:
  """Pads axis 0 to `rows`, with copies of row 0 or zeros."""
  extra = rows - a.shape[0]
  if extra == 0:
    return a
  pad = (np.repeat(a[:1], extra, axis=0) if fill_first
         else np.zeros((extra,) + a.shape[1:], a.dtype))
  return np.concatenate([a, pad], axis=0)


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


def _progress_tick(batch_index) -> None:
  bar = _PROGRESS.bar
  if bar is not None:
    # Callbacks may arrive out of order or once per device: move to the
    # furthest batch seen, never double count.
    done = int(batch_index) + 1
    if done > bar.n:
      bar.update(done - bar.n)


class _Plan:
  """Everything static about one compiled measure program."""

  def __init__(self, acts, ts, measures, layers, specs, spatial, b, tc, nc,
               input_hw, num_classes, mesh, progress, need_identity,
               num_batches, has_labels):
    self.acts, self.ts, self.measures = acts, ts, measures
    self.layers, self.specs, self.spatial = layers, specs, spatial
    self.b, self.tc, self.nc = b, tc, nc
    self.input_hw, self.num_classes = input_hw, num_classes
    self.mesh, self.progress = mesh, progress
    self.need_identity = need_identity
    self.num_batches, self.has_labels = num_batches, has_labels

  def layers_for(self, m: base.Measure) -> list[str]:
    return [l for l in self.layers if self.spatial[l] or not m.needs_inverse]


def _build_program(plan: _Plan):
  """Returns program(params, images, mask, labels, tparams, tmask) -> outputs."""
  acts, action, measures = plan.acts, plan.ts.action, plan.measures
  b, tc, nc, k = plan.b, plan.tc, plan.nc, plan.num_classes
  layers = plan.layers
  any_inverse = any(m.needs_inverse for m in measures)
  max_passes = max(m.num_passes for m in measures)

  def constrain(x):
    if plan.mesh is None:
      return x
    spec = P("data", *([None] * (x.ndim - 1)))
    return jax.lax.with_sharding_constraint(x, NamedSharding(plan.mesh, spec))

  def pin(tile):
    # A sharded tile's layout is the partitioner's.
    return tile if plan.mesh is not None else _row_major(tile)

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
    p = g - (max_passes - m.num_passes)
    return p if p >= 0 else None

  def needs_transformed(g):
    return any(local_pass(m, g) is not None and
               local_pass(m, g) not in m.identity_passes for m in measures)

  def finite_masks(mask, tiles, identity):
    """Per layer: mask & the samples whose activations there are finite.

    A sample with a NaN or inf activation in a layer (in any transformation
    of the tile, or untransformed) is left out of that layer's statistics;
    measures select rows by the mask, so its values reach no sum.
    """
    masks = {}
    for l in layers:
      ok = mask
      for src in (tiles, identity):
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

  def update_all(states, g, src_of, identity, masks, labels, t_index, t_mask,
                 first, last):
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
            identity=None if identity is None else identity[l], pass_index=p)
        st[l] = update(m, st[l], block)
      new_states.append(st)
    return new_states

  def batch_step(params, carry, inputs, tparams, tmask, g):
    states, counts = carry
    imgs, mask, labels, bidx = inputs
    labels = labels if plan.has_labels else None
    imgs = constrain(imgs)
    identity = forward(params, imgs) if plan.need_identity else None
    # Exclusions are counted once, in the last sweep, which every measure
    # shares; a sample left out of any chunk of its orbit counts once.
    last_sweep = g == max_passes - 1

    if not needs_transformed(g):
      # Every active measure reads only the untransformed activations: one
      # forward pass of B images instead of B × T.
      masks = finite_masks(mask, None, identity)
      states = update_all(states, g, lambda m, p: None, identity, masks,
                          labels, jnp.arange(tc), tmask[0], jnp.array(True),
                          jnp.array(True))
      if last_sweep:
        counts = count_excluded(counts, mask, masks, labels)
    else:
      def chunk_step(carry, chunk):
        states, kept = carry
        tp, tm, ci = chunk
        x = jax.vmap(lambda img: jax.vmap(lambda p: action.forward(p, img))(
            tp))(imgs)                                          # (B,Tc,H,W,C)
        x = constrain(x)
        out = forward(params, x.reshape((b * tc,) + x.shape[2:]))
        out = {l: pin(a.reshape((b, tc) + a.shape[1:]))
               for l, a in out.items()}
        inverted = {}
        if any_inverse:
          inv = lambda p, fm: action.inverse(p, fm, input_shape=plan.input_hw)
          for l in layers:
            if plan.spatial[l]:
              inverted[l] = pin(jax.vmap(jax.vmap(inv), (None, 0))(tp, out[l]))
        src_of = lambda m, p: (None if p in m.identity_passes else
                               inverted if m.needs_inverse else out)
        masks = finite_masks(mask, out, identity)
        states = update_all(states, g, src_of, identity, masks, labels,
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
    if plan.progress:
      jax.debug.callback(_progress_tick, bidx + g * plan.num_batches)
    return states, counts

  def end_pass(m, state, g):
    p = local_pass(m, g)
    if m.end_pass is None or p is None:
      return state
    if k:
      return jax.vmap(lambda s: m.end_pass(s, p))(state)
    return m.end_pass(state, p)

  def program(params, images, mask, labels, tparams, tmask):
    states = [init_state(m) for m in measures]
    counts = {l: jnp.zeros((max(k, 1),), jnp.int32) for l in layers}
    nb = images.shape[0]
    lab = labels if labels is not None else jnp.zeros(mask.shape, jnp.int32)
    for g in range(max_passes):
      def body(carry, inputs, g=g):
        return batch_step(params, carry, inputs, tparams, tmask, g), None
      (states, counts), _ = jax.lax.scan(
          body, (states, counts), (images, mask, lab, jnp.arange(nb)))
      states = [{l: end_pass(m, s, g) for l, s in st.items()}
                for m, st in zip(measures, states)]
    finalize = lambda m, s: jax.vmap(m.finalize)(s) if k else m.finalize(s)
    return [{l: dict(finalize(m, s)) for l, s in st.items()}
            for m, st in zip(measures, states)], counts

  return program


def _prepare(activations, images, transformations, measures, *, batch_size,
             labels, stratify, layers, transform_chunk, mesh, progress):
  """Validates inputs and returns (jitted program, its arguments, context)."""
  acts = capture.as_activations(activations)
  images = _check_images(images)
  num_t = _check_transformations(transformations)
  measures, single = _as_measures(measures)
  if (not isinstance(batch_size, (int, np.integer)) or
      isinstance(batch_size, bool) or batch_size <= 0):
    raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
  n, h, w, c = (int(s) for s in images.shape)
  if labels is not None:
    labels = _check_labels(labels, n)
  if stratify and labels is None:
    raise ValueError("stratify=True needs labels")
  tc = num_t if transform_chunk is None else transform_chunk
  if not isinstance(tc, (int, np.integer)) or tc <= 0:
    raise ValueError(f"transform_chunk must be a positive int, got {tc!r}")
  tc = min(int(tc), num_t)
  nc = math.ceil(num_t / tc)

  devices = 1
  if mesh is not None:
    if not isinstance(mesh, Mesh) or "data" not in mesh.axis_names:
      raise ValueError("mesh must be a jax.sharding.Mesh with a 'data' axis")
    devices = mesh.shape["data"]
    fused = [m.name for m in measures
             if dict(m.settings).get("implementation") == "pallas"]
    if fused:
      # XLA's partitioner cannot split a Pallas kernel: it would gather
      # every tile onto each device.
      raise ValueError(
          f"{fused}: implementation='pallas' runs on one device; use "
          "implementation='xla' with mesh=")
    # The program leaves layout decisions to XLA's partitioner, which needs
    # Auto axes; `jax.make_mesh` may default to Explicit ones.
    mesh = Mesh(mesh.devices, mesh.axis_names,
                axis_types=(AxisType.Auto,) * len(mesh.axis_names))
  b = min(int(batch_size), n)
  b = math.ceil(b / devices) * devices
  nb = math.ceil(n / b)

  # Layer shapes from one abstract evaluation of the model.
  probe = jax.ShapeDtypeStruct((b * tc, h, w, c), images.dtype)
  shapes = jax.eval_shape(acts.apply, acts.params, probe)
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
    if m.needs_inverse:
      for l in names:
        if not spatial[l]:
          notes.setdefault(m.name, {})[l] = (
              "skipped: same-equivariance needs spatial feature maps "
              f"(B, h, w, c); this layer has shape {specs[l].shape}")

  classes = None
  excluded = [{} for _ in measures]     # per measure: {class: why}
  if stratify:
    classes, class_index = np.unique(labels, return_inverse=True)
    labels = class_index.astype(np.int32)
    sizes = np.bincount(class_index, minlength=len(classes))
    for m, out in zip(measures, excluded):
      for label, size in zip(classes, sizes):
        try:
          if m.check is not None:
            m.check(int(size), num_t)
        except ValueError as e:
          out[int(label)] = f"{int(size)} samples: {e}"
      if len(out) == len(classes):
        raise ValueError(f"stratify=True: no class can be measured: "
                         f"{'; '.join(f'class {c}, {w}' for c, w in out.items())}")
  else:
    for m in measures:
      if m.check is not None:
        m.check(n, num_t)
    if labels is not None:
      labels = labels.astype(np.int32)

  # Batches: (nb, B, ...) with padding rows masked out, never dropped.
  host = np.asarray(images) if not isinstance(images, jax.Array) else None
  mask = np.arange(nb * b) < n
  if host is not None:
    imgs = _pad_rows(host, nb * b, fill_first=True).reshape(nb, b, h, w, c)
  else:
    pad = nb * b - n
    imgs = jnp.concatenate([images, jnp.repeat(images[:1], pad, 0)]) if pad \
        else images
    imgs = imgs.reshape(nb, b, h, w, c)
  lab = None if labels is None else _pad_rows(labels, nb * b, False).reshape(
      nb, b)
  tparams = _pad_rows(np.asarray(transformations.parameters), nc * tc, True)
  tmask = np.arange(nc * tc) < num_t
  tparams = tparams.reshape((nc, tc) + tparams.shape[1:])
  tmask = tmask.reshape(nc, tc)

  plan = _Plan(acts, transformations, measures, names, specs, spatial, b, tc,
               nc, (h, w), 0 if classes is None else len(classes), mesh,
               bool(progress), any(m.needs_identity for m in measures), nb,
               labels is not None)
  # Everything the traced program closes over: a new image or layer shape
  # must build a new plan, not retrace the old one.
  key = (acts.key, transformations.action, tuple(m.key for m in measures),
         tuple((l, specs[l].shape, str(specs[l].dtype)) for l in names),
         (h, w, c), str(images.dtype), num_t, b, tc, nc,
         nb if progress else None, plan.num_classes, mesh, plan.progress,
         labels is not None)
  fn = _CACHE.get(key)
  if fn is None:
    program = _build_program(plan)
    if mesh is None:
      fn = jax.jit(program)
    else:
      rep = NamedSharding(mesh, P())
      data = lambda nd: NamedSharding(mesh, P(None, "data", *([None] * nd)))
      fn = jax.jit(program,
                   in_shardings=(rep, data(3), data(0),
                                 None if lab is None else data(0), rep, rep),
                   out_shardings=rep)
    _CACHE[key] = fn
  args = (acts.params, imgs, mask.reshape(nb, b), lab, tparams, tmask)
  context = dict(single=single, measures=measures, names=names, notes=notes,
                 classes=classes, n=n, b=b, tc=tc, nb=nb, num_t=num_t,
                 excluded=excluded)
  return fn, args, context


def measure(activations: Any, images: Any, transformations: Any,
            measures: base.Measure | Sequence[base.Measure], *,
            batch_size: int = 64, labels: Any = None, stratify: bool = False,
            layers: Any = None, transform_chunk: int | None = None,
            mesh: Mesh | None = None, progress: bool = False):
  """Measures every tapped layer of a network over a dataset, in one program.

  Args:
    activations: an `invjax.capture` Activations (from `capture.linen`,
      `capture.nnx`) or any callable ``images (B,H,W,C) -> {layer: (B, ...)}``.
    images: (N, H, W, C) floating-point images (NumPy or JAX).
    transformations: an `invjax.transforms` TransformationSet of T elements.
    measures: one `Measure` or a list of them, computed together in one pass.
    batch_size: samples per step; memory is bounded by one batch × T (or ×
      ``transform_chunk``). A last partial batch is padded and masked.
    labels: optional (N,) integer labels (needed for ``stratify``).
    stratify: compute every measure per class, in the same pass, and return
      per-class results (``result.per_class``) plus their elementwise mean.
    layers: optional layer filter (names, a name, or a predicate).
    transform_chunk: process the transformations Tc at a time (bounds memory
      when T is large); results equal the unchunked ones to float32
      round-off (the sums run in another order: ~1e-5 relative at T = 360).
    mesh: a `jax.sharding.Mesh` with a ``"data"`` axis: the samples of each
      batch are sharded over it and statistics are reduced by collectives.
    progress: show a tqdm bar that advances per batch while the program runs.

  Returns:
    A `MeasureResult` (or a list, one per measure when a list was given).

  Raises:
    ValueError: on malformed inputs, complex activations, or a dataset too
      small for a measure's statistics (`Measure.check`: e.g. ddof ≥ T or
      ddof ≥ N for the variance family). In a stratified run a class too
      small is left out of the class average instead, with a note.

  A sample whose activations in a layer hold a NaN or inf (in any of its
  transformations, or untransformed) is left out of that layer's statistics
  and counted in ``result.nonfinite_samples[layer]``, with a note and a
  RuntimeWarning; the other samples' statistics are what they would be
  without it.
  """
  fn, args, ctx = _prepare(
      activations, images, transformations, measures, batch_size=batch_size,
      labels=labels, stratify=stratify, layers=layers,
      transform_chunk=transform_chunk, mesh=mesh, progress=progress)
  if progress:
    from tqdm.auto import tqdm  # pylint: disable=g-import-not-at-top
    passes = max(m.num_passes for m in ctx["measures"])
    _PROGRESS.bar = tqdm(total=ctx["nb"] * passes, unit="batch",
                         desc="invjax.measure")
  try:
    outputs, counts = jax.device_get(fn(*args))
  finally:
    bar = _PROGRESS.bar
    if bar is not None:
      bar.close()
      _PROGRESS.bar = None
  _warn_nonfinite(counts, ctx["names"])
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
  acts = capture.as_activations(activations)
  params = acts.params if params is None else params
  b, h, w = images.shape[:3]
  x = jax.vmap(transformations.apply)(images)                    # (B,T,H,W,C)
  t = x.shape[1]
  out = acts.apply(params, x.reshape((b * t,) + x.shape[2:]))
  names = capture.select_layers(list(out), layers)
  if measure.check is not None:
    measure.check(b, transformations.parameters.shape[0])
  untransformed = acts.apply(params, images) if measure.needs_identity else None
  results = {}
  for l in names:
    a = out[l].reshape((b, t) + out[l].shape[1:])
    if measure.needs_inverse:
      if a.ndim != 5:
        continue
      inv = lambda p, fm: transformations.action.inverse(p, fm,
                                                         input_shape=(h, w))
      a = jax.vmap(jax.vmap(inv), (None, 0))(transformations.parameters, a)
    identity = None if untransformed is None else untransformed[l]
    results[l] = measure(a, identity=identity)
  return results
