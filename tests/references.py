"""Float64 NumPy references shared by several test modules."""

import numpy as np


def linear_cka(x, y):
  """Linear CKA of two (n, ...) activations from their n × n Gram matrices,
  centred by H = I − 11ᵀ/n (Kornblith et al., 2019), in float64."""
  x = np.asarray(x, np.float64).reshape(len(x), -1)
  y = np.asarray(y, np.float64).reshape(len(y), -1)
  h = np.eye(len(x)) - 1.0 / len(x)
  kx, ky = h @ x @ x.T @ h, h @ y @ y.T @ h
  return (kx * ky).sum() / np.sqrt((kx * kx).sum() * (ky * ky).sum())
