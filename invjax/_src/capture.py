"""Whole-network activations: one function type for every kind of model.

Every measure in invjax needs the same thing from a network: for a batch of
images, the activation of every layer of interest. This module turns the ways
people write JAX networks into one type, `Activations`:

    acts = capture.linen(module, variables)    # Flax Linen
    acts = capture.nnx(model)                  # Flax NNX
    acts = capture.as_activations(fn)          # fn(images) -> {name: array}

    acts(images)   # {"Conv_0": (B, H, W, C), ..., "Dense_0": (B, K)}

An ensemble of K networks that differ only in their parameters is one
`Activations` with ``members=K`` and the parameters stacked (every leaf
(K, ...)): ``capture.linen(module, stacked, ensemble=True)``, ``capture.nnx(
model, ensemble=True)`` or ``capture.function(fn, stacked, ensemble=True)``;
`invjax.measure` measures all members in one program.

A layer is a module's method output or a sown value (see `linen` and `nnx` for
exactly what is captured): functions such as ``relu`` and ``max_pool`` are not
modules, so their results are captured only when sown.

`Activations.apply(params, images)` is pure: the weights come in as an argument,
so the engine can `jax.jit` it without baking the weights in as constants, and
`jax.grad` with respect to the weights works.

The returned mapping is an ``OrderedDict`` in *execution order* (input side
first). It is an ``OrderedDict`` rather than a plain ``dict`` because JAX
rebuilds plain dicts in sorted key order when they leave `jax.jit` or
`jax.eval_shape`, while it keeps the key order of an ``OrderedDict``.

Layer names
-----------
* A module's ``__call__`` output is named by its path, ``"block1/Dense_0"``;
  another public method adds ``".method"`` (``"encoder.embed"``; on the root
  module just ``"encode"``).
* The value returned by the whole network is ``"output"``, listed only when
  it is a new array: the usual network returns its last layer's output, which
  is listed once, under the layer's name (``"Dense_1"``), not also as
  ``"output"``. Sameness is identity of the traced array, not equal values.
  A filter that names ``"output"`` always gets it, so the network output can
  be asked for without knowing the last layer's name.
* A value sown into the intermediates collection is named ``"path/feat"``.
* When a module is called, or a name is sown, several times in one forward pass,
  the values are numbered ``".0"``, ``".1"``, ... in call order; a single value
  gets no number.
* An output that is not a single array (a tuple, a dict, a dataclass) is split
  into its leaves, named with a ``[key]`` suffix per level:
  ``"output[0]"``, ``"block/Dense_0[logits]"``.
* Only leaves that are arrays with the batch axis first (at least one
  dimension, leading size equal to the number of images) are kept; scalars such
  as a sown loss term and values without a batch axis are skipped, because
  every measure reads activations as ``(B, ...)``.

Flax is imported lazily, so `as_activations` on a plain function works without
it.
"""

# `filter=` is the public keyword name, so it shadows the builtin here.
# pylint: disable=redefined-builtin

from __future__ import annotations

import collections
import dataclasses
import math
import sys
import warnings
from typing import (Any, Callable, Hashable, Iterable, Mapping, NamedTuple,
                    Sequence, Union)

import jax
import jax.extend as jex

Array = jax.Array
Params = Any
LayerFilter = Union[None, str, Sequence[str], Callable[[str], bool]]

OUTPUT = "output"


