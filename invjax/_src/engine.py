"""`invjax.measure`: a whole network over a dataset, streamed in chunks.

The flow for one batch of B samples (everything inside one `jax.jit`):

    images (B, H, W, C)
      ── transformations (vmap over B and Tc) ──▶ (B·Tc, H, W, C)
      ── activations fn ──▶ {layer: (B, Tc, ...)}
      ── [inverse transform for same-equivariance] ──▶ measure.update

The data arrive as a stream (`sources`): an (N, H, W, C) array is cut into
chunks of K batches on the host (a `jax.Array` on the device is sliced in
place), and any other batch source is read K batches at a time. One
compiled step (`program`) runs a `lax.scan` over a chunk's K batches (and
over transformation chunks of Tc when `transform_chunk` is set) and carries
the measures' states, donated, from one step to the next; small programs
initialize, end a pass and finalize them. `plan` validates a call and
fetches its programs; this module streams the data through them. Memory is
therefore bounded by one tile and two chunks of images, not by N or T. The
measures' states are mergeable statistics; on a `jax.sharding.Mesh` the
samples of each batch are split over the ``"data"`` axis and XLA turns the
per-batch reductions into collectives (GSPMD), so the program is the same on
one CPU and on a pod slice.
"""

from __future__ import annotations

import functools
import os
import types
import warnings
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh

from invjax._src import base
from invjax._src import capture
from invjax._src import capture_callable
from invjax._src import hosts
from invjax._src import plan as plan_lib
from invjax._src import result as result_lib
from invjax._src import resume
from invjax._src import sources

# The tqdm bar of the running call, advanced by `_run` between steps.
_PROGRESS = types.SimpleNamespace(bar=None)


def _advance_bar(batches: int) -> None:
  bar = _PROGRESS.bar
  if bar is not None and batches:
    bar.update(batches)


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
  ctx["excluded"] = plan_lib.size_checks(ctx["measures"], ctx["num_t"], n,
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
  _, _, ctx = plan_lib.prepare(
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
