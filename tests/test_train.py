"""invjax.train: schedules, determinism, exact resume, evaluation, the CLI."""

import json
import math
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from invjax import cli
from invjax import data
from invjax import models
from invjax import objectives
from invjax import train as T
from invjax import transforms as tr
from invjax._src import train_step
from invjax._src import workdir as workdir_lib


@pytest.fixture(autouse=True)
def _fast_rng_compile():
  # Partitionable threefry makes XLA:CPU compile Flax's initializers ~10x
  # slower; the classic bits keep this file fast (both are deterministic).
  with jax.threefry_partitionable(False):
    yield


@pytest.fixture(scope="module")
def digits():
  x, y = data.load_digits()
  x, y = data.stratified_subset(x, y, 300, seed=0)
  return x[:200], y[:200], x[200:], y[200:]


def _model(**kw):
  return models.SimpleConv(**{"channels": 4, "fc": 16, **kw})


def _leaves(tree):
  return [np.asarray(a) for a in jax.tree.leaves(tree)]


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(_leaves(a), _leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


def _read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(l) for l in f]


# ---------------------------------------------------------------------------
# Configuration and schedule.
# ---------------------------------------------------------------------------


def test_schedule_closed_form():
  lr = 0.1
  cos = T.learning_rate_schedule(T.TrainConfig(steps=100, learning_rate=lr))
  assert float(cos(0)) == pytest.approx(lr, rel=1e-6)
  assert float(cos(100)) == pytest.approx(0.0, abs=1e-9)
  assert float(cos(50)) == pytest.approx(lr / 2, rel=1e-6)
  assert float(cos(25)) == pytest.approx(
      lr * (1 + math.cos(math.pi / 4)) / 2, rel=1e-6)
  warm = T.learning_rate_schedule(T.TrainConfig(
      steps=100, learning_rate=lr, warmup_steps=20))
  assert float(warm(0)) == 0.0
  assert float(warm(10)) == pytest.approx(lr / 2, rel=1e-6)
  assert float(warm(20)) == pytest.approx(lr, rel=1e-6)
  assert float(warm(60)) == pytest.approx(lr / 2, rel=1e-6)   # mid decay
  assert float(warm(100)) == pytest.approx(0.0, abs=1e-9)
  const = T.learning_rate_schedule(T.TrainConfig(
      steps=100, learning_rate=lr, schedule="constant", warmup_steps=10))
  assert float(const(5)) == pytest.approx(lr / 2, rel=1e-6)
  assert float(const(99)) == pytest.approx(lr, rel=1e-6)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps"),
    (dict(batch_size=0), "batch_size"),
    (dict(learning_rate=-1.0), "learning_rate"),
    (dict(schedule="linear"), "schedule"),
    (dict(optimizer="lamb"), "optimizer"),
    (dict(steps=10, warmup_steps=11), "warmup_steps"),
    (dict(augment=np.zeros(3)), "augment"),
    (dict(regularizer=T.Regularizer(tr.rot90(), kind="l2")), "kind"),
    (dict(regularizer=T.Regularizer(tr.rot90(), num_samples=5)),
     "num_samples"),
    (dict(regularizer=T.Regularizer(tr.rot90(), weight=-1.0)), "weight"),
])
def test_config_rejects_bad_values(kwargs, match):
  with pytest.raises(ValueError, match=match):
    T.TrainConfig(**kwargs)


def test_config_to_dict_is_json():
  cfg = T.TrainConfig(augment=tr.rot90(),
                      regularizer=T.Regularizer(tr.flips(), weight=0.5))
  d = json.loads(json.dumps(cfg.to_dict()))
  assert d["augment"]["size"] == 4
  assert d["augment"]["parameters"] == [[0.0], [1.0], [2.0], [3.0]]
  assert d["regularizer"]["weight"] == 0.5 and d["steps"] == 300


def test_batch_order_is_epoch_permutations():
  cache = {}
  idx = np.concatenate([train_step.batch_indices(3, s, 16, 40, cache)
                        for s in range(5)])                 # 2 epochs
  for e in range(2):
    np.testing.assert_array_equal(np.sort(idx[40 * e:40 * (e + 1)]),
                                  np.arange(40))
  again = train_step.batch_indices(3, 3, 16, 40, {})
  np.testing.assert_array_equal(again, idx[48:64])