# ----------------------------------------------------------------------------
# The activations-function type.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Activations:
  """A network seen as ``images -> {layer name: activations}``.

  Attributes:
    apply: pure function ``apply(params, images)``, images ``(B, H, W, C)``,
      returning an ``OrderedDict`` ``{name: (B, ...)}`` in execution order.
      Safe to `jax.jit` and to differentiate with respect to ``params``.
    params: the pytree handed to ``apply`` by `__call__` (``None`` when the
      function has no parameters of its own).
    key: hashable identity of ``apply``. Two `Activations` with equal keys
      compute the same function of ``(params, images)``, so the engine may
      reuse a program compiled for one with the other. Left as ``None``, a
      fresh key is made that equals no other.
    description: a few words on what ``apply`` computes, for ``repr``
      (``"flax.linen SimpleConv, 74,834 parameters"``); ``None`` counts the
      values in ``params``.
    members: ``None`` for one network; K for an ensemble of K networks
      that differ only in their parameters: every leaf of ``params`` then
      has a leading axis of K, ``apply`` takes one member's parameters, and
      `invjax.measure` measures all members in one program (a vmap over
      them), returning one result per member.
  """
  apply: Callable[[Params, Array], Mapping[str, Array]]
  params: Params = None
  key: Hashable = None
  description: str | None = None
  members: int | None = None
  # The layers of the latest call, for repr; shared with apply's closure.
  _log: "_LayerLog" = dataclasses.field(default=None, repr=False)

  def __post_init__(self):
    if not callable(self.apply):
      raise TypeError(f"Activations.apply must be callable, got {self.apply!r}")
    if self.key is None:
      object.__setattr__(self, "key", _fresh_key())
    if self._log is None:
      object.__setattr__(self, "_log", _LayerLog())

  def __call__(self, images: Array) -> Mapping[str, Array]:
    """Returns ``apply(params, images)``: ``{name: (B, ...)}``.

    For an ensemble, every member's on the same images, stacked:
    ``{name: (K, B, ...)}`` (a `jax.vmap` over the members' parameters).
    """
    if self.members:
      out = jax.vmap(self.apply, in_axes=(0, None))(self.params, images)
      self._log.note_arrays(out, skip=2)
      return out
    out = self.apply(self.params, images)
    self._log.note_arrays(out)
    return out

  def layer_names(self, example_images: Any) -> list[str]:
    """Names of the layers ``apply`` returns, in execution order.

    Args:
      example_images: an array, or a `jax.ShapeDtypeStruct`, of the input shape;
        nothing is computed (`jax.eval_shape`).

    Returns:
      The keys of ``apply(params, example_images)`` (for an ensemble, of
      one member's: all members have the same layers).
    """
    params = self.params
    if self.members:
      params = _member_abstract(params)
    out = jax.eval_shape(self.apply, params, example_images)
    self._log.note_arrays(out)
    return list(out)

  def __repr__(self) -> str:
    # The default dataclass repr prints every weight: hundreds of lines.
    what = self.description or _count_values(self.params)
    layers = self._log.layers
    if layers is None:
      return (f"Activations({what};\n  layers: known after the first call "
              "(or .layer_names(images), which computes nothing))")
    entries = [f"{name} {tuple(shape)}" for name, shape in layers]
    return (f"Activations({what};\n  {len(layers)} layers, per-sample shapes "
            f"at the latest call:\n{_wrap_entries(entries)})")


class _LayerLog:
  """Names and per-sample shapes of the layers an `Activations` last gave."""

  def __init__(self):
    self.layers = None  # [(name, shape without the batch axis)]

  def note(self, leaves: Iterable[Any]) -> None:
    self.layers = [(leaf.name, leaf.shape) for leaf in leaves]

  def note_arrays(self, acts: Any, skip: int = 1) -> None:
    # skip: the leading axes that are not per sample (an ensemble's: 2).
    if isinstance(acts, Mapping):
      self.layers = [(name, tuple(getattr(a, "shape", ())[skip:]))
                     for name, a in acts.items()]


def _count_values(params: Any) -> str:
  """``"1,234 parameters"``, Linen's ``'params'`` collection apart."""
  if params is None:
    return "no parameters of its own"
  if isinstance(params, Mapping) and "params" in params:
    others = sorted(str(k) for k in params if k not in ("params",
                                                        "intermediates"))
    extra = f" (+ {', '.join(others)})" if others else ""
    return f"{_size(params['params']):,} parameters{extra}"
  return f"{_size(params):,} values in params"


def _size(tree: Any) -> int:
  return sum(int(math.prod(getattr(x, "shape", ()))) for x in
             jax.tree.leaves(tree) if hasattr(x, "shape"))


def _wrap_entries(entries: Sequence[str], width: int = 78,
                  max_lines: int = 6) -> str:
  """Comma-separated entries in indented lines; the middle ones elided."""
  lines, current = [], []
  for entry in entries:
    if current and len(", ".join(current + [entry])) + 4 > width:
      lines.append(current)
      current = []
    current.append(entry)
  if current:
    lines.append(current)
  if len(lines) > max_lines:
    hidden = sum(len(line) for line in lines[3:-2])
    lines = lines[:3] + [[f"... {hidden} more ..."]] + lines[-2:]
  return ",\n".join("    " + ", ".join(line) for line in lines)


