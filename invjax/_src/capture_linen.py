"""`capture.linen`: the activations of a Flax Linen module."""

from __future__ import annotations

import collections
from typing import Any, Callable, Hashable, Mapping, NamedTuple, Union

import jax

from invjax._src import capture as core
from invjax._src import capture_leaves as naming

class _LinenPlan(NamedTuple):
  leaves: tuple[naming.Leaf, ...]               # selected, execution order
  methods: Mapping[tuple[str, ...], frozenset]  # path -> methods to store


def linen(module: Any, variables: Any, *, layers: core.LayerFilter = None,
          method: Union[str, Callable[..., Any], None] = None,
          apply_kwargs: Mapping[str, Any] | None = None,
          ensemble: bool = False,
          filter: core.LayerFilter = None) -> core.Activations:
  """core.Activations of a Flax Linen module, via ``capture_intermediates``.

  What is captured, exactly:

  * the output of every public method call (``__call__`` and methods not
    starting with ``_``, e.g. ``encoder.embed``) of every submodule, and of the
    top-level module's methods called from the entry method (``"encode"``);
  * every value sown into the ``'intermediates'`` collection
    (``self.sow('intermediates', 'feat', x)``);
  * the network output (``"output"``, unless it is one of those values
    already).

  Nothing else: a function call is not a module, so the results of
  ``nn.relu``, ``nn.max_pool``, ``jnp.mean`` or a reshape are not captured,
  nor are values inside a method before it returns. To measure one, sow it,
  ``x = nn.relu(x); self.sow('intermediates', 'relu1', x)``, or make it a
  submodule (a module whose ``__call__`` applies the function, as
  `invjax.models` does for its activations and pooling). Names follow the
  module docstring.

  Order. Linen's automatic names follow construction, not execution: in
  ``nn.Dense(3)(nn.relu(nn.Dense(4)(x)))`` the 3-unit ``Dense_0`` is built
  first but ``Dense_1`` runs first. The order here is the order in which the
  method calls *complete*: Flax calls the ``capture_intermediates`` predicate
  as each call returns, so one abstract trace (`jax.make_jaxpr`, cached per
  input shape and dtype) records it. Sown values are placed by the same clock:
  a value sown by a module is listed just before the output of the next method
  call to complete after the sow, whether that call is the module's own (the
  usual "sow, then return": just before the module's output) or one of its
  submodules' ("sow, then call a child": before the child's output). Values
  sown between the same two completions are listed outer module first, then in
  the order their names were first sown, numbered within each name. (Sown
  values are found by comparing each enclosing module's intermediates when a
  call completes, so a value sown with a custom ``reduce_fn`` whose result is a
  dict is taken for a submodule and ignored.)

  Selection. With ``layers`` the predicate handed to Flax stores only the
  method outputs of selected layers, so unselected activations are never kept.
  Sown values are always stored by Flax; unselected ones are dropped.

  Args:
    module: a `flax.linen.Module`.
    variables: its variables, e.g. ``{'params': ..., 'batch_stats': ...}``;
      becomes ``Activations.params`` (any ``'intermediates'`` collection in it
      is ignored).
    layers: which layers to return, see `select_layers` (the same argument
      as `invjax.measure`'s ``layers``).
    method: the method to apply, as for `flax.linen.Module.apply` (default
      ``__call__``). Its return value is ``"output"`` (see the module
      docstring for when that name is listed).
    apply_kwargs: extra keyword arguments for ``module.apply``, e.g.
      ``{'train': False}`` for models with batch statistics, or ``rngs``.
      A ``mutable`` entry is merged with ``'intermediates'``; the other
      collections it updates are discarded.
    ensemble: ``variables`` are K members' variables stacked, every leaf
      (K, ...), as ``invjax.train.fit(..., seeds=...)`` returns them (or
      ``jax.tree.map(lambda *v: jnp.stack(v), *members)``). `invjax.measure`
      then measures every member in one program and returns one result per
      member; calling the `Activations` gives ``{name: (K, B, ...)}``.

  Returns:
    An `Activations` with ``params=variables`` (and ``members=K`` for an
    ensemble).

  Raises:
    TypeError: ``module`` is not a Linen module, or ``apply_kwargs`` holds
      ``capture_intermediates``.
    ValueError: with ``ensemble``, variables without a common leading axis
      (the message names the leaves).

  Examples:
    >>> import flax.linen as nn, jax, jax.numpy as jnp
    >>> from invjax import capture
    >>> class Net(nn.Module):
    ...   @nn.compact
    ...   def __call__(self, x):
    ...     x = nn.relu(nn.Conv(4, (3, 3))(x))
    ...     self.sow("intermediates", "relu1", x)  # a function's output
    ...     x = nn.max_pool(x, (2, 2), strides=(2, 2))  # not captured
    ...     return nn.Dense(10)(x.reshape((x.shape[0], -1)))
    >>> x = jnp.ones((2, 8, 8, 1))
    >>> acts = capture.linen(Net(), Net().init(jax.random.key(0), x))
    >>> acts.layer_names(x)  # the logits once, as Dense_0
    ['Conv_0', 'relu1', 'Dense_0']
  """
  layers = core.layers_argument(layers, filter)
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  if not isinstance(module, nn.Module):
    raise TypeError(
        f"expected a flax.linen.Module, got {type(module).__name__}")
  apply_kwargs = dict(apply_kwargs or {})
  if "capture_intermediates" in apply_kwargs:
    raise TypeError("apply_kwargs must not set capture_intermediates; "
                    "invjax.capture.linen sets it")
  if "method" in apply_kwargs:
    raise TypeError("pass method= to invjax.capture.linen, not in apply_kwargs")
  mutable = _merge_mutable(apply_kwargs.pop("mutable", False))
  if method is None:
    entry_name = "__call__"
  elif isinstance(method, str):
    entry_name = method
  else:
    entry_name = getattr(method, "__name__", None)

  def run(variables, images, capture):
    # Stale intermediates would be extended by sow instead of replaced.
    variables = {k: v for k, v in variables.items() if k != "intermediates"}
    out, state = module.apply(variables, images, capture_intermediates=capture,
                              mutable=mutable, method=method, **apply_kwargs)
    return out, state.get("intermediates", {})

  plans = {}

  def plan_for(variables, images) -> _LinenPlan:
    cache_key = naming.cache_key(variables, images)
    if cache_key not in plans:
      plans[cache_key] = _plan_linen(run, variables, images, entry_name, layers)
    return plans[cache_key]

  log = core.LayerLog()

  def apply(variables, images):
    plan = plan_for(variables, images)
    def capture(mdl, method_name):
      return method_name in plan.methods.get(tuple(mdl.path), ())
    log.note(plan.leaves)
    return naming.gather(plan.leaves, run(variables, images, capture))

  key = ("linen", module, method, core.filter_key(layers),
         _merge_key(apply_kwargs),
         mutable if isinstance(mutable, bool) else tuple(mutable))
  members = core.ensemble_size(variables, "variables") if ensemble else None
  one = core.member_abstract(variables) if members else variables
  description = (f"flax.linen {type(module).__name__}, "
                 f"{core.count_values(one)}")
  if members:
    description += f" each, ensemble of {members}"
  # An ensemble keeps the single model's key: the engine's program cache
  # tells them apart by `members` as well.
  return core.Activations(apply=apply, params=variables,
                          key=core.hashable_or_fresh(key),
                          description=description, members=members, _log=log)


