"""Invariance and equivariance measures: each a `Measure` of pure functions.

Every measure here can be streamed over a dataset with `invjax.measure` or
evaluated on one in-memory (B, T, ...) block by calling it.

Measures that need the network rather than its activations have their own
modules: `invjax.lie` (Lie derivatives) and `invjax.saliency` (saliency
invariance); the division rules are in `invjax.numerics`. Their old names
here still work, with a `DeprecationWarning`.
"""

from invjax._src import deprecation
from invjax._src.base import Block
from invjax._src.base import LayerSpec
from invjax._src.base import Measure
from invjax._src.base import Requirements
from invjax._src.base import Unitwise
from invjax._src.measures.anova import anova
from invjax._src.measures.anova import anova_f
from invjax._src.measures.distance import distance_invariance
from invjax._src.measures.distance import distance_same_equivariance
from invjax._src.measures.distance import normalized_distance
from invjax._src.measures.distance import sample_distance
from invjax._src.measures.distance import transformation_distance
from invjax._src.measures.geed import geed
from invjax._src.measures.goodfellow import goodfellow
from invjax._src.measures.genuine import logit_invariance
from invjax._src.measures.genuine import predictive_invariance
from invjax._src.measures.variance import normalized_variance
from invjax._src.measures.variance import normalized_variance_same_equivariance
from invjax._src.measures.variance import sample_variance
from invjax._src.measures.variance import sample_variance_same_equivariance
from invjax._src.measures.variance import transformation_variance
from invjax._src.measures.variance import transformation_variance_same_equivariance

__all__ = (
    "Block",
    "LayerSpec",
    "Measure",
    "Requirements",
    "Unitwise",
    "anova",
    "anova_f",
    "distance_invariance",
    "distance_same_equivariance",
    "geed",
    "goodfellow",
    "logit_invariance",
    "normalized_distance",
    "normalized_variance",
    "normalized_variance_same_equivariance",
    "predictive_invariance",
    "sample_distance",
    "sample_variance",
    "sample_variance_same_equivariance",
    "transformation_distance",
    "transformation_variance",
    "transformation_variance_same_equivariance",
)

__getattr__ = deprecation.moved(__name__, {
    "LayerwiseLieDerivative": ("invjax.lie", "LayerwiseLieDerivative"),
    "LieDerivative": ("invjax.lie", "LieDerivative"),
    "aligned_saliency": ("invjax.saliency", "aligned_saliency"),
    "layerwise_lie_derivative": ("invjax.lie", "layerwise_lie_derivative"),
    "lie_derivative": ("invjax.lie", "lie_derivative"),
    "linen_sequential_layers": ("invjax.lie", "linen_sequential_layers"),
    "safe_divide": ("invjax.numerics", "tmeasures_divide"),
    "saliency_invariance": ("invjax.saliency", "saliency_invariance"),
    "saliency_invariance_dataset": ("invjax.saliency",
                                    "saliency_invariance_dataset"),
})
