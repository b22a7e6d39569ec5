"""Triton kernels for attention: forward, backward and double backward, all flash-style (never an N x N matrix
in memory). The math and notation are those of ``ganops/reference/attention.py``.

* Forward: one program per (batch, query block); online softmax over key blocks; saves ``lse``.
* Backward, at FlashAttention-2's work of 5 tile matmuls per (query block, key block) pair: a row kernel computes
  ``Delta = rowsum(dO * O)`` (and zeroes the float32 ``dQ`` accumulator); then one key-side kernel (one program per
  key block, walking the query blocks) computes ``S = q k^T``, ``dP = dO v^T`` once per tile pair and from them
  accumulates ``dV += P^T dO``, ``dK += dS^T q`` in registers and adds ``dS k`` to ``dQ`` with float32 atomics.
  The atomics make ``dQ``'s summation order, hence its last bits, vary from run to run. float64 inputs, and any
  dtype under ``torch.use_deterministic_algorithms(True)``, take the deterministic path instead: the key-side
  kernel without ``dQ`` plus a query-side kernel that recomputes ``S`` and ``dP`` for ``dQ`` (7 matmuls), so
  float64 gradients are reproducible to the bit (gradcheck compares two backward passes exactly).
* Double backward: the query-side kernel walks the keys twice, first for the row statistics ``Delta``,
  ``rho``, ``gamma`` and the row sums of ``P`` (which need every key), then for ``grad dO`` and ``grad q``; it
  stores the statistics for the key-side kernel, which accumulates ``grad k`` and ``grad v``. (``out`` is not
  read: ``Delta = sum_j P dP`` from the first pass does not suffer the rounding of a half-precision ``out``.)

Any ``Nq, Nk`` (ragged blocks are masked) and head dims padded to a power of two >= 16 (masked), read through
their strides. Grids are one-dimensional, ``batch x blocks`` folded on axis 0 (CUDA allows 2^31 - 1 blocks there
and 65535 on the other axes). Dots take the input dtype (fp16/bf16 on tensor cores, fp32 as tf32 or exact ieee
fp32, fp64 as fp64) and accumulate in ``ACC``, the compute dtype the caller passes (float32, or float64 for
float64 inputs). Under the CPU interpreter, where half-precision dots are wrong, half-precision operands are
upcast to float32 first.

Block sizes, warps and pipeline stages come from :func:`launch_config`, a plain function of the dtype, head dims,
TF32 flag, kernel, device type and arch, which the launches use and ``python -m ganops check-gpu-code`` compiles for
sm_80 / sm_90 (through the ``*_plan`` functions, see ``triton_kernels/_common.py``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import (
    TRITON_DTYPES, Launch, check_grid, run_launches, scalar_tensor, target_arch, triton_compute_dtype,
)

_forced_blocks: tuple[int, int] | None = None


@contextlib.contextmanager
def forced_block_sizes(block_q: int, block_k: int) -> Iterator[None]:
    """Run every kernel with these (power-of-two, >= 16) block sizes: lets tests reach multi-block paths."""
    global _forced_blocks
    previous, _forced_blocks = _forced_blocks, (block_q, block_k)
    try:
        yield
    finally:
        _forced_blocks = previous


@triton.jit
def _program_block(n, BLOCK: tl.constexpr):
    """``(batch, block)`` of this program: the grid folds ``batch x cdiv(n, BLOCK)`` on axis 0, blocks of one batch
    adjacent (they share their keys and values in L2)."""
    blocks = tl.cdiv(n, BLOCK)
    program = tl.program_id(0)
    return (program // blocks).to(tl.int64), program % blocks


@triton.jit
def _dot(a, b, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    return tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), input_precision=PRECISION)


@triton.jit
def _tile_offsets(stride_b, stride_n, stride_d, batch, rows, n, cols, d):
    offsets = batch * stride_b + rows[:, None].to(tl.int64) * stride_n + cols[None, :] * stride_d
    return offsets, (rows[:, None] < n) & (cols[None, :] < d)


@triton.jit
def _load_tile(ptr, stride_b, stride_n, stride_d, batch, rows, n, cols, d):
    """The ``[len(rows), len(cols)]`` tile of a ``[B, n, d]`` tensor at ``batch``, zero outside, in its own dtype
    (it feeds dots as it is; elementwise uses convert to the accumulation dtype)."""
    offsets, mask = _tile_offsets(stride_b, stride_n, stride_d, batch, rows, n, cols, d)
    return tl.load(ptr + offsets, mask=mask, other=0.0)


@triton.jit
def _store_tile(ptr, stride_b, stride_n, stride_d, batch, rows, n, cols, d, value):
    offsets, mask = _tile_offsets(stride_b, stride_n, stride_d, batch, rows, n, cols, d)
    tl.store(ptr + offsets, value.to(ptr.dtype.element_ty), mask=mask)


@triton.jit
def _add_tile(ptr, stride_b, stride_n, stride_d, batch, rows, n, cols, d, value):
    """Atomically adds ``value`` (no ordering needed: only the sum matters, read after the kernel)."""
    offsets, mask = _tile_offsets(stride_b, stride_n, stride_d, batch, rows, n, cols, d)
    tl.atomic_add(ptr + offsets, value, mask=mask, sem="relaxed")


@triton.jit
def _load_row_stat(ptr, batch, n_q, rows):
    return tl.load(ptr + batch * n_q + rows, mask=rows < n_q, other=0.0)


@triton.jit
def _probabilities(q, k, lse, rows, cols, n_q, n_k, scale, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    """``P = exp(scale * q k^T - lse)`` for one ``[BLOCK_Q, BLOCK_K]`` tile, zero outside ``[n_q, n_k]``."""
    logits = _dot(q, tl.trans(k), DOT_DTYPE, PRECISION) * scale
    valid = (rows[:, None] < n_q) & (cols[None, :] < n_k)
    return tl.where(valid, tl.exp(logits - lse[:, None]), 0.0)


@triton.jit
def _forward_kernel(
    q_ptr, sq_b, sq_n, sq_d,
    k_ptr, sk_b, sk_n, sk_d,
    v_ptr, sv_b, sv_n, sv_d,
    out_ptr, so_b, so_n, so_d,
    lse_ptr, scale_ptr,
    n_q, n_k, d_qk, d_v,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    ACC: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    batch, block = _program_block(n_q, BLOCK_Q)
    rows = block * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dqk = tl.arange(0, BLOCK_DQK)
    dv = tl.arange(0, BLOCK_DV)
    scale = tl.load(scale_ptr)
    q = _load_tile(q_ptr, sq_b, sq_n, sq_d, batch, rows, n_q, dqk, d_qk)
    running_max = tl.full([BLOCK_Q], float("-inf"), dtype=ACC)
    running_sum = tl.zeros([BLOCK_Q], dtype=ACC)
    acc = tl.zeros([BLOCK_Q, BLOCK_DV], dtype=ACC)
    for start in range(0, n_k, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        k = _load_tile(k_ptr, sk_b, sk_n, sk_d, batch, cols, n_k, dqk, d_qk)
        v = _load_tile(v_ptr, sv_b, sv_n, sv_d, batch, cols, n_k, dv, d_v)
        logits = _dot(q, tl.trans(k), DOT_DTYPE, PRECISION) * scale
        logits = tl.where(cols[None, :] < n_k, logits, float("-inf"))
        # Every block holds at least one valid key (start < n_k), so new_max is finite from the first block on.
        new_max = tl.maximum(running_max, tl.max(logits, axis=1))
        correction = tl.exp(running_max - new_max)
        p = tl.exp(logits - new_max[:, None])
        running_sum = running_sum * correction + tl.sum(p, axis=1)
        acc = acc * correction[:, None] + _dot(p, v, DOT_DTYPE, PRECISION)
        running_max = new_max
    _store_tile(out_ptr, so_b, so_n, so_d, batch, rows, n_q, dv, d_v, acc / running_sum[:, None])
    tl.store(lse_ptr + batch * n_q + rows, running_max + tl.log(running_sum), mask=rows < n_q)


@triton.jit
def _delta_kernel(
    do_ptr, sdo_b, sdo_n, sdo_d,
    out_ptr, so_b, so_n, so_d,
    dq_ptr, sdq_b, sdq_n, sdq_d,
    delta_ptr, n_q, d_qk, d_v,
    BLOCK_Q: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr, ACC: tl.constexpr,
    ATOMIC_DQ: tl.constexpr,
):
    """``Delta = rowsum(dO * O)``; with ``ATOMIC_DQ``, also zeroes these rows of the ``dQ`` accumulator."""
    batch, block = _program_block(n_q, BLOCK_Q)
    rows = block * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dv = tl.arange(0, BLOCK_DV)
    grad_out = _load_tile(do_ptr, sdo_b, sdo_n, sdo_d, batch, rows, n_q, dv, d_v)
    out = _load_tile(out_ptr, so_b, so_n, so_d, batch, rows, n_q, dv, d_v)
    tl.store(delta_ptr + batch * n_q + rows, tl.sum(grad_out.to(ACC) * out.to(ACC), axis=1), mask=rows < n_q)
    if ATOMIC_DQ:
        zeros = tl.zeros([BLOCK_Q, BLOCK_DQK], dtype=ACC)
        _store_tile(dq_ptr, sdq_b, sdq_n, sdq_d, batch, rows, n_q, tl.arange(0, BLOCK_DQK), d_qk, zeros)


@triton.jit
def _backward_key_kernel(
    q_ptr, sq_b, sq_n, sq_d,
    k_ptr, sk_b, sk_n, sk_d,
    v_ptr, sv_b, sv_n, sv_d,
    do_ptr, sdo_b, sdo_n, sdo_d,
    dq_ptr, sdq_b, sdq_n, sdq_d,
    dk_ptr, sdk_b, sdk_n, sdk_d,
    dv_ptr, sdv_b, sdv_n, sdv_d,
    lse_ptr, delta_ptr, scale_ptr,
    n_q, n_k, d_qk, d_v,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    ACC: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr, ATOMIC_DQ: tl.constexpr,
):
    """``dK`` and ``dV`` of one key block; with ``ATOMIC_DQ`` also this block's share of ``dQ``, added to the
    zeroed accumulator at ``dq_ptr`` (5 matmuls per tile pair)."""
    batch, block = _program_block(n_k, BLOCK_K)
    cols = block * BLOCK_K + tl.arange(0, BLOCK_K)
    dqk = tl.arange(0, BLOCK_DQK)
    dv = tl.arange(0, BLOCK_DV)
    scale = tl.load(scale_ptr)
    k = _load_tile(k_ptr, sk_b, sk_n, sk_d, batch, cols, n_k, dqk, d_qk)
    v = _load_tile(v_ptr, sv_b, sv_n, sv_d, batch, cols, n_k, dv, d_v)
    grad_k = tl.zeros([BLOCK_K, BLOCK_DQK], dtype=ACC)
    grad_v = tl.zeros([BLOCK_K, BLOCK_DV], dtype=ACC)
    # Tiles are held transposed, [keys, queries], so that the key block is the M of every dot but dQ's.
    for start in range(0, n_q, BLOCK_Q):
        rows = start + tl.arange(0, BLOCK_Q)
        q = _load_tile(q_ptr, sq_b, sq_n, sq_d, batch, rows, n_q, dqk, d_qk)
        grad_out = _load_tile(do_ptr, sdo_b, sdo_n, sdo_d, batch, rows, n_q, dv, d_v)
        lse = _load_row_stat(lse_ptr, batch, n_q, rows)
        delta = _load_row_stat(delta_ptr, batch, n_q, rows)
        logits_t = _dot(k, tl.trans(q), DOT_DTYPE, PRECISION) * scale
        valid = (cols[:, None] < n_k) & (rows[None, :] < n_q)
        p_t = tl.where(valid, tl.exp(logits_t - lse[None, :]), 0.0)
        grad_v += _dot(p_t, grad_out, DOT_DTYPE, PRECISION)
        dp_t = _dot(v, tl.trans(grad_out), DOT_DTYPE, PRECISION)
        ds_t = p_t * (dp_t - delta[None, :])
        grad_k += _dot(ds_t, q, DOT_DTYPE, PRECISION)
        if ATOMIC_DQ:
            grad_q = _dot(tl.trans(ds_t), k, DOT_DTYPE, PRECISION) * scale
            _add_tile(dq_ptr, sdq_b, sdq_n, sdq_d, batch, rows, n_q, dqk, d_qk, grad_q)
    _store_tile(dk_ptr, sdk_b, sdk_n, sdk_d, batch, cols, n_k, dqk, d_qk, grad_k * scale)
    _store_tile(dv_ptr, sdv_b, sdv_n, sdv_d, batch, cols, n_k, dv, d_v, grad_v)


@triton.jit
def _backward_query_kernel(
    q_ptr, sq_b, sq_n, sq_d,
    k_ptr, sk_b, sk_n, sk_d,
    v_ptr, sv_b, sv_n, sv_d,
    do_ptr, sdo_b, sdo_n, sdo_d,
    dq_ptr, sdq_b, sdq_n, sdq_d,
    lse_ptr, delta_ptr, scale_ptr,
    n_q, n_k, d_qk, d_v,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    ACC: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    """``dQ`` of one query block, owned by this program (the deterministic path)."""
    batch, block = _program_block(n_q, BLOCK_Q)
    rows = block * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dqk = tl.arange(0, BLOCK_DQK)
    dv = tl.arange(0, BLOCK_DV)
    scale = tl.load(scale_ptr)
    q = _load_tile(q_ptr, sq_b, sq_n, sq_d, batch, rows, n_q, dqk, d_qk)
    grad_out = _load_tile(do_ptr, sdo_b, sdo_n, sdo_d, batch, rows, n_q, dv, d_v)
    lse = _load_row_stat(lse_ptr, batch, n_q, rows)
    delta = _load_row_stat(delta_ptr, batch, n_q, rows)
    grad_q = tl.zeros([BLOCK_Q, BLOCK_DQK], dtype=ACC)
    for start in range(0, n_k, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        k = _load_tile(k_ptr, sk_b, sk_n, sk_d, batch, cols, n_k, dqk, d_qk)
        v = _load_tile(v_ptr, sv_b, sv_n, sv_d, batch, cols, n_k, dv, d_v)
        p = _probabilities(q, k, lse, rows, cols, n_q, n_k, scale, DOT_DTYPE, PRECISION)
        dp = _dot(grad_out, tl.trans(v), DOT_DTYPE, PRECISION)
        grad_q += _dot(p * (dp - delta[:, None]), k, DOT_DTYPE, PRECISION)
    _store_tile(dq_ptr, sdq_b, sdq_n, sdq_d, batch, rows, n_q, dqk, d_qk, grad_q * scale)


@triton.jit
def _cast_kernel(
    src_ptr, ss_b, ss_n, ss_d,
    dst_ptr, sd_b, sd_n, sd_d,
    n, d,
    BLOCK_Q: tl.constexpr, BLOCK_DQK: tl.constexpr,
):
    """Copies the float32 ``dQ`` accumulator into the half-precision gradient."""
    batch, block = _program_block(n, BLOCK_Q)
    rows = block * BLOCK_Q + tl.arange(0, BLOCK_Q)
    cols = tl.arange(0, BLOCK_DQK)
    tile = _load_tile(src_ptr, ss_b, ss_n, ss_d, batch, rows, n, cols, d)
    _store_tile(dst_ptr, sd_b, sd_n, sd_d, batch, rows, n, cols, d, tile)


@triton.jit
def _double_backward_query_kernel(
    q_ptr, sq_b, sq_n, sq_d,
    k_ptr, sk_b, sk_n, sk_d,
    v_ptr, sv_b, sv_n, sv_d,
    do_ptr, sdo_b, sdo_n, sdo_d,
    uq_ptr, suq_b, suq_n, suq_d,
    uk_ptr, suk_b, suk_n, suk_d,
    uv_ptr, suv_b, suv_n, suv_d,
    gdo_ptr, sgdo_b, sgdo_n, sgdo_d,
    gq_ptr, sgq_b, sgq_n, sgq_d,
    lse_ptr, normalized_lse_ptr, delta_ptr, rho_ptr, gamma_ptr, scale_ptr,
    n_q, n_k, d_qk, d_v,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    ACC: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    batch, block = _program_block(n_q, BLOCK_Q)
    rows = block * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dqk = tl.arange(0, BLOCK_DQK)
    dv = tl.arange(0, BLOCK_DV)
    scale = tl.load(scale_ptr)
    q = _load_tile(q_ptr, sq_b, sq_n, sq_d, batch, rows, n_q, dqk, d_qk)
    uq = _load_tile(uq_ptr, suq_b, suq_n, suq_d, batch, rows, n_q, dqk, d_qk)
    grad_out = _load_tile(do_ptr, sdo_b, sdo_n, sdo_d, batch, rows, n_q, dv, d_v)
    lse = _load_row_stat(lse_ptr, batch, n_q, rows)

    # Pass 1: Delta = sum_j P dP (from P and dP rather than from the rounded output: exact in half precision
    # too, at no cost here), rho = sum_j P R, a = sum_j P R dP and P Uv (whose row dot with dO is sum_j P W),
    # and sum_j P. With large logits, exp(S - lse) rows sum to 1 only up to eps * |S|, and the double backward
    # multiplies that defect by |R| |q|; dividing by the row sum (and correcting lse for pass 2 and the key-side
    # kernel) makes the rows sum to 1 up to eps.
    row_sum = tl.zeros([BLOCK_Q], dtype=ACC)
    delta = tl.zeros([BLOCK_Q], dtype=ACC)
    rho = tl.zeros([BLOCK_Q], dtype=ACC)
    weighted = tl.zeros([BLOCK_Q], dtype=ACC)
    p_uv = tl.zeros([BLOCK_Q, BLOCK_DV], dtype=ACC)
    for start in range(0, n_k, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        k = _load_tile(k_ptr, sk_b, sk_n, sk_d, batch, cols, n_k, dqk, d_qk)
        v = _load_tile(v_ptr, sv_b, sv_n, sv_d, batch, cols, n_k, dv, d_v)
        uk = _load_tile(uk_ptr, suk_b, suk_n, suk_d, batch, cols, n_k, dqk, d_qk)
        uv = _load_tile(uv_ptr, suv_b, suv_n, suv_d, batch, cols, n_k, dv, d_v)
        p = _probabilities(q, k, lse, rows, cols, n_q, n_k, scale, DOT_DTYPE, PRECISION)
        dp = _dot(grad_out, tl.trans(v), DOT_DTYPE, PRECISION)
        r = (_dot(uq, tl.trans(k), DOT_DTYPE, PRECISION) + _dot(q, tl.trans(uk), DOT_DTYPE, PRECISION)) * scale
        pr = p * r
        row_sum += tl.sum(p, axis=1)
        delta += tl.sum(p * dp, axis=1)
        rho += tl.sum(pr, axis=1)
        weighted += tl.sum(pr * dp, axis=1)
        p_uv += _dot(p, uv, DOT_DTYPE, PRECISION)
    row_sum = tl.where(rows < n_q, row_sum, 1.0)
    lse += tl.log(row_sum)
    delta = delta / row_sum
    rho = rho / row_sum
    p_uv = p_uv / row_sum[:, None]
    gamma = weighted / row_sum - 2.0 * rho * delta + tl.sum(grad_out.to(ACC) * p_uv, axis=1)
    tl.store(normalized_lse_ptr + batch * n_q + rows, lse, mask=rows < n_q)
    tl.store(delta_ptr + batch * n_q + rows, delta, mask=rows < n_q)
    tl.store(rho_ptr + batch * n_q + rows, rho, mask=rows < n_q)
    tl.store(gamma_ptr + batch * n_q + rows, gamma, mask=rows < n_q)

    # Pass 2: grad dO = T v + P Uv and grad q = scale * (dS Uk + dS2 k).
    grad_do = p_uv
    grad_q = tl.zeros([BLOCK_Q, BLOCK_DQK], dtype=ACC)
    for start in range(0, n_k, BLOCK_K):
        cols = start + tl.arange(0, BLOCK_K)
        k = _load_tile(k_ptr, sk_b, sk_n, sk_d, batch, cols, n_k, dqk, d_qk)
        v = _load_tile(v_ptr, sv_b, sv_n, sv_d, batch, cols, n_k, dv, d_v)
        uk = _load_tile(uk_ptr, suk_b, suk_n, suk_d, batch, cols, n_k, dqk, d_qk)
        uv = _load_tile(uv_ptr, suv_b, suv_n, suv_d, batch, cols, n_k, dv, d_v)
        p = _probabilities(q, k, lse, rows, cols, n_q, n_k, scale, DOT_DTYPE, PRECISION)
        dp = _dot(grad_out, tl.trans(v), DOT_DTYPE, PRECISION)
        r = (_dot(uq, tl.trans(k), DOT_DTYPE, PRECISION) + _dot(q, tl.trans(uk), DOT_DTYPE, PRECISION)) * scale
        w = _dot(grad_out, tl.trans(uv), DOT_DTYPE, PRECISION)
        ds = p * (dp - delta[:, None])
        ds2 = p * (r * (dp - delta[:, None]) - rho[:, None] * dp + w - gamma[:, None])
        grad_do += _dot(p * (r - rho[:, None]), v, DOT_DTYPE, PRECISION)
        grad_q += _dot(ds, uk, DOT_DTYPE, PRECISION) + _dot(ds2, k, DOT_DTYPE, PRECISION)
    _store_tile(gdo_ptr, sgdo_b, sgdo_n, sgdo_d, batch, rows, n_q, dv, d_v, grad_do)
    _store_tile(gq_ptr, sgq_b, sgq_n, sgq_d, batch, rows, n_q, dqk, d_qk, grad_q * scale)


@triton.jit
def _double_backward_key_kernel(
    q_ptr, sq_b, sq_n, sq_d,
    k_ptr, sk_b, sk_n, sk_d,
    v_ptr, sv_b, sv_n, sv_d,
    do_ptr, sdo_b, sdo_n, sdo_d,
    uq_ptr, suq_b, suq_n, suq_d,
    uk_ptr, suk_b, suk_n, suk_d,
    uv_ptr, suv_b, suv_n, suv_d,
    gk_ptr, sgk_b, sgk_n, sgk_d,
    gv_ptr, sgv_b, sgv_n, sgv_d,
    lse_ptr, delta_ptr, rho_ptr, gamma_ptr, scale_ptr,
    n_q, n_k, d_qk, d_v,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    ACC: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    batch, block = _program_block(n_k, BLOCK_K)
    cols = block * BLOCK_K + tl.arange(0, BLOCK_K)
    dqk = tl.arange(0, BLOCK_DQK)
    dv = tl.arange(0, BLOCK_DV)
    scale = tl.load(scale_ptr)
    k = _load_tile(k_ptr, sk_b, sk_n, sk_d, batch, cols, n_k, dqk, d_qk)
    v = _load_tile(v_ptr, sv_b, sv_n, sv_d, batch, cols, n_k, dv, d_v)
    uk = _load_tile(uk_ptr, suk_b, suk_n, suk_d, batch, cols, n_k, dqk, d_qk)
    uv = _load_tile(uv_ptr, suv_b, suv_n, suv_d, batch, cols, n_k, dv, d_v)
    grad_k = tl.zeros([BLOCK_K, BLOCK_DQK], dtype=ACC)
    grad_v = tl.zeros([BLOCK_K, BLOCK_DV], dtype=ACC)
    for start in range(0, n_q, BLOCK_Q):
        rows = start + tl.arange(0, BLOCK_Q)
        q = _load_tile(q_ptr, sq_b, sq_n, sq_d, batch, rows, n_q, dqk, d_qk)
        uq = _load_tile(uq_ptr, suq_b, suq_n, suq_d, batch, rows, n_q, dqk, d_qk)
        grad_out = _load_tile(do_ptr, sdo_b, sdo_n, sdo_d, batch, rows, n_q, dv, d_v)
        lse = _load_row_stat(lse_ptr, batch, n_q, rows)
        delta = _load_row_stat(delta_ptr, batch, n_q, rows)
        rho = _load_row_stat(rho_ptr, batch, n_q, rows)
        gamma = _load_row_stat(gamma_ptr, batch, n_q, rows)
        p = _probabilities(q, k, lse, rows, cols, n_q, n_k, scale, DOT_DTYPE, PRECISION)
        dp = _dot(grad_out, tl.trans(v), DOT_DTYPE, PRECISION)
        r = (_dot(uq, tl.trans(k), DOT_DTYPE, PRECISION) + _dot(q, tl.trans(uk), DOT_DTYPE, PRECISION)) * scale
        w = _dot(grad_out, tl.trans(uv), DOT_DTYPE, PRECISION)
        ds = p * (dp - delta[:, None])
        ds2 = p * (r * (dp - delta[:, None]) - rho[:, None] * dp + w - gamma[:, None])
        grad_v += _dot(tl.trans(p * (r - rho[:, None])), grad_out, DOT_DTYPE, PRECISION)
        grad_k += _dot(tl.trans(ds), uq, DOT_DTYPE, PRECISION) + _dot(tl.trans(ds2), q, DOT_DTYPE, PRECISION)
    _store_tile(gk_ptr, sgk_b, sgk_n, sgk_d, batch, cols, n_k, dqk, d_qk, grad_k * scale)
    _store_tile(gv_ptr, sgv_b, sgv_n, sgv_d, batch, cols, n_k, dv, d_v, grad_v)


KERNELS = {
    "forward": _forward_kernel,
    "delta": _delta_kernel,
    "backward_key": _backward_key_kernel,
    "backward_query": _backward_query_kernel,
    "cast": _cast_kernel,
    "double_backward_query": _double_backward_query_kernel,
    "double_backward_key": _double_backward_key_kernel,
}
# Kernels with one program per key block; the others have one per query block.
_KEY_SIDE = ("backward_key", "double_backward_key")


@dataclass(frozen=True)
class LaunchConfig:
    """What a kernel is compiled and launched with, besides its dtypes: tile sizes, warps, pipeline stages."""

    block_q: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 2


def launch_config(
    kind: str, dtype: torch.dtype, d_qk: int, d_v: int, allow_tf32: bool, device_type: str, arch: int | None = None
) -> LaunchConfig:
    """The configuration of kernel ``kind`` (a key of ``KERNELS``) for inputs of ``dtype`` and head dims
    ``d_qk, d_v`` on a GPU of compute capability ``arch`` (``None``: sm_90's), chosen from what ptxas reports
    (``python -m ganops check-gpu-code`` prints it): on sm_90, 64-row tiles so that the tensor-core dots can be
    ``wgmma`` (M = 64 per warpgroup), 8 warps where one warpgroup's registers would not hold the tiles; on sm_80
    (``mma.sync``, whose operands all live in registers) smaller steps for the wide backward kernels; small tiles
    for the exact fp32 / fp64 dots."""
    if _forced_blocks is not None:
        return LaunchConfig(*_forced_blocks)
    if device_type == "cpu":  # Triton runs CPU tensors only in its interpreter, where small blocks are fastest
        return LaunchConfig(16, 16)
    width_qk, width_v = max(16, triton.next_power_of_2(d_qk)), max(16, triton.next_power_of_2(d_v))
    widest = max(width_qk, width_v)
    tensor_cores = dtype in (torch.float16, torch.bfloat16) or (dtype == torch.float32 and allow_tf32)
    if kind in ("delta", "cast"):
        return LaunchConfig(64 if widest <= 128 else 32, 16, num_warps=4)
    if tensor_cores:
        # Two pipeline stages of the q/k/v tiles overflow an H100's 227 KiB beyond 640 bytes per row.
        stages = 2 if dtype.itemsize * (width_qk + width_v) <= 640 else 1
        if arch is not None and arch < 90:
            return _mma_sync_config(kind, widest * dtype.itemsize, stages)
        return _tensor_core_config(kind, widest * dtype.itemsize, stages)
    return _cuda_core_config(kind, widest * dtype.itemsize)


def _tensor_core_config(kind: str, widest_bytes: int, stages: int) -> LaunchConfig:
    """fp16 / bf16 / tf32. Every dot's M is 64 (one wgmma per warpgroup) except those whose M is the query step
    of a key-side kernel, where 32 query rows per step keep the registers from spilling (the double backward's
    eight tiles; the backward's beyond 256 bytes per row); rows wider than 128 bytes (bf16 heads above 64, tf32
    above 32) take 8 warps. Beyond 256 bytes per row (bf16 Dv=256) the double backward's loop steps halve again
    (it spilled 40 B and 272 B at 32-row steps); beyond 512 (tf32 Dv=256) its query side takes 16 query rows per
    program (1.3 KB of spills at 64)."""
    warps = 4 if widest_bytes <= 128 else 8
    wide = widest_bytes > 256
    if kind == "double_backward_query" and widest_bytes > 512:
        return LaunchConfig(16, 32, num_warps=8, num_stages=stages)
    if kind == "backward_key" and wide:  # 32 query rows per step: its 64-wide tiles spill
        return LaunchConfig(32, 64, num_warps=warps, num_stages=stages)
    if kind in ("forward", "backward_key", "backward_query"):
        return LaunchConfig(64, 64, num_warps=warps, num_stages=stages)
    if kind == "double_backward_query":
        return LaunchConfig(64, 16 if wide else 32, num_warps=8, num_stages=stages)
    return LaunchConfig(16 if wide else 32, 64, num_warps=8, num_stages=stages)  # double_backward_key


def _mma_sync_config(kind: str, widest_bytes: int, stages: int) -> LaunchConfig:
    """fp16 / bf16 / tf32 before sm_90. Up to 128 bytes per row sm_90's configuration fits; wider rows spill in
    the backward kernels (bf16 Dv=128: 60-352 B at 255 registers) unless their loop steps shrink: 32x32 tiles for
    the key-side kernels, 16 key rows per step for the double backward's query side (16 query rows per program
    beyond 256 bytes per row)."""
    if widest_bytes <= 128 or kind in ("forward", "backward_query"):
        return _tensor_core_config(kind, widest_bytes, stages)
    if kind in ("backward_key", "double_backward_key"):
        block_q = 16 if kind == "double_backward_key" and widest_bytes > 256 else 32
        return LaunchConfig(block_q, 32, num_warps=8, num_stages=stages)
    if widest_bytes <= 256:
        return LaunchConfig(64, 16, num_warps=8, num_stages=stages)  # double_backward_query
    return LaunchConfig(16, 32, num_warps=8, num_stages=stages)


def _cuda_core_config(kind: str, widest_bytes: int) -> LaunchConfig:
    """Exact fp32 and fp64 dots run on FMA / DMMA units with their operands in registers: small tiles, and the
    loop's step (query rows on the key side, key rows on the query side) 16 wide. The double backward's rows
    beyond 256 bytes (fp32 Dv >= 128, fp64 Dv >= 64) take 16x16 tiles over 8 warps: at 4 warps they spilled
    1.5-29 KB per thread (fp32 Dv=256: a multi-GB local-memory reservation on a full GPU), at 8 warps under
    0.75 KB."""
    if kind.startswith("double_backward") and widest_bytes > 256:
        return LaunchConfig(16, 16, num_warps=8, num_stages=2)
    if kind in ("backward_key", "double_backward_key"):
        return LaunchConfig(16, 32, num_warps=4, num_stages=2)
    if kind == "forward":
        return LaunchConfig(32, 32, num_warps=4, num_stages=2)
    return LaunchConfig(32, 16, num_warps=4, num_stages=2)


def _constants(q: Tensor, v: Tensor, allow_tf32: bool, compute_dtype: torch.dtype) -> dict:
    """The constexpr arguments every kernel takes (each kernel picks the ones it declares)."""
    dot_dtype = TRITON_DTYPES[q.dtype]
    if q.device.type == "cpu" and q.dtype in (torch.float16, torch.bfloat16):
        dot_dtype = tl.float32  # the interpreter's half-precision dots are wrong
    return dict(
        BLOCK_DQK=max(16, triton.next_power_of_2(q.shape[-1])),
        BLOCK_DV=max(16, triton.next_power_of_2(v.shape[-1])),
        ACC=triton_compute_dtype(compute_dtype),
        DOT_DTYPE=dot_dtype,
        PRECISION="tf32" if q.dtype == torch.float32 and allow_tf32 else "ieee",
    )


def _padded(n: int, block: int) -> int:
    return triton.cdiv(n, block) * block


def _traffic(
    kind: str, q: Tensor, k: Tensor, v: Tensor, block_q: int, block_k: int, constants: dict
) -> tuple[int, int]:
    """``(bytes_moved, flops)`` of one launch of ``kind``: every tile it loads or stores and 2*M*N*K per dot over
    the (padded) tiles it computes. A model for the launch plan's roofline, not a measurement."""
    batch, n_q, n_k = q.shape[0], q.shape[1], k.shape[1]
    d_qk, d_v = q.shape[2], v.shape[2]
    item, stat = q.element_size(), 8 if constants["ACC"] == tl.float64 else 4
    q_rows, k_rows = n_q * d_qk * item, n_k * d_qk * item  # one batch's q (or dO-sized) and k bytes
    qv_rows, kv_rows = n_q * d_v * item, n_k * d_v * item
    query_blocks, key_blocks = triton.cdiv(n_q, block_q), triton.cdiv(n_k, block_k)
    tile_pairs = _padded(n_q, block_q) * _padded(n_k, block_k)
    width_qk, width_v = constants["BLOCK_DQK"], constants["BLOCK_DV"]
    atomic = constants.get("ATOMIC_DQ", False)
    if kind == "forward":
        moved = q_rows + query_blocks * (k_rows + kv_rows) + qv_rows + n_q * stat
        dots = width_qk + width_v
    elif kind == "delta":
        moved = 2 * qv_rows + n_q * stat + (n_q * d_qk * 4 if atomic else 0)
        dots = 0
    elif kind == "cast":
        moved = n_q * d_qk * (4 + item)
        dots = 0
    elif kind == "backward_key":
        moved = 2 * (k_rows + kv_rows) + key_blocks * (q_rows + qv_rows + 2 * n_q * stat)
        moved += key_blocks * 2 * n_q * d_qk * 4 if atomic else 0  # each atomic add reads and writes
        dots = 2 * width_qk + 2 * width_v + (width_qk if atomic else 0)
    elif kind == "backward_query":
        moved = 2 * q_rows + qv_rows + 2 * n_q * stat + query_blocks * (k_rows + kv_rows)
        dots = 2 * width_qk + width_v
    elif kind == "double_backward_query":
        moved = 3 * q_rows + 2 * qv_rows + 5 * n_q * stat + 2 * query_blocks * 2 * (k_rows + kv_rows)
        dots = 8 * width_qk + 5 * width_v
    else:  # double_backward_key
        moved = 2 * 2 * (k_rows + kv_rows) + key_blocks * (2 * q_rows + qv_rows + 4 * n_q * stat)
        dots = 5 * width_qk + 3 * width_v
    return batch * moved, batch * 2 * tile_pairs * dots


