"""Settings for the whole test suite."""

import gc
import os

import jax
import pytest

# On GPUs and TPUs, float32 convolutions and matmuls default to TF32 / bf16
# passes (~1e-3 relative), far from the float64 NumPy references the tests
# compare with. A no-op on CPU.
jax.config.update("jax_default_matmul_precision", "highest")

# The command line turns JAX's persistent compilation cache on in the user's
# cache directory; tests that call it in-process must not write there
# (tests/test_compile_cache.py clears this to test the cache itself).
os.environ.setdefault("INVJAX_NO_COMPILE_CACHE", "1")


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
