"""Naming the leaves of captured values: shared by `capture_linen` and
`capture_nnx` (the naming rules are in `capture`'s docstring)."""

from __future__ import annotations

import collections
from typing import Any, Hashable, NamedTuple, Sequence

import jax
import jax.extend as jex

from invjax._src import capture as core

DK = jax.tree_util.DictKey
SK = jax.tree_util.SequenceKey


class Leaf(NamedTuple):
  """One named activation: where to find it in a pytree of results."""
  name: str
  keys: tuple[Any, ...]  # jax key entries from the root of the result tree.
  shape: tuple[int, ...] = ()  # per sample, without the batch axis


def key_text(k: Any) -> str:
  # DictKey and FlattenedIndexKey, SequenceKey, GetAttrKey.
  for attr in ("key", "idx", "name"):
    if hasattr(k, attr):
      return str(getattr(k, attr))
  return str(k)


def follow(tree: Any, keys: Sequence[Any]) -> Any:
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


def split_value(base: str, prefix: tuple[Any, ...], value: Any,
                batch: int) -> list[Leaf]:
  """Names the batched array leaves of one captured value (see module doc)."""
  leaves = []
  for path, leaf in jax.tree_util.tree_flatten_with_path(value)[0]:
    shape = getattr(leaf, "shape", None)
    # Only (B, ...) arrays are activations in the engine's sense.
    if shape is None or len(shape) < 1 or shape[0] != batch:
      continue
    suffix = "".join(f"[{key_text(k)}]" for k in path)
    leaves.append(Leaf(base + suffix, prefix + tuple(path),
                       tuple(shape[1:])))
  return leaves


def abstract(tree: Any) -> Any:
  """Shape-only stand-ins, so tracing a plan never captures outer tracers."""
  def one(x):
    if hasattr(x, "shape") and hasattr(x, "dtype"):
      return jax.ShapeDtypeStruct(x.shape, x.dtype)
    return x
  return jax.tree.map(one, tree)


def cache_key(params: Any, images: Any) -> Hashable:
  # The set of layers can depend on the input shape (and, in principle, on the
  # parameter structure), never on values.
  shapes = tuple(getattr(x, "shape", None) for x in jax.tree.leaves(params))
  return (tuple(images.shape), str(images.dtype), jax.tree.structure(params),
          shapes)


def check_unique(leaves: Sequence[Leaf]) -> None:
  seen = set()
  for leaf in leaves:
    if leaf.name in seen:
      raise ValueError(f"two activations would both be named {leaf.name!r}")
    seen.add(leaf.name)


def gather(selected: Sequence[Leaf], tree: Any) -> "collections.OrderedDict":
  return collections.OrderedDict(
      (leaf.name, follow(tree, leaf.keys)) for leaf in selected)


def is_public_method(name: str) -> bool:
  # nnx.capture's rule for method_outputs: __call__ and names without "_".
  return name == "__call__" or not name.startswith("_")


def method_base(path: tuple[Any, ...], method: str) -> str:
  base = "/".join(str(p) for p in path)
  if method == "__call__":
    return base
  return f"{base}.{method}" if base else method


def numbered(base: str, index: int, count: int) -> str:
  return base if count == 1 else f"{base}.{index}"


def output_copies(leaves: Sequence[Leaf], jaxpr, shapes: Any) -> frozenset:
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
    if var in seen and leaf.keys[:1] == (SK(0),):
      copies.add(leaf)
    seen.add(var)
  return frozenset(copies)


def select_listed(leaves: Sequence[Leaf], copies: frozenset,
                  layer_filter: core.LayerFilter) -> list[Leaf]:
  """`select_layers` over the listed leaves; named filters may ask for
  copies.

  A copy of an earlier value (see `output_copies`) is not listed, so without
  a filter, with a predicate and in `Activations.layer_names` it is absent; a
  filter that names it (``layers="output"``) still gets it, so the network
  output can be asked for without knowing the last layer's name.

  Returns:
    The selected leaves, in the order of ``leaves``.
  """
  listed = [leaf for leaf in leaves if leaf not in copies]
  check_unique(listed)
  taken = {leaf.name for leaf in listed}
  by_name = layer_filter is not None and not callable(layer_filter)
  if by_name:
    # A submodule named "output" that is the output keeps its own entry.
    listed = [leaf for leaf in leaves
              if leaf not in copies or leaf.name not in taken]
  chosen = set(core.select_layers([leaf.name for leaf in listed], layer_filter))
  return [leaf for leaf in listed if leaf.name in chosen]
