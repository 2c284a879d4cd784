"""`capture.nnx`: the activations of a Flax NNX module."""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import jax
import jax.extend as jex

from invjax._src import capture as core
from invjax._src import capture_leaves as naming

_METHOD_OUTPUT_TYPE = []  # Created on first use, so flax is imported lazily.


def _method_output_type():
  """A private `nnx.Intermediate` subclass for method outputs.

  Capturing method outputs under their own Variable type keeps them apart from
  the values users sow as `nnx.Intermediate`, even when a sown name equals a
  method name.
  """
  if not _METHOD_OUTPUT_TYPE:
    from flax import nnx as flax_nnx  # pylint: disable=g-import-not-at-top

    class InvjaxMethodOutput(flax_nnx.Intermediate):
      """Outputs of module methods, captured by invjax."""

    _METHOD_OUTPUT_TYPE.append(InvjaxMethodOutput)
  return _METHOD_OUTPUT_TYPE[0]


def nnx(model: Any, *, layers: core.LayerFilter = None,
        ensemble: bool = False,
        filter: core.LayerFilter = None) -> core.Activations:
  """core.Activations of a Flax NNX module, via `flax.nnx.capture`.

  Runs ``model(images)`` under ``nnx.capture(..., nnx.Intermediate,
  method_outputs=...)``. What is captured, exactly:

  * the output of every call of a public method (``__call__`` and names
    without a leading ``_``) *defined on each module's own class* (inherited
    methods are not instrumented by Flax), submodules and the model itself
    (its own ``__call__`` is ``"output"``);
  * every value sown with ``self.sow(nnx.Intermediate, name, x)`` (or a
    subclass of `nnx.Intermediate`);
  * the network output (``"output"``, unless it is one of those values
    already).

  Nothing else: the results of functions (``nnx.relu``, ``nnx.max_pool``,
  ``jnp`` operations) are not captured. To measure one, sow it:
  ``x = nnx.relu(x); self.sow(nnx.Intermediate, 'relu1', x)``, which
  `capture.nnx` collects through `nnx.capture` (Flax ≥ 0.12.6 warns about a
  ``sow`` made outside `nnx.capture`, e.g. by calling ``model(x)`` directly).
  Names follow the module docstring; module paths are attribute paths
  (``"blocks/0/linear"``).

  The model is split with `nnx.split`; ``params`` is the whole state (weights,
  batch statistics, RNG state) and ``apply`` merges it back inside, so it is
  pure. State updates made during the call (RNG counters, running statistics
  in training mode) are discarded: call ``model.eval()`` first for deployment
  behaviour.

  Order. The captured `nnx.State` is sorted by path, not by execution, so the
  order is recovered from one abstract trace (`jax.make_jaxpr`, cached per
  input shape and dtype): each value is placed at the equation that computed
  it, looking inside nested ``jit``/``remat`` calls. Several names for the very
  same array (a block returning its last layer's output, a sown copy of an
  output, a module returning its input unchanged) are all listed, ordered
  deeper module first, then sown values before method outputs, then by path;
  only the network output is left out when it is one of them.

  Selection. ``layers`` restricts what ``apply`` returns; Flax stores every
  method output during the call, and unselected ones are dropped (under
  `jax.jit` they are never computed for nothing: XLA removes them).

  Ensembles (``ensemble=True``). NNX's own form of K stacked models is one
  module whose state has a leading member axis, created under `nnx.vmap`
  with `nnx.split_rngs` (Flax's "model ensembles" idiom)::

    @nnx.split_rngs(splits=K)
    @nnx.vmap(in_axes=(0,), out_axes=0)
    def create(rngs):
      return Net(rngs)
    acts = capture.nnx(create(nnx.Rngs(0)), ensemble=True)

  A list of K modules of one structure (e.g. ``[Net(nnx.Rngs(s)) for s in
  seeds]``) is stacked here the same way. ``apply`` takes one member's
  state; `invjax.measure` measures all members in one program and returns
  one result per member; calling the `Activations` gives
  ``{name: (K, B, ...)}``.

  Args:
    model: a `flax.nnx.Module` whose ``__call__`` takes a batch of images;
      with ``ensemble``, such a module with stacked state, or a list of
      modules.
    layers: which layers to return, see `select_layers`.
    ensemble: ``model`` is an ensemble (see above).

  Returns:
    An `Activations` whose ``params`` is the model's `nnx.State` (stacked,
    with ``members=K``, for an ensemble).

  Raises:
    TypeError: ``model`` is not an NNX module (or, with ``ensemble``, a
      list of them).
    ValueError: with ``ensemble``, modules of different structure, or a
      state without a common leading axis (the message names the leaves).

  Examples:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from invjax import capture
    >>> class Net(nnx.Module):
    ...   def __init__(self, rngs):
    ...     self.conv = nnx.Conv(1, 4, (3, 3), rngs=rngs)
    ...     self.head = nnx.Linear(64, 10, rngs=rngs)
    ...   def __call__(self, x):
    ...     x = nnx.relu(self.conv(x))
    ...     self.sow(nnx.Intermediate, "relu1", x)  # a function's output
    ...     x = nnx.max_pool(x, (2, 2), strides=(2, 2))  # not captured
    ...     return self.head(x.reshape((x.shape[0], -1)))
    >>> capture.nnx(Net(nnx.Rngs(0))).layer_names(jnp.ones((2, 8, 8, 1)))
    ['conv', 'relu1', 'head']
  """
  layers = core.layers_argument(layers, filter)
  from flax import nnx as flax_nnx  # pylint: disable=g-import-not-at-top

  members, stacked_module = None, False
  if ensemble and isinstance(model, (list, tuple)):
    graphdef, state, model = _stack_nnx(model)
    members = len(model)
    model = model[0]   # For the description.
  elif not isinstance(model, flax_nnx.Module):
    raise TypeError(f"expected a flax.nnx.Module, got {type(model).__name__}")
  else:
    graphdef, state = flax_nnx.split(model)
    if ensemble:
      members = core.ensemble_size(state, "the model's state")
      stacked_module = True
  method_type = _method_output_type()

  def run(state, images):
    merged = flax_nnx.merge(graphdef, state)
    # The subclass comes first: split_state matches by isinstance.
    out, calls, sown = flax_nnx.capture(
        merged, method_type, flax_nnx.Intermediate,
        method_outputs=method_type)(images)
    return out, flax_nnx.to_pure_dict(calls), flax_nnx.to_pure_dict(sown)

  plans = {}
  log = core.LayerLog()

  def apply(state, images):
    cache_key = naming.cache_key(state, images)
    if cache_key not in plans:
      plans[cache_key] = _plan_nnx(run, state, images, layers)
    log.note(plans[cache_key])
    return naming.gather(plans[cache_key], run(state, images))

  key = ("nnx", graphdef, core.filter_key(layers))
  n_params = core.tree_size(flax_nnx.state(model, flax_nnx.Param))
  if stacked_module:
    n_params //= members   # The stacked module holds all K members'.
  description = f"flax.nnx {type(model).__name__}, {n_params:,} parameters"
  if members:
    description += f" each, ensemble of {members}"
  return core.Activations(apply=apply, params=state,
                          key=core.hashable_or_fresh(key),
                          description=description, members=members, _log=log)