def _merge_mutable(mutable: Any) -> Any:
  if mutable is True:
    return True
  if not mutable:
    return ["intermediates"]
  if isinstance(mutable, str):
    mutable = [mutable]
  mutable = list(mutable)
  return mutable if "intermediates" in mutable else mutable + ["intermediates"]


def _merge_key(kwargs: Mapping[str, Any]) -> Hashable:
  return tuple(sorted(kwargs.items()))


def _plan_linen(run, variables, images, entry_name, layer_filter) -> _LinenPlan:
  """Traces once, abstractly, recording the order in which values appear."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top

  events = []    # ("sow", path, key, i) and ("call", path, method), in order
  stored = collections.defaultdict(set)  # path -> methods Flax stores for us
  placed = {}    # (path, sow name) -> number of sown values already placed

  def place_new_sows(path, intermediates):
    for key, value in intermediates.items():
      # Sub-dicts are child modules; method names are our own captures.
      if isinstance(value, Mapping) or key in stored[path]:
        continue
      count = len(value) if isinstance(value, tuple) else 1
      for i in range(placed.get((path, key), 0), count):
        events.append(("sow", path, key, i))
      placed[(path, key)] = count

  def record(mdl, method_name):
    # Called by Flax as each wrapped method call returns: execution order.
    # Sows made since the previous return may sit in this module or in any
    # module enclosing it (sow, then call a child), outermost first.
    chain = [mdl]
    while isinstance(chain[-1].parent, nn.Module):
      chain.append(chain[-1].parent)
    for owner in reversed(chain):
      place_new_sows(tuple(owner.path),
                     owner.variables.get("intermediates", {}))
    path = tuple(mdl.path)
    if not naming.is_public_method(method_name):
      return False
    events.append(("call", path, method_name))
    stored[path].add(method_name)
    return True

  # A jaxpr rather than `jax.eval_shape`: its output variables say which
  # captured values are the very same array (see `naming.output_copies`).
  closed, (out, inter) = jax.make_jaxpr(
      lambda v, x: run(v, x, record), return_shape=True)(
          naming.abstract(variables), naming.abstract(images))

  # Sows that no completed call accounted for (e.g. made outside any wrapped
  # method) go just before the network output rather than being lost.
  def sweep(path, tree):
    place_new_sows(path, tree)
    for key, value in tree.items():
      if isinstance(value, Mapping):
        sweep(path + (key,), value)
  leftovers_from = len(events)
  sweep((), inter)
  leftovers = events[leftovers_from:]
  del events[leftovers_from:]

  if events and events[-1] == ("call", (), entry_name):
    events.pop()  # The entry call's value is reported as "output" instead.
  events.extend(leftovers)

  calls = collections.Counter(e[1:] for e in events if e[0] == "call")
  seen_calls = collections.Counter()
  batch = images.shape[0]
  candidates = []  # (leaf, (path, method) or None)
  for event in events:
    if event[0] == "sow":
      _, path, key, i = event
      node = naming.follow(inter, [naming.DK(p) for p in path])[key]
      prefix = ((naming.SK(1),) + tuple(naming.DK(p) for p in path) +
                (naming.DK(key),))
      base = "/".join(path + (key,))
      if isinstance(node, tuple):
        value, prefix = node[i], prefix + (naming.SK(i),)
        base = naming.numbered(base, i, len(node))
      else:
        value = node
      owner = None
    else:
      _, path, method_name = event
      i = seen_calls[(path, method_name)]
      seen_calls[(path, method_name)] += 1
      node = naming.follow(inter, [naming.DK(p) for p in path])[method_name]
      value = node[i]
      prefix = ((naming.SK(1),) + tuple(naming.DK(p) for p in path) +
                (naming.DK(method_name), naming.SK(i)))
      base = naming.numbered(naming.method_base(path, method_name), i,
                             calls[(path, method_name)])
      owner = (path, method_name)
    for leaf in naming.split_value(base, prefix, value, batch):
      candidates.append((leaf, owner))
  for leaf in naming.split_value(core.OUTPUT, (naming.SK(0),), out, batch):
    candidates.append((leaf, None))
  copies = naming.output_copies([leaf for leaf, _ in candidates],
                                closed.jaxpr, (out, inter))
  return _finish_linen_plan(candidates, copies, layer_filter)


def _finish_linen_plan(candidates, copies, layer_filter) -> _LinenPlan:
  leaves = [leaf for leaf, _ in candidates]
  if not leaves:
    raise ValueError("the model produced no activations (no layer returned an "
                     "array with the batch axis first)")
  chosen = set(naming.select_listed(leaves, copies, layer_filter))
  methods = collections.defaultdict(set)
  selected = []
  for leaf, owner in candidates:
    if leaf in chosen:
      selected.append(leaf)
      if owner is not None:
        methods[owner[0]].add(owner[1])
  return _LinenPlan(tuple(selected),
                    {p: frozenset(m) for p, m in methods.items()})
