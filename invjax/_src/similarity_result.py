"""CKA and STIR values as a `MeasureResult`, to save, plot and tabulate.

CKA and STIR compare two representations of the same inputs, so they are
not streamed `Measure`s of one network's layers under a transformation set
(see `invjax._src.cka_streaming` and `invjax._src.stir` for why). Their
numbers still belong with every other result: `as_result` wraps a set of
named values, e.g. one per model pair, as a `MeasureResult` whose "layers"
are those names, so it saves and loads (`MeasureResult.save`,
`invjax.load_result`), plots (`invjax.plot.layer_curves`) and goes into a
sweep's results table (one row per name) like any measure's.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from invjax._src.result import MeasureResult


def as_result(measure: str, values: Mapping[str, Any], *,
              settings: Mapping[str, Any] | None = None) -> MeasureResult:
  """A `MeasureResult` of named similarity values.

  Args:
    measure: the name recorded, e.g. ``"stir"`` or ``"linear_cka"``.
    values: {name: value}: a scalar (a CKA, a STIR) or an array (e.g. one
      value per layer) per entry; names such as ``"resnet|vgg"`` for pairs.
      Their order is the result's layer order.
    settings: recorded with the result (e.g. the similarity, the number of
      samples, the models' seeds).

  Returns:
    A `MeasureResult` with one "layer" per name; ``per_layer[name]`` is the
    value (the mean of its finite entries for an array).

  Raises:
    ValueError: no values, a name that is not a non-empty string, or a
      value that is not real numbers.
  """
  if not values:
    raise ValueError("as_result needs at least one value")
  outputs = {}
  for name, v in values.items():
    if not isinstance(name, str) or not name:
      raise ValueError(f"value names must be non-empty strings, got {name!r}")
    a = np.asarray(v)
    if not (np.issubdtype(a.dtype, np.floating) or
            np.issubdtype(a.dtype, np.integer)):
      raise ValueError(f"value {name!r} must be real numbers, got dtype "
                       f"{a.dtype}")
    outputs[name] = {"values": a}
  return MeasureResult.from_outputs(measure, dict(settings or {}), outputs)
