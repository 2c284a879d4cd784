"""MeasureResult: per-activation, per-feature-map and per-layer values.

Aggregation rules (documented in the README):
* per activation: the measure's ``values``, shaped like one activation.
* per feature map (layers with spatial axes, channels last): the mean over all
  axes but the last. For ratio measures (those returning ``numerator`` and
  ``denominator``) it is the *ratio of spatial means*, safe-divided, as
  tmeasures' ``AverageFeatureMaps``. Layers without spatial axes use the
  per-activation values.
* per layer: the mean of the per-feature-map values over *finite* entries;
  ``nonfinite_skipped[layer]`` says how many were left out (NaN if all were).
* ``zero_division[layer]``: how many activations had a denominator ≤ 0 (or
  ≤ the measure's ``zero_tolerance``) and so took the safe-divide rule
  (0/0 → 1, x/0 → inf).
* ``nonfinite_samples[layer]``: samples left out of the layer's statistics
  because one of their activations there was NaN or inf (`invjax.measure`).
* a layer whose per-feature-map values are all non-finite gets a note
  saying so (its ``per_layer`` is NaN).
* stratified runs: a class too small for the measure's statistics (e.g. one
  sample) stays in ``per_class`` but is left out of the class average, with
  a note.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping
import zipfile
import zlib

import numpy as np

from invjax._src import files
from invjax._src import numerics

_FORMAT = "invjax.MeasureResult/1"


def _fm_mean(a: np.ndarray) -> np.ndarray:
  return a.mean(axis=tuple(range(a.ndim - 1))) if a.ndim >= 2 else a


def _safe_divide(num: np.ndarray, den: np.ndarray,
                 tol: float) -> np.ndarray:
  # The ratio measures' own rule (`stats.safe_divide`, tmeasures: 0/0 → 1),
  # so per-feature-map ratios agree with per-activation ones; float64 on host.
  return numerics.np_safe_divide(num, den, zero_over_zero=1.0,
                                 zero_tolerance=tol)


@dataclasses.dataclass
class MeasureResult:
  """The result of one measure over every tapped layer.

  Attributes:
    measure: the measure's name.
    settings: its settings plus the run's (transformations, sample count, ...).
    layers: layer names, in execution order.
    per_activation: {layer: array shaped like one activation}.
    per_feature_map: {layer: (C,) for spatial layers, else per-activation}.
    per_layer: {layer: float}, the finite mean of ``per_feature_map``.
    extras: {layer: {name: array}}, other finalize outputs (e.g. TV and SV
      of NV as ``numerator`` and ``denominator``).
    zero_division: {layer: int}, activations that hit the safe-divide rule.
    nonfinite_skipped: {layer: int}, entries left out of ``per_layer``.
    notes: {layer: str}, e.g. why a layer was skipped.
    per_class: {label: MeasureResult} for stratified runs, else None; the
      top-level values are then the mean over classes.
    nonfinite_samples: {layer: int}, samples left out of the layer's
      statistics for non-finite activations (a sample counts once).
  """
  measure: str
  settings: dict[str, Any]
  layers: list[str]
  per_activation: dict[str, np.ndarray]
  per_feature_map: dict[str, np.ndarray]
  per_layer: dict[str, float]
  extras: dict[str, dict[str, np.ndarray]]
  zero_division: dict[str, int]
  nonfinite_skipped: dict[str, int]
  notes: dict[str, str] = dataclasses.field(default_factory=dict)
  per_class: dict[int, "MeasureResult"] | None = None
  nonfinite_samples: dict[str, int] = dataclasses.field(default_factory=dict)

  @classmethod
  def from_outputs(cls, measure: str, settings: Mapping[str, Any],
                   outputs: Mapping[str, Mapping[str, Any]],
                   notes: Mapping[str, str] | None = None) -> "MeasureResult":
    """Aggregates finalize outputs {layer: {"values": ..., ...}}."""
    per_act, per_fm, per_layer, extras, zdiv, skipped = {}, {}, {}, {}, {}, {}
    tol = float(settings.get("zero_tolerance", 0.0))
    for layer, out in outputs.items():
      out = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
      values = out.pop("values")
      per_act[layer] = values
      ratio = "numerator" in out and "denominator" in out
      if ratio and values.ndim >= 2:
        per_fm[layer] = _safe_divide(_fm_mean(out["numerator"]),
                                     _fm_mean(out["denominator"]), tol)
      else:
        per_fm[layer] = _fm_mean(values)
      zdiv[layer] = int(np.sum(out["denominator"] <= tol)) if ratio else 0
      finite = np.isfinite(per_fm[layer])
      skipped[layer] = int(finite.size - finite.sum())
      per_layer[layer] = (float(per_fm[layer][finite].mean()) if finite.any()
                          else float("nan"))
      extras[layer] = out
    notes = _nonfinite_notes(per_fm, dict(notes or {}))
    return cls(measure, dict(settings), list(outputs), per_act, per_fm,
               per_layer, extras, zdiv, skipped, notes)

  def mean(self) -> float:
    """Unweighted mean of the finite per-layer values."""
    v = np.array([self.per_layer[l] for l in self.layers], np.float64)
    return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else np.nan

  def __repr__(self) -> str:
    rows = "\n".join(f"  {l}: {self.per_layer[l]:.6g}" for l in self.layers)
    return f"MeasureResult({self.measure}, per_layer=\n{rows})"

  # --- persistence: one .npz with the arrays and a JSON metadata entry -------
  def _flatten(self, prefix: str, arrays: dict[str, np.ndarray]) -> dict:
    meta = {"measure": self.measure, "settings": _jsonable(self.settings),
            "layers": self.layers, "per_layer": self.per_layer,
            "zero_division": self.zero_division,
            "nonfinite_skipped": self.nonfinite_skipped, "notes": self.notes,
            "extras": {l: list(e) for l, e in self.extras.items()},
            "nonfinite_samples": self.nonfinite_samples, "classes": None}
    for i, layer in enumerate(self.layers):
      arrays[f"{prefix}{i}/per_activation"] = self.per_activation[layer]
      arrays[f"{prefix}{i}/per_feature_map"] = self.per_feature_map[layer]
      for k, v in self.extras[layer].items():
        arrays[f"{prefix}{i}/extra/{k}"] = v
    if self.per_class is not None:
      meta["classes"] = []
      for label, res in self.per_class.items():
        meta["classes"].append(
            [_jsonable(label), res._flatten(f"{prefix}class{label}/", arrays)])
    return meta

  def save(self, path: str | os.PathLike) -> None:
    """Writes the result to ``path`` (.npz; metadata as a JSON entry).

    The file is written whole under a temporary name in the same directory
    and then renamed over ``path``, so an interrupted save leaves the
    previous file (or none), never a truncated one. ``path`` is used as
    given: no ".npz" is appended.
    """
    arrays: dict[str, np.ndarray] = {}
    meta = self._flatten("", arrays)
    meta["format"] = _FORMAT
    # ASCII bytes (json.dumps escapes the rest): a NumPy unicode string
    # would take 4 bytes a character.
    arrays["__metadata__"] = np.array(json.dumps(meta).encode("ascii"))
    # A file object, so np.savez appends no suffix to the temporary name.
    # Compressed: a result is many small arrays that deflate well.
    with files.atomic_open(path, "wb") as f:
      np.savez_compressed(f, **arrays)


def add_note(notes: dict[str, str], layer: str, note: str) -> None:
  """Appends ``note`` to the layer's notes ("; "-separated)."""
  notes[layer] = f"{notes[layer]}; {note}" if notes.get(layer) else note


