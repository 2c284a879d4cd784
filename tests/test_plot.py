"""Tests of invjax.plot and invjax.significance, and the `invjax plot` CLI."""

import doctest
import math
import os

import numpy as np
import pytest

import invjax
from invjax import cli
from invjax import plot
from invjax import significance
from invjax._src.result import MeasureResult


def _result(values: dict, measure: str = "normalized_variance",
            shift: float = 0.0) -> MeasureResult:
  """A MeasureResult whose per-layer values are given per unit."""
  outputs = {l: {"values": np.asarray(v, np.float64) + shift}
             for l, v in values.items()}
  return MeasureResult.from_outputs(measure, {"seed": 0}, outputs)


def _cnn_like(seed: int = 0, shift: float = 0.0) -> MeasureResult:
  rng = np.random.default_rng(seed)
  return _result({
      "conv1": rng.uniform(0, 1, (6, 6, 4)),    # spatial: 4 feature maps
      "conv2": rng.uniform(0, 1, (3, 3, 10)),   # 10 feature maps
      "dense": rng.uniform(0, 1, (7,)),         # 7 units
      "logits": rng.uniform(0, 1, (3,)),
  }, shift=shift)


def _check_png(path) -> None:
  assert os.path.isfile(path)
  with open(path, "rb") as f:
    head = f.read(8)
  assert head == b"\x89PNG\r\n\x1a\n"
  assert os.path.getsize(path) > 5000  # axes, labels and pixels, not blank


def test_relative_depth():
  np.testing.assert_allclose(plot.relative_depth(5), [0, 25, 50, 75, 100])
  np.testing.assert_allclose(plot.relative_depth(1), [0])
  with pytest.raises(ValueError, match="num_layers"):
    plot.relative_depth(0)


def test_heatmap_matrix_columns_are_sorted_layers():
  r = _cnn_like()
  m = plot.heatmap_matrix(r, sort=True)
  assert m.shape == (10, 4)  # height = the largest layer, 10 feature maps
  # conv2 has exactly 10 units: its column is its values sorted descending.
  np.testing.assert_allclose(m[:, 1], np.sort(r.per_feature_map["conv2"])[::-1])
  # conv1's feature maps are spatial means; 4 units stretched over 10 rows:
  # row r shows unit floor((r + 0.5) * 4 / 10).
  fm = r.per_activation["conv1"].mean(axis=(0, 1))
  expect = np.sort(fm)[::-1][[0, 0, 1, 1, 1, 2, 2, 3, 3, 3]]
  np.testing.assert_allclose(m[:, 0], expect)
  # Unsorted keeps the unit order; max_units subsamples evenly.
  np.testing.assert_allclose(plot.heatmap_matrix(r, sort=False)[:, 1],
                             r.per_feature_map["conv2"])
  sub = plot.heatmap_matrix(r, sort=False, max_units=5)
  np.testing.assert_allclose(sub[:, 1], r.per_feature_map["conv2"][1::2])
  with pytest.raises(ValueError, match="max_units"):
    plot.heatmap_matrix(r, max_units=0)


def test_heatmap_renders_layers_in_order_and_counts_nonfinite(tmp_path):
  r = _result({
      "b_first": [0.5, np.inf, 0.1, np.nan],
      "a_second": [1.0, 2.0, 3.0],
      "c_third": [np.nan, 0.2],
  })
  assert r.layers == ["b_first", "a_second", "c_third"]
  m = plot.heatmap_matrix(r)
  # Finite values descending, then the non-finite ones at the bottom.
  np.testing.assert_allclose(m[:2, 0], [0.5, 0.1])
  assert not np.isfinite(m[2:, 0]).any()
  assert plot.nonfinite_counts(r) == {"b_first": (2, 4), "a_second": (0, 3),
                                      "c_third": (1, 2)}
  fig = plot.heatmap(r)
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_xticklabels()] == r.layers
  drawn = ax.images[0].get_array()
  assert drawn.mask.sum() == (~np.isfinite(m)).sum()
  np.testing.assert_allclose(np.ma.filled(drawn, -1), np.where(
      np.isfinite(m), m, -1))
  legend = [t.get_text() for t in fig.legends[0].get_texts()]
  assert legend == ["non-finite: 3 of 9 units in 2 layer(s)"]
  assert fig.axes[1].get_ylabel() == "normalized_variance"  # the colorbar
  fig.savefig(tmp_path / "h.png")
  _check_png(tmp_path / "h.png")
  # No legend when everything is finite.
  assert not plot.heatmap(_cnn_like()).legends


