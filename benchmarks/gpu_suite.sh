#!/usr/bin/env bash
# The GPU figures of benchmarks/README.md in one run (one accelerator lease):
#
#   bash benchmarks/gpu_suite.sh OUTDIR [PEER_PYTHON [STEP ...]]
#
# PEER_PYTHON is a Python with torch (CUDA) and tmeasures 1.2.11 (default:
# .venv-peer/bin/python). Each step has its own time limit so that one slow
# step cannot eat the others; every log is written to OUTDIR as it goes.
set -uo pipefail
out=${1:?usage: gpu_suite.sh OUTDIR [PEER_PYTHON]}
peer=${2:-.venv-peer/bin/python}
steps=" ${*:3} "
[ "$steps" = "  " ] && steps=" tests nv_vs_forward lee vs_tmeasures "
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py=${PYTHON:-python3}

step() {  # step NAME SECONDS CMD...
  local name=$1 limit=$2; shift 2
  [[ "$steps" == *" $name "* ]] || return 0
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$out/$name.log"
  echo "=== $name: exit ${PIPESTATUS[0]} after $((SECONDS - t0)) s"
}

"$py" -c "import jax, flax; print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"
# The reduction branch of stats.weighted_sum that accelerators run, the
# variance measures against their float64 references and the fused Pallas
# kernel (compiled by Triton here, interpreted on CPU), on the real device.
XLA_PYTHON_CLIENT_PREALLOCATE=false \
  step tests 120 "$py" -m pytest -q -p no:cacheprovider -n 4 tests/test_variance.py \
  tests/test_fused_sums.py
step nv_vs_forward 120 "$py" benchmarks/nv_vs_forward.py --n 10000 --t 16 --batch-size 1024 --repeats 3 --pallas
step lee 120 "$py" benchmarks/lee_throughput.py --num-images 4096 --batch-size 256 --repeats 3 --layerwise
step vs_tmeasures 240 "$py" benchmarks/vs_tmeasures.py --device cuda --peer-python "$peer" \
  --sizes 10000x16,10000x64 --images-per-step 4096 --repeats 3 --peer-batch-size 512 \
  --peer-budget 120 \
  --out "$out/vs_tmeasures_cuda.md"
# The C4 agreement alone (both networks in full float32).
step agreement 90 "$py" benchmarks/vs_tmeasures.py --device cuda --peer-python "$peer" --skip-timing
# The same with NV's tolerant 0/0 rule on both sides (units constant up to round-off).
step agreement_tol 90 "$py" benchmarks/vs_tmeasures.py --device cuda --peer-python "$peer" --skip-timing \
  --zero-tolerance 1e-6
