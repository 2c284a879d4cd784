"""Per-layer significance tests between two groups of results (random seeds).

Training the same architecture under two settings (say, with and without
rotation augmentation) with several random seeds each gives, for every layer,
two small samples of per-layer values. `compare_layers` tests, layer by layer,
whether their means differ:

* ``test="welch"``: Welch's unequal-variance t-test,

      t = (x̄_a − x̄_b) / √(s_a²/n_a + s_b²/n_b),

  with the Welch–Satterthwaite degrees of freedom and a two-sided p-value
  (Welch, Biometrika 1947; `scipy.stats.ttest_ind(equal_var=False)`).
* ``test="tukey"``: Tukey's honestly significant difference test on the two
  groups (`scipy.stats.tukey_hsd`); with two groups it reduces to a pooled-
  variance comparison whose statistic is the mean difference x̄_a − x̄_b.

No correction for testing many layers is applied; divide ``alpha`` by the
number of layers for a Bonferroni correction.

scipy is imported only when a test runs (it is a dependency of jax anyway).
"""

from __future__ import annotations

from typing import Sequence
import warnings

import numpy as np

from invjax._src.result import MeasureResult

_TESTS = ("welch", "tukey")


def _as_results(group, name: str) -> list[MeasureResult]:
  if isinstance(group, MeasureResult):
    group = [group]
  group = list(group)
  if not group:
    raise ValueError(f"{name} is empty; pass a list of MeasureResults "
                     "(one per random seed)")
  for r in group:
    if not isinstance(r, MeasureResult):
      raise ValueError(f"{name} must hold MeasureResults, got "
                       f"{type(r).__name__}")
  return group


def layer_values(results: Sequence[MeasureResult],
                 layers: Sequence[str]) -> dict[str, np.ndarray]:
  """{layer: (S,) per-layer values over the S results, non-finite dropped}."""
  out = {}
  for layer in layers:
    v = np.array([r.per_layer[layer] for r in results if layer in r.per_layer],
                 np.float64)
    out[layer] = v[np.isfinite(v)]
  return out


def compare_layers(a: Sequence[MeasureResult], b: Sequence[MeasureResult], *,
                   test: str = "welch", alpha: float = 0.05,
                   layers: Sequence[str] | None = None) -> dict[str, dict]:
  """Tests, layer by layer, whether two groups of results differ in the mean.

  Args:
    a: MeasureResults of group A, e.g. one per random seed.
    b: MeasureResults of group B.
    test: ``"welch"`` (Welch's t, two-sided) or ``"tukey"`` (Tukey HSD).
    alpha: significance level; ``significant`` is ``pvalue < alpha``.
    layers: the layers to test; default every layer present in all results
      of both groups, in the execution order of ``a[0]``.

  Returns:
    {layer: {"statistic", "pvalue", "mean_a", "mean_b", "n_a", "n_b",
    "significant"}}. Non-finite per-layer values (a layer whose every unit
    was skipped) are left out of the samples. A layer with fewer than two
    finite values in a group, or with zero variance in both groups, gets
    statistic and p-value NaN and ``significant=False``.

  Raises:
    ValueError: on an unknown test, an alpha outside (0, 1), empty groups or
      a requested layer missing from some result.
  """
  if test not in _TESTS:
    raise ValueError(f"test must be one of {_TESTS}, got {test!r}")
  if not 0.0 < alpha < 1.0:
    raise ValueError(f"alpha must be in (0, 1), got {alpha}")
  a, b = _as_results(a, "a"), _as_results(b, "b")
  everyone = a + b
  if layers is None:
    layers = [l for l in a[0].layers
              if all(l in r.per_layer for r in everyone)]
    if not layers:
      raise ValueError("the two groups share no layer names")
  else:
    for l in layers:
      if not all(l in r.per_layer for r in everyone):
        raise ValueError(f"layer {l!r} is missing from some results")
  from scipy import stats  # pylint: disable=g-import-not-at-top

  va, vb = layer_values(a, layers), layer_values(b, layers)
  out = {}
  for layer in layers:
    xa, xb = va[layer], vb[layer]
    stat = pvalue = float("nan")
    degenerate = (xa.size < 2 or xb.size < 2 or
                  (np.ptp(xa) == 0 and np.ptp(xb) == 0))
    if not degenerate:
      with warnings.catch_warnings():
        # scipy warns on near-constant samples; the NaN result says enough.
        warnings.simplefilter("ignore", RuntimeWarning)
        if test == "welch":
          res = stats.ttest_ind(xa, xb, equal_var=False)
          stat, pvalue = float(res.statistic), float(res.pvalue)
        else:
          res = stats.tukey_hsd(xa, xb)
          stat, pvalue = float(res.statistic[0, 1]), float(res.pvalue[0, 1])
    out[layer] = {
        "statistic": stat,
        "pvalue": pvalue,
        "mean_a": float(xa.mean()) if xa.size else float("nan"),
        "mean_b": float(xb.mean()) if xb.size else float("nan"),
        "n_a": int(xa.size),
        "n_b": int(xb.size),
        "significant": bool(np.isfinite(pvalue) and pvalue < alpha),
    }
  return out