def test_heatmaps_to_compare_share_a_scale_and_say_which_is_which(tmp_path):
  plain = _result({"conv": np.full((2, 2, 3), 2.0), "fc": [0.5, 4.0, np.inf]})
  aug = _result({"conv": np.linspace(0.1, 0.2, 12).reshape(2, 2, 3),
                 "fc": [np.nan, 0.3, 1.0]})
  # Every finite per-feature-map value of both results, by hand: aug's
  # feature map c is the mean of linspace entries c, c + 3, c + 6, c + 9.
  aug_maps = [0.1 + 0.1 * (c + 4.5) / 11 for c in range(3)]
  finite = np.array([2.0, 0.5, 4.0, 0.3, 1.0] + aug_maps)
  expect = (finite.min(), finite.max())
  assert plot.shared_scale({"plain": plain, "augmented": aug}) == pytest.approx(
      expect)
  assert plot.shared_scale([aug, plain]) == pytest.approx(expect)
  assert plot.shared_scale(aug) == pytest.approx((aug_maps[0], 1.0))
  lo, hi = plot.shared_scale([plain, aug])
  for label, r in (("plain", plain), ("augmented", aug)):
    fig = plot.heatmap(r, label=label, vmin=lo, vmax=hi)
    ax = fig.axes[0]
    assert ax.get_title() == f"{label} — normalized_variance"
    assert ax.images[0].get_clim() == pytest.approx(expect)
    fig.savefig(tmp_path / f"{label}.png")
    _check_png(tmp_path / f"{label}.png")
  assert plot.heatmap(plain, label="x", title="mine").axes[0].get_title() == (
      "mine")
  with pytest.raises(ValueError, match="at least one"):
    plot.shared_scale([])
  with pytest.raises(ValueError, match="MeasureResult"):
    plot.shared_scale([plain, {"fc": [1.0]}])
  nothing = _result({"fc": [np.nan, np.inf]})
  assert plot.shared_scale(nothing) == (0.0, 1.0)


def test_shared_scale_example_runs():
  from invjax._src import plot as plot_src  # the example's namespace
  runner = doctest.DocTestRunner()
  for test in doctest.DocTestFinder(recurse=False).find(
      plot_src.shared_scale, globs=dict(vars(plot_src))):
    runner.run(test)
  outcome = runner.summarize(verbose=False)
  assert outcome.attempted >= 5 and outcome.failed == 0


def test_heatmap_default_scale_spans_every_unit():
  # 9 units drawn in 4 rows: the subsampled rows miss the extremes 0 and 8,
  # the colour scale does not.
  r = _result({"fc": np.arange(9.0)})
  fig = plot.heatmap(r, max_units=4)
  assert 0.0 not in plot.heatmap_matrix(r, max_units=4)
  assert fig.axes[0].images[0].get_clim() == (0.0, 8.0)
  assert fig.axes[0].get_title() == "normalized_variance"


