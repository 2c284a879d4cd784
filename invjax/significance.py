"""Per-layer significance tests between two groups of results (random seeds).

    plain = [invjax.load_result(f"plain_{s}.npz") for s in range(5)]
    aug = [invjax.load_result(f"aug_{s}.npz") for s in range(5)]
    table = invjax.significance.compare_layers(aug, plain, test="welch")
    table["conv1"]["pvalue"], table["conv1"]["significant"]
    invjax.significance.layer_values(aug, aug[0].layers)  # {layer: (S,)}

`compare_layers` tests, layer by layer, whether the two groups' means differ
(Welch's t or Tukey HSD, via scipy); `invjax.plot.seed_spread(...,
mark_significant=True)` stars the layers where it finds they do.

See `invjax._src.compare` for the details.
"""

from invjax._src.compare import compare_layers
from invjax._src.compare import layer_values

__all__ = (
    "compare_layers",
    "layer_values",
)