def _stack_nnx(models: Sequence[Any]) -> tuple[Any, Any, list[Any]]:
  """(graphdef, stacked state, models) of a list of same-structure modules."""
  from flax import nnx as flax_nnx  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  models = list(models)
  if not models:
    raise ValueError("an ensemble needs at least one module; got an empty "
                     "list")
  for i, m in enumerate(models):
    if not isinstance(m, flax_nnx.Module):
      raise TypeError(f"expected a list of flax.nnx.Module, got "
                      f"{type(m).__name__} at index {i}")
  splits = [flax_nnx.split(m) for m in models]
  graphdef = splits[0][0]
  structure = jax.tree.structure(splits[0][1])
  for i, (g, st) in enumerate(splits[1:], 1):
    if g != graphdef or jax.tree.structure(st) != structure:
      raise ValueError(f"ensemble members must have one structure: module "
                       f"{i} differs from module 0 (its class, submodules "
                       "or variables)")
  try:
    state = jax.tree.map(lambda *v: jnp.stack(v), *[st for _, st in splits])
  except (ValueError, TypeError) as e:
    raise ValueError(f"ensemble members must have one structure: their "
                     f"variables' shapes differ ({e})") from None
  core.ensemble_size(state, "the modules' states", len(models))
  return graphdef, state, models


