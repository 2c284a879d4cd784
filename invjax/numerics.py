"""Division and square root that stay finite, and differentiable, at zero.

`safe_divide` states what x/0 and 0/0 are (keyword-required, so every caller
says which rule it follows); `tmeasures_divide` is tmeasures' rule (0/0 → 1,
x/0 → +inf; Quiroga et al. 2018), which the ratio measures of
`invjax.measures` use; `np_safe_divide` is `safe_divide` in NumPy for host
float64 arrays; `safe_sqrt` has a zero, not infinite, gradient at 0. See
`invjax._src.numerics` for the rules.
"""

from invjax._src.numerics import np_safe_divide
from invjax._src.numerics import safe_divide
from invjax._src.numerics import safe_sqrt
from invjax._src.numerics import tmeasures_divide

__all__ = (
    "np_safe_divide",
    "safe_divide",
    "safe_sqrt",
    "tmeasures_divide",
)