def ensemble_size(tree: Any, what: str, expected: int | None = None) -> int:
  """K, the leading axis every leaf of an ensemble's stacked ``tree`` shares.

  An ensemble of K networks that differ only in their parameters keeps
  them stacked: member k's is ``jax.tree.map(lambda v: v[k], tree)``.

  Args:
    tree: the stacked parameters (variables, an `nnx.State`, any pytree).
    what: how to name ``tree`` in an error.
    expected: the K it must have, if known.

  Returns:
    K.

  Raises:
    ValueError: ``tree`` has no arrays, a leaf has no leading axis, the
      leaves' leading axes differ, or K is not ``expected``; the message
      names the offending leaves.
  """
  flat = jax.tree_util.tree_flatten_with_path(tree)[0]
  if not flat:
    raise ValueError(f"{what} holds no arrays; an ensemble needs its "
                     "members' parameters stacked, every leaf (K, ...)")
  shapes = [(jax.tree_util.keystr(path), tuple(getattr(v, "shape", ())))
            for path, v in flat]
  k = expected
  if k is None:
    # The commonest leading axis: the odd leaves out are the ones named.
    leads = collections.Counter(sh[0] for _, sh in shapes if sh)
    k = leads.most_common(1)[0][0] if leads else None
  bad = [(p, sh) for p, sh in shapes if sh[:1] != (k,)]
  if k is None or bad:
    shown = ", ".join(f"{p or '<root>'} {sh}" for p, sh in (bad or shapes)[:3])
    wanted = (f"a leading axis of {k}" if k is not None else
              "a leading axis K")
    raise ValueError(
        f"{what} are not an ensemble's stacked parameters: every leaf needs "
        f"{wanted} (one slice per member), but {len(bad or shapes)} of "
        f"{len(shapes)} leaves do not, e.g. {shown}. Stack the members "
        "with jax.tree.map(lambda *v: jnp.stack(v), *members)")
  return int(k)


def _member_abstract(tree: Any) -> Any:
  """Shape-only stand-ins for one member of stacked parameters."""
  def one(v):
    if hasattr(v, "shape") and hasattr(v, "dtype"):
      return jax.ShapeDtypeStruct(v.shape[1:], v.dtype)
    return v
  return jax.tree.map(one, tree)


def _fresh_key() -> Hashable:
  # A bare object() equals only itself: no accidental sharing of compiled code.
  return ("unique", object())


def _hashable_or_fresh(key: Any) -> Hashable:
  """``key`` if it can be hashed, else a fresh key (correct, never shared)."""
  try:
    hash(key)
  except TypeError:
    return _fresh_key()
  return key


def as_activations(obj: Any) -> Activations:
  """Converts anything invjax accepts as a network into `Activations`.

  Args:
    obj: an `Activations` (returned unchanged); a Flax NNX module (converted by
      `nnx`); or a plain callable ``f(images) -> {name: (B, ...)}`` whose dict
      is in execution order (wrapped with ``params=None`` and the callable
      itself as key).

  Returns:
    An `Activations`.

  Raises:
    TypeError: for a Flax Linen module (it needs its variables: use `linen`)
      or anything that is not callable.
  """
  if isinstance(obj, Activations):
    return obj
  if _is_nnx_module(obj):
    return nnx(obj)
  if _is_linen_module(obj):
    raise TypeError(
        "a Flax Linen module cannot be used on its own because its weights "
        "live outside it; use invjax.capture.linen(module, variables)")
  if not callable(obj):
    raise TypeError(
        "expected an Activations, a Flax NNX module or a callable "
        f"images -> dict[str, array], got {type(obj).__name__}")
  fn = obj
  log = _LayerLog()

  def apply(params, images):
    del params  # A plain callable closes over its own weights.
    out = _checked_activations(fn(images), fn)
    log.note_arrays(out)
    return out

  name = getattr(fn, "__qualname__", type(fn).__name__)
  return Activations(apply=apply, params=None,
                     key=_hashable_or_fresh(("callable", fn)),
                     description=f"callable {name}", _log=log)


def from_callable(fn: Callable[[Array], Mapping[str, Array]]) -> Activations:
  """Wraps ``fn(images) -> {name: (B, ...)}``; alias of `as_activations`.

  Any model becomes measurable this way, whatever its framework: return the
  activations to measure, in execution order. `invjax.measure` also takes such
  a callable directly and wraps it with this function.
  """
  return as_activations(fn)