def _nonfinite_notes(per_fm: Mapping[str, np.ndarray],
                     notes: dict[str, str]) -> dict[str, str]:
  for layer, v in per_fm.items():
    if v.size and not np.isfinite(v).any():
      add_note(notes, layer, (
          f"all {v.size} per-feature-map values are NaN or inf, so per_layer "
          "is NaN (e.g. a zero denominator everywhere: see zero_division)"))
  return notes


def _jsonable(x: Any) -> Any:
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if isinstance(x, (np.integer,)):
    return int(x)
  if isinstance(x, (np.floating,)):
    return float(x)
  if isinstance(x, np.bool_):   # json.dumps refuses NumPy bools.
    return bool(x)
  if isinstance(x, np.ndarray):
    return x.tolist()
  return x


def _unflatten(meta: dict, arrays: Mapping[str, np.ndarray],
               prefix: str) -> MeasureResult:
  layers = meta["layers"]
  res = MeasureResult(
      measure=meta["measure"], settings=meta["settings"], layers=layers,
      per_activation={l: arrays[f"{prefix}{i}/per_activation"]
                      for i, l in enumerate(layers)},
      per_feature_map={l: arrays[f"{prefix}{i}/per_feature_map"]
                       for i, l in enumerate(layers)},
      per_layer={l: float(meta["per_layer"][l]) for l in layers},
      extras={l: {k: arrays[f"{prefix}{i}/extra/{k}"]
                  for k in meta["extras"][l]} for i, l in enumerate(layers)},
      zero_division=dict(meta["zero_division"]),
      nonfinite_skipped=dict(meta["nonfinite_skipped"]),
      notes=dict(meta["notes"]),
      nonfinite_samples=dict(meta.get("nonfinite_samples", {})))
  if meta.get("classes") is not None:
    res.per_class = {label: _unflatten(m, arrays, f"{prefix}class{label}/")
                     for label, m in meta["classes"]}
  return res


_ZIP_STARTS = (b"PK\x03\x04", b"PK\x05\x06")   # A .npz is a zip archive.


