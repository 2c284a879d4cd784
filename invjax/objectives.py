"""Differentiable invariance objectives to add to a training loss.

* `invariance_error`: the orbit spread of a network's logits (or the
  generalized JSD of its predictive distributions), Moskalev et al.'s
  invariance-error regularizer: train with ``CE + λ·invariance_error``.
* `nv_penalty`: the normalized variance of one hidden layer on a batch.
* `orbit_logits`: the (B, |G|, K) logits of every orbit element.

Both objectives take the tree you differentiate: for Linen models the raw
``variables['params']`` (`nv_penalty` also accepts the whole variables dict).
"""

from invjax._src.objectives import invariance_error
from invjax._src.objectives import nv_penalty
from invjax._src.objectives import orbit_logits

__all__ = (
    "invariance_error",
    "nv_penalty",
    "orbit_logits",
)