def function(fn: Callable[[Params, Array], Mapping[str, Array]],
             params: Params, *, ensemble: bool = False) -> Activations:
  """Activations of a pure ``fn(params, images) -> {name: (B, ...)}``.

  Unlike `from_callable`, the weights come in as an argument, so a compiled
  measurement takes them as inputs (not constants) and can measure an
  ensemble: with ``ensemble=True``, ``params`` holds K members' parameters
  stacked (every leaf (K, ...)), ``fn`` still takes one member's, and
  `invjax.measure` returns one result per member, all from one program.

  Args:
    fn: pure ``fn(params, images)``, images (B, H, W, C), returning a dict of
      layer name -> (B, ...) activations in execution order (any framework:
      e.g. ``lambda v, x: module.apply(v, x)`` plus the layers wanted).
    params: its parameters (one member's, or K members' stacked).
    ensemble: ``params`` are stacked members.

  Returns:
    An `Activations` (``members=K`` for an ensemble); ``fn`` itself is its
    key, so measurements of the same ``fn`` share compiled programs.

  Raises:
    TypeError: ``fn`` is not callable.
    ValueError: with ``ensemble``, parameters without a common leading axis.
  """
  if not callable(fn):
    raise TypeError(f"fn must be callable as fn(params, images), got "
                    f"{type(fn).__name__}")
  members = ensemble_size(params, "params") if ensemble else None
  log = _LayerLog()

  def apply(p, images):
    out = _checked_activations(fn(p, images), fn)
    log.note_arrays(out)
    return out

  name = getattr(fn, "__qualname__", type(fn).__name__)
  one = _member_abstract(params) if members else params
  description = f"function {name}, {_count_values(one)}"
  if members:
    description += f" each, ensemble of {members}"
  return Activations(apply=apply, params=params,
                     key=_hashable_or_fresh(("function", fn)),
                     description=description, members=members, _log=log)


def _checked_activations(result: Any, source: Any) -> "collections.OrderedDict":
  if not isinstance(result, Mapping):
    raise ValueError(
        f"{source!r} must return a dict of layer name -> activations, got "
        f"{type(result).__name__}")
  if not result:
    raise ValueError(f"{source!r} returned no activations")
  return collections.OrderedDict(result)


def _is_nnx_module(obj: Any) -> bool:
  # If flax.nnx was never imported, obj cannot be one of its modules.
  nnx_mod = sys.modules.get("flax.nnx")
  return nnx_mod is not None and isinstance(obj, nnx_mod.Module)


def _is_linen_module(obj: Any) -> bool:
  linen_mod = sys.modules.get("flax.linen")
  return linen_mod is not None and isinstance(obj, linen_mod.Module)


# ----------------------------------------------------------------------------
# Layer filters.
# ----------------------------------------------------------------------------


def select_layers(names: Sequence[str], filter: LayerFilter) -> list[str]:
  """Picks layer names, always returned in the order of ``names``.

  Args:
    names: all layer names, in execution order.
    filter: ``None`` for all layers; one name; a sequence of names (returned in
      execution order whatever order they are given in); or a predicate
      ``name -> bool``.

  Returns:
    The selected names, in execution order.

  Raises:
    ValueError: a requested name is not in ``names``, or nothing is selected.
  """
  names = list(names)
  if filter is None:
    selected = names
  elif isinstance(filter, str) or (
      isinstance(filter, Iterable) and not callable(filter)):
    wanted = [filter] if isinstance(filter, str) else list(filter)
    known = set(names)
    for name in wanted:
      if name not in known:
        raise ValueError(
            f"unknown layer {name!r}; available layers: {', '.join(names)}")
    wanted_set = set(wanted)
    selected = [n for n in names if n in wanted_set]
  elif callable(filter):
    selected = [n for n in names if filter(n)]
  else:
    raise TypeError(
        "filter must be None, a layer name, a sequence of names or a "
        f"callable name -> bool, got {type(filter).__name__}")
  if not selected:
    raise ValueError(
        f"the layer filter selected no layers; available layers: "
        f"{', '.join(names)}")
  return selected


def _layers_argument(layers: LayerFilter, filter: LayerFilter) -> LayerFilter:
  """``layers``, or the deprecated ``filter=`` that was its name here."""
  if filter is None:
    return layers
  warnings.warn("capture's filter= is now layers=, as in invjax.measure",
                DeprecationWarning, stacklevel=3)
  if layers is not None:
    raise ValueError("pass layers= only (filter= is its old name)")
  return filter


