"""The Triton attention launches as planned for a GPU, checked without one: their grids against CUDA's limits,
their shared-memory fallbacks, and (in a subprocess, compiled for sm_90 by Triton's bundled ptxas) their
registers, spills and tensor-core instructions."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

from ganops.triton_kernels import _common  # noqa: E402
from ganops.triton_kernels import attention as kernels  # noqa: E402


def planned_launches(batch, n_q, n_k, d_qk, d_v, dtype=torch.bfloat16, allow_tf32=False):
    """Every launch of forward, backward and double backward for ``meta`` tensors (CUDA's choices, no data)."""
    compute_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def empty(*shape):
        return torch.empty(*shape, device="meta", dtype=dtype)

    q, k, v = empty(batch, n_q, d_qk), empty(batch, n_k, d_qk), empty(batch, n_k, d_v)
    out, grad_out = empty(batch, n_q, d_v), empty(batch, n_q, d_v)
    lse = torch.empty(batch, n_q, device="meta", dtype=compute_dtype)
    extra = dict(compute_dtype=compute_dtype)
    launches = kernels.forward_plan(q, k, v, 1.0, allow_tf32, **extra)[1]
    launches += kernels.backward_plan(grad_out, q, k, v, out, lse, 1.0, allow_tf32, **extra)[1]
    launches += kernels.double_backward_plan(q, k, v, grad_out, q, k, v, out, lse, 1.0, allow_tf32, **extra)[1]
    return launches


def kind_of(launch):
    return next(kind for kind, kernel in kernels.KERNELS.items() if kernel is launch.kernel)


def test_grids_fold_the_batch_onto_axis_0():
    """B x heads = 100000 (above the 65535 that CUDA allows on grid axes 1 and 2) fits on axis 0."""
    for launch in planned_launches(100_000, 1000, 300, 12, 48):
        assert len(launch.grid) == 1, (launch.name, launch.grid)
        rows = 300 if kind_of(launch) in ("backward_key", "double_backward_key") else 1000
        block = launch.kwargs["BLOCK_K" if kind_of(launch) in ("backward_key", "double_backward_key") else "BLOCK_Q"]
        assert launch.grid == (100_000 * triton.cdiv(rows, block),)
        assert launch.grid[0] <= _common.MAX_GRID[0]


def test_fallbacks_halve_the_larger_block_down_to_16():
    """Where a GPU lacks the shared memory of the default blocks, the launch retries with the larger block
    halved, its grid following the block that tiles its rows."""
    forward = planned_launches(3, 100, 7, 12, 48, dtype=torch.float16)[0]
    assert kind_of(forward) == "forward"
    chain = [(launch.grid, launch.kwargs["BLOCK_Q"], launch.kwargs["BLOCK_K"]) for launch in (forward, *forward.fallbacks)]
    assert chain[0] == ((3 * triton.cdiv(100, chain[0][1]),), *chain[0][1:])
    for (_, block_q, block_k), (grid, next_q, next_k) in zip(chain, chain[1:]):
        assert (next_q, next_k) == ((block_q // 2, block_k) if block_q >= block_k else (block_q, block_k // 2))
        assert grid == (3 * triton.cdiv(100, next_q),)
    assert max(chain[-1][1:]) == 16


def test_backward_is_five_matmuls_per_tile_pair_with_atomic_dq_except_for_float64():
    """fp16/bf16/fp32: one key-side kernel adds dQ with atomics (no query-side kernel); float64, and every dtype
    under torch.use_deterministic_algorithms, keeps the deterministic query-side kernel."""
    def backward_kinds(dtype):
        return [kind_of(launch) for launch in planned_launches(2, 64, 64, 12, 48, dtype=dtype)[1:-2]]

    assert backward_kinds(torch.bfloat16) == ["delta", "backward_key", "cast"]
    assert backward_kinds(torch.float32) == ["delta", "backward_key"]
    assert backward_kinds(torch.float64) == ["delta", "backward_key", "backward_query"]
    previous = torch.are_deterministic_algorithms_enabled()
    try:
        torch.use_deterministic_algorithms(True)
        assert backward_kinds(torch.bfloat16) == ["delta", "backward_key", "backward_query"]
    finally:
        torch.use_deterministic_algorithms(previous)


# Compiles in a fresh process without TRITON_INTERPRET (the interpreter replaces the JIT).
_COMPILE = r"""
import json, os, re, subprocess, sys, tempfile
import torch, triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
sys.path.insert(0, os.path.dirname(sys.argv[1]))
from test_attention_triton_compile import kind_of, planned_launches
from ganops.gpu_code_check import _bind

PTXAS = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
dtype, tf32, shape = getattr(torch, sys.argv[2]), sys.argv[3] == "1", json.loads(sys.argv[4])
for launch in planned_launches(*shape, dtype=dtype, allow_tf32=tf32):
    # Bound as kernel[grid](...) binds them: unit strides and multiples of 16 specialise as on a GPU.
    signature, constants, attributes, options = _bind(launch, 90)
    source = ASTSource(launch.kernel, signature, constants, attributes)
    compiled = triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options)
    ptx = compiled.asm["ptx"]
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "kernel.ptx")
        with open(path, "w") as file:
            file.write(ptx)
        report = subprocess.run([PTXAS, "-v", "--gpu-name", "sm_90a", path, "-o", path + ".cubin"],
                                capture_output=True, text=True, check=True).stderr
    print(json.dumps(dict(
        kind=kind_of(launch), shared=compiled.metadata.shared,
        spills=int(re.search(r"(\d+) bytes spill stores", report).group(1)),
        wgmma="wgmma.mma_async" in ptx, mma="mma.sync" in ptx,
    )), flush=True)
"""


def compile_for_hopper(dtype_name, allow_tf32, shape):
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    arguments = [__file__, dtype_name, "1" if allow_tf32 else "0", json.dumps(shape)]
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE, *arguments], capture_output=True, text=True, env=environment, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return [json.loads(line) for line in result.stdout.splitlines()]


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(2, 4096, 1024, 12, 48), (2, 1024, 1024, 64, 256)], ids=["BigGAN", "Dv=256"])
def test_half_precision_kernels_compile_for_hopper_without_spills_on_wgmma(shape):
    """bf16 at BigGAN's head dims and at the widest benchmark heads: every kernel compiles for sm_90 within an
    H100's 227 KiB of shared memory and every kernel with a dot uses wgmma; forward and backward do not spill,
    nor does the double backward at BigGAN's dims (at Dv=256 it still spills a few hundred bytes: bounded here)."""
    for report in compile_for_hopper("bfloat16", False, list(shape)):
        assert report["shared"] <= 227 * 1024, report
        double_backward = report["kind"].startswith("double_backward")
        assert report["spills"] <= (512 if double_backward and shape[-1] == 256 else 0), report
        if report["kind"] not in ("delta", "cast"):
            assert report["wgmma"], report
