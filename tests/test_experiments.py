"""Every experiment in smoke mode, end to end, plus the runner and the CLI.

The smoke settings share models and batch shapes so the six runs reuse
compiled programs; checks recompute the recorded numbers independently
(NumPy/SciPy in float64) from the files each run wrote. Every experiment is
a sweep: its results are in the run directory's cells (`invjax.sweep.load`).
"""

import json
import pathlib
import sys

import jax
import numpy as np
import pytest
from scipy import stats

REPO = pathlib.Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

import invjax  # pylint: disable=g-import-not-at-top
from experiments import _runner  # pylint: disable=g-import-not-at-top
from invjax import cli  # pylint: disable=g-import-not-at-top
import references  # pylint: disable=g-import-not-at-top

NAMES = ("mnist_rotation_augmentation", "random_init_stability",
         "architectures_cifar10", "genuine_invariance", "shared_invariance",
         "design_vs_training")
# The other experiments, each smoke-tested in its own tests/test_exp_*.py.
OTHERS = ("seeds_vs_shift", "pretrained_init", "spectral_decay",
          "shared_invariance_matrix")


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Runs each experiment once (lazily) in smoke mode."""
  cache = {}

  def get(name, tag="a", **overrides):
    if (name, tag) not in cache:
      out = tmp_path_factory.mktemp(f"{name}_{tag}")
      cache[(name, tag)] = _runner.run_experiment(
          name, smoke=True, out=out, quiet=True, overrides=overrides)
    return cache[(name, tag)]

  return get


def _result(outdir: pathlib.Path, name: str = "nv", **overrides):
  """The result ``name`` of the one cell of ``outdir`` with ``overrides``."""
  table = invjax.sweep.load(outdir)
  for key, value in overrides.items():
    table = table[table[key] == value]
  (cell,) = table["cell"].unique()
  return _runner.cell_results(outdir, cell)[name][0]


def _check_common(outdir: pathlib.Path, summary: dict, name: str) -> dict:
  config = json.loads((outdir / "config.json").read_text())
  assert config["smoke"] is True and config["seed"] == 0
  env = json.loads((outdir / "environment.json").read_text())
  assert set(env["versions"]) >= {"jax", "flax", "optax", "dm-pix", "numpy",
                                  "invjax"}
  assert env["command"].startswith(f"invjax experiment {name} --smoke")
  metrics = json.loads((outdir / "metrics.json").read_text())
  md = (outdir / "results.md").read_text()
  assert md == summary["markdown"]
  assert md.startswith(f"# {name}") and "| " in md and "## Provenance" in md
  assert list(outdir.glob("*.png")) and (outdir / "results.parquet").is_file()
  # The sweep's table is the cells' results (per_layer values).
  import pandas as pd  # pylint: disable=g-import-not-at-top
  table = invjax.sweep.load(outdir)
  assert table.equals(pd.read_parquet(outdir / "results.parquet"))
  for cell in table["cell"].unique():
    rows = table[table["cell"] == cell]
    for result_name, results in _runner.cell_results(outdir, cell).items():
      for i, r in enumerate(results):
        mine = rows[(rows["result"] == result_name)
                    & (rows["result_index"] == i)]
        assert list(mine["layer"]) == r.layers
        np.testing.assert_array_equal(
            mine["value"], [r.per_layer[l] for l in r.layers])
  # Each trained model's checkpoint dir (in its cell's folder) and a copy of
  # its training log.
  logs = sorted(p.stem for p in (outdir / "train_logs").glob("*.jsonl"))
  ckpts = sorted(p.name for p in _runner.checkpoint_dirs(outdir))
  assert logs == ckpts and logs
  return metrics


def test_registry_and_config():
  assert _runner.names() == list(NAMES + OTHERS)
  with pytest.raises(ValueError, match="mnist_rotation_augmentation"):
    _runner.get_experiment("nope")
  exp = _runner.get_experiment("mnist_rotation_augmentation")
  full, smoke = exp.get_config(), exp.get_config(smoke=True, steps=3)
  assert full.dataset == "digits" and full.steps == 1000
  assert smoke.steps == 3 and smoke.channels == 4 and smoke.smoke
  assert exp.get_config(dataset="mnist").n_measure == 1000
  assert exp.get_config(preset="gpu").n_train == 60000
  with pytest.raises(ValueError, match="unknown config key 'stepz'"):
    exp.get_config(stepz=3)
  with pytest.raises(ValueError, match="takes an int"):
    exp.get_config(steps="many")
  with pytest.raises(ValueError, match="unknown preset"):
    exp.get_config(preset="tpu")
  assert _runner.parse_set(["steps=5", "lr=1e-3", "dataset=mnist",
                            "keep_checkpoints=false", "archs=['a','b']"]) == {
                                "steps": 5, "lr": 1e-3, "dataset": "mnist",
                                "keep_checkpoints": False,
                                "archs": ["a", "b"]}
  with pytest.raises(ValueError, match="key=value"):
    _runner.parse_set(["steps"])


def test_compact_keeps_per_feature_map_values():
  rng = np.random.default_rng(0)
  num = rng.uniform(0.5, 2.0, (3, 3, 4))
  den = rng.uniform(0.5, 2.0, (3, 3, 4))
  full = invjax.MeasureResult.from_outputs(
      "nv", {}, {"conv": {"values": num / den, "numerator": num,
                          "denominator": den}})
  small = _runner.compact(full)
  # NV per feature map is the ratio of spatial means (tmeasures' rule).
  expect = num.mean(axis=(0, 1)) / den.mean(axis=(0, 1))
  np.testing.assert_allclose(small.per_feature_map["conv"], expect,
                             rtol=1e-12)
  np.testing.assert_allclose(small.per_activation["conv"], expect, rtol=1e-12)
  assert small.per_layer["conv"] == pytest.approx(expect.mean(), rel=1e-12)
  np.testing.assert_allclose(small.extras["conv"]["numerator"],
                             num.mean(axis=(0, 1)), rtol=1e-12)


def test_mnist_rotation_augmentation(runs):
  outdir, summary = runs(NAMES[0])
  metrics = _check_common(outdir, summary, NAMES[0])
  for label in ("plain", "augmented"):
    result = _result(outdir, model=label)
    assert result.layers[-1] == "logits" and "output" not in result.layers
    # The per-layer value is the finite mean of the per-feature-map values.
    for layer in result.layers:
      fm = np.asarray(result.per_feature_map[layer], np.float64)
      assert result.per_layer[layer] == pytest.approx(
          fm[np.isfinite(fm)].mean(), rel=1e-12)
      assert metrics["nv_per_layer"][label][layer] == pytest.approx(
          result.per_layer[layer], rel=1e-12)
    acc = metrics["accuracy"][label]
    assert 0 <= acc["accuracy"] <= 1 and 0 <= acc["transformed_accuracy"] <= 1
  for f in ("layer_curves.png", "heatmap_plain.png", "heatmap_augmented.png"):
    assert (outdir / f).stat().st_size > 1000


def test_mnist_rotation_augmentation_is_deterministic(runs):
  (a, sa), (b, sb) = runs(NAMES[0]), runs(NAMES[0], "b")
  assert (sa["markdown"].split("## Provenance")[0] ==
          sb["markdown"].split("## Provenance")[0])
  for label in ("plain", "augmented"):
    ra, rb = _result(a, model=label), _result(b, model=label)
    assert ra.per_layer == rb.per_layer
  assert (json.loads((a / "metrics.json").read_text()) ==
          json.loads((b / "metrics.json").read_text()))


def test_random_init_stability(runs):
  outdir, summary = runs(NAMES[1])
  metrics = _check_common(outdir, summary, NAMES[1])
  assert json.loads((outdir / "environment.json").read_text())["seeds"] == [
      0, 1]
  groups = {g: [_result(outdir, model=g, seed=s) for s in (0, 1)]
            for g in ("plain", "augmented")}
  for layer, rec in metrics["per_layer"].items():
    p = np.array([r.per_layer[layer] for r in groups["plain"]])
    a = np.array([r.per_layer[layer] for r in groups["augmented"]])
    spread = np.sqrt((p.var(ddof=1) + a.var(ddof=1)) / 2)
    assert rec["spread"] == pytest.approx(spread, rel=1e-9)
    assert rec["ratio"] == pytest.approx(abs(a.mean() - p.mean()) / spread,
                                         rel=1e-9)
    welch = stats.ttest_ind(a, p, equal_var=False)
    assert rec["pvalue"] == pytest.approx(welch.pvalue, rel=1e-6)
  assert (outdir / "seed_spread.png").is_file()


def test_random_init_stability_ensembles_equal_one_seed_at_a_time(runs):
  # The group path trains each model's seeds as one ensemble (one vmapped
  # training, one measurement); ensemble=False runs each cell alone. The
  # tables agree to float round-off.
  outdir, _ = runs(NAMES[1])
  alone, _ = runs(NAMES[1], "one_at_a_time", ensemble=False)
  assert sorted(p.stem for p in (outdir / "train_logs").glob("*")) == [
      "augmented_seeds0-1", "plain_seeds0-1"]
  assert sorted(p.stem for p in (alone / "train_logs").glob("*")) == [
      "augmented_seed0", "augmented_seed1", "plain_seed0", "plain_seed1"]
  a, b = invjax.sweep.load(outdir), invjax.sweep.load(alone)
  assert len(a) == 4 * 15
  cols = ["model", "seed", "cell", "result", "layer"]
  assert a[cols].equals(b[cols])
  np.testing.assert_allclose(a["value"], b["value"], rtol=1e-5, atol=1e-7)


def test_an_experiment_runs_as_a_sweep(runs, tmp_path):
  # `invjax sweep experiments/<name>.py --set smoke=True`: the same cells
  # and the same table as `invjax experiment <name> --smoke` (presets and
  # smoke mode resolved per cell).
  path = str(REPO / "experiments" / "mnist_rotation_augmentation.py")
  module = invjax.sweep.load_module(path)
  assert [c.overrides for c in invjax.sweep.cells(module)] == [
      {"model": "plain"}, {"model": "augmented"}]
  table = invjax.sweep.run(path, tmp_path, settings={"smoke": True,
                                                     "progress": False},
                           progress=False)
  outdir, _ = runs(NAMES[0])
  expected = invjax.sweep.load(outdir)
  cols = ["model", "cell", "layer"]
  assert table[cols].equals(expected[cols])
  np.testing.assert_allclose(table["value"], expected["value"], rtol=1e-6)
  assert (tmp_path / "results.parquet").is_file()
  # A preset is resolved in the cell too (its config says gpu, the smoke
  # values win over the preset's).
  config = module.get_config()
  config.update(smoke=True, preset="gpu", steps=3)
  resolved = _runner.resolve(module.get_config, config)
  assert resolved.preset == "gpu" and resolved.steps == 3
  assert resolved.channels == 4 and resolved.dataset == "digits"
  resolved = _runner.resolve(module.get_config, dict(module.get_config(),
                                                     preset="gpu"))
  assert resolved.n_train == 60000 and resolved.dataset == "mnist"


def test_architectures_cifar10(runs):
  outdir, summary = runs(NAMES[2])
  metrics = _check_common(outdir, summary, NAMES[2])
  assert set(metrics["models"]) == {"SimpleConv", "AllConvolutional"}
  for name, rec in metrics["models"].items():
    result = _result(outdir, architecture=name)
    assert result.settings["num_samples"] == 20
    v = np.array([result.per_layer[l] for l in result.layers])
    depth = np.linspace(0, 100, len(v))
    for d, value in rec["nv_at_depth"].items():
      assert value == pytest.approx(np.interp(float(d), depth, v), rel=1e-12)
    assert rec["nv_at_depth"]["100"] == pytest.approx(
        result.per_layer["logits"], rel=1e-12)
  assert (outdir / "layer_curves_relative.png").is_file()


def test_genuine_invariance(runs):
  outdir, summary = runs(NAMES[3])
  metrics = _check_common(outdir, summary, NAMES[3])
  # λ: the candidate with the best held-out rot90 accuracy, ties to the
  # smaller one (smoke candidates 0.1 and 1).
  scores = metrics["reg_weight_validation_accuracy"]
  assert set(scores) == {"0.1", "1"} and all(0 <= a <= 1
                                              for a in scores.values())
  best = max(scores.values())
  assert metrics["reg_weight"] == min(float(w) for w, a in scores.items()
                                      if a == best)
  dists = {k.split("/")[1] for k in metrics["values"]}
  assert dists == {"test", "noise", "cifar_grey"}
  for dist in dists:
    # The C4 G-CNN's logits are exactly rot90-invariant: every measure is at
    # its invariant value, on any input distribution.
    g = metrics["values"][f"gcnn/{dist}"]
    assert g["geed"] == pytest.approx(0, abs=1e-5)
    assert g["geed_pair"] == pytest.approx(0, abs=1e-4)
    assert g["pi"] == pytest.approx(0, abs=1e-6)
    assert g["li"] == pytest.approx(0, abs=1e-6)
    # Saliency maps match only up to max-pool ties (flat background windows
    # route the gradient to the first maximum, a different pixel once
    # rotated), so SIS is 1 minus a little.
    assert 0.95 < g["sis"] <= 1 + 1e-6
    for model in ("plain", "augmented", "regularized"):
      v = metrics["values"][f"{model}/{dist}"]
      assert 0 <= v["li"] <= 1 and -1 <= v["sis"] <= 1 and v["pi"] >= 0
      saved = invjax.load_result(outdir / f"geed_{model}_{dist}.npz")
      assert saved.per_layer["logits"] == pytest.approx(v["geed"], rel=1e-12)


def test_genuine_invariance_bad_reg_settings():
  from experiments import genuine_invariance as exp
  with pytest.raises(ValueError, match="reg_weights is empty"):
    exp.get_config(smoke=True, reg_weights=[])
  with pytest.raises(ValueError, match="val_fraction"):
    exp.get_config(smoke=True, val_fraction=1.0)
  assert exp.get_config(smoke=True, reg_weights=[], reg_weight=0.3)


def test_noise_and_crops_are_in_range():
  from experiments import genuine_invariance as exp
  noise = exp.noise_images(50, 0)
  assert noise.shape == (50, 28, 28, 1) and 0 <= noise.min()
  assert noise.max() <= 1 and abs(noise.mean() - 0.5) < 0.02
  crops = exp.cifar_crops(exp.get_config(smoke=True), 4, 0)
  assert crops.shape == (4, 28, 28, 1) and 0 <= crops.min() <= crops.max() <= 1


def test_shared_invariance(runs):
  import invjax.train as T  # pylint: disable=g-import-not-at-top
  from experiments import shared_invariance as exp
  from invjax import models  # pylint: disable=g-import-not-at-top
  outdir, summary = runs(NAMES[4])
  metrics = _check_common(outdir, summary, NAMES[4])
  config = exp.get_config(smoke=True)
  _, _, test_x, _ = _runner.load_digit_data(config)
  feats = {}
  for label, model in (("SimpleConv_s0", models.SimpleConv(channels=4, fc=8)),
                       ("SimpleConv_s1", models.SimpleConv(channels=4, fc=8)),
                       ("C4GCNN_s0", models.C4GCNN(channels=(2, 4, 4)))):
    (workdir,) = outdir.glob(f"cells/*/checkpoints/{label}")
    state = T.load_checkpoint(str(workdir))
    feats[label] = np.asarray(exp.features(model, state.variables)(test_x))
  for pair, rec in metrics["pairs"].items():
    m1, m2 = pair.split(" vs ")
    # Plain CKA against a Gram-matrix (n × n) float64 reference.
    ref = references.linear_cka(feats[m1], feats[m2])
    assert rec["cka"] == pytest.approx(ref, abs=1e-4)
    assert 0 <= rec["m2_given_m1"] <= 1 and 0 <= rec["m1_given_m2"] <= 1


def test_design_vs_training(runs):
  import invjax.train as T  # pylint: disable=g-import-not-at-top
  from experiments import design_vs_training as exp
  outdir, summary = runs(NAMES[5])
  metrics = _check_common(outdir, summary, NAMES[5])
  config = exp.get_config(smoke=True)
  keys = [tuple(k) for k in metrics["keys"]]
  assert len(keys) == 2 * 3 * 2 == len(set(keys))
  assert {k[0] for k in keys} == {"SimpleConv", "AllConvolutional"}
  # Profiles: per-layer NV at 100·i/(L−1)%, linear onto 20 depths.
  grid = np.linspace(0, 100, 20)
  np.testing.assert_allclose(metrics["grid"], grid)
  profiles = []
  for (arch, training, seed), p in zip(keys, metrics["profiles"]):
    r = _result(outdir, architecture=arch, training=training, seed=seed)
    v = np.array([r.per_layer[l] for l in r.layers], np.float64)
    assert np.isfinite(v).all()
    profiles.append(np.interp(grid, np.linspace(0, 100, len(v)), v))
    np.testing.assert_allclose(p, profiles[-1], rtol=1e-12)
  corr = np.corrcoef(np.array(profiles))
  np.testing.assert_allclose(metrics["correlations"], corr, atol=1e-10)
  # The statistic: mean r within an architecture − mean r across.
  arch = np.array([k[0] for k in keys])
  i, j = np.triu_indices(len(keys), 1)
  same = arch[i] == arch[j]
  t = metrics["tests"]["all profiles"]
  assert t["within"] == pytest.approx(corr[i, j][same].mean(), abs=1e-10)
  assert t["across"] == pytest.approx(corr[i, j][~same].mean(), abs=1e-10)
  assert t["num_within"] == 2 * 15 and t["num_across"] == 36
  assert 1 / 201 <= t["pvalue"] <= 1 and t["num_permutations"] == 200
  # Random-init vs trained pairs only.
  rand = np.array([k[1] == "random_init" for k in keys])
  mixed = rand[i] != rand[j]
  t = metrics["tests"]["random init vs trained pairs"]
  assert t["within"] == pytest.approx(corr[i, j][mixed & same].mean(),
                                      abs=1e-10)
  assert t["across"] == pytest.approx(corr[i, j][mixed & ~same].mean(),
                                      abs=1e-10)
  assert metrics["expected_held"] in (True, False)
  # The exploratory depth ranges: the same tests on the first grid points.
  assert set(metrics["depth_ranges"]) == {"80", "90", "95"}
  for cut, rec in metrics["depth_ranges"].items():
    cols = grid <= float(cut)
    assert rec["points"] == cols.sum() == {"80": 16, "90": 18,
                                           "95": 19}[cut]
    c = np.corrcoef(np.array(profiles)[:, cols])
    t = rec["random init vs trained pairs"]
    assert t["within"] == pytest.approx(c[i, j][mixed & same].mean(),
                                        abs=1e-10)
    assert rec["all profiles"]["across"] == pytest.approx(
        c[i, j][~same].mean(), abs=1e-10)
  # The trained cells used their optimizer and schedule; the random-init
  # cells have no training and are fit's starting point.
  for (arch, training, seed) in keys:
    dirs = list(outdir.glob(f"cells/*/checkpoints/{arch}_{training}_seed"
                            f"{seed}"))
    if training == "random_init":
      assert not dirs
      continue
    (workdir,) = dirs
    cfg = json.loads((workdir / "config.json").read_text())["config"]
    want = exp.optimizer_settings(training, config)
    assert cfg["optimizer"] == want["optimizer"]
    assert cfg["schedule"] == want["schedule"]
    assert cfg["learning_rate"] == want["learning_rate"]
    assert cfg["seed"] == seed and cfg["augment"] is None
  model = exp.build("SimpleConv", config)
  x = np.zeros((1, 28, 28, 1), np.float32)
  ours = exp.initial_variables(model, 1, x)
  state = T.fit(model, T.TrainConfig(steps=1, learning_rate=1e-30,
                                     optimizer="sgd", momentum=0.0, seed=1,
                                     batch_size=1),
                x, np.zeros(1, np.int32))
  for a, b in zip(jax.tree.leaves(ours["params"]),
                  jax.tree.leaves(state.variables["params"])):
    np.testing.assert_allclose(a, b, atol=1e-20)
  for name in ("profiles_by_architecture", "profiles_interpolated",
               "profile_correlations"):
    assert (outdir / f"{name}.png").stat().st_size > 1000


def test_design_vs_training_analysis():
  from experiments import design_vs_training as exp
  rng = np.random.default_rng(0)
  grid = exp.depth_grid(20)
  # Three "architectures" with distinct shapes, four noisy profiles each.
  shapes = [np.sin(grid / 30), np.cos(grid / 20), (grid / 100) ** 2]
  profiles = np.array([s + 0.05 * rng.normal(size=20) for s in shapes
                       for _ in range(4)])
  labels = np.repeat(["a", "b", "c"], 4)
  corr = exp.correlations(profiles)
  np.testing.assert_allclose(corr, np.corrcoef(profiles), atol=1e-12)
  t = exp.permutation_test(corr, labels, num_permutations=500, seed=3)
  assert t["statistic"] > 0.5 and t["pvalue"] == pytest.approx(1 / 501)
  assert t == exp.permutation_test(corr, labels, num_permutations=500, seed=3)
  # Against the exact permutation distribution of a small case: 6 profiles,
  # labels aabbcc (90 arrangements).
  p6 = rng.normal(size=(6, 20))
  c6 = exp.correlations(p6)
  lab = np.array(list("aabbcc"))
  obs = exp.permutation_test(c6, lab, num_permutations=4000, seed=1)
  import itertools  # pylint: disable=g-import-not-at-top
  i, j = np.triu_indices(6, 1)
  stats_all = []
  for perm in set(itertools.permutations(lab)):
    perm = np.array(perm)
    same = perm[i] == perm[j]
    stats_all.append(c6[i, j][same].mean() - c6[i, j][~same].mean())
  exact = np.mean(np.array(stats_all) >= obs["statistic"] - 1e-12)
  assert obs["pvalue"] == pytest.approx(exact, abs=0.03)
  # A constant profile has no correlation: NaN, left out of the means.
  flat = np.vstack([profiles[:3], np.ones((1, 20))])
  c = exp.correlations(flat)
  assert np.isnan(c[3]).all() and np.isnan(c[:, 3]).all()
  np.testing.assert_allclose(c[:3, :3], np.corrcoef(profiles[:3]),
                             atol=1e-12)
  t = exp.permutation_test(c, np.array(list("aabb")), num_permutations=10)
  assert t["num_within"] == 1 and t["num_across"] == 2
  # Profiles: layer values at their relative depths, non-finite skipped.
  r = invjax.MeasureResult.from_outputs(
      "nv", {}, {l: {"values": np.array([v])} for l, v in
                 (("a", 1.0), ("b", np.inf), ("c", 3.0), ("d", 5.0))})
  np.testing.assert_allclose(exp.profile(r, np.array([0, 50, 100 * 2 / 3,
                                                        100])),
                             [1.0, 2.5, 3.0, 5.0])
  with pytest.raises(ValueError, match="unknown architectures"):
    exp.get_config(architectures=["LeNet"])
  with pytest.raises(ValueError, match="at least 2"):
    exp.get_config(architectures=["SimpleConv"])
  with pytest.raises(ValueError, match="at least 2 profiles"):
    exp.get_config(trainings=["adam_cosine"], num_seeds=1)


def test_cli(tmp_path, capsys):
  assert cli.main(["experiment", "--list"]) == 0
  listed = capsys.readouterr().out
  assert all(name in listed for name in NAMES)
  with pytest.raises(SystemExit, match="available: mnist_rotation"):
    cli.main(["experiment", "no_such_experiment"])
  with pytest.raises(SystemExit, match="unknown config key 'bogus'"):
    cli.main(["experiment", NAMES[0], "--smoke", "--set", "bogus=1"])
  with pytest.raises(SystemExit, match="dataset must be"):
    cli.main(["experiment", NAMES[3], "--dataset", "imagenet"])
  assert not list(tmp_path.iterdir())


def test_progress_bars_unless_quiet(tmp_path, monkeypatch, capsys):
  # Bars by default (training and measuring), none with quiet / --quiet or
  # progress=False; stubs stand in for the work.
  import invjax.train as T  # pylint: disable=g-import-not-at-top
  seen = []

  def fit(model, cfg, images, labels, **kw):
    seen.append(("fit", kw["progress"]))
    return T.TrainState(cfg.steps, {}, None)

  def measure(*args, **kw):
    seen.append(("measure", kw["progress"]))

  monkeypatch.setattr(T, "fit", fit)
  monkeypatch.setattr(invjax, "measure", measure)
  monkeypatch.setattr(invjax.capture, "linen", lambda *a: None)
  monkeypatch.setattr(_runner, "evaluate", lambda *a: {})
  monkeypatch.setattr(_runner, "save_result", lambda *a: "nv.npz")
  exp = _runner.get_experiment(NAMES[0])
  data = (np.zeros((2, 28, 28, 1), np.float32), np.zeros(2, np.int32)) * 2

  def run(config, quiet):
    monkeypatch.setattr(_runner, "_VERBOSE", [not quiet])
    seen.clear()
    exp.train_and_measure(None, config, data, outdir=tmp_path, label="a",
                          seed=0, augment=None, measured=None)
    return [p for _, p in seen]

  assert run(exp.get_config(smoke=True), quiet=False) == [True, True]
  assert run(exp.get_config(smoke=True), quiet=True) == [False, False]
  assert run(exp.get_config(smoke=True, progress=False),
             quiet=False) == [False, False]
  # The command line: --quiet reaches run_experiment.
  quiet = []
  monkeypatch.setattr(_runner, "run_experiment", lambda name, **kw: (
      quiet.append(kw["quiet"]), (tmp_path, {"markdown": ""}))[1])
  for flag in (["--quiet"], []):
    assert cli.main(["experiment", NAMES[0], "--smoke"] + flag) == 0
  assert quiet == [True, False]
  capsys.readouterr()