def test_fit_rejects_bad_data(digits):
  x, y, _, _ = digits
  cfg = T.TrainConfig(steps=2)
  with pytest.raises(ValueError, match="labels"):
    T.fit(_model(), cfg, x, y[:-1])
  with pytest.raises(ValueError, match="images"):
    T.fit(_model(), cfg, x[..., 0], y)
  with pytest.raises(ValueError, match="eval_data"):
    T.fit(_model(), cfg, x, y, eval_data=(x,))
  with pytest.raises(ValueError, match="eval_data's transformations"):
    T.fit(_model(), cfg, x, y, eval_data=(x, y, "rot90"))
  with pytest.raises(ValueError, match="until"):
    T.fit(_model(), cfg, x, y, until=3)
  with pytest.raises(ValueError, match="TrainConfig"):
    T.fit(_model(), {"steps": 2}, x, y)


# ---------------------------------------------------------------------------
# Training runs.
# ---------------------------------------------------------------------------


# One step configuration shared by most runs: one compilation (seed, log and
# checkpoint intervals are not part of it).
BASE = dict(steps=20, batch_size=16, learning_rate=3e-3, schedule="constant",
            log_every=5, checkpoint_every=10)


def test_loss_decreases_and_metrics(digits, tmp_path):
  x, y, xt, yt = digits
  cfg = T.TrainConfig(**{**BASE, "eval_every": 8})
  records = []
  state = T.fit(_model(), cfg, x, y, eval_data=(xt, yt), workdir=tmp_path,
                callback=records.append)
  lines = _read_metrics(tmp_path)
  assert lines == records
  assert [l["step"] for l in lines] == [5, 8, 10, 15, 16, 20]
  keys = {"step", "loss", "ce", "reg", "lr", "batch_accuracy", "grad_norm",
          "time"}
  for i in (0, 2, 3):
    assert set(lines[i]) == keys
  assert set(lines[1]) == set(lines[4]) == {"step", "eval_accuracy"}
  assert set(lines[5]) == keys | {"eval_accuracy"}
  assert lines[-1]["loss"] < 0.8 * lines[0]["loss"]
  assert all(l["reg"] == 0.0 and l["loss"] == l["ce"] and
             l["lr"] == pytest.approx(3e-3, rel=1e-6)
             for l in lines if "loss" in l)
  with open(tmp_path / "config.json") as f:
    assert json.load(f)["config"] == json.loads(json.dumps(cfg.to_dict()))
  assert state.step == 20
  acc = T.evaluate(_model(), state.variables, xt, yt)["accuracy"]
  assert lines[-1]["eval_accuracy"] == acc > 0.3


def test_seed_determinism(digits):
  x, y, _, _ = digits
  a = T.fit(_model(), T.TrainConfig(**BASE), x, y)
  b = T.fit(_model(), T.TrainConfig(**BASE), x, y)
  c = T.fit(_model(), T.TrainConfig(**BASE, seed=1), x, y)
  _assert_trees_equal(a.variables, b.variables)
  _assert_trees_equal(a.opt_state, b.opt_state)
  assert all(not np.array_equal(p, q) for p, q in
             zip(_leaves(a.variables), _leaves(c.variables)))


