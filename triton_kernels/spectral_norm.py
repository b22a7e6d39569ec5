"""Triton kernels for spectral normalization of a group of layers, the whole group in two launches per
direction. The math and notation are those of ``ganops/reference/spectral_norm.py``.

Forward: one program per layer runs the power iteration, walking its layer's ``[R, C]`` weight matrix in
``[BLOCK_R, BLOCK_C]`` tiles once per mat-vec (the unnormalised ``W v`` and ``W^T u`` live in a compute-dtype
workspace) and writing ``u``, ``v`` and ``sigma``; then a second launch writes ``W / sigma`` with one program per
tile of every layer, so that the pass that moves the most bytes (read ``W``, write ``W_sn``) is spread over the
whole GPU instead of one SM per layer. ``sigma = u^T W v`` is ``s . v`` with ``s`` the last ``W^T u``, so a training
forward reads ``W`` ``2 n + 1`` times, an eval forward twice. Backward: one program per block of ``BLOCK_R`` rows
of every layer sums ``G * W`` over its rows into a partial, then one program per tile adds its layer's partials
(in order: ``<G, W>``) and writes the gradient; ``G`` is read twice and ``W`` once. A tile program finds its layer
in a table of the layers' first program indices.

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

from ._common import (
    Launch, check_grid, run_launches, scalar_tensor, scaled_norm, scaled_squares_add, triton_compute_dtype,
)

BLOCK_R = 32
BLOCK_C = 128
# Warps per program: a [32, 128] tile is 16 values per thread at 8 warps (32 at 4 warps spilled on sm_80/sm_90).
NUM_WARPS = 8
# The forward runs one program per layer (a few per SM at most), so its 8 warps may hold the whole register file:
# left to itself ptxas stopped at 128 registers and spilled 80-104 B of the power iteration's state (fp32).
FORWARD_MAX_REGISTERS = 255

# Partials of a layer's <G, W> added per step by the backward's tile programs.
_MAX_BLOCK_P = 64

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
    meta_ptr, w_ptr, u_ptr, v_ptr, uo_ptr, vo_ptr, sigma_ptr, work_ptr, eps_ptr,
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


@triton.jit
def _program_layer(first_ptr, pid, num_layers, BLOCK_L: tl.constexpr):
    """The layer whose programs include ``pid``: ``first[l]`` is layer ``l``'s first program (ascending)."""
    index = tl.arange(0, BLOCK_L)
    first = tl.load(first_ptr + index, mask=index < num_layers, other=2**62)
    return tl.sum(tl.where(first <= pid, 1, 0), axis=0) - 1


@triton.jit
def _strided_matrix(row_meta, base_ptr, column):
    """A layer's matrix from its table row: the pointer (base + the offset at ``column``) and the row and column
    strides in the two entries after it."""
    return base_ptr + tl.load(row_meta + column), tl.load(row_meta + column + 1), tl.load(row_meta + column + 2)


