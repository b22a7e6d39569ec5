#!/usr/bin/env bash
# Step 1 (~3-5 min): versions, the CUDA extension for sm_90 (MAX_JOBS=16), `python -m ganops info`.
# Writes $OUT/versions.txt, build.log, info.txt, summary.txt.
source "$(dirname "$0")/gpu_common.sh"
start=$SECONDS
python3 -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, torch.cuda.get_device_name())" | tee "$OUT/versions.txt"
nvcc --version | tail -1 | tee -a "$OUT/versions.txt"
ensure_built || { summarise build FAILED $((SECONDS - start)); exit 1; }
python3 -m ganops info >"$OUT/info.txt" 2>&1
grep -E "CUDA kernels built|GPU:" "$OUT/info.txt"
summarise build ok $((SECONDS - start))