def _plan_nnx(run, state, images, layer_filter) -> tuple[naming.Leaf, ...]:
  """Names every captured array and sorts them by where they were computed."""
  closed, shapes = jax.make_jaxpr(run, return_shape=True)(
      naming.abstract(state), naming.abstract(images))
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  position = _producer_positions(closed.jaxpr)
  where = {jax.tree_util.keystr(path): position(var)
           for (path, _), var in zip(flat, closed.jaxpr.outvars)}

  out, calls, sown = shapes
  batch = images.shape[0]
  candidates = []  # (sort key, leaf)

  def add(base, prefix, value, depth, kind):
    for leaf in naming.split_value(base, prefix, value, batch):
      rank = (kind == "output", where[jax.tree_util.keystr(leaf.keys)], -depth,
              kind == "call", len(candidates))
      candidates.append((rank, leaf))

  def walk(tree, source, path):
    for key, node in tree.items():
      if isinstance(node, Mapping):  # A submodule.
        walk(node, source, path + (key,))
        continue
      prefix = ((naming.SK(source),) + tuple(naming.DK(p) for p in path) +
                (naming.DK(key),))
      if source == 1:
        if not path and key == "__call__":
          continue  # The root call is "output", taken from the return value.
        base = naming.method_base(path, key)
      else:
        base = "/".join(str(p) for p in path + (key,))
      kind = "call" if source == 1 else "sow"
      if isinstance(node, tuple):
        for i, value in enumerate(node):
          add(naming.numbered(base, i, len(node)), prefix + (naming.SK(i),),
              value, len(path), kind)
      else:
        add(base, prefix, node, len(path), kind)

  walk(calls, 1, ())
  walk(sown, 2, ())
  add(core.OUTPUT, (naming.SK(0),), out, 0, "output")
  if not candidates:
    raise ValueError("the model produced no activations (no layer returned an "
                     "array with the batch axis first)")
  leaves = [leaf for _, leaf in sorted(candidates, key=lambda c: c[0])]
  copies = naming.output_copies(leaves, closed.jaxpr, shapes)
  return tuple(naming.select_listed(leaves, copies, layer_filter))


def _producer_positions(jaxpr) -> Callable[[Any], tuple[int, ...]]:
  """Maps a jaxpr variable to the position of the equation that made it.

  The position is a tuple: the equation's index, followed, when that equation
  is a call with one inner program (``pjit``, ``remat``, ...), by the position
  inside it, so values computed within one nested call still get apart.
  Inputs and literals are at ``(-1,)``.
  """
  producers = {}
  for index, eqn in enumerate(jaxpr.eqns):
    for out_index, var in enumerate(eqn.outvars):
      producers[var] = (index, out_index, eqn)
  inner_cache = {}

  def position(var):
    if not isinstance(var, jex.core.Var) or var not in producers:
      return (-1,)
    index, out_index, eqn = producers[var]
    inner = _single_inner_jaxpr(eqn)
    if inner is None or len(inner.outvars) != len(eqn.outvars):
      return (index,)
    if id(inner) not in inner_cache:
      inner_cache[id(inner)] = (inner, _producer_positions(inner))
    return (index,) + inner_cache[id(inner)][1](inner.outvars[out_index])

  return position


def _single_inner_jaxpr(eqn):
  inner = [p.jaxpr if isinstance(p, jex.core.ClosedJaxpr) else p
           for p in eqn.params.values()
           if isinstance(p, (jex.core.Jaxpr, jex.core.ClosedJaxpr))]
  return inner[0] if len(inner) == 1 else None