@triton.jit
def _layer_tile(first_ptr, layer, pid, cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Row and column indices of program ``pid``'s tile of ``layer`` (tiles row-major over the layer)."""
    tile = pid - tl.load(first_ptr + layer)
    column_tiles = tl.cdiv(cols, BLOCK_C)
    r = (tile // column_tiles) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = (tile % column_tiles) * BLOCK_C + tl.arange(0, BLOCK_C)
    return r, c


@triton.jit
def _scale_kernel(
    meta_ptr, first_ptr, num_layers, w_ptr, wsn_ptr, sigma_ptr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
    COLUMNS: tl.constexpr,
):
    """``W_sn = W / sigma`` over one ``[BLOCK_R, BLOCK_C]`` tile of one layer."""
    pid = tl.program_id(0).to(tl.int64)
    layer = _program_layer(first_ptr, pid, num_layers, BLOCK_L)
    row_meta = meta_ptr + layer * COLUMNS
    w, w_sr, w_sc = _strided_matrix(row_meta, w_ptr, 0)
    rows = tl.load(row_meta + 3)
    cols = tl.load(row_meta + 4)
    wsn = wsn_ptr + tl.load(row_meta + 7)
    sigma = tl.load(sigma_ptr + tl.load(row_meta + 10) + tl.arange(0, 1)).to(COMPUTE_DTYPE)
    r, c = _layer_tile(first_ptr, layer, pid, cols, BLOCK_R, BLOCK_C)
    out = _tile(w, w_sr, w_sc, r, c, rows, cols, COMPUTE_DTYPE) / sigma
    offsets = r.to(tl.int64)[:, None] * cols + c[None, :]
    tl.store(wsn + offsets, out.to(wsn_ptr.dtype.element_ty), mask=_tile_mask(r, c, rows, cols))


@triton.jit
def _backward_dot_kernel(
    meta_ptr, first_ptr, num_layers, g_ptr, w_ptr, partial_ptr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
    COLUMNS: tl.constexpr,
):
    """``partial[pid]`` = the sum of ``G * W`` over one block of ``BLOCK_R`` rows of one layer."""
    pid = tl.program_id(0).to(tl.int64)
    layer = _program_layer(first_ptr, pid, num_layers, BLOCK_L)
    row_meta = meta_ptr + layer * COLUMNS
    g, g_sr, g_sc = _strided_matrix(row_meta, g_ptr, 0)
    w, w_sr, w_sc = _strided_matrix(row_meta, w_ptr, 3)
    rows = tl.load(row_meta + 6)
    cols = tl.load(row_meta + 7)
    r = (pid - tl.load(first_ptr + layer)) * BLOCK_R + tl.arange(0, BLOCK_R)
    # Row sums per tile: a [BLOCK_R, BLOCK_C] accumulator next to the two tiles spilled.
    dot = tl.zeros([BLOCK_R], dtype=COMPUTE_DTYPE)
    for c0 in range(0, cols, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        g_tile = _tile(g, g_sr, g_sc, r, c, rows, cols, COMPUTE_DTYPE)
        w_tile = _tile(w, w_sr, w_sc, r, c, rows, cols, COMPUTE_DTYPE)
        dot += tl.sum(g_tile * w_tile, axis=1)
    tl.store(partial_ptr + pid + tl.arange(0, 1), tl.sum(dot, axis=0) + tl.zeros([1], dtype=COMPUTE_DTYPE))


@triton.jit
def _backward_kernel(
    meta_ptr, first_ptr, num_layers, partial_first_ptr, partial_ptr, g_ptr, u_ptr, v_ptr, sigma_ptr, grad_ptr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr, COLUMNS: tl.constexpr,
):
    """``grad_W = (G - <G, W_sn> u v^T) / sigma`` over one ``[BLOCK_R, BLOCK_C]`` tile of one layer, with
    ``<G, W>`` the sum of the layer's row-block partials."""
    pid = tl.program_id(0).to(tl.int64)
    layer = _program_layer(first_ptr, pid, num_layers, BLOCK_L)
    row_meta = meta_ptr + layer * COLUMNS
    g, g_sr, g_sc = _strided_matrix(row_meta, g_ptr, 0)
    rows = tl.load(row_meta + 6)
    cols = tl.load(row_meta + 7)
    u = u_ptr + tl.load(row_meta + 8)
    v = v_ptr + tl.load(row_meta + 9)
    sigma = tl.load(sigma_ptr + tl.load(row_meta + 10) + tl.arange(0, 1)).to(COMPUTE_DTYPE)
    grad = grad_ptr + tl.load(row_meta + 11)
    first_partial = tl.load(partial_first_ptr + layer)
    partials = tl.cdiv(rows, BLOCK_R)
    total = tl.zeros([BLOCK_P], dtype=COMPUTE_DTYPE)
    for p0 in range(0, partials, BLOCK_P):
        index = p0 + tl.arange(0, BLOCK_P)
        total += tl.load(partial_ptr + first_partial + index, mask=index < partials, other=0.0)
    # <G, W_sn> = <G, W> / sigma.
    projection = tl.sum(total, axis=0) / sigma
    r, c = _layer_tile(first_ptr, layer, pid, cols, BLOCK_R, BLOCK_C)
    uu = tl.load(u + r, mask=r < rows, other=0.0).to(COMPUTE_DTYPE)
    vv = tl.load(v + c, mask=c < cols, other=0.0).to(COMPUTE_DTYPE)
    g_tile = _tile(g, g_sr, g_sc, r, c, rows, cols, COMPUTE_DTYPE)
    out = (g_tile - projection * (uu[:, None] * vv[None, :])) / sigma
    offsets = r.to(tl.int64)[:, None] * cols + c[None, :]
    tl.store(grad + offsets, out.to(grad_ptr.dtype.element_ty), mask=_tile_mask(r, c, rows, cols))


def _first_programs(counts: list[int], device: torch.device) -> tuple[Tensor, int]:
    """The first program index of every layer (ascending) and the total, for per-layer program ``counts``."""
    firsts, total = [], 0
    for count in counts:
        firsts.append(total)
        total += count
    return torch.tensor(firsts, dtype=torch.int64).to(device, non_blocking=True), total


def _tiles(rows: int, cols: int) -> int:
    return triton.cdiv(rows, BLOCK_R) * triton.cdiv(cols, BLOCK_C)


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
    """The outputs of ``forward`` (allocated) and its launches: the power iteration, one program per layer, then
    ``W / sigma``, one program per tile of every layer."""
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
    # The power iteration reads W 2n times in training (W v and W^T u per iteration), once in eval.
    weight_reads = 1 if n_power_iterations == 0 else 2 * n_power_iterations
    launch = Launch(
        _forward_kernel, (len(weights),),
        (meta, weights[0], us[0], vs[0], us_out[0], vs_out[0], sigmas[0], work,
         scalar_tensor(eps, compute_dtype, device), n_power_iterations),
        dict(BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, COMPUTE_DTYPE=triton_compute_dtype(compute_dtype),
             EVAL=n_power_iterations == 0, COLUMNS=_FORWARD_COLUMNS, num_warps=NUM_WARPS,
             maxnreg=FORWARD_MAX_REGISTERS),
        bytes_moved=weight_reads * elements * weights[0].element_size()
        + vector_elements * (2 * weights[0].element_size() + 2 * (2 * n_power_iterations + 1) * work.element_size()),
        label=f"BR={BLOCK_R} BC={BLOCK_C} iterations={n_power_iterations}",
    )
    first, programs = _first_programs([_tiles(*w.shape) for w in weights], device)
    block_l = triton.next_power_of_2(len(weights))
    scale = Launch(
        _scale_kernel, check_grid((programs,)),
        (meta, first, len(weights), weights[0], weights_sn[0], sigmas[0]),
        dict(BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, BLOCK_L=block_l, COMPUTE_DTYPE=triton_compute_dtype(compute_dtype),
             COLUMNS=_FORWARD_COLUMNS, num_warps=NUM_WARPS),
        bytes_moved=2 * elements * weights[0].element_size(),
        label=f"BR={BLOCK_R} BC={BLOCK_C} BL={block_l}",
    )
    return (weights_sn, us_out, vs_out, sigmas), [launch, scale]


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
    """The outputs of ``backward`` (allocated) and its launches: ``<G, W>`` in row-block partials, then the
    gradient, one program per tile of every layer."""
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
    row_blocks = [triton.cdiv(w.shape[0], BLOCK_R) for w in weights]
    partial_first, partial_count = _first_programs(row_blocks, device)
    first, programs = _first_programs([_tiles(*w.shape) for w in weights], device)
    partials = torch.empty(partial_count, dtype=compute_dtype, device=device)
    block_l = triton.next_power_of_2(len(weights))
    meta_kwargs = dict(BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, BLOCK_L=block_l, COMPUTE_DTYPE=triton_compute_dtype(compute_dtype),
                       COLUMNS=_BACKWARD_COLUMNS, num_warps=NUM_WARPS)
    dot = Launch(
        _backward_dot_kernel, check_grid((partial_count,)),
        (meta, partial_first, len(weights), grads[0], weights[0], partials),
        meta_kwargs,
        # G and W read once.
        bytes_moved=2 * elements * weights[0].element_size() + partials.numel() * partials.element_size(),
        label=f"BR={BLOCK_R} BC={BLOCK_C} BL={block_l}",
    )
    block_p = min(triton.next_power_of_2(max(row_blocks)), _MAX_BLOCK_P)
    scaled = Launch(
        _backward_kernel, check_grid((programs,)),
        (meta, first, len(weights), partial_first, partials, grads[0], us[0], vs[0], sigmas[0], outs[0]),
        dict(BLOCK_P=block_p, **meta_kwargs),
        # G read again, grad_W written; every program reads its layer's partials.
        bytes_moved=2 * elements * weights[0].element_size()
        + sum(_tiles(*w.shape) * count for w, count in zip(weights, row_blocks)) * partials.element_size(),
        label=f"BR={BLOCK_R} BC={BLOCK_C} BL={block_l} BP={block_p}",
    )
    return outs, [dot, scaled]


def backward(
    grads: list[Tensor], weights: list[Tensor], us: list[Tensor], vs: list[Tensor], sigmas: list[Tensor],
    *, compute_dtype: torch.dtype,
) -> list[Tensor]:
    """``grad_W = (G - <G, W_sn> u v^T) / sigma`` per layer."""
    outs, launches = backward_plan(grads, weights, us, vs, sigmas, compute_dtype=compute_dtype)
    run_launches(launches)
    return outs


KERNELS = {
    "forward": _forward_kernel,
    "scale": _scale_kernel,
    "backward_dot": _backward_dot_kernel,
    "backward": _backward_kernel,
}
