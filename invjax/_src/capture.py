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

Flax is imported lazily, so `as_activations` (in `capture_callable`) on a
plain function works without it.
"""

# `filter=` is the public keyword name, so it shadows the builtin here.
# pylint: disable=redefined-builtin

from __future__ import annotations

import collections
import dataclasses
import math
import warnings
from typing import Any, Callable, Hashable, Iterable, Mapping, Sequence, Union

import jax

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
  _log: "LayerLog" = dataclasses.field(default=None, repr=False)

  def __post_init__(self):
    if not callable(self.apply):
      raise TypeError(f"Activations.apply must be callable, got {self.apply!r}")
    if self.key is None:
      object.__setattr__(self, "key", _fresh_key())
    if self._log is None:
      object.__setattr__(self, "_log", LayerLog())

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
      params = member_abstract(params)
    out = jax.eval_shape(self.apply, params, example_images)
    self._log.note_arrays(out)
    return list(out)

  def __repr__(self) -> str:
    # The default dataclass repr prints every weight: hundreds of lines.
    what = self.description or count_values(self.params)
    layers = self._log.layers
    if layers is None:
      return (f"Activations({what};\n  layers: known after the first call "
              "(or .layer_names(images), which computes nothing))")
    entries = [f"{name} {tuple(shape)}" for name, shape in layers]
    return (f"Activations({what};\n  {len(layers)} layers, per-sample shapes "
            f"at the latest call:\n{_wrap_entries(entries)})")


class LayerLog:
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


def count_values(params: Any) -> str:
  """``"1,234 parameters"``, Linen's ``'params'`` collection apart."""
  if params is None:
    return "no parameters of its own"
  if isinstance(params, Mapping) and "params" in params:
    others = sorted(str(k) for k in params if k not in ("params",
                                                        "intermediates"))
    extra = f" (+ {', '.join(others)})" if others else ""
    return f"{tree_size(params['params']):,} parameters{extra}"
  return f"{tree_size(params):,} values in params"


def tree_size(tree: Any) -> int:
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


def member_abstract(tree: Any) -> Any:
  """Shape-only stand-ins for one member of stacked parameters."""
  def one(v):
    if hasattr(v, "shape") and hasattr(v, "dtype"):
      return jax.ShapeDtypeStruct(v.shape[1:], v.dtype)
    return v
  return jax.tree.map(one, tree)


def _fresh_key() -> Hashable:
  # A bare object() equals only itself: no accidental sharing of compiled code.
  return ("unique", object())


def hashable_or_fresh(key: Any) -> Hashable:
  """``key`` if it can be hashed, else a fresh key (correct, never shared)."""
  try:
    hash(key)
  except TypeError:
    return _fresh_key()
  return key


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


def layers_argument(layers: LayerFilter, filter: LayerFilter) -> LayerFilter:
  """``layers``, or the deprecated ``filter=`` that was its name here."""
  if filter is None:
    return layers
  warnings.warn("capture's filter= is now layers=, as in invjax.measure",
                DeprecationWarning, stacklevel=3)
  if layers is not None:
    raise ValueError("pass layers= only (filter= is its old name)")
  return filter


def filter_key(filter: LayerFilter) -> Hashable:
  if filter is None or isinstance(filter, str) or callable(filter):
    return filter
  return tuple(filter)
