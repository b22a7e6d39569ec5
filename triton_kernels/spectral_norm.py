"""Triton kernels for spectral normalization of a group of layers, every launch spread over all tiles of all
layers. The math and notation are those of ``ganops/reference/spectral_norm.py``.

Forward, one power iteration per two launches, then one more (``2 n + 1`` launches; ``n = 0``, eval: 2):

* ``_rows_kernel``: ``t = W x`` with one program per block of ``ROWS_BLOCK_R`` rows of every layer; ``x`` is the
  stored ``v`` in the first iteration, else the last ``s`` normalised. Each program writes its finished rows of
  ``t`` and their ``(scale, squares)`` partial of ``||t||`` (``scaled_squares_add``'s overflow-safe pair).
* ``_columns_kernel``: ``s = W^T u``, ``u = t / max(||t||, eps)``, with one program per block of ``BLOCK_C``
  columns of every layer, over all rows; it writes finished columns of ``s`` and their partial of ``||s||``.
* ``_finish_kernel``: one program per ``[BLOCK_R, BLOCK_C]`` tile of every layer writes ``W / sigma``, with
  ``sigma = u^T W v = s . v = ||s|| (||s|| / max(||s||, eps))`` (in that order, so that ``||s||^2``, which
  overflows first, is never formed); the tiles of a layer's first tile row write ``v``, those of its first tile
  column ``u``.

A program that needs a norm merges its layer's partials (a few dozen numbers, from L2) instead of waiting for
another launch, so that no launch runs one program per layer: the whole group streams its weights over every SM.
A training forward reads ``W`` ``2 n + 1`` times, an eval forward twice (``sigma = u . (W v)`` from the rows'
partial dot products). Sums run in a fixed order (a function of the shapes only), so results are deterministic.

Backward: one program per block of ``BLOCK_R`` rows of every layer sums ``G * W`` over its rows into a partial,
then one program per tile adds its layer's partials (in order: ``<G, W>``) and writes the gradient; ``G`` is read
twice and ``W`` once.

A program finds its layer in a column of the layer table that holds each layer's first program (ascending). The
layers are reached without packing: every tensor of a list is addressed as ``base + element offset``, the offset
of its data from the list's first tensor, kept in the one int64 table (one host-to-device copy).

``eps`` reaches the kernels as a one-element tensor of the compute dtype: a Python float argument is compiled as
fp32, which would give float64 weights an fp32 ``eps``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import (
    Launch, check_grid, run_launches, scalar_tensor, scaled_norm, scaled_squares_add, triton_compute_dtype,
)

# Tiles of the column sums (W^T u), of W / sigma and of the backward.
BLOCK_R = 32
BLOCK_C = 128
# Tiles of the row sums (W v): 16 rows a program, so that a BigGAN-128 D group has ~1000 of them.
ROWS_BLOCK_R = 16
ROWS_BLOCK_C = 256
# Warps per program: a tile is 16 values per thread at 8 warps (32 at 4 warps spilled on sm_80/sm_90).
NUM_WARPS = 8

# Partials (of a layer's norm, sigma or <G, W>) merged per step.
_MAX_BLOCK_P = 64

# Entries per layer of the int64 tables; the kernels name them as they read them.
_FORWARD_COLUMNS = 16
_BACKWARD_COLUMNS = 12
# Forward table: each layer's first program of the rows, columns and tile launches (constexpr: read by kernels).
_FIRST_ROW_PROGRAM = tl.constexpr(13)
_FIRST_COLUMN_PROGRAM = tl.constexpr(14)
_FIRST_TILE = tl.constexpr(15)


@triton.jit
def _tile_mask(r, c, rows, cols):
    return (r < rows)[:, None] & (c < cols)[None, :]


@triton.jit
def _tile(base, row_stride, col_stride, r, c, rows, cols, COMPUTE_DTYPE: tl.constexpr):
    offsets = r.to(tl.int64)[:, None] * row_stride + c.to(tl.int64)[None, :] * col_stride
    return tl.load(base + offsets, mask=_tile_mask(r, c, rows, cols), other=0.0).to(COMPUTE_DTYPE)


@triton.jit
def _program_layer(first_ptr, stride, pid, num_layers, BLOCK_L: tl.constexpr):
    """The layer whose programs include ``pid``: ``first[l * stride]`` is layer ``l``'s first program
    (ascending in ``l``)."""
    index = tl.arange(0, BLOCK_L)
    first = tl.load(first_ptr + index * stride, mask=index < num_layers, other=2**62)
    return tl.sum(tl.where(first <= pid, 1, 0), axis=0) - 1


@triton.jit
def _strided_matrix(row_meta, base_ptr, column):
    """A layer's matrix from its table row: the pointer (base + the offset at ``column``) and the row and column
    strides in the two entries after it."""
    return base_ptr + tl.load(row_meta + column), tl.load(row_meta + column + 1), tl.load(row_meta + column + 2)


@triton.jit
def _layer_tile(tile, cols, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Row and column indices of a layer's ``tile`` (tiles row-major over the layer)."""
    column_tiles = tl.cdiv(cols, BLOCK_C)
    r = (tile // column_tiles) * BLOCK_R + tl.arange(0, BLOCK_R)
    c = (tile % column_tiles) * BLOCK_C + tl.arange(0, BLOCK_C)
    return r, c


@triton.jit
def _partials_norm(scale_ptr, squares_ptr, first, count, BLOCK_P: tl.constexpr, COMPUTE_DTYPE: tl.constexpr):
    """The norm of a vector from the ``(scale, squares)`` partials ``first .. first + count - 1`` of its blocks
    (each ``scaled_squares_add``'s pair, its squares summed): rescaled to the largest scale, as the pairs are
    within a block; NaN and inf as ``scaled_norm``."""
    largest = tl.zeros([1], dtype=COMPUTE_DTYPE)
    for p0 in range(0, count, BLOCK_P):
        index = p0 + tl.arange(0, BLOCK_P)
        largest = tl.maximum(largest, tl.max(tl.load(scale_ptr + first + index, mask=index < count, other=0.0)))
    # Divided, not multiplied by the inverse: the inverse of a subnormal scale overflows.
    divisor = tl.where(largest == 0, 1.0, largest)
    total = tl.zeros([BLOCK_P], dtype=COMPUTE_DTYPE)
    for p0 in range(0, count, BLOCK_P):
        index = p0 + tl.arange(0, BLOCK_P)
        ratio = tl.load(scale_ptr + first + index, mask=index < count, other=0.0) / divisor
        total += tl.load(squares_ptr + first + index, mask=index < count, other=0.0) * (ratio * ratio)
    return scaled_norm(largest, total)


@triton.jit
def _store_norm_partial(scale_ptr, squares_ptr, index, x, COMPUTE_DTYPE: tl.constexpr):
    """Writes the ``(scale, squares)`` partial of the norm of the 1-D block ``x`` at ``index``."""
    zeros = tl.zeros(x.shape, dtype=COMPUTE_DTYPE)
    scale, squares = scaled_squares_add(tl.max(zeros, axis=0), zeros, x)
    one = tl.arange(0, 1)
    tl.store(scale_ptr + index + one, scale + tl.zeros([1], dtype=COMPUTE_DTYPE))
    tl.store(squares_ptr + index + one, tl.sum(squares, axis=0) + tl.zeros([1], dtype=COMPUTE_DTYPE))


@triton.jit
def _partials_sum(partial_ptr, first, count, BLOCK_P: tl.constexpr, COMPUTE_DTYPE: tl.constexpr):
    """The sum of the partials ``first .. first + count - 1``, in a fixed order."""
    total = tl.zeros([BLOCK_P], dtype=COMPUTE_DTYPE)
    for p0 in range(0, count, BLOCK_P):
        index = p0 + tl.arange(0, BLOCK_P)
        total += tl.load(partial_ptr + first + index, mask=index < count, other=0.0)
    return tl.sum(total, axis=0)


@triton.jit
def _layer_program(meta_ptr, w_ptr, num_layers, FIRST_COLUMN: tl.constexpr, COLUMNS: tl.constexpr,
                   BLOCK_L: tl.constexpr):
    """This program's index, its layer's forward-table row, and the layer's weight (pointer, strides) and shape;
    the layer found in the table column of first programs ``FIRST_COLUMN``."""
    pid = tl.program_id(0).to(tl.int64)
    layer = _program_layer(meta_ptr + FIRST_COLUMN, COLUMNS, pid, num_layers, BLOCK_L)
    row_meta = meta_ptr + layer * COLUMNS
    w, w_sr, w_sc = _strided_matrix(row_meta, w_ptr, 0)
    return pid, row_meta, w, w_sr, w_sc, tl.load(row_meta + 3), tl.load(row_meta + 4)


@triton.jit
def _rows_kernel(
    meta_ptr, num_layers, w_ptr, v_ptr, u_ptr, work_ptr, row_scale_ptr, row_squares_ptr, column_scale_ptr,
    column_squares_ptr, eps_ptr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, COLUMNS_BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_P: tl.constexpr, COMPUTE_DTYPE: tl.constexpr, COLUMNS: tl.constexpr, FIRST: tl.constexpr,
    EVAL: tl.constexpr,
):
    """``t = W x`` over one block of ``BLOCK_R`` rows of one layer: ``x`` the stored ``v`` in the first iteration
    (``FIRST``), else ``s / max(||s||, eps)`` with ``s`` the last ``W^T u``. Writes the rows of ``t`` and, into
    ``row_*[pid]``, their partial of ``||t||``; in ``EVAL``, only the partial of ``sigma = u . t`` (stored ``u``),
    into ``row_squares[pid]``."""
    pid, row_meta, w, w_sr, w_sc, rows, cols = _layer_program(
        meta_ptr, w_ptr, num_layers, _FIRST_ROW_PROGRAM, COLUMNS, BLOCK_L
    )
    work_t = work_ptr + tl.load(row_meta + 11)
    r = (pid - tl.load(row_meta + _FIRST_ROW_PROGRAM)) * BLOCK_R + tl.arange(0, BLOCK_R)
    if FIRST:
        x_ptr = v_ptr + tl.load(row_meta + 6)
        x_norm = tl.zeros([1], dtype=COMPUTE_DTYPE) + 1.0
    else:
        x_ptr = work_ptr + tl.load(row_meta + 12)
        s_norm = _partials_norm(column_scale_ptr, column_squares_ptr, tl.load(row_meta + _FIRST_COLUMN_PROGRAM),
                                tl.cdiv(cols, COLUMNS_BLOCK_C), BLOCK_P, COMPUTE_DTYPE)
        x_norm = tl.maximum(s_norm, tl.load(eps_ptr))
    acc = tl.zeros([BLOCK_R], dtype=COMPUTE_DTYPE)
    for c0 in range(0, cols, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        x = tl.load(x_ptr + c, mask=c < cols, other=0.0).to(COMPUTE_DTYPE) / x_norm
        acc += tl.sum(_tile(w, w_sr, w_sc, r, c, rows, cols, COMPUTE_DTYPE) * x[None, :], axis=1)
    if EVAL:
        u = tl.load(u_ptr + tl.load(row_meta + 5) + r, mask=r < rows, other=0.0).to(COMPUTE_DTYPE)
        tl.store(row_squares_ptr + pid + tl.arange(0, 1), tl.sum(acc * u, axis=0) + tl.zeros([1], dtype=COMPUTE_DTYPE))
    else:
        tl.store(work_t + r, acc, mask=r < rows)
        _store_norm_partial(row_scale_ptr, row_squares_ptr, pid, acc, COMPUTE_DTYPE)


@triton.jit
def _columns_kernel(
    meta_ptr, num_layers, w_ptr, work_ptr, row_scale_ptr, row_squares_ptr, column_scale_ptr, column_squares_ptr,
    eps_ptr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ROWS_BLOCK_R: tl.constexpr, BLOCK_L: tl.constexpr,
    BLOCK_P: tl.constexpr, COMPUTE_DTYPE: tl.constexpr, COLUMNS: tl.constexpr,
):
    """``s = W^T u`` over one block of ``BLOCK_C`` columns of one layer (all its rows), ``u = t / max(||t||, eps)``
    with ``t`` the last ``W v``. Writes the columns of ``s`` and, into ``column_*[pid]``, their partial of
    ``||s||``."""
    pid, row_meta, w, w_sr, w_sc, rows, cols = _layer_program(
        meta_ptr, w_ptr, num_layers, _FIRST_COLUMN_PROGRAM, COLUMNS, BLOCK_L
    )
    work_t = work_ptr + tl.load(row_meta + 11)
    work_s = work_ptr + tl.load(row_meta + 12)
    t_norm = _partials_norm(row_scale_ptr, row_squares_ptr, tl.load(row_meta + _FIRST_ROW_PROGRAM),
                            tl.cdiv(rows, ROWS_BLOCK_R), BLOCK_P, COMPUTE_DTYPE)
    u_norm = tl.maximum(t_norm, tl.load(eps_ptr))
    c = (pid - tl.load(row_meta + _FIRST_COLUMN_PROGRAM)) * BLOCK_C + tl.arange(0, BLOCK_C)
    acc = tl.zeros([BLOCK_C], dtype=COMPUTE_DTYPE)
    for r0 in range(0, rows, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        u = tl.load(work_t + r, mask=r < rows, other=0.0) / u_norm
        acc += tl.sum(_tile(w, w_sr, w_sc, r, c, rows, cols, COMPUTE_DTYPE) * u[:, None], axis=0)
    tl.store(work_s + c, acc, mask=c < cols)
    _store_norm_partial(column_scale_ptr, column_squares_ptr, pid, acc, COMPUTE_DTYPE)


@triton.jit
def _finish_kernel(
    meta_ptr, num_layers, w_ptr, u_ptr, v_ptr, wsn_ptr, uo_ptr, vo_ptr, sigma_ptr, work_ptr, row_scale_ptr,
    row_squares_ptr, column_scale_ptr, column_squares_ptr, eps_ptr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, ROWS_BLOCK_R: tl.constexpr, COLUMNS_BLOCK_C: tl.constexpr,
    BLOCK_L: tl.constexpr, BLOCK_P: tl.constexpr, COMPUTE_DTYPE: tl.constexpr, COLUMNS: tl.constexpr,
    EVAL: tl.constexpr,
):
    """``W_sn = W / sigma`` over one ``[BLOCK_R, BLOCK_C]`` tile of one layer; the layer's first tile row writes
    ``v``, its first tile column ``u``, its first tile ``sigma``. In ``EVAL`` ``sigma`` is the sum of the rows'
    partials of ``u . (W v)`` and ``u``, ``v`` are the stored ones."""
    pid, row_meta, w, w_sr, w_sc, rows, cols = _layer_program(
        meta_ptr, w_ptr, num_layers, _FIRST_TILE, COLUMNS, BLOCK_L
    )
    eps = tl.load(eps_ptr)
    tile = pid - tl.load(row_meta + _FIRST_TILE)
    r, c = _layer_tile(tile, cols, BLOCK_R, BLOCK_C)
    column_tiles = tl.cdiv(cols, BLOCK_C)
    row_partials = tl.cdiv(rows, ROWS_BLOCK_R)
    first_row_program = tl.load(row_meta + _FIRST_ROW_PROGRAM)
    if EVAL:
        sigma = _partials_sum(row_squares_ptr, first_row_program, row_partials, BLOCK_P, COMPUTE_DTYPE)
    else:
        s_norm = _partials_norm(column_scale_ptr, column_squares_ptr, tl.load(row_meta + _FIRST_COLUMN_PROGRAM),
                                tl.cdiv(cols, COLUMNS_BLOCK_C), BLOCK_P, COMPUTE_DTYPE)
        v_norm = tl.maximum(s_norm, eps)
        sigma = s_norm * (s_norm / v_norm)
    out = _tile(w, w_sr, w_sc, r, c, rows, cols, COMPUTE_DTYPE) / sigma
    offsets = r.to(tl.int64)[:, None] * cols + c[None, :]
    tl.store(wsn_ptr + tl.load(row_meta + 7) + offsets, out.to(wsn_ptr.dtype.element_ty),
             mask=_tile_mask(r, c, rows, cols))
    if tile == 0:
        tl.store(sigma_ptr + tl.load(row_meta + 10) + tl.arange(0, 1), sigma + tl.zeros([1], dtype=COMPUTE_DTYPE))
    if tile < column_tiles:
        if EVAL:
            v = tl.load(v_ptr + tl.load(row_meta + 6) + c, mask=c < cols, other=0.0)
        else:
            v = tl.load(work_ptr + tl.load(row_meta + 12) + c, mask=c < cols, other=0.0) / v_norm
        tl.store(vo_ptr + tl.load(row_meta + 9) + c, v.to(vo_ptr.dtype.element_ty), mask=c < cols)
    if tile % column_tiles == 0:
        if EVAL:
            u = tl.load(u_ptr + tl.load(row_meta + 5) + r, mask=r < rows, other=0.0)
        else:
            t_norm = _partials_norm(row_scale_ptr, row_squares_ptr, first_row_program, row_partials, BLOCK_P,
                                    COMPUTE_DTYPE)
            u = tl.load(work_ptr + tl.load(row_meta + 11) + r, mask=r < rows, other=0.0) / tl.maximum(t_norm, eps)
        tl.store(uo_ptr + tl.load(row_meta + 8) + r, u.to(uo_ptr.dtype.element_ty), mask=r < rows)


@triton.jit
def _backward_dot_kernel(
    meta_ptr, first_ptr, num_layers, g_ptr, w_ptr, partial_ptr,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
    COLUMNS: tl.constexpr,
):
    """``partial[pid]`` = the sum of ``G * W`` over one block of ``BLOCK_R`` rows of one layer."""
    pid = tl.program_id(0).to(tl.int64)
    layer = _program_layer(first_ptr, 1, pid, num_layers, BLOCK_L)
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
    layer = _program_layer(first_ptr, 1, pid, num_layers, BLOCK_L)
    row_meta = meta_ptr + layer * COLUMNS
    g, g_sr, g_sc = _strided_matrix(row_meta, g_ptr, 0)
    rows = tl.load(row_meta + 6)
    cols = tl.load(row_meta + 7)
    u = u_ptr + tl.load(row_meta + 8)
    v = v_ptr + tl.load(row_meta + 9)
    sigma = tl.load(sigma_ptr + tl.load(row_meta + 10) + tl.arange(0, 1)).to(COMPUTE_DTYPE)
    grad = grad_ptr + tl.load(row_meta + 11)
    first_partial = tl.load(partial_first_ptr + layer)
    # <G, W_sn> = <G, W> / sigma.
    projection = _partials_sum(partial_ptr, first_partial, tl.cdiv(rows, BLOCK_R), BLOCK_P, COMPUTE_DTYPE) / sigma
    r, c = _layer_tile(pid - tl.load(first_ptr + layer), cols, BLOCK_R, BLOCK_C)
    uu = tl.load(u + r, mask=r < rows, other=0.0).to(COMPUTE_DTYPE)
    vv = tl.load(v + c, mask=c < cols, other=0.0).to(COMPUTE_DTYPE)
    g_tile = _tile(g, g_sr, g_sc, r, c, rows, cols, COMPUTE_DTYPE)
    out = (g_tile - projection * (uu[:, None] * vv[None, :])) / sigma
    offsets = r.to(tl.int64)[:, None] * cols + c[None, :]
    tl.store(grad + offsets, out.to(grad_ptr.dtype.element_ty), mask=_tile_mask(r, c, rows, cols))


def _first_programs(counts: list[int]) -> tuple[list[int], int]:
    """The first program index of every layer (ascending) and the total, for per-layer program ``counts``."""
    firsts, total = [], 0
    for count in counts:
        firsts.append(total)
        total += count
    return firsts, total


def _tiles(rows: int, cols: int) -> int:
    return triton.cdiv(rows, BLOCK_R) * triton.cdiv(cols, BLOCK_C)


def _offset(tensor: Tensor, base: Tensor) -> int:
    """Element offset of ``tensor``'s data from ``base``'s (the kernels address every layer from one base)."""
    difference = tensor.data_ptr() - base.data_ptr()
    if difference % tensor.element_size() != 0:
        raise RuntimeError("spectral_norm triton kernel: tensors of one group must be element-aligned")
    return difference // tensor.element_size()


def _block_p(counts: list[int]) -> int:
    return min(triton.next_power_of_2(max(counts)), _MAX_BLOCK_P)


def forward_plan(
    weights: list[Tensor], us: list[Tensor], vs: list[Tensor], n_power_iterations: int, eps: float,
    *, compute_dtype: torch.dtype,
) -> tuple[tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]], list[Launch]]:
    """The outputs of ``forward`` (allocated) and its launches: per power iteration the row sums and the column
    sums, then ``W / sigma`` with ``u``, ``v`` and ``sigma``; each over all layers (see the module docstring)."""
    device, dtype = weights[0].device, weights[0].dtype
    us = [u.contiguous() for u in us]
    vs = [v.contiguous() for v in vs]
    weights_sn = [torch.empty(w.shape, dtype=dtype, device=device) for w in weights]
    us_out = [torch.empty_like(u) for u in us]
    vs_out = [torch.empty_like(v) for v in vs]
    sigmas = [torch.empty((), dtype=compute_dtype, device=device) for _ in weights]
    work = torch.empty(sum(sum(w.shape) for w in weights), dtype=compute_dtype, device=device)
    row_programs = [triton.cdiv(w.shape[0], ROWS_BLOCK_R) for w in weights]
    column_programs = [triton.cdiv(w.shape[1], BLOCK_C) for w in weights]
    tiles = [_tiles(*w.shape) for w in weights]
    first_rows, total_rows = _first_programs(row_programs)
    first_columns, total_columns = _first_programs(column_programs)
    first_tiles, total_tiles = _first_programs(tiles)
    table, position = [], 0
    for i, (w, u, v, wsn, uo, vo, sigma) in enumerate(zip(weights, us, vs, weights_sn, us_out, vs_out, sigmas)):
        rows, cols = w.shape
        table.append([
            _offset(w, weights[0]), w.stride(0), w.stride(1), rows, cols,
            _offset(u, us[0]), _offset(v, vs[0]),
            _offset(wsn, weights_sn[0]), _offset(uo, us_out[0]), _offset(vo, vs_out[0]),
            _offset(sigma, sigmas[0]), position, position + rows,
            first_rows[i], first_columns[i], first_tiles[i],
        ])
        position += rows + cols
    meta = torch.tensor(table, dtype=torch.int64).to(device, non_blocking=True)
    # (scale, squares) partials of ||t|| per row program (in eval: sigma's partials in the second row), of ||s|| per
    # column program.
    row_partials = torch.empty(2, total_rows, dtype=compute_dtype, device=device)
    column_partials = torch.empty(2, max(total_columns, 1), dtype=compute_dtype, device=device)
    partial_pointers = (row_partials[0], row_partials[1], column_partials[0], column_partials[1])
    eps_tensor = scalar_tensor(eps, compute_dtype, device)
    evaluating = n_power_iterations == 0
    w_size, work_size = weights[0].element_size(), work.element_size()
    elements = sum(w.numel() for w in weights)
    common = dict(BLOCK_L=triton.next_power_of_2(len(weights)), COMPUTE_DTYPE=triton_compute_dtype(compute_dtype),
                  COLUMNS=_FORWARD_COLUMNS, num_warps=NUM_WARPS)
    launches = []
    for iteration in range(max(n_power_iterations, 1)):
        first = iteration == 0
        x_size = w_size if first else work_size
        launches.append(Launch(
            _rows_kernel, check_grid((total_rows,)),
            (meta, len(weights), weights[0], vs[0], us[0], work, *partial_pointers, eps_tensor),
            dict(BLOCK_R=ROWS_BLOCK_R, BLOCK_C=ROWS_BLOCK_C, COLUMNS_BLOCK_C=BLOCK_C,
                 BLOCK_P=_block_p(column_programs), FIRST=first, EVAL=evaluating, **common),
            # W once; each program reads its layer's x (and, after the first iteration, the column partials);
            # t (in eval: u read instead) and the row partials written.
            bytes_moved=elements * w_size
            + sum(p * (w.shape[1] * x_size + (0 if first else 2 * c * work_size))
                  for p, c, w in zip(row_programs, column_programs, weights))
            + sum(w.shape[0] for w in weights) * work_size + 2 * total_rows * work_size,
            label=f"BR={ROWS_BLOCK_R} BC={ROWS_BLOCK_C} first={first}",
        ))
        if evaluating:
            break
        launches.append(Launch(
            _columns_kernel, check_grid((total_columns,)),
            (meta, len(weights), weights[0], work, *partial_pointers, eps_tensor),
            dict(BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, ROWS_BLOCK_R=ROWS_BLOCK_R, BLOCK_P=_block_p(row_programs),
                 **common),
            # W once; each program reads its layer's t and row partials; s and the column partials written.
            bytes_moved=elements * w_size
            + sum(p * (w.shape[0] + 2 * r) * work_size for p, r, w in zip(column_programs, row_programs, weights))
            + sum(w.shape[1] for w in weights) * work_size + 2 * total_columns * work_size,
            label=f"BR={BLOCK_R} BC={BLOCK_C}",
        ))
    vector_elements = sum(sum(w.shape) for w in weights)
    launches.append(Launch(
        _finish_kernel, check_grid((total_tiles,)),
        (meta, len(weights), weights[0], us[0], vs[0], weights_sn[0], us_out[0], vs_out[0], sigmas[0], work,
         *partial_pointers, eps_tensor),
        dict(BLOCK_R=BLOCK_R, BLOCK_C=BLOCK_C, ROWS_BLOCK_R=ROWS_BLOCK_R, COLUMNS_BLOCK_C=BLOCK_C,
             BLOCK_P=_block_p(row_programs + column_programs), EVAL=evaluating, **common),
        # W read, W_sn written; every tile reads its layer's partials of sigma; u and v read and written once.
        bytes_moved=2 * elements * w_size
        + sum(n * 2 * (r if evaluating else c) for n, r, c in zip(tiles, row_programs, column_programs)) * work_size
        + vector_elements * (work_size + w_size),
        label=f"BR={BLOCK_R} BC={BLOCK_C} eval={evaluating}",
    ))
    return (weights_sn, us_out, vs_out, sigmas), launches


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
    partial_firsts, partial_count = _first_programs(row_blocks)
    firsts, programs = _first_programs([_tiles(*w.shape) for w in weights])
    partial_first, first = torch.tensor([partial_firsts, firsts], dtype=torch.int64).to(device, non_blocking=True)
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
    block_p = _block_p(row_blocks)
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
    "rows": _rows_kernel,
    "columns": _columns_kernel,
    "finish": _finish_kernel,
    "backward_dot": _backward_dot_kernel,
    "backward": _backward_kernel,
}