def test_layer_curves_index_and_relative(tmp_path):
  plain, aug = _cnn_like(0), _cnn_like(1, shift=-0.3)
  fig = plot.layer_curves({"plain": plain, "augmented": aug}, title="NV")
  ax = fig.axes[0]
  assert [t.get_text() for t in ax.get_xticklabels()] == plain.layers
  for line, r in zip(ax.lines, (plain, aug)):
    np.testing.assert_allclose(line.get_xdata(), [0, 1, 2, 3])
    np.testing.assert_allclose(line.get_ydata(),
                               [r.per_layer[l] for l in r.layers])
  fig.savefig(tmp_path / "c.png")
  _check_png(tmp_path / "c.png")

  # Models of different depth share a 0-100 % axis: layer i of L at
  # 100 i / (L - 1).
  deep = _result({f"l{i}": np.full(3, float(i)) for i in range(6)})
  fig = plot.layer_curves([plain, deep], labels=["4 layers", "6 layers"],
                          depth="relative")
  xs = [line.get_xdata() for line in fig.axes[0].lines]
  np.testing.assert_allclose(xs[0], [0, 100 / 3, 200 / 3, 100])
  np.testing.assert_allclose(xs[1], [0, 20, 40, 60, 80, 100])
  np.testing.assert_allclose(fig.axes[0].lines[1].get_ydata(), range(6))
  fig.savefig(tmp_path / "d.png")
  _check_png(tmp_path / "d.png")

  with pytest.raises(ValueError, match="depth"):
    plot.layer_curves([plain], depth="absolute")
  with pytest.raises(ValueError, match="labels"):
    plot.layer_curves([plain, aug], labels=["one"])
  with pytest.raises(ValueError, match="MeasureResult"):
    plot.layer_curves([{"conv1": 1.0}])


def test_layer_curves_gaps_for_nonfinite_and_per_class():
  r = _result({"a": [1.0], "b": [np.nan], "c": [np.inf], "d": [2.0]})
  line = plot.layer_curves(r).axes[0].lines[0]
  np.testing.assert_allclose(line.get_ydata(), [1.0, np.nan, np.nan, 2.0])
  assert "2 non-finite" in line.get_label()
  from invjax._src.result import average_classes  # pylint: disable=g-import-not-at-top
  strat = average_classes({0: _cnn_like(0), 1: _cnn_like(1)})
  ax = plot.layer_curves({"nv": strat}, per_class=True).axes[0]
  assert len(ax.lines) == 3
  np.testing.assert_allclose(
      ax.lines[0].get_ydata(),
      [(strat.per_class[0].per_layer[l] + strat.per_class[1].per_layer[l]) / 2
       for l in strat.layers])


def _seeded(values_by_layer: dict, measure: str = "nv") -> list:
  """One result per seed; values_by_layer: {layer: [value per seed]}."""
  seeds = len(next(iter(values_by_layer.values())))
  return [_result({l: [v[s]] for l, v in values_by_layer.items()}, measure)
          for s in range(seeds)]


def _welch(xa, xb):
  """Welch's t and two-sided p by hand (Welch-Satterthwaite df)."""
  from scipy import special  # pylint: disable=g-import-not-at-top
  xa, xb = np.asarray(xa, np.float64), np.asarray(xb, np.float64)
  va, vb = xa.var(ddof=1) / xa.size, xb.var(ddof=1) / xb.size
  t = (xa.mean() - xb.mean()) / math.sqrt(va + vb)
  df = (va + vb) ** 2 / (va ** 2 / (xa.size - 1) + vb ** 2 / (xb.size - 1))
  p = special.betainc(df / 2, 0.5, df / (df + t * t))  # = 2·(1 − F_t(|t|))
  return t, p


def test_compare_layers_welch_against_hand_computation():
  a = _seeded({"clear": [1.0, 1.1, 0.9, 1.05], "same": [1.0, 2.0, 3.0, 4.0]})
  b = _seeded({"clear": [2.0, 2.2, 1.9, 2.1], "same": [1.5, 2.5, 3.5, 2.0]})
  out = significance.compare_layers(a, b, test="welch")
  assert list(out) == ["clear", "same"]
  for layer, xa, xb in (("clear", [1.0, 1.1, 0.9, 1.05], [2.0, 2.2, 1.9, 2.1]),
                        ("same", [1.0, 2.0, 3.0, 4.0], [1.5, 2.5, 3.5, 2.0])):
    t, p = _welch(xa, xb)
    assert out[layer]["statistic"] == pytest.approx(t, rel=1e-10)
    assert out[layer]["pvalue"] == pytest.approx(p, rel=1e-8)
    assert out[layer]["mean_a"] == pytest.approx(np.mean(xa))
    assert out[layer]["mean_b"] == pytest.approx(np.mean(xb))
    assert out[layer]["n_a"] == out[layer]["n_b"] == 4
  # By hand for "clear": means 1.0125 vs 2.05, s² = 0.021875/3 and 0.05/3,
  # t = −1.0375 / √((0.021875 + 0.05) / 12) = −13.4057.
  assert out["clear"]["statistic"] == pytest.approx(-13.4057, abs=1e-4)
  assert out["clear"]["significant"] and out["clear"]["pvalue"] < 1e-4
  assert not out["same"]["significant"] and out["same"]["pvalue"] > 0.5


