"""Matplotlib figures of `MeasureResult`s.

* `heatmap`: every unit of every layer of one result (one column per layer);
  `shared_scale` gives heat maps meant to be compared one colour scale.
* `layer_curves`: per-layer means of several results, on a layer-name axis or
  a relative-depth axis (models of different depth side by side).
* `seed_spread`: per-layer mean ± standard deviation over random seeds, with
  optional stars where two groups differ significantly (`compare_layers`).

`sweep_curves` and `sweep_spread`, the same from a sweep's tidy table
(`invjax.sweep.load`) in panels by any swept key, are in
`invjax._src.plot_sweep`.

Every function builds a `matplotlib.figure.Figure` directly, without pyplot,
so it neither needs nor changes a global backend (it works the same in a
notebook, a script or a headless job): save it with ``fig.savefig(path)``, or
display it in Jupyter by leaving it as a cell's value. matplotlib is imported
only when a figure is made, so ``import invjax`` stays light.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from invjax._src import compare
from invjax._src.result import MeasureResult

_DEPTHS = ("index", "relative")
_BAD_COLOUR = "#ff00ff"  # magenta: outside viridis, so never a real value


def _figure(width: float, height: float):
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  return Figure(figsize=(width, height), layout="constrained")


def _check_result(result: Any, name: str = "result") -> MeasureResult:
  if not isinstance(result, MeasureResult):
    raise ValueError(f"{name} must be a MeasureResult, got "
                     f"{type(result).__name__}")
  if not result.layers:
    raise ValueError(f"{name} has no layers")
  return result


def _check_depth(depth: str) -> None:
  if depth not in _DEPTHS:
    raise ValueError(f"depth must be one of {_DEPTHS}, got {depth!r}")


def relative_depth(num_layers: int) -> np.ndarray:
  """(L,) depth of each of L layers in percent: layer i at 100·i/(L−1).

  The first layer is at 0 and the last at 100; a single layer is at 0.
  """
  if num_layers < 1:
    raise ValueError(f"num_layers must be >= 1, got {num_layers}")
  if num_layers == 1:
    return np.zeros(1)
  return 100.0 * np.arange(num_layers) / (num_layers - 1)


# --- heatmap -----------------------------------------------------------------


def _column(values_n: np.ndarray, height: int, sort: bool) -> np.ndarray:
  """One layer's units as a (height,) column: sorted, then resampled."""
  v = np.asarray(values_n, np.float64).ravel()
  if v.size == 0:
    return np.full(height, np.nan)
  if sort:
    finite = np.isfinite(v)
    # Finite values descending, then the non-finite ones at the bottom.
    v = np.concatenate([np.sort(v[finite])[::-1], v[~finite]])
  # Nearest-neighbour resampling: row r shows unit ⌊(r + ½)·n/H⌋, the unit at
  # the centre of the row's share of the layer (identity when n = H).
  idx = np.floor((np.arange(height) + 0.5) * v.size / height).astype(int)
  return v[np.minimum(idx, v.size - 1)]


def heatmap_matrix(result: MeasureResult, *, sort: bool = True,
                   max_units: int = 256) -> np.ndarray:
  """The (H, L) image that `heatmap` draws: one column per layer.

  Column l holds the per-feature-map values of ``result.layers[l]`` (the
  per-activation values, flattened, for layers without spatial axes). With
  ``sort=True`` each column is sorted descending, non-finite values last.
  Layers have different unit counts n_l, so every column is resampled by
  nearest neighbour to the common height H = min(max_l n_l, max_units):
  a layer with fewer units is stretched (each unit repeated over about
  H/n_l rows), a layer with more is subsampled evenly. Row r of a column thus
  stands for the unit at relative position (r + ½)/H of its layer.
  """
  _check_result(result)
  if int(max_units) < 1:
    raise ValueError(f"max_units must be >= 1, got {max_units}")
  sizes = [np.size(result.per_feature_map[l]) for l in result.layers]
  height = max(1, min(max(sizes), int(max_units)))
  return np.stack([_column(result.per_feature_map[l], height, sort)
                   for l in result.layers], axis=1)


def nonfinite_counts(result: MeasureResult) -> dict[str, tuple[int, int]]:
  """{layer: (non-finite units, all units)} of ``result.per_feature_map``."""
  out = {}
  for l in result.layers:
    v = np.asarray(result.per_feature_map[l])
    out[l] = (int(v.size - np.isfinite(v).sum()), int(v.size))
  return out