def _plan_launch(
    kind: str, q: Tensor, k: Tensor, v: Tensor, allow_tf32: bool, args: tuple, constants: dict, arch: int | None
) -> Launch:
    """The launch of ``KERNELS[kind]`` at :func:`launch_config`'s configuration, and as fallbacks (tried in order
    where the GPU lacks the shared memory, e.g. sm_80 or consumer parts) the same with the larger block halved,
    down to 16."""
    kernel = KERNELS[kind]
    config = launch_config(
        kind, q.dtype, q.shape[-1], v.shape[-1], allow_tf32, q.device.type, target_arch(q.device, arch)
    )
    rows = k.shape[1] if kind in _KEY_SIDE else q.shape[1]
    launches = []
    block_q, block_k = config.block_q, config.block_k
    while True:
        block = block_k if kind in _KEY_SIDE else block_q
        kwargs = {name: value for name, value in constants.items() if name in kernel.arg_names}
        blocks = {"BLOCK_Q": block_q, "BLOCK_K": block_k}
        kwargs.update({name: value for name, value in blocks.items() if name in kernel.arg_names})
        moved, flops = _traffic(kind, q, k, v, block_q, block_k, constants)
        launches.append(Launch(
            kernel, check_grid((q.shape[0] * triton.cdiv(rows, block),)), args,
            {**kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages},
            bytes_moved=moved, flops=flops,
            label=f"BQ={block_q} BK={block_k} w={config.num_warps} s={config.num_stages}",
        ))
        if max(block_q, block_k) <= 16 or kind in ("delta", "cast"):
            break
        if block_q >= block_k:
            block_q //= 2
        else:
            block_k //= 2
    launch, *fallbacks = launches
    launch.fallbacks = tuple(fallbacks)
    return launch


