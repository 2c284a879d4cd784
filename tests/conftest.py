"""Settings for the whole test suite."""

import atexit
import gc
import os
import shutil
import tempfile

# LLVM's optimization level 1 instead of 3 for XLA's kernels: the suite
# compiles hundreds of small programs and runs each on a few samples, so
# compiling is most of its time (the suite runs in ~0.9× the time). Level 1
# gave values bit-equal to level 3 (four measures and the gradients of a
# CNN); level 0, ~0.8× the time, did not. Set before JAX starts, for the
# tests' subprocesses too.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = " ".join(
      [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=1"]
  ).strip()

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import pytest  # pylint: disable=g-import-not-at-top,wrong-import-position

from invjax._src import compile_cache  # pylint: disable=wrong-import-position

# On GPUs and TPUs, float32 convolutions and matmuls default to TF32 / bf16
# passes (~1e-3 relative), far from the float64 NumPy references the tests
# compare with. A no-op on CPU.
jax.config.update("jax_default_matmul_precision", "highest")

# JAX's persistent compilation cache, in a directory of this test process's
# own (never the user's), which the command line, the experiment runner and
# the subprocesses the tests start (JAX reads the variables) all use. Many
# tests compile the same programs (a killed run, its resumption and the
# uninterrupted reference; one model in several files): they load them.
# tests/test_compile_cache.py clears these settings to test the cache itself.
_CACHE = tempfile.mkdtemp(prefix="invjax-tests-jax-cache-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.pop("INVJAX_NO_COMPILE_CACHE", None)
os.environ["INVJAX_COMPILE_CACHE"] = _CACHE
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = str(
    compile_cache.MIN_COMPILE_TIME_SECS)
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"
compile_cache.enable_compile_cache(_CACHE)


@pytest.fixture(autouse=True, scope="module")
def _free_compiled_programs():
  """Drops each test module's compiled programs when the module is done.

  The engine and JAX keep every compiled program for reuse within a
  process, and the suite compiles hundreds in one pytest process; modules
  rarely share them, so each module frees its own.
  """
  yield
  from invjax._src import plan  # pylint: disable=g-import-not-at-top
  plan.PROGRAMS.clear()  # pylint: disable=protected-access
  jax.clear_caches()
  gc.collect()
