#!/usr/bin/env bash
# Compiles every csrc/cuda/*.cu with nvcc alone (no torch, no GPU needed) for sm_80 and sm_90, so CI can
# catch CUDA compile errors on machines without a CUDA build of torch. Warnings fail the build: nvcc's
# own (-Werror all-warnings) and the host compiler's -Wall -Wextra on the host parts of the .cu files.
#
# Usage: scripts/compile_cuda_sources.sh   (NVCC=/path/to/nvcc to pick a compiler; default: nvcc on
# PATH, else $CUDA_HOME/bin/nvcc, else /usr/local/cuda/bin/nvcc)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
nvcc="${NVCC:-$(command -v nvcc || echo "${CUDA_HOME:-/usr/local/cuda}/bin/nvcc")}"
if [[ ! -x "$nvcc" ]]; then
  echo "error: nvcc not found (set NVCC or CUDA_HOME)" >&2
  exit 1
fi

out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

shopt -s nullglob
sources=("$root"/csrc/cuda/*.cu)
if (( ${#sources[@]} == 0 )); then
  echo "error: no .cu files under $root/csrc/cuda" >&2
  exit 1
fi

"$nvcc" --version | tail -n 1
for src in "${sources[@]}"; do
  obj="$out/$(basename "${src%.cu}").o"
  # --threads 0: the two architectures compile in parallel (one thread per core), halving the wall time.
  "$nvcc" -c -std=c++17 -O3 --threads 0 \
    -gencode arch=compute_80,code=sm_80 \
    -gencode arch=compute_90,code=sm_90 \
    --Werror all-warnings \
    -Xcompiler -Wall,-Wextra,-Werror \
    "$src" -o "$obj"
  echo "compiled ${src#"$root"/} for sm_80 and sm_90 ($(stat -c %s "$obj") bytes)"
done