def test_compare_layers_tukey_and_edge_cases():
  from scipy import stats  # pylint: disable=g-import-not-at-top
  xa, xb = [1.0, 1.2, 0.8], [3.0, 3.3, 2.9]
  a, b = _seeded({"x": xa}), _seeded({"x": xb})
  out = significance.compare_layers(a, b, test="tukey", alpha=0.01)["x"]
  # Two groups: Tukey's q = |d| / √(s²/n), s² pooled, studentized range
  # with k = 2 and 2n − 2 df.
  d = np.mean(xa) - np.mean(xb)
  s2 = (np.var(xa, ddof=1) + np.var(xb, ddof=1)) / 2
  q = abs(d) / math.sqrt(s2 / 3)
  assert out["statistic"] == pytest.approx(d, rel=1e-10)
  assert out["pvalue"] == pytest.approx(stats.studentized_range.sf(q, 2, 4),
                                        rel=1e-4)
  assert out["significant"]
  # Constant groups, a single seed and a NaN seed.
  const = significance.compare_layers(_seeded({"x": [1.0, 1.0]}),
                                      _seeded({"x": [2.0, 2.0]}))["x"]
  assert math.isnan(const["pvalue"]) and not const["significant"]
  one = significance.compare_layers(_seeded({"x": [1.0]}), b)["x"]
  assert math.isnan(one["statistic"]) and not one["significant"]
  nan = significance.compare_layers(
      _seeded({"x": [1.0, np.nan, 1.2, 0.8]}), b)["x"]
  assert nan["n_a"] == 3 and nan["mean_a"] == pytest.approx(1.0)
  with pytest.raises(ValueError, match="test"):
    significance.compare_layers(a, b, test="mann-whitney")
  with pytest.raises(ValueError, match="alpha"):
    significance.compare_layers(a, b, alpha=1.5)
  with pytest.raises(ValueError, match="empty"):
    significance.compare_layers([], b)
  with pytest.raises(ValueError, match="share no layer"):
    significance.compare_layers(a, _seeded({"y": [1.0, 2.0]}))


def test_compare_layers_old_path_warns_and_works():
  a = _seeded({"x": [1.0, 1.1, 0.9]})
  b = _seeded({"x": [2.0, 2.2, 1.9]})
  with pytest.warns(DeprecationWarning,
                    match=r"invjax\.significance\.compare_layers"):
    old = plot.compare_layers
  assert old is significance.compare_layers
  assert old(a, b) == significance.compare_layers(a, b)
  with pytest.warns(DeprecationWarning, match="invjax.significance"):
    # pylint: disable-next=g-import-not-at-top
    from invjax.plot import compare_layers
  assert compare_layers is significance.compare_layers
  assert "compare_layers" not in plot.__all__
  with pytest.raises(AttributeError, match="no_such_name"):
    plot.no_such_name  # pylint: disable=pointless-statement