def _filter_key(filter: LayerFilter) -> Hashable:
  if filter is None or isinstance(filter, str) or callable(filter):
    return filter
  return tuple(filter)


# ----------------------------------------------------------------------------
# Shared machinery: naming the leaves of captured values.
# ----------------------------------------------------------------------------


_DK = jax.tree_util.DictKey
_SK = jax.tree_util.SequenceKey


class _Leaf(NamedTuple):
  """One named activation: where to find it in a pytree of results."""
  name: str
  keys: tuple[Any, ...]  # jax key entries from the root of the result tree.
  shape: tuple[int, ...] = ()  # per sample, without the batch axis


def _key_text(k: Any) -> str:
  # DictKey and FlattenedIndexKey, SequenceKey, GetAttrKey.
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def _follow(tree: Any, keys: Sequence[Any]) -> Any:
  """Indexes ``tree`` along a path of jax key entries."""
  for k in keys:
    if isinstance(k, jax.tree_util.GetAttrKey):
      tree = getattr(tree, k.name)
    elif isinstance(k, jax.tree_util.SequenceKey):
      tree = tree[k.idx]
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      tree = jax.tree.leaves(tree)[k.key]
    else:
      tree = tree[k.key]
  return tree


def _split_value(base: str, prefix: tuple[Any, ...], value: Any,
                 batch: int) -> list[_Leaf]:
  """Names the batched array leaves of one captured value (see module doc)."""
  leaves = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(value)[0]:
    shape = getattr(leaf, "shape", None)
    # Only (B, ...) arrays are activations in the engine's sense.
    if shape is None or len(shape) < 1 or shape[0] != batch:
      continue
    suffix = "".join(f"[{_key_text(k)}]" for k in path)
    leaves.append(_Leaf(base + suffix, prefix + tuple(path),
                        tuple(shape[1:])))
  return leaves


def _abstract(tree: Any) -> Any:
  """Shape-only stand-ins, so tracing a plan never captures outer tracers."""
  def one(x):
    if hasattr(x, "shape") and hasattr(x, "dtype"):
      return jax.ShapeDtypeStruct(x.shape, x.dtype)
    return x
  return jax.tree.map(one, tree)


def _cache_key(params: Any, images: Any) -> Hashable:
  # The set of layers can depend on the input shape (and, in principle, on the
  # parameter structure), never on values.
  shapes = tuple(getattr(x, "shape", None) for x in jax.tree.leaves(params))
  return (tuple(images.shape), str(images.dtype), jax.tree.structure(params),
          shapes)


def _check_unique(leaves: Sequence[_Leaf]) -> None:
  seen = set()
  for leaf in leaves:
    if leaf.name in seen:
      raise ValueError(f"two activations would both be named {leaf.name!r}")
    seen.add(leaf.name)


def _gather(selected: Sequence[_Leaf], tree: Any) -> "collections.OrderedDict":
  return collections.OrderedDict(
      (leaf.name, _follow(tree, leaf.keys)) for leaf in selected)


def _is_public_method(name: str) -> bool:
  # nnx.capture's rule for method_outputs: __call__ and names without "_".
  return name == "__call__" or not name.startswith("_")


def _method_base(path: tuple[Any, ...], method: str) -> str:
  base = "/".join(str(p) for p in path)
  if method == "__call__":
    return base
  return f"{base}.{method}" if base else method


def _numbered(base: str, index: int, count: int) -> str:
  return base if count == 1 else f"{base}.{index}"


def _output_copies(leaves: Sequence[_Leaf], jaxpr, shapes: Any) -> frozenset:
  """The network-output leaves that repeat a value captured before them.

  The usual network ends with a layer whose output it returns unchanged, so
  ``"output"`` would be a second name for the last layer (``Dense_1`` or
  ``logits``) and every table and figure would show that layer twice. Two
  leaves are the same value when the traced program returns the same jaxpr
  variable for both: identity, not numerical equality, so an output that
  merely equals a layer's values (``x * 1.0``) is still listed.

  Args:
    leaves: candidates in execution order; ``leaf.keys`` index ``shapes``,
      network-output leaves under its first element.
    jaxpr: the traced program whose outputs are the leaves of ``shapes``.
    shapes: the pytree the program returned.

  Returns:
    The network-output leaves to leave unlisted.
  """
  paths = [jax.tree_util.keystr(path) for path, _ in
           jax.tree_util.tree_flatten_with_path(shapes)[0]]
  var_of = dict(zip(paths, jaxpr.outvars))
  seen, copies = set(), set()
  for leaf in leaves:
    var = var_of.get(jax.tree_util.keystr(leaf.keys))
    if not isinstance(var, jex.core.Var):
      continue  # A literal is no layer's output.
    if var in seen and leaf.keys[:1] == (_SK(0),):
      copies.add(leaf)
    seen.add(var)
  return frozenset(copies)


