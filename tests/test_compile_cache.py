"""The persistent compilation cache: its directory, its switches, its reuse."""

import os
import pathlib
import subprocess
import sys
import textwrap
import types

import jax
import pytest

import invjax
from invjax import cli
from invjax._src import compile_cache

REPO = pathlib.Path(__file__).resolve().parents[1]
_OPTIONS = ("jax_compilation_cache_dir",
            "jax_persistent_cache_min_compile_time_secs",
            "jax_persistent_cache_min_entry_size_bytes")


@pytest.fixture(autouse=True)
def pristine(monkeypatch):
  """JAX's cache options as a fresh process has them, restored afterwards.

  The cache is process-wide: a test that turned it on would otherwise leave
  every later test in the session writing to its (deleted) directory.
  """
  saved = {k: getattr(jax.config, k) for k in _OPTIONS}
  for var in (compile_cache.ENV_DIR, compile_cache.ENV_OFF, "XDG_CACHE_HOME",
              "JAX_COMPILATION_CACHE_DIR"):
    monkeypatch.delenv(var, raising=False)
  jax.config.update("jax_compilation_cache_dir", None)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  yield
  for k, v in saved.items():
    jax.config.update(k, v)
  compile_cache._forget_open_cache()  # pylint: disable=protected-access


def test_default_directory_order(tmp_path):
  home = str(tmp_path / "home")
  d = compile_cache.default_cache_dir
  assert d({"HOME": home}) == pathlib.Path(home, ".cache", "invjax", "jax")
  assert d({"HOME": home, "XDG_CACHE_HOME": "/x/cache"}) == pathlib.Path(
      "/x/cache/invjax/jax")
  # The XDG spec ignores relative (and empty) values.
  assert d({"HOME": home, "XDG_CACHE_HOME": "rel"}) == pathlib.Path(
      home, ".cache", "invjax", "jax")
  assert d({"HOME": home, "XDG_CACHE_HOME": "/x/cache",
            "INVJAX_COMPILE_CACHE": "/y/jax"}) == pathlib.Path("/y/jax")
  # A relative INVJAX_COMPILE_CACHE is made absolute, against the cwd.
  assert d({"INVJAX_COMPILE_CACHE": "rel"}) == pathlib.Path.cwd() / "rel"
  # A directory JAX was already given (JAX_COMPILATION_CACHE_DIR) is kept.
  jax.config.update("jax_compilation_cache_dir", "/z/jax")
  assert d({"HOME": home}) == pathlib.Path("/z/jax")
  assert d({"INVJAX_COMPILE_CACHE": "/y/jax"}) == pathlib.Path("/y/jax")


@pytest.mark.parametrize("value, off", [
    ("", False), ("0", False), ("false", False), ("No", False),
    ("off", False), ("1", True), ("true", True), ("yes", True)])
def test_disabled_by_environment(value, off):
  assert compile_cache.disabled_by_environment(
      {"INVJAX_NO_COMPILE_CACHE": value}) is off
  assert not compile_cache.disabled_by_environment({})


def test_enable_is_idempotent_and_returns_the_directory(tmp_path):
  target = tmp_path / "a" / "jax"
  assert invjax.enable_compile_cache(target) == str(target)
  assert target.is_dir()
  assert jax.config.jax_compilation_cache_dir == str(target)
  assert jax.config.jax_persistent_cache_min_compile_time_secs == (
      compile_cache.MIN_COMPILE_TIME_SECS)
  assert jax.config.jax_persistent_cache_min_entry_size_bytes == -1
  assert invjax.enable_compile_cache(target) == str(target)
  assert invjax.enable_compile_cache() == str(target)   # JAX's directory
  other = tmp_path / "b"
  assert invjax.enable_compile_cache(other) == str(other)
  assert jax.config.jax_compilation_cache_dir == str(other)


def test_enable_lowers_never_raises_thresholds(tmp_path):
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 1000)
  invjax.enable_compile_cache(tmp_path)
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
  assert jax.config.jax_persistent_cache_min_entry_size_bytes == 1000


def test_environment_chooses_the_directory(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert invjax.enable_compile_cache() == str(tmp_path / "xdg/invjax/jax")
  jax.config.update("jax_compilation_cache_dir", None)
  monkeypatch.setenv("INVJAX_COMPILE_CACHE", str(tmp_path / "mine"))
  assert invjax.enable_compile_cache() == str(tmp_path / "mine")


def test_importing_invjax_turns_nothing_on(tmp_path):
  env = dict(os.environ, HOME=str(tmp_path), XDG_CACHE_HOME=str(tmp_path))
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  out = subprocess.run(
      [sys.executable, "-c", "import invjax, jax; "
       "print(jax.config.jax_compilation_cache_dir)"],
      env=env, capture_output=True, text=True, check=True, cwd=REPO)
  assert out.stdout.strip() == "None"
  assert not (tmp_path / "invjax").exists()


# Each command fails on a bad argument right after the cache is set up, so
# no data is loaded and nothing is trained.
_FAILING = {
    "train": ["train", "--width", "0"],
    "measure": ["measure", "--num-samples", "1000000000"],
    "experiment": ["experiment", "no_such_experiment"],
}


@pytest.mark.parametrize("command", sorted(_FAILING))
def test_cli_turns_it_on_by_default(command, tmp_path, monkeypatch):
  monkeypatch.setenv("INVJAX_COMPILE_CACHE", str(tmp_path / "c"))
  with pytest.raises(SystemExit):
    cli.main(_FAILING[command])
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "c")
  assert (tmp_path / "c").is_dir()


