# Sourced by scripts/gpu_step_*.sh: the shared setup of the GPU steps (run on the lent GPU machine, whose python3
# has torch+CUDA, triton, pytest and hypothesis; nothing can be downloaded there).
#   OUT        where results go (the device tool fetches it; at most 8 files per call, 2 folders deep)
#   STEP_LIMIT seconds a step's main command may run (default 540: a step must fit the 10-minute call limit)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT="${OUT:-/tmp/ganops-gpu-check}"
STEP_LIMIT="${STEP_LIMIT:-540}"
SCRATCH="${SCRATCH:-/tmp/ganops-gpu-scratch}"
mkdir -p "$OUT" "$SCRATCH"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" GANOPS_BUILD_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}"

# Builds the C++/CUDA extension unless the one in the tree already has CUDA kernels (a warm machine keeps it).
ensure_built() {
    if python3 -c "from ganops import _extension as e; import sys; sys.exit(0 if e.is_loaded() and e.cuda_kernels_built() else 1)" 2>/dev/null; then
        echo "extension already built with CUDA kernels"
        return 0
    fi
    local start=$SECONDS
    if ! timeout "$STEP_LIMIT" python3 -m pip install --no-build-isolation --no-deps --no-index -e . >"$OUT/build.log" 2>&1; then
        echo "BUILD FAILED after $((SECONDS - start)) s (see build.log):"
        tail -40 "$OUT/build.log"
        return 1
    fi
    echo "built in $((SECONDS - start)) s"
}

# Prints "<step>: <status> (<seconds> s) <detail>" and appends it to $OUT/summary.txt.
summarise() {
    echo "$1: $2 ($3 s) ${4:-}" | tee -a "$OUT/summary.txt"
}