def test_seed_spread_band_and_stars(tmp_path):
  a = _seeded({"c1": [1.0, 1.1, 0.9], "c2": [1.0, 2.0, 3.0],
               "fc": [5.0, 5.1, 4.9]})
  b = _seeded({"c1": [2.0, 2.1, 1.9], "c2": [1.5, 2.5, 2.0],
               "fc": [5.0, 5.2, 4.8]})
  fig = plot.seed_spread({"plain": a, "aug": b}, mark_significant=True)
  ax = fig.axes[0]
  np.testing.assert_allclose(ax.lines[0].get_ydata(), [1.0, 2.0, 5.0])
  band = ax.collections[0].get_paths()[0].vertices
  # The band spans mean ± sample std (ddof 1): c1 of "plain" is 1 ± 0.1.
  at_c1 = band[np.isclose(band[:, 0], 0.0), 1]
  assert at_c1.min() == pytest.approx(0.9) and at_c1.max() == pytest.approx(1.1)
  stars = [t for t in ax.texts if t.get_text() == "*"]
  assert [s.xy[0] for s in stars] == [0.0]  # only c1 differs
  assert stars[0].xy[1] == pytest.approx(2.1)  # above the upper band
  labels = [t.get_text() for t in ax.get_legend().get_texts()]
  assert "plain (n=3)" in labels
  assert any("1 of 3 layers" in l for l in labels)
  fig.savefig(tmp_path / "s.png")
  _check_png(tmp_path / "s.png")
  fig = plot.seed_spread({"plain": a, "aug": b, "x": b},
                         mark_significant=("plain", "x"), depth="relative")
  np.testing.assert_allclose(fig.axes[0].lines[0].get_xdata(), [0, 50, 100])
  with pytest.raises(ValueError, match="exactly two"):
    plot.seed_spread({"plain": a, "aug": b, "x": b}, mark_significant=True)
  with pytest.raises(ValueError, match="different layers"):
    plot.seed_spread({"mixed": [a[0], _cnn_like()]})
  with pytest.raises(ValueError, match="non-empty"):
    plot.seed_spread({})


def test_plot_from_a_real_measure_run(tmp_path):
  rng = np.random.default_rng(0)
  w = rng.normal(size=(3, 5))

  def acts(x):  # (B, 6, 6, 1) -> a spatial and a dense layer
    h = x * w[0, 0] + x ** 2
    return {"spatial": h, "dense": h.reshape(x.shape[0], -1)[:, :5] @ w.T}

  images = rng.uniform(size=(8, 6, 6, 1)).astype(np.float32)
  res = invjax.measure(acts, images, invjax.transforms.rot90(),
                       invjax.measures.normalized_variance(), batch_size=8)
  m = plot.heatmap_matrix(res)
  assert m.shape == (3, 2)
  np.testing.assert_allclose(np.sort(m[:, 1])[::-1],
                             np.sort(res.per_feature_map["dense"])[::-1])
  plot.heatmap(res).savefig(tmp_path / "real.png")
  _check_png(tmp_path / "real.png")


def test_cli_plot_end_to_end(tmp_path, capsys):
  paths = []
  for i, shift in enumerate((0.0, 0.05, -0.05, 1.0, 1.05, 0.95)):
    p = str(tmp_path / f"r{i}.npz")
    _cnn_like(0, shift=shift).save(p)
    paths.append(p)
  out = str(tmp_path / "heat.png")
  assert cli.main(["plot", paths[0], "--kind", "heatmap", "-o", out]) == 0
  _check_png(out)
  out = str(tmp_path / "curves.png")
  assert cli.main(["plot", paths[0], paths[3], "--kind", "curves",
                   "--depth", "relative", "--labels", "a", "b", "-o",
                   out]) == 0
  _check_png(out)
  out = str(tmp_path / "seeds.png")
  assert cli.main(["plot", *paths, "--kind", "seeds", "--labels", "p", "p",
                   "p", "q", "q", "q", "--mark-significant", "-o", out]) == 0
  _check_png(out)
  printed = capsys.readouterr().out
  assert "welch: p vs q" in printed and printed.count(" *") == 4

  missing = str(tmp_path / "nope.npz")
  with pytest.raises(SystemExit, match="no such result file: .*nope.npz"):
    cli.main(["plot", missing, "-o", str(tmp_path / "x.png")])
  with pytest.raises(SystemExit, match="seeds needs --labels"):
    cli.main(["plot", *paths[:2], "--kind", "seeds", "-o",
              str(tmp_path / "x.png")])
  with pytest.raises(SystemExit, match="draws one file"):
    cli.main(["plot", *paths[:2], "-o", str(tmp_path / "x.png")])
  bad = tmp_path / "bad.npz"
  np.savez(bad, x=np.zeros(2))
  with pytest.raises(SystemExit, match="cannot read"):
    cli.main(["plot", str(bad), "-o", str(tmp_path / "x.png")])
  with pytest.raises(SystemExit) as e:  # argparse: an unknown --kind
    cli.main(["plot", paths[0], "--kind", "violin"])
  assert e.value.code == 2
  assert "invalid choice: 'violin'" in capsys.readouterr().err
