#!/usr/bin/env bash
# Step 2 (~3-6 min after the build): the GPU tests (`-m gpu`) with every backend required.
# Writes $OUT/gpu_tests.log, gpu_tests.xml, summary.txt.
source "$(dirname "$0")/gpu_common.sh"
start=$SECONDS
ensure_built || { summarise tests "NOT RUN (build failed)" $((SECONDS - start)); exit 1; }
export GANOPS_REQUIRE_BACKENDS=cpp,triton
timeout "$STEP_LIMIT" python3 -m pytest -q -m gpu tests -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" \
    >"$OUT/gpu_tests.log" 2>&1
status=$?
tail -25 "$OUT/gpu_tests.log"
result=$(tail -1 "$OUT/gpu_tests.log")
if [ $status -eq 124 ]; then
    summarise tests "TIMED OUT after ${STEP_LIMIT} s" $((SECONDS - start)) "$result"
elif [ $status -eq 0 ]; then
    summarise tests ok $((SECONDS - start)) "$result"
else
    summarise tests FAILED $((SECONDS - start)) "$result"
fi
exit $status
