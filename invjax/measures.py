"""Invariance and equivariance measures: each a `Measure` of pure functions.

Every measure here can be streamed over a dataset with `invjax.measure` or
evaluated on one in-memory (B, T, ...) block by calling it.
"""

from invjax._src.base import Block
from invjax._src.base import LayerSpec
from invjax._src.base import Measure
from invjax._src.base import Requirements
from invjax._src.lie import layerwise_lie_derivative
from invjax._src.lie import LayerwiseLieDerivative
from invjax._src.lie import lie_derivative
from invjax._src.lie import LieDerivative
from invjax._src.lie import linen_sequential_layers
from invjax._src.measures.anova import anova
from invjax._src.measures.anova import anova_f
from invjax._src.measures.distance import distance_invariance
from invjax._src.measures.distance import distance_same_equivariance
from invjax._src.measures.distance import normalized_distance
from invjax._src.measures.distance import sample_distance
from invjax._src.measures.distance import transformation_distance
from invjax._src.measures.geed import geed
from invjax._src.measures.goodfellow import goodfellow
from invjax._src.measures.genuine import aligned_saliency
from invjax._src.measures.genuine import logit_invariance
from invjax._src.measures.genuine import predictive_invariance
from invjax._src.measures.genuine import saliency_invariance
from invjax._src.measures.genuine import saliency_invariance_dataset
from invjax._src.measures.variance import normalized_variance
from invjax._src.measures.variance import normalized_variance_same_equivariance
from invjax._src.measures.variance import sample_variance
from invjax._src.measures.variance import sample_variance_same_equivariance
from invjax._src.measures.variance import transformation_variance
from invjax._src.measures.variance import transformation_variance_same_equivariance
from invjax._src.stats import safe_divide

__all__ = (
    "Block",
    "LayerSpec",
    "LayerwiseLieDerivative",
    "LieDerivative",
    "Measure",
    "Requirements",
    "aligned_saliency",
    "anova",
    "anova_f",
    "distance_invariance",
    "distance_same_equivariance",
    "geed",
    "goodfellow",
    "layerwise_lie_derivative",
    "lie_derivative",
    "linen_sequential_layers",
    "logit_invariance",
    "normalized_distance",
    "normalized_variance",
    "normalized_variance_same_equivariance",
    "predictive_invariance",
    "safe_divide",
    "sample_distance",
    "saliency_invariance",
    "saliency_invariance_dataset",
    "sample_variance",
    "sample_variance_same_equivariance",
    "transformation_distance",
    "transformation_variance",
    "transformation_variance_same_equivariance",
)
