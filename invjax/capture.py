"""Whole-network activations: Linen, NNX and plain callables as one type.

A layer is a module's method output or a value sown into the intermediates
(``relu`` and ``max_pool`` are functions, captured only when sown); see
`linen` and `nnx` for exactly what is captured, and `invjax._src.capture` for
naming and ordering rules.
"""

from invjax._src.capture import Activations
from invjax._src.capture_callable import as_activations
from invjax._src.capture_callable import from_callable
from invjax._src.capture_callable import function
from invjax._src.capture import select_layers
from invjax._src.capture_linen import linen
from invjax._src.capture_nnx import nnx

__all__ = (
    "Activations",
    "as_activations",
    "from_callable",
    "function",
    "linen",
    "nnx",
    "select_layers",
)