def test_resume_is_bit_identical(digits, tmp_path):
  x, y, _, _ = digits
  cfg = T.TrainConfig(**BASE)
  full = T.fit(_model(), cfg, x, y, workdir=tmp_path / "full")
  full_metrics = _read_metrics(tmp_path / "full")
  for name in ("short_run", "until"):
    part = tmp_path / name
    if name == "short_run":
      # Interrupted: a 10-step run, then the 20-step run on the same workdir
      # (with the constant schedule the first 10 updates are the same).
      first = T.fit(_model(), T.TrainConfig(**{**BASE, "steps": 10}), x, y,
                    workdir=part)
    else:
      # Stopped after 10 steps (what a cosine run needs), plus a stray
      # metrics line from after the checkpoint, as a crash would leave.
      first = T.fit(_model(), cfg, x, y, workdir=part, until=10)
      with open(part / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 12, "loss": 0.0}) + "\n")
    assert first.step == 10
    resumed = T.fit(_model(), cfg, x, y, workdir=part)
    assert resumed.step == 20
    _assert_trees_equal(full.variables, resumed.variables)
    _assert_trees_equal(full.opt_state, resumed.opt_state)
    # The metrics file reads as the uninterrupted run's.
    assert [{**l, "time": 0} for l in _read_metrics(part)] == [
        {**l, "time": 0} for l in full_metrics]
    assert sorted(os.listdir(part / "checkpoints")) == ["10", "20"]
  # load_checkpoint: same pytree structure and dtypes as the live state.
  loaded = T.load_checkpoint(part)
  assert loaded.step == 20
  _assert_trees_equal(loaded.variables, full.variables)
  _assert_trees_equal(loaded.opt_state, full.opt_state)
  earlier = T.load_checkpoint(part, step=10)
  _assert_trees_equal(earlier.variables, first.variables)
  # A finished run is returned as is; a different run is refused.
  again = T.fit(_model(), cfg, x, y, workdir=part)
  _assert_trees_equal(again.variables, full.variables)
  with pytest.raises(ValueError, match="learning_rate"):
    T.fit(_model(), T.TrainConfig(**{**BASE, "learning_rate": 0.1}), x, y,
          workdir=part)
  with pytest.raises(ValueError, match="model"):
    T.fit(_model(fc=8), cfg, x, y, workdir=part)
  with pytest.raises(ValueError, match="beyond"):
    T.fit(_model(), T.TrainConfig(**{**BASE, "steps": 5}), x, y,
          workdir=part)


def test_load_checkpoint_errors(tmp_path):
  with pytest.raises(ValueError, match="no checkpoints"):
    T.load_checkpoint(tmp_path)


def _strip_time(lines):
  return [{k: v for k, v in l.items() if k != "time"} for l in lines]


@pytest.fixture(scope="module")
def base_run(digits, tmp_path_factory):
  """The uninterrupted BASE run: its TrainState and log lines (no time)."""
  x, y, _, _ = digits
  workdir = tmp_path_factory.mktemp("base_run")
  with jax.threefry_partitionable(False):     # As `_fast_rng_compile`.
    state = T.fit(_model(), T.TrainConfig(**BASE), x, y, workdir=workdir)
  return state, _strip_time(_read_metrics(workdir))


def test_resume_at_non_log_step_logs_as_uninterrupted(digits, tmp_path):
  # The checkpoint step (12) is not a log step (log_every 5): the metrics of
  # steps 11-12 travel with the checkpoint, so line 15 still averages 11-15,
  # and the lines the stopped run wrote at 12 (its last step) go.
  x, y, xt, yt = digits
  cfg = T.TrainConfig(**{**BASE, "eval_every": 8})
  ev = (xt[:20], yt[:20])
  T.fit(_model(), cfg, x, y, eval_data=ev, workdir=tmp_path / "full")
  full = _strip_time(_read_metrics(tmp_path / "full"))
  assert [l["step"] for l in full] == [5, 8, 10, 15, 16, 20]
  T.fit(_model(), cfg, x, y, eval_data=ev, workdir=tmp_path / "until",
        until=12)
  assert _read_metrics(tmp_path / "until")[-1]["step"] == 12
  # A shorter run extended: its last line (step 12) summarizes 11-12.
  T.fit(_model(), T.TrainConfig(**{**BASE, "eval_every": 8, "steps": 12}),
        x, y, eval_data=ev, workdir=tmp_path / "short")
  for name in ("until", "short"):
    T.fit(_model(), cfg, x, y, eval_data=ev, workdir=tmp_path / name)
    assert _strip_time(_read_metrics(tmp_path / name)) == full, name


