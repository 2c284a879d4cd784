#!/usr/bin/env bash
# Creates .venv-peer at the repo root: the PyTorch peer library tmeasures, used
# only by benchmarks/vs_tmeasures.py (through benchmarks/_tmeasures_peer.py).
# It is never a dependency of invjax.
#
#   bash benchmarks/setup_peer_env.sh
#
# torch is pinned to 2.13.0, whose CPU build (2.13.0+cpu) lies in pip's
# configured wheel directory on the project machines, so pip picks it and never
# pulls a multi-GB CUDA build; the script stops if it got a CUDA build anyway. tmeasures is then installed with --no-deps: its metadata
# may ask for other torch/torchvision releases, and pip would replace the CPU
# torch; what it actually imports is installed explicitly below.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$ROOT/.venv-peer"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check)

"${PIP[@]}" --upgrade pip wheel >/dev/null
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" numpy statsmodels scipy tqdm matplotlib pandas seaborn
"${PIP[@]}" --no-deps "tmeasures==1.2.11"

"$VENV/bin/python" - <<'PY'
import torch, tmeasures, tmeasures.pytorch  # noqa: F401
import sys
if torch.version.cuda is not None:
  sys.exit("got a CUDA build of torch; install the CPU wheel torch==2.13.0+cpu")
print("torch", torch.__version__, "| tmeasures", getattr(tmeasures, "__version__", "1.2.11"),
      "| CUDA build:", torch.version.cuda is not None)
PY
