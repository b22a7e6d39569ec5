#!/usr/bin/env bash
# Step 3 (~4-8 min): benchmarks of the given ops (default: all four; BENCH_ARGS=--quick for the short lists),
# with the measured backend rankings. Each call of this step fits 10 minutes for one or two ops: run it as
# `gpu_step_bench.sh attention` and `gpu_step_bench.sh spectral_norm minibatch_stddev gradient_penalty`.
# Writes $OUT/bench_<ops>.log, bench_<ops>.tgz (the results folder: <op>.md and <op>.json), measured_rankings.json.
source "$(dirname "$0")/gpu_common.sh"
start=$SECONDS
ops=("$@")
[ ${#ops[@]} -gt 0 ] || ops=(attention spectral_norm minibatch_stddev gradient_penalty)
name="bench_$(IFS=-; echo "${ops[*]}")"
ensure_built || { summarise "$name" "NOT RUN (build failed)" $((SECONDS - start)); exit 1; }
results="$SCRATCH/$name"
rm -rf "$results"
op_args=()
for op in "${ops[@]}"; do op_args+=(--op "$op"); done
timeout "$STEP_LIMIT" python3 -m ganops bench --device cuda --output "$results" --write-rankings "${op_args[@]}" \
    ${BENCH_ARGS:-} >"$OUT/$name.log" 2>&1
status=$?
tar czf "$OUT/$name.tgz" -C "$results" . 2>/dev/null
cp ganops/measured_rankings.json "$OUT/" 2>/dev/null
grep -E "^\| |^#" "$OUT/$name.log" | tail -30
if [ $status -eq 124 ]; then
    summarise "$name" "TIMED OUT after ${STEP_LIMIT} s (partial results kept)" $((SECONDS - start))
else
    summarise "$name" "$([ $status -eq 0 ] && echo ok || echo FAILED)" $((SECONDS - start))
fi
exit $status
