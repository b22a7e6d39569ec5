"""Triton kernels for the scores of minibatch discrimination: one kernel per direction (forward, backward, double
backward). The math and notation are those of ``ganops/reference/minibatch_discrimination.py``.

Every kernel runs one program per (kernel ``b``, tile of ``BLOCK_I`` rows ``i``) and walks the samples ``j`` in
tiles of ``BLOCK_J``: the ``[BLOCK_I, BLOCK_J, BLOCK_C]`` differences ``M_ib - M_jb`` live in registers only, so
no pass ever stores more than its ``O(N B C)`` inputs and outputs. Each program owns its rows' outputs and sums
over ``j`` in a fixed order: no atomics, deterministic results. ``E`` is symmetric, so half the pairs would do,
but then two programs would write each row; recomputing keeps every program independent. Inputs are read
through their strides, so views need no copy; outputs are contiguous.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import Launch, check_grid, run_launches, triton_compute_dtype

# Elements of one [BLOCK_I, BLOCK_J, BLOCK_C] tile: a few such tiles per program stay in registers, fp64 included.
_TILE_ELEMENTS = 2048
_MAX_ROWS = 32


@triton.jit
def _load_rows(ptr, stride_n, stride_b, stride_c, rows, b, n, channels, BLOCK_C: tl.constexpr, COMPUTE_DTYPE: tl.constexpr):
    """The ``[len(rows), BLOCK_C]`` tile ``ptr[rows, b, :]`` (zero outside ``N`` and ``C``)."""
    c = tl.arange(0, BLOCK_C)
    offsets = rows.to(tl.int64)[:, None] * stride_n + b.to(tl.int64) * stride_b + c.to(tl.int64)[None, :] * stride_c
    mask = (rows < n)[:, None] & (c < channels)[None, :]
    return tl.load(ptr + offsets, mask=mask, other=0.0).to(COMPUTE_DTYPE)


@triton.jit
def _load_scores(ptr, stride_n, stride_b, rows, b, n, COMPUTE_DTYPE: tl.constexpr):
    offsets = rows.to(tl.int64) * stride_n + b.to(tl.int64) * stride_b
    return tl.load(ptr + offsets, mask=rows < n, other=0.0).to(COMPUTE_DTYPE)


@triton.jit
def _similarity(x_i, x_j, rows_i, rows_j, n):
    """``E [BLOCK_I, BLOCK_J]`` (zero for ``j >= N``) and ``S [BLOCK_I, BLOCK_J, BLOCK_C]`` of two row tiles, with
    the reference's constants ``E_ii = 1``, ``S_ii = 0`` even for a non-finite row."""
    difference = x_i[:, None, :] - x_j[None, :, :]
    distance = tl.sum(tl.abs(difference), axis=2)
    is_self = rows_i[:, None] == rows_j[None, :]
    similarity = tl.where((rows_j < n)[None, :], tl.where(is_self, 1.0, tl.exp(-distance)), 0.0)
    sign = tl.where(difference > 0, 1.0, tl.where(difference < 0, -1.0, 0.0)).to(x_i.dtype)
    return similarity, tl.where(is_self[:, :, None], 0.0, sign).to(x_i.dtype)


