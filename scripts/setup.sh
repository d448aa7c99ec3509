#!/usr/bin/env bash
# Creates .venv (if missing) and installs the project with its test extra.
# torch goes first, pinned: pip takes the CPU wheel on this machine's disk; an unpinned torch pulls a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q "$TORCH_SPEC"
.venv/bin/python -m pip install -q -e ".[test]"
echo "setup: .venv ready ($(.venv/bin/python -c 'import torch, ray, diffusers; print("torch", torch.__version__, "ray", ray.__version__, "diffusers", diffusers.__version__)'))"