def shared_scale(results: Any) -> tuple[float, float]:
  """One colour scale for several heat maps: ``(vmin, vmax)``.

  Heat maps each scaled to their own range cannot be compared by colour (a
  plain and an augmented model would both span the whole colormap). This is
  the smallest and largest finite value that `heatmap` can draw, the
  per-feature-map values of every layer, over all ``results``; pass it to each
  `heatmap` as ``vmin, vmax``.

  Args:
    results: a `MeasureResult`, or a sequence or mapping (its values) of them.

  Returns:
    ``(vmin, vmax)`` as floats; ``(0.0, 1.0)`` when no value is finite.

  Examples:
    >>> import numpy as np
    >>> from invjax._src.result import MeasureResult
    >>> def nv(values):
    ...   return MeasureResult.from_outputs(
    ...       "normalized_variance", {}, {"fc": {"values": np.array(values)}})
    >>> results = {"plain": nv([0.5, 2.0]), "augmented": nv([0.1, np.inf])}
    >>> lo, hi = shared_scale(results)
    >>> lo, hi
    (0.1, 2.0)
    >>> figures = {k: heatmap(r, label=k, vmin=lo, vmax=hi)
    ...            for k, r in results.items()}
    >>> figures["augmented"].axes[0].get_title()
    'augmented — normalized_variance'
  """
  if isinstance(results, MeasureResult):
    results = [results]
  elif isinstance(results, Mapping):
    results = list(results.values())
  else:
    results = list(results)
  if not results:
    raise ValueError("shared_scale needs at least one result")
  lo, hi = np.inf, -np.inf
  for i, result in enumerate(results):
    _check_result(result, f"results[{i}]")
    for layer in result.layers:
      v = np.asarray(result.per_feature_map[layer], np.float64)
      v = v[np.isfinite(v)]
      if v.size:
        lo, hi = min(lo, float(v.min())), max(hi, float(v.max()))
  if lo > hi:
    return 0.0, 1.0
  return lo, hi


