"""Float64 NumPy references shared by several test modules: CKA from its
explicit n × n Gram matrices and centring matrix H = I − 11ᵀ/n."""

import numpy as np


def rows(a):
  """(n, ...) -> (n, features), float64."""
  a = np.asarray(a, np.float64)
  return a.reshape(a.shape[0], -1)


def hsic_biased(k, l):
  """HSIC of two n × n Gram matrices, tr(K H L H) / (n − 1)²."""
  n = k.shape[0]
  h = np.eye(n) - np.ones((n, n)) / n
  return np.trace(k @ h @ l @ h) / (n - 1) ** 2


def cka_from_grams(k, l, hsic):
  return hsic(k, l) / np.sqrt(hsic(k, k) * hsic(l, l))


def linear_cka(x, y):
  """Linear CKA (Kornblith et al., 2019) of two (n, ...) activations."""
  x, y = rows(x), rows(y)
  return cka_from_grams(x @ x.T, y @ y.T, hsic_biased)
