#!/usr/bin/env bash
# Creates .venv (once) with the CPU build of torch 2.13, triton for the CPU interpreter, the test tools,
# and ganops installed in editable mode (which compiles the C++ extension). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=".venv/bin/python -m pip"
$PIP install --quiet --upgrade "pip>=23" "setuptools>=64" wheel
# torch first and pinned: a bare `torch` requirement would pull a multi-GB CUDA build.
$PIP install --quiet "torch==${GANOPS_TORCH_VERSION:-2.13.0}"
# triton 3.6's CPU interpreter breaks with numpy 2.4 and warns with 2.3.
$PIP install --quiet "numpy<2.3" "triton==3.6.0" ninja tqdm pytest pytest-xdist filelock hypothesis matplotlib
# No build isolation: the extension must compile against the torch installed above.
PATH="$PWD/.venv/bin:$PATH" $PIP install --quiet --no-build-isolation -e .
.venv/bin/python -m ganops info
