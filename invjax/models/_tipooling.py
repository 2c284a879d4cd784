"""Transformation-invariant pooling (Laptev et al., 2016), as in the paper.

TI-pooling runs one shared (siamese) feature branch on every transformed copy
``t(x)`` of the input and keeps, per feature, the maximum over the
transformation set; for a transformation *group* the pooled features are then
exactly invariant. Quiroga et al. use it as an invariant-by-design baseline
(TIPoolingSimpleConv; `tmeasures.md` section 4).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from invjax.models import _layers

Array = jax.Array


def apply_transformations(transformations: Any, images: Array) -> Array:
  """Applies a transformation set to a batch: ``(B,H,W,C) -> (B,T,H,W,C)``.

  Args:
    transformations: an `invjax.transforms` set (anything with an
      ``orbit(images) -> (B, T, H, W, C)`` method) or any callable with
      that signature.
    images: ``(B, H, W, C)`` batch.

  Returns:
    The transformed copies, transformation axis second.
  """
  if hasattr(transformations, "orbit"):
    out = transformations.orbit(images)
  elif callable(transformations):
    out = transformations(images)
  else:
    raise TypeError("transformations must have orbit(images) or be "
                    f"callable; got {type(transformations).__name__}.")
  if out.ndim != images.ndim + 1 or out.shape[0] != images.shape[0]:
    raise ValueError(f"Transformations mapped {images.shape} to {out.shape}; "
                     "expected (B, T, H, W, C).")
  return out


class TransformationMaxPool(nn.Module):
  """Max over the transformation axis: ``(B, T, ...) -> (B, ...)``."""

  @nn.compact
  def __call__(self, x: Array) -> Array:
    return jnp.max(x, axis=1)


class TIPooling(nn.Module):
  """A feature branch shared over a transformation set, max-pooled, classified.

  ``logits = head(max_t flatten(branch(t(x))))`` with head = ``fc1`` (+
  ``fc1_bn``), ``fc1_act``, ``logits``, as the paper's TIPoolingSimpleConv.
  Use ``SimpleConv(features_only=True)`` as the branch for that model.

  Captured layers: the branch's layers under ``branch/...`` with a leading
  axis of size ``B * T`` (sample-major: row ``b * T + t`` is ``t(x_b)``),
  ``ti_pool`` (the pooled ``(B, F)`` features), then the head.

  Attributes:
    branch: a Linen module mapping ``(N, H, W, C)`` to features, called with
      the ``train`` keyword.
    transformations: see `apply_transformations`. It is applied inside the
      model, so it must be traceable (a JAX function of the images).
    num_classes: output logits.
    fc: hidden units of the head.
    activation: head activation (ELU in the paper).
    batch_norm: batch norm in the head.
  """
  branch: nn.Module
  transformations: Any
  num_classes: int = 10
  fc: int = 128
  activation: str = "elu"
  batch_norm: bool = False

  @nn.compact
  def __call__(self, x: Array, *, train: bool = False) -> Array:
    xt = apply_transformations(self.transformations, x)
    b, t = xt.shape[:2]
    features = self.branch(xt.reshape((b * t,) + xt.shape[2:]), train=train)
    features = features.reshape((b, t, -1))
    x = TransformationMaxPool(name="ti_pool")(features)
    x = nn.Dense(self.fc, name="fc1")(x)
    if self.batch_norm:
      x = _layers.batch_norm("fc1_bn", train)(x)
    x = _layers.Activation(self.activation, name="fc1_act")(x)
    return nn.Dense(self.num_classes, name="logits")(x)
