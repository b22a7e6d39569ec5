#!/usr/bin/env bash
# Builds the full CUDA extension ganops._C (CUDA kernels + torch bindings) against a CUDA build of torch
# in a separate venv, then imports it and checks that the CUDA kernels are registered. No GPU is needed:
# this catches errors in the csrc/cuda/*_binding.cpp files and in the link that
# scripts/compile_cuda_sources.sh (nvcc alone, no torch) cannot see. The repository is not modified:
# the build goes to a temporary directory, never next to the CPU build of ganops/_C*.so.
#
# Usage: scripts/build_cuda_extension_check.sh
#   VENV                 venv holding the CUDA torch (default /work/venv-cu; created when missing)
#   TORCH_SPEC           torch to install into a new venv (default torch==2.14.1)
#   CUDA_HOME            CUDA toolkit (default /usr/local/cuda)
#   TORCH_CUDA_ARCH_LIST default 9.0 (one architecture keeps the check fast)
#   MAX_JOBS             parallel compile jobs
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-/work/venv-cu}"
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export GANOPS_BUILD_CUDA=1
export PATH="$venv/bin:$CUDA_HOME/bin:$PATH"

if [[ ! -x "$venv/bin/python" ]]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install "${TORCH_SPEC:-torch==2.14.1}" setuptools wheel ninja numpy
fi
"$venv/bin/python" -c "import torch; assert torch.version.cuda, 'torch in $venv is not a CUDA build'; print('torch', torch.__version__, 'CUDA', torch.version.cuda)"

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$root"
"$venv/bin/python" setup.py build_ext --build-lib "$work/lib" --build-temp "$work/temp"

cd "$work/lib"
"$venv/bin/python" - <<'PY'
import torch

import ganops._C  # noqa: F401  (a namespace package here: only the extension is on the path)

assert torch.ops.ganops.cuda_kernels_built(), "built without GANOPS_WITH_CUDA"
ops = sorted(name for name in torch._C._dispatch_get_all_op_names() if name.startswith("ganops::") and name.endswith("_cpp"))
assert ops, "no ganops::*_cpp ops registered"
missing = [(op, key) for op in ops for key in ("CPU", "CUDA") if not torch._C._dispatch_has_kernel_for_dispatch_key(op, key)]
assert not missing, f"ops without a kernel: {missing}"
print(f"ganops._C built with CUDA kernels; CPU and CUDA kernels registered for all {len(ops)} ops: {ops}")
PY
