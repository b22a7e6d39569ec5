#!/usr/bin/env bash
# Run on the lent GPU machine through the device tool (no internet there; its python3 has torch+CUDA,
# triton, pytest, hypothesis, tqdm, ninja): builds the CUDA extension, runs the GPU tests, the CUDA kernels
# under compute-sanitizer, and the benchmarks; everything worth keeping goes to $OUT.
#   device run: PYTHONUNBUFFERED=1 bash scripts/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-/tmp/ganops-gpu-check}"
mkdir -p "$OUT"
status=0

python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"

# Build for the GPU that is here (sm_90 on H100/H200) to keep the build short.
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" GANOPS_BUILD_CUDA=1 MAX_JOBS=16
python3 -m pip install --no-build-isolation --no-deps --no-index -e . >"$OUT/build.log" 2>&1 \
    || { echo "build failed (see build.log)"; tail -40 "$OUT/build.log"; exit 1; }
python3 -m ganops info | tee "$OUT/info.txt"

export GANOPS_REQUIRE_BACKENDS=cpp,triton
python3 -m pytest -q -m gpu tests 2>&1 | tee "$OUT/gpu_tests.log" || status=1
compute-sanitizer --tool memcheck --error-exitcode 1 \
    python3 -m pytest -q -m gpu tests -k "cpp and float32 and not drawn" 2>&1 | tail -30 | tee "$OUT/memcheck.log" \
    || status=1
python3 -m ganops bench --device cuda --output "$OUT/results" --write-rankings 2>&1 | tee "$OUT/bench.log" || status=1
cp ganops/measured_rankings.json "$OUT/" 2>/dev/null
exit $status