def load_result(path: str | os.PathLike) -> MeasureResult:
  """Reads a `MeasureResult` written by `MeasureResult.save`.

  Pickled Python objects are never loaded.

  Raises:
    FileNotFoundError: there is no file at ``path``.
    ValueError: the file is empty, truncated or otherwise damaged, or not
      an invjax result (a text file, a .npy, a pickle, a .npz without
      invjax's metadata or holding pickled objects); the message names the
      file and what is wrong with it.
  """
  name = os.fspath(path)
  with open(path, "rb") as f:
    head = f.read(8)
  if not head:
    raise ValueError(f"{name} is empty, not an invjax result file (was its "
                     "save interrupted?)")
  if not head.startswith(_ZIP_STARTS):
    kind = ("a NumPy .npy array" if head.startswith(b"\x93NUMPY") else
            "a Python pickle" if head[:1] == b"\x80" else
            "not a .npz (zip) archive")
    raise ValueError(f"{name} is not an invjax result file: it is {kind}")
  pickled = None
  try:
    with np.load(path, allow_pickle=False) as data:
      arrays = {}
      for k in data.files:
        try:
          arrays[k] = data[k]
        except ValueError as e:
          if "allow_pickle" not in str(e):
            raise
          pickled = k
          break
  # What a cut or corrupted zip raises depends on where the damage is.
  except (zipfile.BadZipFile, zlib.error, EOFError, OSError, ValueError,
          KeyError) as e:
    raise ValueError(f"{name} is truncated or damaged, not a readable .npz "
                     f"({type(e).__name__}: {e})") from None
  if pickled is not None:
    raise ValueError(f"{name} is not an invjax result file: its entry "
                     f"{pickled!r} holds pickled Python objects, which are "
                     "not loaded")
  if "__metadata__" not in arrays:
    raise ValueError(f"{name} is not an invjax result file (a .npz without "
                     "invjax's metadata entry: no metadata)")
  try:
    raw = arrays["__metadata__"]
    # Bytes since the compressed format; a unicode string before.
    meta = json.loads(raw.item().decode("ascii") if raw.dtype.kind == "S"
                      else str(raw))
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{name}: its metadata entry is not JSON ({e}); not an "
                     "invjax result file, or a damaged one") from None
  fmt = meta.get("format") if isinstance(meta, dict) else None
  if fmt != _FORMAT:
    raise ValueError(f"{name}: unknown result format {fmt!r} (expected "
                     f"{_FORMAT!r})")
  try:
    return _unflatten(meta, arrays, "")
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    raise ValueError(f"{name} is damaged: its metadata and arrays do not "
                     f"match ({type(e).__name__}: {e})") from None


def average_classes(per_class: dict[int, MeasureResult],
                    excluded: Mapping[int, str] | None = None,
                    notes: Mapping[str, str] | None = None) -> MeasureResult:
  """Elementwise mean over classes of stratified results (as tmeasures).

  Per-feature-map values are the mean of the per-class per-feature-map values
  (each already a ratio of spatial means), so a ratio measure is averaged as
  ratios, never re-divided.

  Args:
    per_class: {label: result} of every class.
    excluded: {label: why} of classes left out of the mean (too small for
      the measure's statistics); they stay in ``per_class`` and every layer
      gets a note naming them.
    notes: {layer: note} of the run (e.g. skipped layers).
  """
  excluded = dict(excluded or {})
  results = [r for c, r in per_class.items() if c not in excluded]
  if not results:
    raise ValueError("every class is excluded from the class average: "
                     + "; ".join(excluded.values()))
  first = results[0]
  mean = lambda get: {l: np.mean([get(r)[l] for r in results], axis=0)
                      for l in first.layers}
  per_fm = mean(lambda r: r.per_feature_map)
  per_layer, skipped = {}, {}
  for l, v in per_fm.items():
    finite = np.isfinite(v)
    skipped[l] = int(finite.size - finite.sum())
    per_layer[l] = float(v[finite].mean()) if finite.any() else float("nan")
  extras = {l: {k: np.mean([r.extras[l][k] for r in results], axis=0)
                for k in first.extras[l]} for l in first.layers}
  zdiv = {l: int(sum(r.zero_division[l] for r in results))
          for l in first.layers}
  everyone = list(per_class.values())
  nonfinite = {l: int(sum(r.nonfinite_samples.get(l, 0) for r in everyone))
               for l in first.layers}
  notes = _nonfinite_notes(per_fm, dict(notes or {}))
  for label, why in excluded.items():
    for l in first.layers:
      add_note(notes, l, f"class {label} is left out of the class average: "
               f"{why}")
  return MeasureResult(first.measure, dict(first.settings), list(first.layers),
                       mean(lambda r: r.per_activation), per_fm, per_layer,
                       extras, zdiv, skipped, notes,
                       per_class=dict(per_class), nonfinite_samples=nonfinite)