def heatmap(result: MeasureResult, *, sort: bool = True,
            max_units: int = 256, label: str | None = None,
            title: str | None = None, cmap: str = "viridis",
            vmin: float | None = None, vmax: float | None = None):
  """Heat map of every unit of every layer of one result.

  One column per layer, in execution order (``result.layers``), one row per
  feature map (spatial layers) or activation (other layers), coloured by the
  measure's value; see `heatmap_matrix` for the sorting and for how columns
  with different unit counts are resampled to a common height. The y axis is
  the unit's relative position in its layer (0 % at the top). Non-finite
  values (NaN, or inf from the x/0 rule) are drawn in magenta, and a legend
  says how many there are. For a stratified result the plot shows the mean
  over classes (the top-level values); plot ``result.per_class[c]`` for one
  class.

  Args:
    result: a `MeasureResult`.
    sort: sort each column descending (the default), which shows the
      distribution of values per layer; ``False`` keeps the unit order.
    max_units: the most rows drawn per column.
    label: what the result is of (``"augmented"``, a model name): the title
      is then ``"label — measure"``, so figures saved side by side say which
      is which.
    title: the whole title, instead of ``label`` and the measure name.
    cmap: a matplotlib colormap name.
    vmin, vmax: colour limits; default the finite minimum and maximum of this
      result's units (`shared_scale` of it alone). Give figures meant to be
      compared the same limits, from `shared_scale` of all their results.

  Returns:
    A `matplotlib.figure.Figure`.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  from matplotlib.patches import Patch  # pylint: disable=g-import-not-at-top

  image = heatmap_matrix(result, sort=sort, max_units=max_units)
  height, num_layers = image.shape
  # Over every unit, not the drawn rows: with more units than max_units the
  # subsampled rows can miss the extremes, and shared_scale must agree.
  own_min, own_max = shared_scale(result)
  vmin = own_min if vmin is None else float(vmin)
  vmax = own_max if vmax is None else float(vmax)
  colours = matplotlib.colormaps[cmap].with_extremes(bad=_BAD_COLOUR)

  fig = _figure(max(4.5, 0.45 * num_layers + 2.5), 4.8)
  ax = fig.add_subplot()
  shown = ax.imshow(np.ma.masked_invalid(image), aspect="auto",
                    interpolation="nearest", cmap=colours, vmin=vmin,
                    vmax=vmax, extent=(-0.5, num_layers - 0.5, 100.0, 0.0))
  ax.set_xticks(np.arange(num_layers))
  ax.set_xticklabels(result.layers, rotation=60, ha="right",
                     rotation_mode="anchor")
  ax.set_xlabel("layer (execution order)")
  order = "sorted descending, " if sort else ""
  ax.set_ylabel(f"units, % of layer ({order}{height} rows)")
  fig.colorbar(shown, ax=ax, label=result.measure)
  counts = nonfinite_counts(result)
  bad = sum(c for c, _ in counts.values())
  total = sum(n for _, n in counts.values())
  if bad:
    layers_hit = sum(1 for c, _ in counts.values() if c)
    # Below the axes: the non-finite cells sit at the bottom of the columns.
    fig.legend(handles=[Patch(color=_BAD_COLOUR,
                              label=f"non-finite: {bad} of {total} units "
                                    f"in {layers_hit} layer(s)")],
               loc="outside lower center", fontsize="small", frameon=False)
  if title is None:
    title = result.measure if label is None else f"{label} — {result.measure}"
  ax.set_title(title)
  return fig


# --- per-layer curves ---------------------------------------------------------


def _named(results: Any, labels: Sequence[str] | None,
           name: str) -> list[tuple[str, Any]]:
  """[(label, item)] from a dict, a list (with labels) or a single item."""
  if isinstance(results, Mapping):
    if labels is not None:
      raise ValueError(f"{name} is a dict, whose keys are the labels; "
                       "do not pass labels too")
    items = [(str(k), v) for k, v in results.items()]
  else:
    if isinstance(results, MeasureResult):
      results = [results]
    results = list(results)
    if labels is None:
      labels = [str(i) for i in range(len(results))]
    labels = [str(l) for l in labels]
    if len(labels) != len(results):
      raise ValueError(f"got {len(labels)} labels for {len(results)} {name}")
    items = list(zip(labels, results))
  if not items:
    raise ValueError(f"{name} is empty")
  return items


def _layer_axis(layer_lists: Sequence[Sequence[str]]) -> list[str]:
  """The union of layer names, in order of first appearance."""
  seen: dict[str, None] = {}
  for layers in layer_lists:
    for l in layers:
      seen.setdefault(l, None)
  return list(seen)


def _positions(layers: Sequence[str], depth: str,
               axis: Sequence[str]) -> np.ndarray:
  if depth == "relative":
    return relative_depth(len(layers))
  where = {l: i for i, l in enumerate(axis)}
  return np.array([where[l] for l in layers], np.float64)


def _format_axis(ax, depth: str, axis: Sequence[str]) -> None:
  if depth == "relative":
    ax.set_xlim(-3, 103)
    ax.set_xlabel("relative depth (% of the model's layers)")
  else:
    ax.set_xticks(np.arange(len(axis)))
    ax.set_xticklabels(axis, rotation=60, ha="right", rotation_mode="anchor")
    ax.set_xlabel("layer (execution order)")


def _ylabel(results: Sequence[MeasureResult]) -> str:
  names = sorted({r.measure for r in results})
  return names[0] if len(names) == 1 else "value (" + ", ".join(names) + ")"


def _finite_or_nan(v: np.ndarray) -> np.ndarray:
  # inf would stretch the axis to nothing; matplotlib leaves a gap at NaN.
  return np.where(np.isfinite(v), v, np.nan)


def layer_curves(results: Any, *, labels: Sequence[str] | None = None,
                 depth: str = "index", title: str | None = None,
                 per_class: bool = False, yscale: str = "linear"):
  """Per-layer mean values of several results, one curve each.

  Each curve is ``result.per_layer`` (the finite mean over a layer's units).

  Args:
    results: {label: MeasureResult}, a list of MeasureResults, or one.
    labels: curve labels for a list (default "0", "1", ...).
    depth: ``"index"``: the x axis is the layer names, in execution order
      (the union over the results, in order of first appearance), for one
      architecture under several settings (e.g. with and without
      augmentation). ``"relative"``: layer i of a model with L layers is at
      relative depth 100·i/(L−1) %, so models of different depth can share
      one axis.
    title: the figure title.
    per_class: for stratified results, also draw one thin curve per class
      beside the (thick) class mean.
    yscale: ``"linear"`` or ``"log"`` (e.g. for normalized variance).

  Returns:
    A `matplotlib.figure.Figure`. Non-finite per-layer values are not drawn
    (the curve has a gap); the legend counts them.
  """
  _check_depth(depth)
  items = _named(results, labels, "results")
  for label, r in items:
    _check_result(r, f"results[{label!r}]")
  axis = _layer_axis([r.layers for _, r in items])
  fig = _figure(max(5.0, 0.4 * len(axis) + 3.0) if depth == "index" else 6.0,
                4.2)
  ax = fig.add_subplot()
  for label, r in items:
    x = _positions(r.layers, depth, axis)
    y = np.array([r.per_layer[l] for l in r.layers], np.float64)
    bad = int((~np.isfinite(y)).sum())
    line, = ax.plot(x, _finite_or_nan(y), marker="o", markersize=4,
                    linewidth=1.8,
                    label=label + (f" ({bad} non-finite)" if bad else ""))
    if per_class and r.per_class:
      for c, rc in r.per_class.items():
        yc = np.array([rc.per_layer[l] for l in r.layers], np.float64)
        ax.plot(x, _finite_or_nan(yc), color=line.get_color(), alpha=0.35,
                linewidth=0.8, label=f"{label}, class {c}" if len(
                    r.per_class) <= 10 else None)
  _format_axis(ax, depth, axis)
  ax.set_yscale(yscale)
  ax.set_ylabel(_ylabel([r for _, r in items]))
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  if title is not None:
    ax.set_title(title)
  return fig


def seed_spread(groups: Mapping[str, Sequence[MeasureResult]], *,
                depth: str = "index", title: str | None = None,
                mark_significant: bool | tuple[str, str] | None = None,
                test: str = "welch", alpha: float = 0.05,
                yscale: str = "linear"):
  """Per-layer mean ± standard deviation over random seeds, per group.

  For each group (e.g. one training setting), the line is the mean over its
  results (seeds) of ``per_layer`` and the shaded band is ± the sample
  standard deviation (ddof = 1; 0 for a single seed), both over the finite
  values. All results of a group must have the same layers.

  Args:
    groups: {label: [MeasureResult, ...]}, several seeds per label.
    depth: ``"index"`` or ``"relative"``, as in `layer_curves`.
    title: the figure title.
    mark_significant: ``True`` (needs exactly two groups) or a pair of group
      labels: draws a star above every layer where `compare_layers` finds
      the two groups' means differ (``test``, ``alpha``).
    test: ``"welch"`` or ``"tukey"``, for ``mark_significant``.
    alpha: significance level, for ``mark_significant``.
    yscale: ``"linear"`` or ``"log"``.

  Returns:
    A `matplotlib.figure.Figure`.
  """
  _check_depth(depth)
  if not isinstance(groups, Mapping) or not groups:
    raise ValueError("groups must be a non-empty dict {label: [MeasureResult, "
                     "...]}")
  groups = {str(k): compare._as_results(v, f"groups[{k!r}]")  # pylint: disable=protected-access
            for k, v in groups.items()}
  for label, rs in groups.items():
    for r in rs:
      _check_result(r, f"a result of group {label!r}")
      if r.layers != rs[0].layers:
        raise ValueError(f"the results of group {label!r} have different "
                         "layers; a group must hold one architecture")
  pair = None
  if mark_significant is True:
    if len(groups) != 2:
      raise ValueError("mark_significant=True needs exactly two groups; pass "
                       "a pair of labels to choose two")
    pair = tuple(groups)
  elif mark_significant:
    pair = tuple(str(p) for p in mark_significant)
    if len(pair) != 2 or any(p not in groups for p in pair):
      raise ValueError(f"mark_significant must name two of the groups "
                       f"{list(groups)}, got {mark_significant!r}")

  axis = _layer_axis([rs[0].layers for rs in groups.values()])
  fig = _figure(max(5.0, 0.4 * len(axis) + 3.0) if depth == "index" else 6.0,
                4.2)
  ax = fig.add_subplot()
  tops = {}
  for label, rs in groups.items():
    layers = rs[0].layers
    x = _positions(layers, depth, axis)
    vals = compare.layer_values(rs, layers)
    mean = np.array([v.mean() if v.size else np.nan for v in vals.values()])
    std = np.array([v.std(ddof=1) if v.size > 1 else 0.0
                    for v in vals.values()])
    line, = ax.plot(x, mean, marker="o", markersize=4, linewidth=1.8,
                    label=f"{label} (n={len(rs)})")
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(),
                    alpha=0.2, linewidth=0)
    for l, xi, t in zip(layers, x, mean + std):
      tops.setdefault(l, []).append((xi, t))
  if pair is not None:
    tested = compare.compare_layers(groups[pair[0]], groups[pair[1]],
                                    test=test, alpha=alpha)
    starred = [l for l, row in tested.items() if row["significant"]]
    for l in starred:
      xi = tops[l][0][0]
      top = np.nanmax([t for _, t in tops[l]])
      ax.annotate("*", (xi, top), xytext=(0, 2), textcoords="offset points",
                  ha="center", va="bottom", fontsize=14, fontweight="bold")
    ax.plot([], [], " ", label=f"* {pair[0]} vs {pair[1]}: {test} "
            f"p < {alpha:g} ({len(starred)} of {len(tested)} layers)")
    ax.margins(y=0.12)
  _format_axis(ax, depth, axis)
  ax.set_yscale(yscale)
  ax.set_ylabel(_ylabel([r for rs in groups.values() for r in rs]))
  ax.grid(alpha=0.3)
  ax.legend(fontsize="small")
  if title is not None:
    ax.set_title(title)
  return fig
