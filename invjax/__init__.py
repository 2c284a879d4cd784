"""invjax: how invariant and equivariant is a network, layer by layer.

    import invjax
    acts = invjax.capture.linen(model, variables)
    result = invjax.measure(acts, images, invjax.transforms.rot90(),
                            invjax.measures.normalized_variance())
    result.per_layer
"""

from invjax import capture
from invjax import flows
from invjax import lie
from invjax import measures
from invjax import numerics
from invjax import objectives
from invjax import plot
from invjax import saliency
from invjax import significance
from invjax import similarity
from invjax import sweep
from invjax import train
from invjax import transforms
from invjax._src.compile_cache import enable_compile_cache
from invjax._src.engine import measure
from invjax._src.engine import measure_block
from invjax._src.result import MeasureResult
from invjax._src.result import load_result

__version__ = "0.1.0"

__all__ = (
    "MeasureResult",
    "capture",
    "enable_compile_cache",
    "flows",
    "lie",
    "load_result",
    "measure",
    "measure_block",
    "measures",
    "numerics",
    "objectives",
    "plot",
    "saliency",
    "significance",
    "similarity",
    "sweep",
    "train",
    "transforms",
)
