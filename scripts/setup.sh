#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project. The container image runs this same script.
#   TORCH_SPEC       torch requirement installed first (default torch==2.13.0: the CPU wheel on the build machines;
#                    an unpinned torch resolved by pip pulls a multi-GB CUDA build)
#   TORCH_INDEX_URL  extra index for torch (e.g. https://download.pytorch.org/whl/cu128 for a CUDA build)
#   EXTRAS           pip extras of the project (default "test"; the image uses "")
#   VENV             virtualenv location (default .venv)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
EXTRAS=${EXTRAS-test}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC" --extra-index-url "$TORCH_INDEX_URL"
else
  "$VENV/bin/python" -m pip install -q "$TORCH_SPEC"
fi
if [ -n "$EXTRAS" ]; then
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
else
  "$VENV/bin/python" -m pip install -q -e .
fi
"$VENV/bin/python" -c 'import torch, ray, diffusers; print("setup: ready: torch", torch.__version__, "ray", ray.__version__, "diffusers", diffusers.__version__)'