def test_resume_survives_torn_config_and_metrics(digits, base_run,
                                                 tmp_path):
  # What a kill in the middle of the old in-place writes left behind: a cut
  # config.json and a partial last metrics line.
  x, y, _, _ = digits
  cfg = T.TrainConfig(**BASE)
  full, full_lines = base_run
  part = tmp_path / "part"
  T.fit(_model(), cfg, x, y, workdir=part, until=10)
  config_text = (part / "config.json").read_text()
  (part / "config.json").write_text(config_text[:len(config_text) // 2])
  with open(part / "metrics.jsonl", "a") as f:
    f.write('{"step": 15, "lo')
  with pytest.warns(UserWarning, match="config.json is empty or cut short"):
    resumed = T.fit(_model(), cfg, x, y, workdir=part)
  _assert_trees_equal(full.variables, resumed.variables)
  assert json.loads((part / "config.json").read_text()) == json.loads(
      config_text)
  assert _strip_time(_read_metrics(part)) == full_lines
  # An empty config.json (killed between open and write) reads as absent.
  (part / "config.json").write_text("")
  with pytest.warns(UserWarning, match="empty or cut short"):
    T.fit(_model(), cfg, x, y, workdir=part)


@pytest.mark.parametrize("text, match", [
    ('{"config": {"steps": 20}, oops, "model": ""}', "not valid JSON"),
    ("[1, 2]", "does not hold an invjax run record"),
])
def test_damaged_config_is_an_error_naming_it(digits, tmp_path, text, match):
  x, y, _, _ = digits
  (tmp_path / "config.json").write_text(text)
  with pytest.raises(ValueError, match=match) as e:
    T.fit(_model(), T.TrainConfig(**BASE), x, y, workdir=tmp_path)
  assert str(tmp_path / "config.json") in str(e.value)


def test_damaged_metrics_line_is_an_error_naming_it(digits, tmp_path):
  x, y, _, _ = digits
  cfg = T.TrainConfig(**BASE)
  T.fit(_model(), cfg, x, y, workdir=tmp_path, until=10)
  lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
  lines[0] = lines[0][:10]                  # not the last line: no crash
  (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
  with pytest.raises(ValueError, match="line 1") as e:
    T.fit(_model(), cfg, x, y, workdir=tmp_path)
  assert str(tmp_path / "metrics.jsonl") in str(e.value)


_KILLED_RUN = """
import os, signal, sys
import jax
jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_threefry_partitionable", False)
from invjax import data, models, train as T
x, y = data.load_digits()
x, y = data.stratified_subset(x, y, 300, seed=0)

def die(record):
  if record["step"] == 20:      # Before line 20 and checkpoint 20 exist.
    os.kill(os.getpid(), signal.SIGKILL)

T.fit(models.SimpleConv(channels=4, fc=16), T.TrainConfig(**eval(sys.argv[2])),
      x[:200], y[:200], workdir=sys.argv[1], callback=die)
"""


def test_sigkilled_run_resumes_as_uninterrupted(digits, base_run, tmp_path):
  # A real kill: checkpoint at 12 (not a log step), line 15 already past
  # it, killed at step 20. ~6 s: a fresh process imports and compiles.
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  x, y, _, _ = digits
  settings = {**BASE, "checkpoint_every": 12}
  proc = subprocess.run(
      [sys.executable, "-c", _KILLED_RUN, str(tmp_path / "killed"),
       repr(settings)], capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == -9, proc.stderr[-2000:]
  assert os.listdir(tmp_path / "killed" / "checkpoints") == ["12"]
  assert [l["step"] for l in _read_metrics(tmp_path / "killed")] == [5, 10,
                                                                      15]
  # checkpoint_every changes neither the updates nor the log.
  resumed = T.fit(_model(), T.TrainConfig(**settings), x, y,
                  workdir=tmp_path / "killed")
  _assert_trees_equal(base_run[0].variables, resumed.variables)
  assert _strip_time(_read_metrics(tmp_path / "killed")) == base_run[1]


class _DiesWritingConfig:
  """A `json` module whose writes of a run record are killed midway."""

  def __getattr__(self, name):
    return getattr(json, name)

  def dump(self, obj, f, **kw):
    if isinstance(obj, dict) and "config" in obj:
      f.write(json.dumps(obj, **kw)[:40])
      raise KeyboardInterrupt
    return json.dump(obj, f, **kw)


def test_config_json_is_replaced_atomically(digits, tmp_path, monkeypatch):
  x, y, _, _ = digits
  cfg = T.TrainConfig(**BASE)
  T.fit(_model(), cfg, x, y, workdir=tmp_path, until=10)
  before = (tmp_path / "config.json").read_text()

  def killed(*args):
    raise KeyboardInterrupt

  with monkeypatch.context() as m:
    # Killed after the new text is written, before it is in place (and
    # inside the write, for code that writes in place).
    m.setattr(workdir_lib, "json", _DiesWritingConfig())
    m.setattr(os, "fsync", killed)
    with pytest.raises(KeyboardInterrupt):
      T.fit(_model(), cfg, x, y, workdir=tmp_path)
  assert (tmp_path / "config.json").read_text() == before
  assert sorted(os.listdir(tmp_path)) == ["checkpoints", "config.json",
                                          "metrics.jsonl"]


def _damage(step_dir, how):
  """Truncates the largest data file of an Orbax step, or deletes one."""
  if how == "delete":
    os.remove(os.path.join(step_dir, "default", "_METADATA"))
    return
  data = [os.path.join(d, f) for d, _, fs in os.walk(step_dir) for f in fs]
  with open(max(data, key=os.path.getsize), "r+b") as f:
    f.truncate(100)


# A TensorStore read finishing after Orbax closed its event loop reports
# "Event loop is closed" to sys.unraisablehook (a few lines, no dump).
@pytest.mark.filterwarnings(
    "ignore:Exception ignored:pytest.PytestUnraisableExceptionWarning")
def test_damaged_checkpoints_fall_back_to_a_good_one(digits, base_run,
                                                     tmp_path):
  x, y, _, _ = digits
  cfg = T.TrainConfig(**BASE)
  full, full_lines = base_run
  part = tmp_path / "part"
  T.fit(_model(), T.TrainConfig(**{**BASE, "checkpoint_every": 5}), x, y,
        workdir=part, until=15)
  assert sorted(os.listdir(part / "checkpoints"), key=int) == ["5", "10",
                                                               "15"]
  good = T.load_checkpoint(part, step=5)
  _damage(part / "checkpoints" / "15", "truncate")
  _damage(part / "checkpoints" / "10", "delete")
  with pytest.warns(UserWarning) as record:
    loaded = T.load_checkpoint(part)
  assert [str(part / "checkpoints" / s) in str(w.message)
          for w, s in zip(record, ("15", "10"))] == [True, True]
  _assert_trees_equal(loaded.variables, good.variables)
  with pytest.raises(ValueError, match="cannot be restored") as e:
    T.load_checkpoint(part, step=15)
  assert str(part / "checkpoints" / "15") in str(e.value)
  assert len(str(e.value)) < 1000           # no TensorStore spec dump
  with pytest.warns(UserWarning, match="resuming from step 5"):
    resumed = T.fit(_model(), cfg, x, y, workdir=part)
  _assert_trees_equal(resumed.variables, full.variables)
  _assert_trees_equal(resumed.opt_state, full.opt_state)
  assert _strip_time(_read_metrics(part)) == full_lines
  assert sorted(os.listdir(part / "damaged_checkpoints")) == ["10", "15"]
  assert sorted(os.listdir(part / "checkpoints"), key=int) == ["5", "10",
                                                               "20"]


# A TensorStore read finishing after Orbax closed its event loop reports
# "Event loop is closed" to sys.unraisablehook (a few lines, no dump).
@pytest.mark.filterwarnings(
    "ignore:Exception ignored:pytest.PytestUnraisableExceptionWarning")
def test_only_checkpoint_damaged_is_a_clear_error(digits, tmp_path):
  x, y, _, _ = digits
  cfg = T.TrainConfig(**BASE)
  T.fit(_model(), cfg, x, y, workdir=tmp_path, until=10)
  _damage(tmp_path / "checkpoints" / "10", "truncate")
  step_dir = str(tmp_path / "checkpoints" / "10")
  for load in (lambda: T.load_checkpoint(tmp_path),
               lambda: T.fit(_model(), cfg, x, y, workdir=tmp_path)):
    with pytest.raises(ValueError, match="cannot be restored") as e:
      load()
    assert step_dir in str(e.value) and len(str(e.value)) < 1000
    assert e.value.__cause__ is None and e.value.__suppress_context__
  assert os.listdir(tmp_path / "checkpoints") == ["10"]   # nothing moved


def test_progress_bar_shows_loss_and_eta(digits, capsys):
  x, y, _, _ = digits
  records = []
  T.fit(_model(), T.TrainConfig(**{**BASE, "steps": 12}), x, y,
        progress=True, callback=records.append)
  frames = [f for f in capsys.readouterr().err.split("\r") if "train" in f]
  # The loss appears with the step it was logged at, not one step early.
  for f in frames:
    if "loss=" in f:
      assert int(f.split("|")[2].split("/")[0]) >= 5, f
  assert "12/12" in frames[-1]
  assert f"loss={records[-1]['loss']:.4f}" in frames[-1]
  assert "00:00<00:00" in frames[-1] or "<00:00" in frames[-1]  # ETA


def test_batch_norm_model_updates_batch_stats(digits):
  x, y, xt, _ = digits
  model = _model(batch_norm=True)
  cfg = T.TrainConfig(steps=5, batch_size=16, augment=tr.rot90(),
                      log_every=5)
  init = train_step.init_variables(model, 0, jnp.asarray(x[:1]))
  records = []
  state = T.fit(model, cfg, x, y, callback=records.append)
  assert set(state.variables) == {"params", "batch_stats"}
  for a, b in zip(_leaves(init["batch_stats"]),
                  _leaves(state.variables["batch_stats"])):
    assert np.all(np.isfinite(b)) and not np.allclose(a, b)
  # Eval mode uses the running averages: an image's logits do not depend on
  # the batch it is evaluated in.
  f = T.logits_fn(model, state.variables)
  np.testing.assert_allclose(np.asarray(f(xt[:5])), np.asarray(f(xt))[:5],
                             rtol=1e-5, atol=1e-5)
  assert np.isfinite(records[-1]["loss"])


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_optimizer_first_update_closed_form(optimizer):
  lr, wd = 0.1, 0.01
  cfg = T.TrainConfig(steps=10, learning_rate=lr, optimizer=optimizer,
                      weight_decay=wd, momentum=0.0)
  p = {"w": jnp.asarray([1.0, -2.0, 3.0])}
  g = {"w": jnp.asarray([0.5, 0.25, -4.0])}
  tx = T.make_optimizer(cfg)
  updates, _ = tx.update(g, tx.init(p), p)
  pn, gn = np.asarray(p["w"], np.float64), np.asarray(g["w"], np.float64)
  if optimizer == "sgd":          # -η (g + wd·θ)
    expected = -lr * (gn + wd * pn)
  elif optimizer == "adam":       # L2 in the gradient, then Adam's g/|g|
    gg = gn + wd * pn
    expected = -lr * gg / (np.abs(gg) + 1e-8)
  else:                           # decoupled: -η (g/|g| + wd·θ)
    expected = -lr * (gn / (np.abs(gn) + 1e-8) + wd * pn)
  np.testing.assert_allclose(np.asarray(updates["w"]), expected, rtol=1e-5)


# ---------------------------------------------------------------------------
# Evaluation.
# ---------------------------------------------------------------------------


def test_evaluate_against_numpy(digits):
  x, y, xt, yt = digits
  model = _model()
  variables = train_step.init_variables(model, 3, jnp.asarray(x[:1]))
  # Labels that the random network gets right about half of the time.
  logits = np.asarray(model.apply(variables, jnp.asarray(xt)), np.float64)
  pred = logits.argmax(-1)
  labels = np.where(np.arange(len(yt)) % 2 == 0, pred, yt).astype(np.int32)
  expected = np.mean(pred == labels)
  rotated = np.stack([np.rot90(xt, k, axes=(1, 2)) for k in range(4)], 1)
  zr = np.asarray(model.apply(variables, jnp.asarray(
      rotated.reshape((-1,) + xt.shape[1:]))), np.float64)
  expected_rot = np.mean(zr.argmax(-1) == np.repeat(labels, 4))
  # batch_size 37 does not divide 100: the last batch is padded and masked.
  res = T.evaluate(model, variables, xt, labels, batch_size=37,
                   transformations=tr.rot90())
  assert res["accuracy"] == pytest.approx(expected, abs=1e-12)
  assert res["transformed_accuracy"] == pytest.approx(expected_rot, abs=1e-12)
  same = T.evaluate(model, variables, xt, labels, batch_size=37,
                    transformations=tr.identity())
  assert same["transformed_accuracy"] == same["accuracy"] == res["accuracy"]
  with pytest.raises(ValueError, match="labels"):
    T.evaluate(model, variables, xt, labels[:3])
  with pytest.raises(ValueError, match="transformations"):
    T.evaluate(model, variables, xt, labels, transformations="rot90")


# ---------------------------------------------------------------------------
# The regularizer makes the network more invariant (issue 4, through fit).
# ---------------------------------------------------------------------------


class _TinyNet(nn.Module):
  """A small CNN for 8x8 digits; nothing in it is rotation-invariant."""

  @nn.compact
  def __call__(self, x, *, train=False):
    del train
    x = nn.relu(nn.Conv(8, (3, 3))(x))
    x = nn.relu(nn.Conv(16, (3, 3), strides=(2, 2))(x))
    return nn.Dense(10)(x.reshape((x.shape[0], -1)))


def test_regularizer_lowers_heldout_invariance_error():
  x, y = data.load_digits(size=8)
  x_train, y_train, x_test = x[:1200], y[:1200], x[1200:]
  errors = {}
  for weight in (0.0, 1.0):
    cfg = T.TrainConfig(
        steps=150, batch_size=32, learning_rate=3e-3, schedule="constant",
        augment=tr.rot90(), log_every=150,
        # λ = 0 trains without the term but still logs the error (and the
        # two runs share one compilation).
        regularizer=T.Regularizer(tr.rot90(), weight=weight))
    records = []
    state = T.fit(_TinyNet(), cfg, x_train, y_train, callback=records.append)
    f = T.logits_fn(_TinyNet(), state.variables)
    # Held-out orbits, and an independent NumPy/float64 logit spread.
    orbit = np.stack([np.rot90(x_test, k, axes=(1, 2)) for k in range(4)], 1)
    z = np.asarray(f(orbit.reshape((-1, 8, 8, 1))), np.float64).reshape(
        len(x_test), 4, -1)
    spread = np.mean(np.sum((z - z.mean(1, keepdims=True)) ** 2, -1))
    ie = float(objectives.invariance_error(
        lambda v, im: _TinyNet().apply(v, im), state.variables, x_test,
        tr.rot90()))
    assert ie == pytest.approx(spread, rel=1e-4)
    acc = T.evaluate(_TinyNet(), state.variables, x[1200:], y[1200:],
                     transformations=tr.rot90())["transformed_accuracy"]
    r = records[-1]
    assert r["loss"] == pytest.approx(r["ce"] + weight * r["reg"], rel=1e-5)
    errors[weight] = (spread, acc, r["reg"])
  (e0, acc0, r0), (e1, acc1, r1) = errors[0.0], errors[1.0]
  assert r1 < 0.5 * r0, errors          # also on the training orbits
  assert e1 < 0.5 * e0, errors
  assert acc0 > 0.5 and acc1 > 0.5, errors


# ---------------------------------------------------------------------------
# The command line.
# ---------------------------------------------------------------------------


def test_cli_train_writes_and_resumes(tmp_path, capsys):
  workdir = tmp_path / "run"
  argv = ["train", "--model", "simpleconv", "--width", "4", "--dataset",
          "digits", "--num-train", "200", "--num-test", "40", "--steps", "6",
          "--batch-size", "16", "--augment", "rot90", "--regularizer", "kl",
          "--reg-weight", "0.5", "--reg-samples", "3", "--log-every", "3",
          "--checkpoint-every", "3", "--workdir", str(workdir), "--quiet"]
  assert cli.main(argv) == 0
  captured = capsys.readouterr()
  assert "test accuracy" in captured.out and "rot90 accuracy" in captured.out
  assert "step/s" not in captured.err                    # --quiet: no bar
  lines = _read_metrics(workdir)
  assert [l["step"] for l in lines] == [3, 6]
  for l in lines:
    assert l["reg"] > 0 and l["loss"] == pytest.approx(
        l["ce"] + 0.5 * l["reg"], rel=1e-5)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  with open(workdir / "eval.json") as f:
    ev = json.load(f)
  assert ev["step"] == 6 and ev["num_test"] == 40
  assert ev["accuracy"] == lines[-1]["eval_accuracy"]
  assert ev["transformed_accuracy"] == lines[-1]["eval_transformed_accuracy"]
  # Rerun: resumes from the final checkpoint, trains nothing more; without
  # --quiet the bar (on stderr) says so.
  assert cli.main([a for a in argv if a != "--quiet"]) == 0
  assert _read_metrics(workdir) == lines
  assert "train: 100%" in capsys.readouterr().err
  with pytest.raises(SystemExit, match="width"):
    cli.main(argv[:3] + ["--width", "0"])