def _select_listed(leaves: Sequence[_Leaf], copies: frozenset,
                   layer_filter: LayerFilter) -> list[_Leaf]:
  """`select_layers` over the listed leaves; named filters may ask for copies.

  A copy of an earlier value (see `_output_copies`) is not listed, so without
  a filter, with a predicate and in `Activations.layer_names` it is absent; a
  filter that names it (``layers="output"``) still gets it, so the network
  output can be asked for without knowing the last layer's name.

  Returns:
    The selected leaves, in the order of ``leaves``.
  """
  listed = [leaf for leaf in leaves if leaf not in copies]
  _check_unique(listed)
  taken = {leaf.name for leaf in listed}
  by_name = layer_filter is not None and not callable(layer_filter)
  if by_name:
    # A submodule named "output" that is the output keeps its own entry.
    listed = [leaf for leaf in leaves
              if leaf not in copies or leaf.name not in taken]
  chosen = set(select_layers([leaf.name for leaf in listed], layer_filter))
  return [leaf for leaf in listed if leaf.name in chosen]


# ----------------------------------------------------------------------------
# Flax Linen.
# ----------------------------------------------------------------------------


class _LinenPlan(NamedTuple):
  leaves: tuple[_Leaf, ...]                     # selected, execution order
  methods: Mapping[tuple[str, ...], frozenset]  # path -> methods to store


