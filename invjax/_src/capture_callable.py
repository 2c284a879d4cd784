"""Any network invjax accepts, as `Activations`: the one entry point.

`as_activations` takes an `Activations`, a Flax NNX module or a plain callable
``f(images) -> {name: (B, ...)}``; `function` wraps a pure ``f(params,
images)``. It sits above `capture_nnx` so that the core type in `capture` does
not import a framework adapter (no import cycle). Flax is imported lazily, so
a plain function works without it.
"""

from __future__ import annotations

import collections
import sys
import warnings
from typing import Any, Callable, Mapping

import jax

from invjax._src import capture_nnx
from invjax._src.capture import Activations
from invjax._src.capture import count_values
from invjax._src.capture import ensemble_size
from invjax._src.capture import hashable_or_fresh
from invjax._src.capture import LayerLog
from invjax._src.capture import member_abstract
from invjax._src.capture import Params

Array = jax.Array


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
    return capture_nnx.nnx(obj)
  if _is_linen_module(obj):
    raise TypeError(
        "a Flax Linen module cannot be used on its own because its weights "
        "live outside it; use invjax.capture.linen(module, variables)")
  if not callable(obj):
    raise TypeError(
        "expected an Activations, a Flax NNX module or a callable "
        f"images -> dict[str, array], got {type(obj).__name__}")
  fn = obj
  log = LayerLog()

  def apply(params, images):
    del params  # A plain callable closes over its own weights.
    out = _checked_activations(fn(images), fn)
    log.note_arrays(out)
    return out

  name = getattr(fn, "__qualname__", type(fn).__name__)
  return Activations(apply=apply, params=None,
                     key=hashable_or_fresh(("callable", fn)),
                     description=f"callable {name}", _log=log)


def from_callable(fn: Callable[[Array], Mapping[str, Array]]) -> Activations:
  """`as_activations` under a second name (deprecated: use that)."""
  warnings.warn("capture.from_callable is capture.as_activations under a "
                "second name: use as_activations", DeprecationWarning,
                stacklevel=2)
  return as_activations(fn)


def function(fn: Callable[[Params, Array], Mapping[str, Array]],
             params: Params, *, ensemble: bool = False) -> Activations:
  """Activations of a pure ``fn(params, images) -> {name: (B, ...)}``.

  Unlike a plain callable (`as_activations`), the weights come in as an
  argument, so a compiled measurement takes them as inputs (not constants)
  and can measure an ensemble: with ``ensemble=True``, ``params`` holds K
  members' parameters stacked (every leaf (K, ...)), ``fn`` still takes one
  member's, and `invjax.measure` returns one result per member, all from one
  program.

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
  log = LayerLog()

  def apply(p, images):
    out = _checked_activations(fn(p, images), fn)
    log.note_arrays(out)
    return out

  name = getattr(fn, "__qualname__", type(fn).__name__)
  one = member_abstract(params) if members else params
  description = f"function {name}, {count_values(one)}"
  if members:
    description += f" each, ensemble of {members}"
  return Activations(apply=apply, params=params,
                     key=hashable_or_fresh(("function", fn)),
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
