"""Triton kernels for attention: forward, backward and double backward, all flash-style (never an N x N matrix
in memory). The math and notation are those of ``ganops/reference/attention.py``.

* Forward: one program per (query block, batch); online softmax over key blocks; saves ``lse``.
* Backward: ``Delta = rowsum(dO * O)`` first; then a key-side kernel (one program per key block, walking the
  query blocks) accumulates ``dK, dV`` and a query-side kernel (one program per query block, walking the key
  blocks) accumulates ``dQ``: each output tile is owned by one program, so no atomics.
* Double backward: the query-side kernel walks the keys twice, first for the row statistics ``Delta``,
  ``rho``, ``gamma`` and the row sums of ``P`` (which need every key), then for ``grad dO`` and ``grad q``; it stores the
  statistics for the key-side kernel, which accumulates ``grad k`` and ``grad v``. (``out`` is not read:
  ``Delta = sum_j P dP`` from the first pass does not suffer the rounding of a half-precision ``out``.)

Any ``Nq, Nk`` (ragged blocks are masked) and head dims padded to a power of two >= 16 (masked), read
through their strides. Dots take the input dtype (fp16/bf16 on tensor cores, fp32 as tf32 or exact ieee
fp32, fp64 as fp64) and accumulate in ``ACC`` = float32, or float64 for float64 inputs. Under the CPU
interpreter, where half-precision dots are wrong, half-precision operands are upcast to float32 first.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import triton
import triton.language as tl
from torch import Tensor
from triton.runtime.errors import OutOfResources

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
def _dot(a, b, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr):
    return tl.dot(a.to(DOT_DTYPE), b.to(DOT_DTYPE), input_precision=PRECISION)


@triton.jit
def _load_tile(ptr, stride_b, stride_n, stride_d, batch, rows, n, cols, d):
    """The ``[len(rows), len(cols)]`` tile of a ``[B, n, d]`` tensor at ``batch``, zero outside, in its own dtype
    (it feeds dots as it is; elementwise uses convert to the accumulation dtype)."""
    offsets = batch * stride_b + rows[:, None].to(tl.int64) * stride_n + cols[None, :] * stride_d
    mask = (rows[:, None] < n) & (cols[None, :] < d)
    return tl.load(ptr + offsets, mask=mask, other=0.0)


@triton.jit
def _store_tile(ptr, stride_b, stride_n, stride_d, batch, rows, n, cols, d, value):
    offsets = batch * stride_b + rows[:, None].to(tl.int64) * stride_n + cols[None, :] * stride_d
    mask = (rows[:, None] < n) & (cols[None, :] < d)
    tl.store(ptr + offsets, value.to(ptr.dtype.element_ty), mask=mask)


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
    batch = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
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
    delta_ptr, n_q, d_v,
    BLOCK_Q: tl.constexpr, BLOCK_DV: tl.constexpr, ACC: tl.constexpr,
):
    batch = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    dv = tl.arange(0, BLOCK_DV)
    grad_out = _load_tile(do_ptr, sdo_b, sdo_n, sdo_d, batch, rows, n_q, dv, d_v)
    out = _load_tile(out_ptr, so_b, so_n, so_d, batch, rows, n_q, dv, d_v)
    tl.store(delta_ptr + batch * n_q + rows, tl.sum(grad_out.to(ACC) * out.to(ACC), axis=1), mask=rows < n_q)


@triton.jit
def _backward_key_kernel(
    q_ptr, sq_b, sq_n, sq_d,
    k_ptr, sk_b, sk_n, sk_d,
    v_ptr, sv_b, sv_n, sv_d,
    do_ptr, sdo_b, sdo_n, sdo_d,
    dk_ptr, sdk_b, sdk_n, sdk_d,
    dv_ptr, sdv_b, sdv_n, sdv_d,
    lse_ptr, delta_ptr, scale_ptr,
    n_q, n_k, d_qk, d_v,
    BLOCK_Q: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_DQK: tl.constexpr, BLOCK_DV: tl.constexpr,
    ACC: tl.constexpr, DOT_DTYPE: tl.constexpr, PRECISION: tl.constexpr,
):
    batch = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    dqk = tl.arange(0, BLOCK_DQK)
    dv = tl.arange(0, BLOCK_DV)
    scale = tl.load(scale_ptr)
    k = _load_tile(k_ptr, sk_b, sk_n, sk_d, batch, cols, n_k, dqk, d_qk)
    v = _load_tile(v_ptr, sv_b, sv_n, sv_d, batch, cols, n_k, dv, d_v)
    grad_k = tl.zeros([BLOCK_K, BLOCK_DQK], dtype=ACC)
    grad_v = tl.zeros([BLOCK_K, BLOCK_DV], dtype=ACC)
    for start in range(0, n_q, BLOCK_Q):
        rows = start + tl.arange(0, BLOCK_Q)
        q = _load_tile(q_ptr, sq_b, sq_n, sq_d, batch, rows, n_q, dqk, d_qk)
        grad_out = _load_tile(do_ptr, sdo_b, sdo_n, sdo_d, batch, rows, n_q, dv, d_v)
        lse = _load_row_stat(lse_ptr, batch, n_q, rows)
        delta = _load_row_stat(delta_ptr, batch, n_q, rows)
        p = _probabilities(q, k, lse, rows, cols, n_q, n_k, scale, DOT_DTYPE, PRECISION)
        grad_v += _dot(tl.trans(p), grad_out, DOT_DTYPE, PRECISION)
        dp = _dot(grad_out, tl.trans(v), DOT_DTYPE, PRECISION)
        ds = p * (dp - delta[:, None])
        grad_k += _dot(tl.trans(ds), q, DOT_DTYPE, PRECISION)
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
    batch = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
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
    batch = tl.program_id(1).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_Q + tl.arange(0, BLOCK_Q)
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
    batch = tl.program_id(1).to(tl.int64)
    cols = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
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


_TRITON_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32, torch.float64: tl.float64}


def _block_sizes(q: Tensor, d_qk: int, d_v: int) -> tuple[int, int]:
    if _forced_blocks is not None:
        return _forced_blocks
    if q.device.type == "cpu":  # Triton runs CPU tensors only in its interpreter, where small blocks are fastest
        return 16, 16
    # Registers hold a few [BLOCK, D] tiles per program: wide heads and fp64 get smaller blocks.
    widest = max(d_qk, d_v) * (2 if q.dtype == torch.float64 else 1)
    if widest <= 64:
        return 64, 64
    if widest <= 128:
        return 64, 32
    return 32, 32


def _parameters(q: Tensor, k: Tensor, v: Tensor, allow_tf32: bool, compute_dtype: torch.dtype) -> dict:
    d_qk, d_v = q.shape[-1], v.shape[-1]
    block_q, block_k = _block_sizes(q, d_qk, d_v)
    interpreted = q.device.type == "cpu"
    dot_dtype = _TRITON_DTYPES[q.dtype]
    if interpreted and q.dtype in (torch.float16, torch.bfloat16):
        dot_dtype = tl.float32
    return dict(
        n_q=q.shape[1], n_k=k.shape[1], d_qk=d_qk, d_v=d_v,
        BLOCK_Q=block_q, BLOCK_K=block_k,
        BLOCK_DQK=max(16, triton.next_power_of_2(d_qk)), BLOCK_DV=max(16, triton.next_power_of_2(d_v)),
        ACC=_TRITON_DTYPES[compute_dtype],
        DOT_DTYPE=dot_dtype,
        PRECISION="tf32" if q.dtype == torch.float32 and allow_tf32 else "ieee",
    )


# (kernel, dtype, padded head dims) -> the block sizes that fit in shared memory, once a launch had to shrink them.
_fitting_blocks: dict[tuple, tuple[int, int]] = {}


def _launch(kernel, grid_block: str, rows: int, batch: int, args: tuple, params: dict) -> None:
    """Launch ``kernel`` over ``cdiv(rows, params[grid_block])`` x ``batch`` programs. If the compiled kernel needs
    more shared memory than the GPU has (wide fp32/fp64 heads), halve the larger block and retry, down to 16."""
    key = (kernel.fn.__name__, params["ACC"], params["DOT_DTYPE"], params["BLOCK_DQK"], params["BLOCK_DV"])
    block_q, block_k = _fitting_blocks.get(key, (params["BLOCK_Q"], params["BLOCK_K"]))
    while True:
        launch_params = {**params, "BLOCK_Q": block_q, "BLOCK_K": block_k}
        launch_params = {name: value for name, value in launch_params.items() if name in kernel.arg_names}
        grid = (triton.cdiv(rows, block_q if grid_block == "BLOCK_Q" else block_k), batch)
        try:
            kernel[grid](*args, **launch_params)
            return
        except OutOfResources:
            if max(block_q, block_k) <= 16:
                raise
            if block_q >= block_k:
                block_q //= 2
            else:
                block_k //= 2
            _fitting_blocks[key] = (block_q, block_k)


def _scale_tensor(q: Tensor, scale: float, compute_dtype: torch.dtype) -> Tensor:
    # A Python float reaches a kernel as fp32; fp64 inputs need the scale in fp64, so it travels in memory.
    return torch.full((1,), scale, dtype=compute_dtype, device=q.device)


def _row_stat(q: Tensor, compute_dtype: torch.dtype) -> Tensor:
    return torch.empty(q.shape[:2], dtype=compute_dtype, device=q.device)


def forward(
    q: Tensor, k: Tensor, v: Tensor, scale: float, allow_tf32: bool, *, compute_dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    """``(out, lse)`` for 3-D ``q [B, Nq, Dqk]``, ``k [B, Nk, Dqk]``, ``v [B, Nk, Dv]`` (any strides); ``lse`` and
    every accumulation in ``compute_dtype`` (float32 or float64, the caller's rule)."""
    params = _parameters(q, k, v, allow_tf32, compute_dtype)
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[2])
    lse = _row_stat(q, compute_dtype)
    args = (q, *q.stride(), k, *k.stride(), v, *v.stride(), out, *out.stride(), lse, _scale_tensor(q, scale, compute_dtype))
    _launch(_forward_kernel, "BLOCK_Q", q.shape[1], q.shape[0], args, params)
    return out, lse


def backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float, allow_tf32: bool,
    *, compute_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    params = _parameters(q, k, v, allow_tf32, compute_dtype)
    delta = _row_stat(q, compute_dtype)
    delta_args = (grad_out, *grad_out.stride(), out, *out.stride(), delta)
    _launch(_delta_kernel, "BLOCK_Q", q.shape[1], q.shape[0], delta_args, params)
    scale_tensor = _scale_tensor(q, scale, compute_dtype)
    grad_q, grad_k, grad_v = q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)
    inputs = (q, *q.stride(), k, *k.stride(), v, *v.stride(), grad_out, *grad_out.stride())
    key_args = (*inputs, grad_k, *grad_k.stride(), grad_v, *grad_v.stride(), lse, delta, scale_tensor)
    _launch(_backward_key_kernel, "BLOCK_K", k.shape[1], q.shape[0], key_args, params)
    query_args = (*inputs, grad_q, *grad_q.stride(), lse, delta, scale_tensor)
    _launch(_backward_query_kernel, "BLOCK_Q", q.shape[1], q.shape[0], query_args, params)
    return grad_q, grad_k, grad_v


def double_backward(
    grad_grad_q: Tensor, grad_grad_k: Tensor, grad_grad_v: Tensor,
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float, allow_tf32: bool,
    *, compute_dtype: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    params = _parameters(q, k, v, allow_tf32, compute_dtype)
    scale_tensor = _scale_tensor(q, scale, compute_dtype)
    # Row statistics written by the query-side kernel for the key-side kernel.
    normalized_lse, delta, rho, gamma = _row_stat(q, compute_dtype), _row_stat(q, compute_dtype), _row_stat(q, compute_dtype), _row_stat(q, compute_dtype)
    grad_do, grad_q = grad_out.new_empty(grad_out.shape), q.new_empty(q.shape)
    grad_k, grad_v = k.new_empty(k.shape), v.new_empty(v.shape)
    inputs = (
        q, *q.stride(), k, *k.stride(), v, *v.stride(), grad_out, *grad_out.stride(),
        grad_grad_q, *grad_grad_q.stride(), grad_grad_k, *grad_grad_k.stride(), grad_grad_v, *grad_grad_v.stride(),
    )
    statistics = (normalized_lse, delta, rho, gamma, scale_tensor)
    query_args = (*inputs, grad_do, *grad_do.stride(), grad_q, *grad_q.stride(), lse, *statistics)
    _launch(_double_backward_query_kernel, "BLOCK_Q", q.shape[1], q.shape[0], query_args, params)
    key_args = (*inputs, grad_k, *grad_k.stride(), grad_v, *grad_v.stride(), *statistics)
    _launch(_double_backward_key_kernel, "BLOCK_K", k.shape[1], q.shape[0], key_args, params)
    return grad_do, grad_q, grad_k, grad_v
