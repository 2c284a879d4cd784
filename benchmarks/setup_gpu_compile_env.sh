#!/usr/bin/env bash
# Creates .venv-gpu-compile at the repo root: invjax plus JAX's CUDA plugin, so
# that benchmarks/hlo_traffic.py can compile programs for a GPU on a machine
# without one (JAX's deviceless ahead-of-time compilation). Nothing runs on a
# GPU; the NVIDIA libraries take about 6 GB of disk.
#
#   bash benchmarks/setup_gpu_compile_env.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.venv-gpu-compile"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)
"${PIP[@]}" -e "$ROOT"
# The CUDA plugin of the very jax that invjax's install resolved.
JAX=$("$VENV/bin/python" -c "import jax; print(jax.__version__)")
"${PIP[@]}" "jax[cuda12]==$JAX"
