"""Matplotlib figures of sweep tables (`invjax.sweep.load`).

* `sweep_curves`: the per-layer value of every cell of a sweep, one curve per
  combination of swept keys, in panels by any swept key.
* `sweep_spread`: the same, as per-layer mean ± standard deviation over one
  key (random seeds), as `invjax._src.plot.seed_spread` does for results.

Like the figures of `invjax._src.plot`, whose axis and figure helpers these
share, each builds a `matplotlib.figure.Figure` without pyplot; matplotlib is
imported only when a figure is made.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from invjax._src.plot import _check_depth
from invjax._src.plot import _figure
from invjax._src.plot import _finite_or_nan
from invjax._src.plot import _format_axis

_SWEEP_NEEDS = ("cell", "result", "result_index", "measure", "layer",
                "layer_index", "relative_depth", "value")


def _swept_keys(table) -> list[str]:
  """The swept keys of a sweep table: its columns before ``cell``."""
  missing = [c for c in _SWEEP_NEEDS if c not in table.columns]
  if missing:
    raise ValueError(f"not a sweep table (invjax.sweep.load): it lacks the "
                     f"columns {missing}")
  columns = list(table.columns)
  return columns[:columns.index("cell")]


def _curve_keys(table, swept: Sequence[str], exclude: Sequence[str]
                ) -> list[str]:
  """Columns that tell curves apart: swept keys, and results when several."""
  keys = [k for k in swept if k not in exclude]
  for k in ("result", "result_index", "measure"):
    if k not in exclude and table[k].nunique(dropna=False) > 1:
      keys.append(k)
  return keys


def _curve_label(keys: Sequence[str], values: Sequence[Any]) -> str:
  return ", ".join(f"{k}={v}" for k, v in zip(keys, values)) or "all"


def _sweep_figure(table, *, facet: str | None, over: str | None, depth: str,
                  title: str | None, yscale: str, ncols: int):
  """Panels by ``facet``; a curve per other key; ± std band over ``over``."""
  _check_depth(depth)
  swept = _swept_keys(table)
  for name, key in (("facet", facet), ("over", over)):
    if key is not None and key not in table.columns:
      raise ValueError(f"{name}={key!r} is not a column of the table; its "
                       f"swept keys are {swept}")
  if facet is not None and facet == over:
    raise ValueError(f"facet and over are both {facet!r}")
  if len(table) == 0:
    raise ValueError("the sweep table is empty (no cell complete yet?)")
  panels = ([(None, table)] if facet is None else
            list(table.groupby(facet, sort=True, dropna=False)))
  ncols = max(1, min(int(ncols), len(panels)))
  nrows = -(-len(panels) // ncols)
  layers_all = list(table.sort_values("layer_index", kind="stable")
                    ["layer"].drop_duplicates())
  width = (max(5.0, 0.4 * len(layers_all) + 3.0) if depth == "index"
           else 6.0)
  fig = _figure(width * ncols, 4.0 * nrows)
  # One y axis for all panels only when they show one measure.
  one_measure = table["measure"].nunique() == 1
  axes = fig.subplots(nrows, ncols, sharey=one_measure,
                      squeeze=False).ravel()
  for i, (ax, (value, panel)) in enumerate(zip(axes, panels)):
    keys = _curve_keys(panel, swept, [k for k in (facet, over) if k])
    axis = list(panel.sort_values("layer_index", kind="stable")
                ["layer"].drop_duplicates())
    curves = ([((), panel)] if not keys else
              panel.groupby(keys, sort=True, dropna=False))
    for label_values, rows in curves:
      if not isinstance(label_values, tuple):
        label_values = (label_values,)
      _draw_sweep_curve(ax, rows, _curve_label(keys, label_values), over,
                        depth, axis)
    _format_axis(ax, depth, axis)
    ax.set_yscale(yscale)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    if facet is not None:
      ax.set_title(f"{facet}={value}")
    if i % ncols == 0 or not one_measure:
      names = sorted(panel["measure"].unique())
      ax.set_ylabel(names[0] if len(names) == 1 else
                    "value (" + ", ".join(names) + ")")
  for ax in axes[len(panels):]:
    ax.set_visible(False)
  if title is not None:
    fig.suptitle(title)
  return fig


def _draw_sweep_curve(ax, rows, label: str, over: str | None, depth: str,
                      axis: Sequence[str]) -> None:
  """One curve: the per-layer mean of ``rows`` (± std over ``over``)."""
  per_layer = rows.groupby(["layer_index", "layer"], sort=True)
  counts = per_layer["value"].size()
  if over is None and int(counts.max()) > 1:
    raise ValueError(
        f"curve {label!r} has {int(counts.max())} values per layer: the "
        "table varies in a key that is neither a facet nor a curve; use "
        "sweep_spread(table, over=KEY) to show their mean and spread")
  stats = []
  for (_, layer), g in per_layer:
    v = g["value"].to_numpy(np.float64)
    v = v[np.isfinite(v)]
    stats.append((layer, g["relative_depth"].iloc[0],
                  v.mean() if v.size else np.nan,
                  v.std(ddof=1) if v.size > 1 else 0.0))
  layers = [s[0] for s in stats]
  if depth == "relative":
    x = np.array([s[1] for s in stats], np.float64)
  else:
    where = {l: i for i, l in enumerate(axis)}
    x = np.array([where[l] for l in layers], np.float64)
  mean = np.array([s[2] for s in stats], np.float64)
  if over is not None:
    n = rows[over].nunique(dropna=False)
    label = f"{label} (n={n})"
  line, = ax.plot(x, _finite_or_nan(mean), marker="o", markersize=4,
                  linewidth=1.8, label=label)
  if over is not None:
    std = np.array([s[3] for s in stats], np.float64)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(),
                    alpha=0.2, linewidth=0)


def sweep_curves(table, *, facet: str | None = None, depth: str = "index",
                 title: str | None = None, yscale: str = "linear",
                 ncols: int = 3):
  """Per-layer values of every cell of a sweep, one panel per ``facet`` value.

  Each panel draws one curve per combination of the other swept keys (and
  per result name or measure, when the table holds several), labelled
  ``key=value, ...``: the ``value`` column (the layer's mean) against the
  layer (``depth="index"``) or the relative depth (``"relative"``).

  Args:
    table: a sweep table (`invjax.sweep.load`), or rows of one (e.g.
      ``table[table.measure == "normalized_variance"]``).
    facet: a column (usually a swept key) to split into panels; None: one.
    depth: ``"index"`` or ``"relative"``, as in `layer_curves`.
    title: the figure title.
    yscale: ``"linear"`` or ``"log"``.
    ncols: panels per row.

  Returns:
    A `matplotlib.figure.Figure`.

  Raises:
    ValueError: not a sweep table, an unknown ``facet``, or rows that would
      fall on one curve twice (use `sweep_spread` for repeated seeds).
  """
  return _sweep_figure(table, facet=facet, over=None, depth=depth,
                       title=title, yscale=yscale, ncols=ncols)


def sweep_spread(table, *, over: str = "seed", facet: str | None = None,
                 depth: str = "index", title: str | None = None,
                 yscale: str = "linear", ncols: int = 3):
  """Per-layer mean ± standard deviation over ``over`` (seeds) of a sweep.

  As `seed_spread`, from a sweep table: the cells that differ only in
  ``over`` form one curve, the mean of their values per layer, with a band
  of ± the sample standard deviation (ddof = 1; 0 for one cell), over the
  finite values; the legend gives each curve's number of cells.

  Args:
    table: a sweep table (`invjax.sweep.load`), or rows of one.
    over: the key averaged over (default ``"seed"``).
    facet: a column to split into panels; None: one panel.
    depth, title, yscale, ncols: as in `sweep_curves`.

  Returns:
    A `matplotlib.figure.Figure`.
  """
  return _sweep_figure(table, facet=facet, over=over, depth=depth,
                       title=title, yscale=yscale, ncols=ncols)
