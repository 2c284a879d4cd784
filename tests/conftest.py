"""Settings for the whole test suite."""

import jax

# On GPUs and TPUs, float32 convolutions and matmuls default to TF32 / bf16
# passes (~1e-3 relative), far from the float64 NumPy references the tests
# compare with. A no-op on CPU.
jax.config.update("jax_default_matmul_precision", "highest")
