"""Triton kernels for spectral normalization of a group of layers: one launch per direction for the whole
group, one program per layer. The math and notation are those of ``ganops/reference/spectral_norm.py``.

A program walks its layer's ``[R, C]`` weight matrix in ``[BLOCK_R, BLOCK_C]`` tiles, once per mat-vec of
the power iteration and once more to write ``W / sigma``; the unnormalised ``W v`` and ``W^T u`` live in a
compute-dtype workspace. ``sigma = u^T W v`` is ``s . v`` with ``s`` the last ``W^T u``, so a training forward
reads ``W`` ``2 n + 1`` times, an eval forward twice. The backward reads ``G`` and ``W`` once for ``<G, W>``
and ``G`` once more to write the gradient.

The layers are reached without packing: every tensor of a list is addressed as ``base + element offset``,
the offset of its data from the list's first tensor, kept in one int64 table (one host-to-device copy).

``eps`` reaches the kernel as a one-element tensor of the compute dtype: a Python float argument is compiled
as fp32, which would give float64 weights an fp32 ``eps``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import Launch, run_launches, scalar_tensor, scaled_norm, scaled_squares_add, triton_compute_dtype

BLOCK_R = 32
BLOCK_C = 128
# Warps per program: a [32, 128] tile is 16 values per thread at 8 warps (32 at 4 warps spilled on sm_80/sm_90).
NUM_WARPS = 8
# The forward runs one program per layer (a few per SM at most), so its 8 warps may hold the whole register file:
# left to itself ptxas stopped at 128 registers and spilled 80-104 B of the power iteration's state (fp32).
FORWARD_MAX_REGISTERS = 255

# Entries per layer of the int64 tables; the kernels name them as they read them.
_FORWARD_COLUMNS = 13
_BACKWARD_COLUMNS = 12


@triton.jit
def _tile_mask(r, c, rows, cols):
    return (r < rows)[:, None] & (c < cols)[None, :]


@triton.jit
def _tile(base, row_stride, col_stride, r, c, rows, cols, COMPUTE_DTYPE: tl.constexpr):
    offsets = r.to(tl.int64)[:, None] * row_stride + c.to(tl.int64)[None, :] * col_stride
    return tl.load(base + offsets, mask=_tile_mask(r, c, rows, cols), other=0.0).to(COMPUTE_DTYPE)


@triton.jit
def _forward_kernel(
    meta_ptr, w_ptr, u_ptr, v_ptr, wsn_ptr, uo_ptr, vo_ptr, sigma_ptr, work_ptr, eps_ptr,
    n_power_iterations,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, COMPUTE_DTYPE: tl.constexpr, EVAL: tl.constexpr,
    COLUMNS: tl.constexpr,
):
    row_meta = meta_ptr + tl.program_id(0) * COLUMNS
    w = w_ptr + tl.load(row_meta + 0)
    w_sr = tl.load(row_meta + 1)
    w_sc = tl.load(row_meta + 2)
    rows = tl.load(row_meta + 3)
    cols = tl.load(row_meta + 4)
    u_in = u_ptr + tl.load(row_meta + 5)
    v_in = v_ptr + tl.load(row_meta + 6)
    wsn = wsn_ptr + tl.load(row_meta + 7)
    u_out = uo_ptr + tl.load(row_meta + 8)
    v_out = vo_ptr + tl.load(row_meta + 9)
    sigma_out = sigma_ptr + tl.load(row_meta + 10)
    work_u = work_ptr + tl.load(row_meta + 11)
    work_v = work_ptr + tl.load(row_meta + 12)
    eps = tl.load(eps_ptr)
    r_base = tl.arange(0, BLOCK_R)
    c_base = tl.arange(0, BLOCK_C)

    for r0 in range(0, rows, BLOCK_R):
        r = r0 + r_base
        tl.store(work_u + r, tl.load(u_in + r, mask=r < rows, other=0.0).to(COMPUTE_DTYPE), mask=r < rows)
    for c0 in range(0, cols, BLOCK_C):
        c = c0 + c_base
        tl.store(work_v + c, tl.load(v_in + c, mask=c < cols, other=0.0).to(COMPUTE_DTYPE), mask=c < cols)
    tl.debug_barrier()

    sigma = tl.zeros([1], dtype=COMPUTE_DTYPE)
    if EVAL:
        # sigma = u . (W v) with the stored vectors.
        total = tl.zeros([BLOCK_R], dtype=COMPUTE_DTYPE)
        for r0 in range(0, rows, BLOCK_R):
            r = r0 + r_base
            acc = tl.zeros([BLOCK_R], dtype=COMPUTE_DTYPE)
            for c0 in range(0, cols, BLOCK_C):
                c = c0 + c_base
                tile = _tile(w, w_sr, w_sc, r, c, rows, cols, COMPUTE_DTYPE)
                vv = tl.load(work_v + c, mask=c < cols, other=0.0)
                acc += tl.sum(tile * vv[None, :], axis=1)
            total += acc * tl.load(work_u + r, mask=r < rows, other=0.0)
        sigma += tl.sum(total, axis=0)
    else:
        for _iteration in range(n_power_iterations):
            # t = W v into work_u; u = t / max(||t||, eps).
            scale = tl.max(tl.zeros([BLOCK_R], dtype=COMPUTE_DTYPE), axis=0)
            squares = tl.zeros([BLOCK_R], dtype=COMPUTE_DTYPE)
            for r0 in range(0, rows, BLOCK_R):
                r = r0 + r_base
                acc = tl.zeros([BLOCK_R], dtype=COMPUTE_DTYPE)
                for c0 in range(0, cols, BLOCK_C):
                    c = c0 + c_base
                    tile = _tile(w, w_sr, w_sc, r, c, rows, cols, COMPUTE_DTYPE)
                    vv = tl.load(work_v + c, mask=c < cols, other=0.0)
                    acc += tl.sum(tile * vv[None, :], axis=1)
                tl.store(work_u + r, acc, mask=r < rows)
                scale, squares = scaled_squares_add(scale, squares, acc)
            tl.debug_barrier()
            u_norm = tl.maximum(scaled_norm(scale, squares), eps)
            for r0 in range(0, rows, BLOCK_R):
                r = r0 + r_base
                t = tl.load(work_u + r, mask=r < rows, other=0.0)
                tl.store(work_u + r, t / u_norm, mask=r < rows)
            tl.debug_barrier()
            # s = W^T u into work_v; v = s / max(||s||, eps); sigma = s . v = ||s|| (||s|| / max(||s||, eps)),
            # in that order so that ||s||^2, which overflows first, is never formed.
            scale = tl.max(tl.zeros([BLOCK_C], dtype=COMPUTE_DTYPE), axis=0)
            squares = tl.zeros([BLOCK_C], dtype=COMPUTE_DTYPE)
            for c0 in range(0, cols, BLOCK_C):
                c = c0 + c_base
                acc = tl.zeros([BLOCK_C], dtype=COMPUTE_DTYPE)
                for r0 in range(0, rows, BLOCK_R):
                    r = r0 + r_base
                    tile = _tile(w, w_sr, w_sc, r, c, rows, cols, COMPUTE_DTYPE)
                    uu = tl.load(work_u + r, mask=r < rows, other=0.0)
                    acc += tl.sum(tile * uu[:, None], axis=0)
                tl.store(work_v + c, acc, mask=c < cols)
                scale, squares = scaled_squares_add(scale, squares, acc)
            tl.debug_barrier()
            s_norm = scaled_norm(scale, squares)
            v_norm = tl.maximum(s_norm, eps)
            sigma = tl.zeros([1], dtype=COMPUTE_DTYPE) + s_norm * (s_norm / v_norm)
            for c0 in range(0, cols, BLOCK_C):
                c = c0 + c_base
                s = tl.load(work_v + c, mask=c < cols, other=0.0)
                tl.store(work_v + c, s / v_norm, mask=c < cols)
            tl.debug_barrier()

    tl.store(sigma_out + tl.arange(0, 1), sigma)
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + r_base
        uu = tl.load(work_u + r, mask=r < rows, other=0.0)
        tl.store(u_out + r, uu.to(uo_ptr.dtype.element_ty), mask=r < rows)
    for c0 in range(0, cols, BLOCK_C):
        c = c0 + c_base
        vv = tl.load(work_v + c, mask=c < cols, other=0.0)
        tl.store(v_out + c, vv.to(vo_ptr.dtype.element_ty), mask=c < cols)
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + r_base
        for c0 in range(0, cols, BLOCK_C):
            c = c0 + c_base
            mask = _tile_mask(r, c, rows, cols)
            tile = _tile(w, w_sr, w_sc, r, c, rows, cols, COMPUTE_DTYPE)
            out = tile / sigma
            offsets = r.to(tl.int64)[:, None] * cols + c[None, :]
            tl.store(wsn + offsets, out.to(wsn_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _backward_kernel(
    meta_ptr, g_ptr, w_ptr, u_ptr, v_ptr, sigma_ptr, grad_ptr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, COMPUTE_DTYPE: tl.constexpr, COLUMNS: tl.constexpr,
):
    row_meta = meta_ptr + tl.program_id(0) * COLUMNS
    g = g_ptr + tl.load(row_meta + 0)
    g_sr = tl.load(row_meta + 1)
    g_sc = tl.load(row_meta + 2)
    w = w_ptr + tl.load(row_meta + 3)
    w_sr = tl.load(row_meta + 4)
    w_sc = tl.load(row_meta + 5)
    rows = tl.load(row_meta + 6)
    cols = tl.load(row_meta + 7)
    u = u_ptr + tl.load(row_meta + 8)
    v = v_ptr + tl.load(row_meta + 9)
    sigma = tl.load(sigma_ptr + tl.load(row_meta + 10) + tl.arange(0, 1)).to(COMPUTE_DTYPE)
    grad = grad_ptr + tl.load(row_meta + 11)
    r_base = tl.arange(0, BLOCK_R)
    c_base = tl.arange(0, BLOCK_C)

    # Row sums per tile: a [BLOCK_R, BLOCK_C] accumulator next to the two tiles spilled.
    dot = tl.zeros([BLOCK_R], dtype=COMPUTE_DTYPE)
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + r_base
        for c0 in range(0, cols, BLOCK_C):
            c = c0 + c_base
            g_tile = _tile(g, g_sr, g_sc, r, c, rows, cols, COMPUTE_DTYPE)
            w_tile = _tile(w, w_sr, w_sc, r, c, rows, cols, COMPUTE_DTYPE)
            dot += tl.sum(g_tile * w_tile, axis=1)
    # <G, W_sn> = <G, W> / sigma.
    projection = tl.sum(dot, axis=0) / sigma
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + r_base
        uu = tl.load(u + r, mask=r < rows, other=0.0).to(COMPUTE_DTYPE)
        for c0 in range(0, cols, BLOCK_C):
            c = c0 + c_base
            vv = tl.load(v + c, mask=c < cols, other=0.0).to(COMPUTE_DTYPE)
            mask = _tile_mask(r, c, rows, cols)
            g_tile = _tile(g, g_sr, g_sc, r, c, rows, cols, COMPUTE_DTYPE)
            out = (g_tile - projection * (uu[:, None] * vv[None, :])) / sigma
            offsets = r.to(tl.int64)[:, None] * cols + c[None, :]
            tl.store(grad + offsets, out.to(grad_ptr.dtype.element_ty), mask=mask)


def _offset(tensor: Tensor, base: Tensor) -> int:
    """Element offset of ``tensor``'s data from ``base``'s (the kernels address every layer from one base)."""
    difference = tensor.data_ptr() - base.data_ptr()
    if difference % tensor.element_size() != 0:
        raise RuntimeError("spectral_norm triton kernel: tensors of one group must be element-aligned")
    return difference // tensor.element_size()


def forward_plan(
    weights: list[Tensor], us: list[Tensor], vs: list[Tensor], n_power_iterations: int, eps: float,
    *, compute_dtype: torch.dtype,
) -> tuple[tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]], list[Launch]]:
    """The outputs of ``forward`` (allocated) and the launch that computes them."""
    device, dtype = weights[0].device, weights[0].dtype
    us = [u.contiguous() for u in us]
    vs = [v.contiguous() for v in vs]
    weights_sn = [torch.empty(w.shape, dtype=dtype, device=device) for w in weights]
    us_out = [torch.empty_like(u) for u in us]
    vs_out = [torch.empty_like(v) for v in vs]
    sigmas = [torch.empty((), dtype=compute_dtype, device=device) for _ in weights]
    work = torch.empty(sum(sum(w.shape) for w in weights), dtype=compute_dtype, device=device)
    table, position = [], 0
    for w, u, v, wsn, uo, vo, sigma in zip(weights, us, vs, weights_sn, us_out, vs_out, sigmas):
        rows, cols = w.shape
        table.append([
            _offset(w, weights[0]), w.stride(0), w.stride(1), rows, cols,
            _offset(u, us[0]), _offset(v, vs[0]),
            _offset(wsn, weights_sn[0]), _offset(uo, us_out[0]), _offset(vo, vs_out[0]),
            _offset(sigma, sigmas[0]), position, position + rows,
        ])
        position += rows + cols
    meta = torch.tensor(table, dtype=torch.int64).to(device, non_blocking=True)
    elements = sum(w.numel() for w in weights)
    vector_elements = sum(sum(w.shape) for w in weights)
    # W is read 2n + 1 times in training (W v and W^T u per iteration, then W / sigma), twice in eval.
    weight_reads = 2 if n_power_iterations == 0 else 2 * n_power_iterations + 1
    launch = Launch(
        _forward_kernel, (len(weights),),
        (meta, weights[0], us[0], vs[0], weights_sn[0], us_out[0], vs_out[0], sigmas[0], work,
         scalar_tensor(eps, compute_dtype, device), n_power_iterations),
        dict(BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, COMPUTE_DTYPE=triton_compute_dtype(compute_dtype),
             EVAL=n_power_iterations == 0, COLUMNS=_FORWARD_COLUMNS, num_warps=NUM_WARPS,
             maxnreg=FORWARD_MAX_REGISTERS),
        bytes_moved=(weight_reads + 1) * elements * weights[0].element_size()
        + vector_elements * (2 * weights[0].element_size() + 2 * (2 * n_power_iterations + 1) * work.element_size()),
        label=f"BR={BLOCK_R} BC={BLOCK_C} iterations={n_power_iterations}",
    )
    return (weights_sn, us_out, vs_out, sigmas), [launch]


def forward(
    weights: list[Tensor], us: list[Tensor], vs: list[Tensor], n_power_iterations: int, eps: float,
    *, compute_dtype: torch.dtype,
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
    """``(W_sn, u, v, sigma)`` per layer for ``[R, C]`` weights of one dtype and device (any strides);
    ``sigma`` and the power-iteration arithmetic in ``compute_dtype``."""
    outputs, launches = forward_plan(weights, us, vs, n_power_iterations, eps, compute_dtype=compute_dtype)
    run_launches(launches)
    return outputs


def backward_plan(
    grads: list[Tensor], weights: list[Tensor], us: list[Tensor], vs: list[Tensor], sigmas: list[Tensor],
    *, compute_dtype: torch.dtype,
) -> tuple[list[Tensor], list[Launch]]:
    """The outputs of ``backward`` (allocated) and the launch that computes them."""
    device, dtype = weights[0].device, weights[0].dtype
    grads = [g.to(dtype) for g in grads]
    us = [u.contiguous() for u in us]
    vs = [v.contiguous() for v in vs]
    outs = [torch.empty(w.shape, dtype=dtype, device=device) for w in weights]
    table = []
    for g, w, u, v, sigma, out in zip(grads, weights, us, vs, sigmas, outs):
        table.append([
            _offset(g, grads[0]), g.stride(0), g.stride(1),
            _offset(w, weights[0]), w.stride(0), w.stride(1), w.shape[0], w.shape[1],
            _offset(u, us[0]), _offset(v, vs[0]), _offset(sigma, sigmas[0]), _offset(out, outs[0]),
        ])
    meta = torch.tensor(table, dtype=torch.int64).to(device, non_blocking=True)
    elements = sum(w.numel() for w in weights)
    launch = Launch(
        _backward_kernel, (len(weights),),
        (meta, grads[0], weights[0], us[0], vs[0], sigmas[0], outs[0]),
        dict(BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, COMPUTE_DTYPE=triton_compute_dtype(compute_dtype),
             COLUMNS=_BACKWARD_COLUMNS, num_warps=NUM_WARPS),
        # G twice, W once, grad_W written once.
        bytes_moved=4 * elements * weights[0].element_size(),
        label=f"BR={BLOCK_R} BC={BLOCK_C}",
    )
    return outs, [launch]


def backward(
    grads: list[Tensor], weights: list[Tensor], us: list[Tensor], vs: list[Tensor], sigmas: list[Tensor],
    *, compute_dtype: torch.dtype,
) -> list[Tensor]:
    """``grad_W = (G - <G, W_sn> u v^T) / sigma`` per layer."""
    outs, launches = backward_plan(grads, weights, us, vs, sigmas, compute_dtype=compute_dtype)
    run_launches(launches)
    return outs


KERNELS = {"forward": _forward_kernel, "backward": _backward_kernel}