def linen(module: Any, variables: Any, *, layers: LayerFilter = None,
          method: Union[str, Callable[..., Any], None] = None,
          apply_kwargs: Mapping[str, Any] | None = None,
          ensemble: bool = False, filter: LayerFilter = None) -> Activations:
  """Activations of a Flax Linen module, via ``capture_intermediates``.

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
  layers = _layers_argument(layers, filter)
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
    cache_key = _cache_key(variables, images)
    if cache_key not in plans:
      plans[cache_key] = _plan_linen(run, variables, images, entry_name, layers)
    return plans[cache_key]

  log = _LayerLog()

  def apply(variables, images):
    plan = plan_for(variables, images)
    def capture(mdl, method_name):
      return method_name in plan.methods.get(tuple(mdl.path), ())
    log.note(plan.leaves)
    return _gather(plan.leaves, run(variables, images, capture))

  key = ("linen", module, method, _filter_key(layers), _merge_key(apply_kwargs),
         mutable if isinstance(mutable, bool) else tuple(mutable))
  members = ensemble_size(variables, "variables") if ensemble else None
  one = _member_abstract(variables) if members else variables
  description = (f"flax.linen {type(module).__name__}, "
                 f"{_count_values(one)}")
  if members:
    description += f" each, ensemble of {members}"
  # An ensemble keeps the single model's key: the engine's program cache
  # tells them apart by `members` as well.
  return Activations(apply=apply, params=variables, key=_hashable_or_fresh(key),
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
    if not _is_public_method(method_name):
      return False
    events.append(("call", path, method_name))
    stored[path].add(method_name)
    return True

  # A jaxpr rather than `jax.eval_shape`: its output variables say which
  # captured values are the very same array (see `_output_copies`).
  closed, (out, inter) = jax.make_jaxpr(
      lambda v, x: run(v, x, record), return_shape=True)(
          _abstract(variables), _abstract(images))

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
      node = _follow(inter, [_DK(p) for p in path])[key]
      prefix = (_SK(1),) + tuple(_DK(p) for p in path) + (_DK(key),)
      base = "/".join(path + (key,))
      if isinstance(node, tuple):
        value, prefix = node[i], prefix + (_SK(i),)
        base = _numbered(base, i, len(node))
      else:
        value = node
      owner = None
    else:
      _, path, method_name = event
      i = seen_calls[(path, method_name)]
      seen_calls[(path, method_name)] += 1
      node = _follow(inter, [_DK(p) for p in path])[method_name]
      value = node[i]
      prefix = ((_SK(1),) + tuple(_DK(p) for p in path) +
                (_DK(method_name), _SK(i)))
      base = _numbered(_method_base(path, method_name), i,
                       calls[(path, method_name)])
      owner = (path, method_name)
    for leaf in _split_value(base, prefix, value, batch):
      candidates.append((leaf, owner))
  for leaf in _split_value(OUTPUT, (_SK(0),), out, batch):
    candidates.append((leaf, None))
  copies = _output_copies([leaf for leaf, _ in candidates], closed.jaxpr,
                          (out, inter))
  return _finish_linen_plan(candidates, copies, layer_filter)


def _finish_linen_plan(candidates, copies, layer_filter) -> _LinenPlan:
  leaves = [leaf for leaf, _ in candidates]
  if not leaves:
    raise ValueError("the model produced no activations (no layer returned an "
                     "array with the batch axis first)")
  chosen = set(_select_listed(leaves, copies, layer_filter))
  methods = collections.defaultdict(set)
  selected = []
  for leaf, owner in candidates:
    if leaf in chosen:
      selected.append(leaf)
      if owner is not None:
        methods[owner[0]].add(owner[1])
  return _LinenPlan(tuple(selected),
                    {p: frozenset(m) for p, m in methods.items()})


# ----------------------------------------------------------------------------
# Flax NNX.
# ----------------------------------------------------------------------------


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


def nnx(model: Any, *, layers: LayerFilter = None,
        ensemble: bool = False, filter: LayerFilter = None) -> Activations:
  """Activations of a Flax NNX module, via `flax.nnx.capture`.

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
  layers = _layers_argument(layers, filter)
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
      members = ensemble_size(state, "the model's state")
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
  log = _LayerLog()

  def apply(state, images):
    cache_key = _cache_key(state, images)
    if cache_key not in plans:
      plans[cache_key] = _plan_nnx(run, state, images, layers)
    log.note(plans[cache_key])
    return _gather(plans[cache_key], run(state, images))

  key = ("nnx", graphdef, _filter_key(layers))
  n_params = _size(flax_nnx.state(model, flax_nnx.Param))
  if stacked_module:
    n_params //= members   # The stacked module holds all K members'.
  description = f"flax.nnx {type(model).__name__}, {n_params:,} parameters"
  if members:
    description += f" each, ensemble of {members}"
  return Activations(apply=apply, params=state, key=_hashable_or_fresh(key),
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
  ensemble_size(state, "the modules' states", len(models))
  return graphdef, state, models


def _plan_nnx(run, state, images, layer_filter) -> tuple[_Leaf, ...]:
  """Names every captured array and sorts them by where they were computed."""
  closed, shapes = jax.make_jaxpr(run, return_shape=True)(
      _abstract(state), _abstract(images))
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  position = _producer_positions(closed.jaxpr)
  where = {jax.tree_util.keystr(path): position(var)
           for (path, _), var in zip(flat, closed.jaxpr.outvars)}

  out, calls, sown = shapes
  batch = images.shape[0]
  candidates = []  # (sort key, leaf)

  def add(base, prefix, value, depth, kind):
    for leaf in _split_value(base, prefix, value, batch):
      rank = (kind == "output", where[jax.tree_util.keystr(leaf.keys)], -depth,
              kind == "call", len(candidates))
      candidates.append((rank, leaf))

  def walk(tree, source, path):
    for key, node in tree.items():
      if isinstance(node, Mapping):  # A submodule.
        walk(node, source, path + (key,))
        continue
      prefix = (_SK(source),) + tuple(_DK(p) for p in path) + (_DK(key),)
      if source == 1:
        if not path and key == "__call__":
          continue  # The root call is "output", taken from the return value.
        base = _method_base(path, key)
      else:
        base = "/".join(str(p) for p in path + (key,))
      kind = "call" if source == 1 else "sow"
      if isinstance(node, tuple):
        for i, value in enumerate(node):
          add(_numbered(base, i, len(node)), prefix + (_SK(i),), value,
              len(path), kind)
      else:
        add(base, prefix, node, len(path), kind)

  walk(calls, 1, ())
  walk(sown, 2, ())
  add(OUTPUT, (_SK(0),), out, 0, "output")
  if not candidates:
    raise ValueError("the model produced no activations (no layer returned an "
                     "array with the batch axis first)")
  leaves = [leaf for _, leaf in sorted(candidates, key=lambda c: c[0])]
  copies = _output_copies(leaves, closed.jaxpr, shapes)
  return tuple(_select_listed(leaves, copies, layer_filter))


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
