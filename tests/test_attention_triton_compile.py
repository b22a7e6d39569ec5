"""The Triton attention launches as planned for a GPU, checked without one: their grids against CUDA's limits,
their shared-memory fallbacks, the backward's kernels and each arch's tile configuration. Their compiled
registers, spills and tensor-core instructions are checked by ``tests/test_gpu_code_check.py``."""

from __future__ import annotations

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


def test_configuration_follows_the_arch():
    """The same bf16 launches at Dv=128 plan 64-row steps for sm_90's wgmma and smaller steps on sm_80, where
    mma.sync keeps every operand in registers (64-row steps spilled 60-352 B there); a CUDA tensor's own
    capability decides when no arch is named."""
    def configs(arch):
        empty = dict(device="meta", dtype=torch.bfloat16)
        q, k, v = torch.empty(2, 64, 32, **empty), torch.empty(2, 64, 32, **empty), torch.empty(2, 64, 128, **empty)
        lse = torch.empty(2, 64, device="meta")
        launches = kernels.double_backward_plan(
            q, k, v, v, q, k, v, v, lse, 1.0, False, compute_dtype=torch.float32, arch=arch
        )[1]
        return {kind_of(launch): (launch.kwargs["BLOCK_Q"], launch.kwargs["BLOCK_K"]) for launch in launches}

    assert configs(90) == configs(None) == {"double_backward_query": (64, 32), "double_backward_key": (32, 64)}
    assert configs(80) == {"double_backward_query": (64, 16), "double_backward_key": (32, 32)}
    assert _common.target_arch(torch.device("cpu")) is None
    assert _common.target_arch(torch.device("meta"), 80) == 80