def _row_stat(q: Tensor, compute_dtype: torch.dtype) -> Tensor:
    return torch.empty(q.shape[:2], dtype=compute_dtype, device=q.device)


def forward_plan(
    q: Tensor, k: Tensor, v: Tensor, scale: float, allow_tf32: bool, *, compute_dtype: torch.dtype,
    arch: int | None = None,
) -> tuple[tuple[Tensor, Tensor], list[Launch]]:
    """The outputs of :func:`forward` and the launches that fill them."""
    constants = _constants(q, v, allow_tf32, compute_dtype)
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[2])
    lse = _row_stat(q, compute_dtype)
    scale_tensor = scalar_tensor(scale, compute_dtype, q.device)
    args = (
        q, *q.stride(), k, *k.stride(), v, *v.stride(), out, *out.stride(), lse, scale_tensor,
        q.shape[1], k.shape[1], q.shape[2], v.shape[2],
    )
    return (out, lse), [_plan_launch("forward", q, k, v, allow_tf32, args, constants, arch)]


def forward(
    q: Tensor, k: Tensor, v: Tensor, scale: float, allow_tf32: bool, *, compute_dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` for 3-D ``q [B, Nq, Dqk]``, ``k [B, Nk, Dqk]``, ``v [B, Nk, Dv]`` (any strides); ``lse`` and
    every accumulation in ``compute_dtype`` (float32 or float64, the caller's rule)."""
    outputs, launches = forward_plan(q, k, v, scale, allow_tf32, compute_dtype=compute_dtype)
    run_launches(launches)
    return outputs


def uses_atomic_dq(dtype: torch.dtype) -> bool:
    """Whether the backward accumulates ``dQ`` with atomics (module docstring): not for float64, nor under
    ``torch.use_deterministic_algorithms(True)``."""
    return dtype != torch.float64 and not torch.are_deterministic_algorithms_enabled()


def backward_plan(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float, allow_tf32: bool,
    *, compute_dtype: torch.dtype, arch: int | None = None,
) -> tuple[tuple[Tensor, Tensor, Tensor], list[Launch]]:
    """The outputs of :func:`backward` and the launches that fill them."""
    constants = _constants(q, v, allow_tf32, compute_dtype)
    atomic = uses_atomic_dq(q.dtype)
    delta = _row_stat(q, compute_dtype)
    scale_tensor = scalar_tensor(scale, compute_dtype, q.device)
    grad_k, grad_v = k.new_empty(k.shape), v.new_empty(v.shape)
    grad_q = q.new_empty(q.shape)
    # The atomics accumulate dQ in float32 (the compute dtype); float32 inputs take it as their gradient.
    accumulator = grad_q if not atomic or q.dtype == compute_dtype else q.new_empty(q.shape, dtype=compute_dtype)
    sizes = (q.shape[1], k.shape[1], q.shape[2], v.shape[2])
    delta_args = (grad_out, *grad_out.stride(), out, *out.stride(), accumulator, *accumulator.stride(), delta)
    delta_args += (q.shape[1], q.shape[2], v.shape[2])
    launches = [_plan_launch("delta", q, k, v, allow_tf32, delta_args, {**constants, "ATOMIC_DQ": atomic}, arch)]
    inputs = (q, *q.stride(), k, *k.stride(), v, *v.stride(), grad_out, *grad_out.stride())
    key_args = (
        *inputs, accumulator, *accumulator.stride(), grad_k, *grad_k.stride(), grad_v, *grad_v.stride(),
        lse, delta, scale_tensor, *sizes,
    )
    launches.append(_plan_launch(
        "backward_key", q, k, v, allow_tf32, key_args, {**constants, "ATOMIC_DQ": atomic}, arch
    ))
    if not atomic:
        query_args = (*inputs, grad_q, *grad_q.stride(), lse, delta, scale_tensor, *sizes)
        launches.append(_plan_launch("backward_query", q, k, v, allow_tf32, query_args, constants, arch))
    elif accumulator is not grad_q:
        cast_args = (accumulator, *accumulator.stride(), grad_q, *grad_q.stride(), q.shape[1], q.shape[2])
        launches.append(_plan_launch("cast", q, k, v, allow_tf32, cast_args, constants, arch))
    return (grad_q, grad_k, grad_v), launches


def backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float, allow_tf32: bool,
    *, compute_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(grad_q, grad_k, grad_v)`` of ``<out, grad_out>``, from the forward's ``out`` and ``lse``."""
    outputs, launches = backward_plan(
        grad_out, q, k, v, out, lse, scale, allow_tf32, compute_dtype=compute_dtype
    )
    run_launches(launches)
    return outputs


def double_backward_plan(
    grad_grad_q: Tensor, grad_grad_k: Tensor, grad_grad_v: Tensor,
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float, allow_tf32: bool,
    *, compute_dtype: torch.dtype, arch: int | None = None,
) -> tuple[tuple[Tensor, Tensor, Tensor, Tensor], list[Launch]]:
    """The outputs of :func:`double_backward` and the launches that fill them."""
    constants = _constants(q, v, allow_tf32, compute_dtype)
    scale_tensor = scalar_tensor(scale, compute_dtype, q.device)
    # Row statistics written by the query-side kernel for the key-side kernel.
    normalized_lse, delta, rho, gamma = (_row_stat(q, compute_dtype) for _ in range(4))
    grad_do, grad_q = grad_out.new_empty(grad_out.shape), q.new_empty(q.shape)
    grad_k, grad_v = k.new_empty(k.shape), v.new_empty(v.shape)
    inputs = (
        q, *q.stride(), k, *k.stride(), v, *v.stride(), grad_out, *grad_out.stride(),
        grad_grad_q, *grad_grad_q.stride(), grad_grad_k, *grad_grad_k.stride(), grad_grad_v, *grad_grad_v.stride(),
    )
    statistics = (normalized_lse, delta, rho, gamma, scale_tensor)
    sizes = (q.shape[1], k.shape[1], q.shape[2], v.shape[2])
    query_args = (*inputs, grad_do, *grad_do.stride(), grad_q, *grad_q.stride(), lse, *statistics, *sizes)
    key_args = (*inputs, grad_k, *grad_k.stride(), grad_v, *grad_v.stride(), *statistics, *sizes)
    launches = [
        _plan_launch("double_backward_query", q, k, v, allow_tf32, query_args, constants, arch),
        _plan_launch("double_backward_key", q, k, v, allow_tf32, key_args, constants, arch),
    ]
    return (grad_do, grad_q, grad_k, grad_v), launches


def double_backward(
    grad_grad_q: Tensor, grad_grad_k: Tensor, grad_grad_v: Tensor,
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float, allow_tf32: bool,
    *, compute_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(grad of grad_out, grad_q, grad_k, grad_v)`` of ``<(dq, dk, dv), (grad_grad_q, grad_grad_k, grad_grad_v)>``
    where ``(dq, dk, dv)`` is :func:`backward`'s result (the double backward of a gradient penalty)."""
    outputs, launches = double_backward_plan(
        grad_grad_q, grad_grad_k, grad_grad_v, grad_out, q, k, v, out, lse, scale, allow_tf32,
        compute_dtype=compute_dtype,
    )
    run_launches(launches)
    return outputs
