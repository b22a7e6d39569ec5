#!/usr/bin/env bash
# The GPU checks of ganops, in steps that each fit one 10-minute device call (together ~12-15 minutes):
#   build     scripts/gpu_step_build.sh     CUDA extension for sm_90 (MAX_JOBS=16), `ganops info`      ~3-5 min
#   tests     scripts/gpu_step_tests.sh     pytest -m gpu, every backend required                      ~3-6 min
#   bench     scripts/gpu_step_bench.sh     benchmarks + measured rankings (one or more ops per call)  ~4-8 min each
#   memcheck  scripts/gpu_step_memcheck.sh  compute-sanitizer memcheck, no caching allocator           ~2-4 min
# Every step builds first if the tree has no CUDA build (a warm machine keeps it), writes its results under $OUT
# (at most 8 files a call come back) and prints a short summary, so the steps can run one per call:
#   device run: bash scripts/gpu_check.sh build
#   device run: bash scripts/gpu_check.sh tests memcheck
#   device run: bash scripts/gpu_check.sh bench attention
# `bash scripts/gpu_check.sh all` runs build, tests, memcheck and the quick benchmarks in one call (needs a
# longer limit than one device call allows: for a machine held without the 10-minute cap).
set -uo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ $# -gt 0 ] || set -- all
status=0
case "$1" in
    build) bash "$here/gpu_step_build.sh" || status=1 ;;
    bench) shift; bash "$here/gpu_step_bench.sh" "$@" || status=1 ;;
    all)
        bash "$here/gpu_step_build.sh" || exit 1
        bash "$here/gpu_step_tests.sh" || status=1
        bash "$here/gpu_step_memcheck.sh" || status=1
        BENCH_ARGS="${BENCH_ARGS:---quick}" bash "$here/gpu_step_bench.sh" || status=1
        ;;
    *)
        for step in "$@"; do
            case "$step" in
                tests|memcheck|build) bash "$here/gpu_step_$step.sh" || status=1 ;;
                *) echo "unknown step $step (build, tests, bench [ops], memcheck, all)"; exit 2 ;;
            esac
        done
        ;;
esac
echo "--- summary"
cat "${OUT:-/tmp/ganops-gpu-check}/summary.txt" 2>/dev/null
exit $status