@triton.jit
def _forward_kernel(
    m_ptr, ms_n, ms_b, ms_c,
    o_ptr, os_n, os_b,
    n, channels, row_tiles,
    EXCLUDE_SELF: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // row_tiles
    rows_i = (pid % row_tiles) * BLOCK_I + tl.arange(0, BLOCK_I)
    x_i = _load_rows(m_ptr, ms_n, ms_b, ms_c, rows_i, b, n, channels, BLOCK_C, COMPUTE_DTYPE)
    total = tl.zeros([BLOCK_I], dtype=COMPUTE_DTYPE)
    for start in range(0, n, BLOCK_J):
        rows_j = start + tl.arange(0, BLOCK_J)
        x_j = _load_rows(m_ptr, ms_n, ms_b, ms_c, rows_j, b, n, channels, BLOCK_C, COMPUTE_DTYPE)
        difference = x_i[:, None, :] - x_j[None, :, :]
        keep = (rows_j < n)[None, :]
        is_self = rows_i[:, None] == rows_j[None, :]
        if EXCLUDE_SELF:
            keep = keep & ~is_self
        # The j = i term is the constant exp(0) = 1, even for a non-finite row (reference docstring).
        similarity = tl.where(keep, tl.where(is_self, 1.0, tl.exp(-tl.sum(tl.abs(difference), axis=2))), 0.0)
        total += tl.sum(similarity, axis=1)
    offsets = rows_i.to(tl.int64) * os_n + b.to(tl.int64) * os_b
    tl.store(o_ptr + offsets, total.to(o_ptr.dtype.element_ty), mask=rows_i < n)


@triton.jit
def _backward_kernel(
    go_ptr, gos_n, gos_b,
    m_ptr, ms_n, ms_b, ms_c,
    gm_ptr, gms_n, gms_b, gms_c,
    n, channels, row_tiles,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // row_tiles
    rows_i = (pid % row_tiles) * BLOCK_I + tl.arange(0, BLOCK_I)
    x_i = _load_rows(m_ptr, ms_n, ms_b, ms_c, rows_i, b, n, channels, BLOCK_C, COMPUTE_DTYPE)
    g_i = _load_scores(go_ptr, gos_n, gos_b, rows_i, b, n, COMPUTE_DTYPE)
    grad = tl.zeros([BLOCK_I, BLOCK_C], dtype=COMPUTE_DTYPE)
    for start in range(0, n, BLOCK_J):
        rows_j = start + tl.arange(0, BLOCK_J)
        x_j = _load_rows(m_ptr, ms_n, ms_b, ms_c, rows_j, b, n, channels, BLOCK_C, COMPUTE_DTYPE)
        g_j = _load_scores(go_ptr, gos_n, gos_b, rows_j, b, n, COMPUTE_DTYPE)
        similarity, sign = _similarity(x_i, x_j, rows_i, rows_j, n)
        weight = (g_i[:, None] + g_j[None, :]) * similarity
        grad -= tl.sum(weight[:, :, None] * sign, axis=1)
    c = tl.arange(0, BLOCK_C)
    offsets = rows_i.to(tl.int64)[:, None] * gms_n + b.to(tl.int64) * gms_b + c.to(tl.int64)[None, :] * gms_c
    mask = (rows_i < n)[:, None] & (c < channels)[None, :]
    tl.store(gm_ptr + offsets, grad.to(gm_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _double_backward_kernel(
    gg_ptr, ggs_n, ggs_b, ggs_c,
    go_ptr, gos_n, gos_b,
    m_ptr, ms_n, ms_b, ms_c,
    ggo_ptr, ggos_n, ggos_b,
    gm_ptr, gms_n, gms_b, gms_c,
    n, channels, row_tiles,
    BLOCK_I: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_C: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0)
    b = pid // row_tiles
    rows_i = (pid % row_tiles) * BLOCK_I + tl.arange(0, BLOCK_I)
    x_i = _load_rows(m_ptr, ms_n, ms_b, ms_c, rows_i, b, n, channels, BLOCK_C, COMPUTE_DTYPE)
    gg_i = _load_rows(gg_ptr, ggs_n, ggs_b, ggs_c, rows_i, b, n, channels, BLOCK_C, COMPUTE_DTYPE)
    g_i = _load_scores(go_ptr, gos_n, gos_b, rows_i, b, n, COMPUTE_DTYPE)
    grad_grad_o = tl.zeros([BLOCK_I], dtype=COMPUTE_DTYPE)
    grad = tl.zeros([BLOCK_I, BLOCK_C], dtype=COMPUTE_DTYPE)
    for start in range(0, n, BLOCK_J):
        rows_j = start + tl.arange(0, BLOCK_J)
        x_j = _load_rows(m_ptr, ms_n, ms_b, ms_c, rows_j, b, n, channels, BLOCK_C, COMPUTE_DTYPE)
        gg_j = _load_rows(gg_ptr, ggs_n, ggs_b, ggs_c, rows_j, b, n, channels, BLOCK_C, COMPUTE_DTYPE)
        g_j = _load_scores(go_ptr, gos_n, gos_b, rows_j, b, n, COMPUTE_DTYPE)
        similarity, sign = _similarity(x_i, x_j, rows_i, rows_j, n)
        q = tl.sum((gg_i[:, None, :] - gg_j[None, :, :]) * sign, axis=2)
        weighted = similarity * q
        grad_grad_o -= tl.sum(weighted, axis=1)
        grad += tl.sum(((g_i[:, None] + g_j[None, :]) * weighted)[:, :, None] * sign, axis=1)
    ggo_offsets = rows_i.to(tl.int64) * ggos_n + b.to(tl.int64) * ggos_b
    tl.store(ggo_ptr + ggo_offsets, grad_grad_o.to(ggo_ptr.dtype.element_ty), mask=rows_i < n)
    c = tl.arange(0, BLOCK_C)
    offsets = rows_i.to(tl.int64)[:, None] * gms_n + b.to(tl.int64) * gms_b + c.to(tl.int64)[None, :] * gms_c
    mask = (rows_i < n)[:, None] & (c < channels)[None, :]
    tl.store(gm_ptr + offsets, grad.to(gm_ptr.dtype.element_ty), mask=mask)


def _launch_parameters(m: Tensor, compute_dtype: torch.dtype) -> dict:
    n, _, channels = m.shape
    block_c = triton.next_power_of_2(channels)
    block_rows = 1
    while block_rows * 2 <= _MAX_ROWS and (block_rows * 2) ** 2 * block_c <= _TILE_ELEMENTS:
        block_rows *= 2
    block_rows = min(block_rows, triton.next_power_of_2(n))
    return dict(
        n=n,
        channels=channels,
        row_tiles=triton.cdiv(n, block_rows),
        BLOCK_I=block_rows,
        BLOCK_J=block_rows,
        BLOCK_C=block_c,
        COMPUTE_DTYPE=triton_compute_dtype(compute_dtype),
    )


def _grid(m: Tensor, params: dict) -> tuple[int]:
    """One program per (kernel ``b``, row tile), folded onto axis 0 (axis 1 would stop at 65535 kernels)."""
    return check_grid((m.shape[1] * params["row_tiles"],))


def _label(params: dict) -> str:
    return f"BI={params['BLOCK_I']} BJ={params['BLOCK_J']} BC={params['BLOCK_C']}"


def _reread_bytes(m: Tensor, params: dict, tensors_per_row: int) -> int:
    """Bytes every program reads while walking all ``j``: ``tensors_per_row`` values of ``C`` per sample."""
    return m.shape[1] * params["row_tiles"] * m.shape[0] * tensors_per_row * m.shape[2] * m.element_size()


def forward_plan(m: Tensor, exclude_self: bool, *, compute_dtype: torch.dtype) -> tuple[Tensor, list[Launch]]:
    """The scores ``o [N, B]`` (contiguous) and the launch that computes them."""
    n, kernels, _ = m.shape
    o = torch.empty((n, kernels), dtype=m.dtype, device=m.device)
    params = _launch_parameters(m, compute_dtype)
    launch = Launch(
        _forward_kernel, _grid(m, params), (m, *m.stride(), o, *o.stride()),
        dict(EXCLUDE_SELF=exclude_self, **params),
        bytes_moved=_reread_bytes(m, params, 1) + o.numel() * o.element_size(),
        label=_label(params),
    )
    return o, [launch]


def forward(m: Tensor, exclude_self: bool, *, compute_dtype: torch.dtype) -> Tensor:
    """``o [N, B]`` from ``M [N, B, C]``, the arithmetic in ``compute_dtype``."""
    o, launches = forward_plan(m, exclude_self, compute_dtype=compute_dtype)
    run_launches(launches)
    return o


def backward_plan(
    grad_o: Tensor, m: Tensor, exclude_self: bool, *, compute_dtype: torch.dtype
) -> tuple[Tensor, list[Launch]]:
    """``grad_m [N, B, C]`` and its launch (``exclude_self`` changes no derivative)."""
    grad_m = torch.empty(m.shape, dtype=m.dtype, device=m.device)
    params = _launch_parameters(m, compute_dtype)
    launch = Launch(
        _backward_kernel, _grid(m, params),
        (grad_o, *grad_o.stride(), m, *m.stride(), grad_m, *grad_m.stride()),
        dict(**params),
        bytes_moved=_reread_bytes(m, params, 1) + (grad_o.numel() * params["row_tiles"] + grad_m.numel()) * m.element_size(),
        label=_label(params),
    )
    return grad_m, [launch]


def backward(grad_o: Tensor, m: Tensor, exclude_self: bool, *, compute_dtype: torch.dtype) -> Tensor:
    grad_m, launches = backward_plan(grad_o, m, exclude_self, compute_dtype=compute_dtype)
    run_launches(launches)
    return grad_m


def double_backward_plan(
    grad_grad_m: Tensor, grad_o: Tensor, m: Tensor, exclude_self: bool, *, compute_dtype: torch.dtype
) -> tuple[tuple[Tensor, Tensor], list[Launch]]:
    """``(grad_grad_o [N, B], grad_m [N, B, C])`` and their launch."""
    grad_grad_o = torch.empty(m.shape[:2], dtype=grad_o.dtype, device=m.device)
    grad_m = torch.empty(m.shape, dtype=m.dtype, device=m.device)
    params = _launch_parameters(m, compute_dtype)
    launch = Launch(
        _double_backward_kernel, _grid(m, params),
        (
            grad_grad_m, *grad_grad_m.stride(),
            grad_o, *grad_o.stride(),
            m, *m.stride(),
            grad_grad_o, *grad_grad_o.stride(),
            grad_m, *grad_m.stride(),
        ),
        dict(**params),
        bytes_moved=_reread_bytes(m, params, 2)
        + (grad_o.numel() * params["row_tiles"] + grad_grad_o.numel() + grad_m.numel()) * m.element_size(),
        label=_label(params),
    )
    return (grad_grad_o, grad_m), [launch]


def double_backward(
    grad_grad_m: Tensor, grad_o: Tensor, m: Tensor, exclude_self: bool, *, compute_dtype: torch.dtype
) -> tuple[Tensor, Tensor]:
    outputs, launches = double_backward_plan(grad_grad_m, grad_o, m, exclude_self, compute_dtype=compute_dtype)
    run_launches(launches)
    return outputs


KERNELS = {"forward": _forward_kernel, "backward": _backward_kernel, "double_backward": _double_backward_kernel}