@pytest.mark.parametrize("command", sorted(_FAILING))
@pytest.mark.parametrize("how", ["flag", "env"])
def test_cli_off_switches(command, how, tmp_path, monkeypatch):
  monkeypatch.setenv("INVJAX_COMPILE_CACHE", str(tmp_path / "c"))
  argv = list(_FAILING[command])
  if how == "flag":
    argv.append("--no-compile-cache")
  else:
    monkeypatch.setenv("INVJAX_NO_COMPILE_CACHE", "1")
  with pytest.raises(SystemExit):
    cli.main(argv)
  assert jax.config.jax_compilation_cache_dir is None
  assert not (tmp_path / "c").exists()


def test_plot_needs_no_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("INVJAX_COMPILE_CACHE", str(tmp_path / "c"))
  with pytest.raises(SystemExit):
    cli.main(["plot", str(tmp_path / "missing.npz")])
  assert jax.config.jax_compilation_cache_dir is None


@pytest.mark.parametrize("compile_cache_on, env_off, expected", [
    (True, False, True), (False, False, False), (True, True, False)])
def test_runner_turns_it_on(compile_cache_on, env_off, expected, tmp_path,
                            monkeypatch):
  sys.path.insert(0, str(REPO))
  try:
    from experiments import _runner  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.remove(str(REPO))
  monkeypatch.setenv("INVJAX_COMPILE_CACHE", str(tmp_path / "c"))
  if env_off:
    monkeypatch.setenv("INVJAX_NO_COMPILE_CACHE", "1")
  seen = []
  fake = types.ModuleType("fake_experiment", "A stand-in experiment.")
  fake.get_config = lambda smoke=False, **kw: _runner.Config(
      seed=0, smoke=smoke, **kw)
  # An experiment is a sweep: its cells, one cell's run, the summary.
  fake.get_sweep = lambda config=None: [{}]
  fake.run_cell = lambda config, outdir: seen.append(
      jax.config.jax_compilation_cache_dir) or {}
  fake.summarize = lambda config, table, outdir: {}
  monkeypatch.setattr(_runner, "get_experiment", lambda name: fake)
  _runner.run_experiment("fake", out=tmp_path / "run", quiet=True,
                         compile_cache=compile_cache_on)
  assert seen == [str(tmp_path / "c") if expected else None]


# Measures a tiny network; with "check" it also reports what JAX's cache did.
_PROGRAM = textwrap.dedent("""
    import logging, os, sys
    import jax, jax.numpy as jnp, numpy as np
    import invjax
    from invjax import measures as ms, transforms as tr

    cache = invjax.enable_compile_cache(sys.argv[1])
    # The tiny program compiles in milliseconds: keep it anyway.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    # Misses (explain_cache_misses) and hits (log_compiles) go to stderr.
    jax.config.update("jax_explain_cache_misses", True)
    jax.config.update("jax_log_compiles", True)
    w = jnp.asarray(np.random.default_rng(0).normal(size=(64, 8)), jnp.float32)
    acts = lambda x: {"fc": jnp.tanh(x.reshape(x.shape[0], -1) @ w)}
    images = np.random.default_rng(1).uniform(size=(8, 8, 8, 1))
    r = invjax.measure(acts, images.astype(np.float32), tr.rot90(),
                       ms.normalized_variance(), batch_size=4)
    print("NV", repr(float(r.per_layer["fc"])))
    print("FILES", sum(len(f) for _, _, f in os.walk(cache)))
    """)


def test_a_second_process_reuses_the_cache(tmp_path):
  cache = tmp_path / "cache"
  env = dict(os.environ)
  env.pop("INVJAX_NO_COMPILE_CACHE", None)

  def run():
    out = subprocess.run([sys.executable, "-c", _PROGRAM, str(cache)],
                         env=env, capture_output=True, text=True, cwd=REPO,
                         timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    lines = dict(l.split(" ", 1) for l in out.stdout.splitlines()
                 if l.startswith(("NV ", "FILES ")))
    return lines, out.stderr

  first, log1 = run()
  assert int(first["FILES"]) > 0
  assert "PERSISTENT COMPILATION CACHE MISS" in log1
  second, log2 = run()
  # Every program the second process needs was in the cache: JAX logs hits,
  # no miss, and writes nothing new.
  assert "Persistent compilation cache hit" in log2, log2
  assert "PERSISTENT COMPILATION CACHE MISS" not in log2, log2
  assert second["FILES"] == first["FILES"]
  assert second["NV"] == first["NV"]
