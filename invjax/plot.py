"""Figures of `MeasureResult`s and of sweep tables (matplotlib).

    fig = invjax.plot.heatmap(result)                  # every unit, every layer
    lo, hi = invjax.plot.shared_scale([r0, r1])        # one colour scale
    fig = invjax.plot.heatmap(r1, label="augmented", vmin=lo, vmax=hi)
    fig = invjax.plot.layer_curves({"plain": r0, "augmented": r1})
    fig = invjax.plot.seed_spread({"plain": [...], "augmented": [...]},
                                  mark_significant=True)
    fig.savefig("nv.png")
    table = invjax.sweep.load("runs/my_sweep")         # a sweep's tidy table
    fig = invjax.plot.sweep_spread(table, over="seed", facet="transform")

The per-layer significance test behind ``mark_significant``,
`compare_layers`, is in `invjax.significance` (``invjax.plot.compare_layers``
still works, with a `DeprecationWarning`).

See `invjax._src.plot` and `invjax._src.plot_sweep` for the details.
"""

from invjax._src import deprecation
from invjax._src.plot import heatmap
from invjax._src.plot import heatmap_matrix
from invjax._src.plot import layer_curves
from invjax._src.plot import nonfinite_counts
from invjax._src.plot import relative_depth
from invjax._src.plot import seed_spread
from invjax._src.plot import shared_scale
from invjax._src.plot_sweep import sweep_curves
from invjax._src.plot_sweep import sweep_spread

__all__ = (
    "heatmap",
    "heatmap_matrix",
    "layer_curves",
    "nonfinite_counts",
    "relative_depth",
    "seed_spread",
    "shared_scale",
    "sweep_curves",
    "sweep_spread",
)

__getattr__ = deprecation.moved(
    __name__, {"compare_layers": ("invjax.significance", "compare_layers")})
