#!/usr/bin/env bash
# Step 4 (~2-4 min): the C++ and Triton GPU tests of float32 under compute-sanitizer memcheck, with PyTorch's
# caching allocator off (PYTORCH_NO_CUDA_MEMORY_CACHING=1): otherwise an out-of-bounds access that stays inside a
# pooled block goes unseen. compute-sanitizer refuses the device on some machines (gVisor: "Device not
# supported"): that is reported as SKIPPED, not as a failure.
# Writes $OUT/memcheck.log, summary.txt.
source "$(dirname "$0")/gpu_common.sh"
start=$SECONDS
if ! command -v compute-sanitizer >/dev/null; then
    summarise memcheck "SKIPPED (compute-sanitizer not installed)" 0
    exit 0
fi
ensure_built || { summarise memcheck "NOT RUN (build failed)" $((SECONDS - start)); exit 1; }
export PYTORCH_NO_CUDA_MEMORY_CACHING=1 GANOPS_REQUIRE_BACKENDS=cpp,triton
timeout "$STEP_LIMIT" compute-sanitizer --tool memcheck --error-exitcode 1 --print-limit 20 \
    python3 -m pytest -q -x -m gpu tests -p no:cacheprovider -k "float32 and not drawn" >"$OUT/memcheck.log" 2>&1
status=$?
tail -20 "$OUT/memcheck.log"
if grep -qiE "device not supported|Device not supported|error 999" "$OUT/memcheck.log"; then
    summarise memcheck "SKIPPED (compute-sanitizer: device not supported on this machine)" $((SECONDS - start))
    exit 0
fi
errors=$(grep -oE "ERROR SUMMARY: [0-9]+ error" "$OUT/memcheck.log" | tail -1)
if [ $status -eq 124 ]; then
    summarise memcheck "TIMED OUT after ${STEP_LIMIT} s" $((SECONDS - start)) "$errors"
elif [ $status -eq 0 ]; then
    summarise memcheck ok $((SECONDS - start)) "$errors"
else
    summarise memcheck FAILED $((SECONDS - start)) "$errors"
fi
exit $status
