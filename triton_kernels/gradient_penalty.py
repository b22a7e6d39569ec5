"""Triton kernels of the fused gradient penalty and of the interpolation. The math and notation are those of
``ganops/reference/gradient_penalty.py``.

Every tensor is seen as ``[N, D]`` sample rows (``D`` = all non-batch elements, in the memory order of the
output: contiguous, or channels_last for channels_last 4-d inputs). The per-sample sums ``q_n`` (and
``d_n = <g_n, gg_n>`` in the double backward) are computed by a grid of ``N x splits`` programs, each summing one
slice of a row into a partial buffer, so that a small batch with large samples still fills the GPU. Later
kernels add the ``splits`` partials of their row in a fixed order, so results are deterministic, in chunks of
at most ``_SPLIT_CHUNK`` (a ``[BLOCK_N, next_pow2(splits)]`` tile, up to ``[128, 2048]``, spilled). The scalar
outputs are reduced over ``N`` in a fixed order by a single program: the penalty by a launch of its own (which
also writes the per-sample norms, float64, for the backward), the gradient of ``go`` by program 0 of the double
backward's grid. The forward and the double backward are two launches, the backward one: it takes the forward's
norms, so it reads ``g`` once. Every row-wise grid is folded onto grid axis 0 (``program = row * tiles + tile``):
axis 1 is limited to 65535 blocks, which ``cdiv(D, BLOCK_D)`` exceeds above ~67M elements per sample.
"""

from __future__ import annotations

import struct

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import Launch, check_grid, inverse_or_zero, run_launches, scaled_squares_add, triton_compute_dtype

# Elements per program tile of a row.
_BLOCK_D = 1024
# Rows per iteration of the single-program reductions over the batch.
_BLOCK_N = 128
# Aim for this many programs in the partial-sum grid (enough to fill a large GPU several times over).
_TARGET_PROGRAMS = 2048
# Partials of a row added per step by the kernels that reduce them (bounds the [BLOCK_N, BLOCK_S] tile).
_SPLIT_CHUNK = 32
# Warps of the single-program reductions over the batch: their [BLOCK_N, BLOCK_S] tiles spilled at 4 warps.
_REDUCTION_WARPS = 8
# Rows per iteration of the reduction over the batch that program 0 of the double backward runs beside its tile
# (4 warps, like the rest of that grid: a smaller tile than _BLOCK_N keeps it in registers).
_FUSED_BLOCK_N = 32




@triton.jit
def _partial_sums_kernel(
    g_ptr, g_sn, g_sd, other_ptr, o_sn, o_sd, scale_ptr, squared_ptr, dot_ptr, D, span, splits,
    BLOCK_D: tl.constexpr, WITH_DOT: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
):
    """Over one slice of row ``n``: ``scale[n, split] = max |g|`` and ``squared[n, split] = sum (g / scale)^2``
    (the scaled norm of the reference docstring: no square over- or underflows), and ``dot[n, split] =
    sum g * other``. A non-finite ``g`` makes ``squared`` NaN (``inf * 0``, ``NaN * x``)."""
    n = (tl.program_id(0) // splits).to(tl.int64)
    split = tl.program_id(0) % splits
    begin = split * span
    scale = tl.max(tl.zeros([BLOCK_D], dtype=COMPUTE_DTYPE), axis=0)
    squares = tl.zeros([BLOCK_D], dtype=COMPUTE_DTYPE)
    products = tl.zeros([BLOCK_D], dtype=COMPUTE_DTYPE)
    for start in range(0, span, BLOCK_D):
        d = begin + start + tl.arange(0, BLOCK_D)
        mask = d < D  # span is a multiple of BLOCK_D, so a slice ends at a tile boundary or at D
        g = tl.load(g_ptr + n * g_sn + d.to(tl.int64) * g_sd, mask=mask, other=0.0).to(COMPUTE_DTYPE)
        # Rescale the running sums when the tile raises the slice's largest magnitude.
        scale, squares = scaled_squares_add(scale, squares, g)
        if WITH_DOT:
            other = tl.load(other_ptr + n * o_sn + d.to(tl.int64) * o_sd, mask=mask, other=0.0).to(COMPUTE_DTYPE)
            products += g * other
    tl.store(scale_ptr + n * splits + split, scale)
    tl.store(squared_ptr + n * splits + split, tl.sum(squares, axis=0))
    if WITH_DOT:
        tl.store(dot_ptr + n * splits + split, tl.sum(products, axis=0))


@triton.jit
def _row_norm(scale_ptr, squared_ptr, rows, splits, BLOCK_S: tl.constexpr):
    """``s_n`` of each of ``rows`` from its ``splits`` scaled partials, rescaled to the row's largest scale before
    they are added, ``BLOCK_S`` at a time."""
    offsets = rows.to(tl.int64)[:, None] * splits
    # A 2-D running maximum reduced after the loop: a loop-carried [rows] maximum used twice afterwards crashes
    # Triton 3.6's TritonGPUOptimizeThreadLocality pass for sm_90 (assertion loopResult.hasOneUse()).
    largest_tile = tl.zeros([rows.shape[0], BLOCK_S], dtype=scale_ptr.dtype.element_ty)
    for start in range(0, splits, BLOCK_S):
        s = start + tl.arange(0, BLOCK_S)
        mask = (s < splits)[None, :]
        largest_tile = tl.maximum(largest_tile, tl.load(scale_ptr + offsets + s[None, :], mask=mask, other=0.0))
    largest = tl.max(largest_tile, axis=1)
    divisor = tl.where(largest == 0, 1.0, largest)  # divided: the inverse of a subnormal scale overflows
    total = tl.zeros([rows.shape[0], BLOCK_S], dtype=squared_ptr.dtype.element_ty)
    for start in range(0, splits, BLOCK_S):
        s = start + tl.arange(0, BLOCK_S)
        mask = (s < splits)[None, :]
        ratio = tl.load(scale_ptr + offsets + s[None, :], mask=mask, other=0.0) / divisor[:, None]
        total += tl.load(squared_ptr + offsets + s[None, :], mask=mask, other=0.0) * (ratio * ratio)
    return largest * tl.sqrt(tl.sum(total, axis=1))


@triton.jit
def _row_total(partial_ptr, rows, splits, BLOCK_S: tl.constexpr):
    """The sum of the ``splits`` partials of each of ``rows`` (a block of row indices), ``BLOCK_S`` at a time."""
    total = tl.zeros([rows.shape[0], BLOCK_S], dtype=partial_ptr.dtype.element_ty)
    for start in range(0, splits, BLOCK_S):
        s = start + tl.arange(0, BLOCK_S)
        mask = (s < splits)[None, :]
        total += tl.load(partial_ptr + rows.to(tl.int64)[:, None] * splits + s[None, :], mask=mask, other=0.0)
    return tl.sum(total, axis=1)


@triton.jit
def _join(high, low, COMPUTE_DTYPE: tl.constexpr):
    """A float64 parameter from its two float32 halves (Triton passes Python floats as float32)."""
    return tl.cast(high, COMPUTE_DTYPE) + tl.cast(low, COMPUTE_DTYPE)


@triton.jit
def _coefficients(norm, center, two_over_n, ONE_SIDED: tl.constexpr):
    """``(k_n, (2 / N) c / s_n)`` of the reference docstring from ``s_n`` (``m_n = (2 / N) c / s_n^3`` is applied
    as ``((2 / N) c / s_n) <u_n, gg_n> u_n``, in range for tiny and huge ``s_n``); NaN for NaN ``s_n``. Where
    ``k_n`` multiplies something of the size of ``g_n``, :func:`_times_k` instead."""
    inverse = inverse_or_zero(norm)
    k = two_over_n * (1.0 - center * inverse)
    curvature = two_over_n * center * inverse
    if ONE_SIDED:
        inactive = norm <= center  # false for NaN: a NaN sample stays NaN
        k = tl.where(inactive, 0.0, k)
        curvature = tl.where(inactive, 0.0, curvature)
    return k, curvature


@triton.jit
def _times_k(x, norm, center, two_over_n, ONE_SIDED: tl.constexpr):
    """``k_n x`` computed as ``(2 / N) (x - c x / s_n)``: for ``x`` of the size of ``g_n`` (``g_n`` itself, or
    ``d_n = <g_n, gg_n>`` over ``s_n``) the quotient stays in range where ``1 / s_n`` overflows (a subnormal
    ``s_n``); 0 where one-sided and inactive, NaN for NaN ``s_n``."""
    out = two_over_n * (x - center * (x / tl.where(norm == 0, 1.0, norm)))
    if ONE_SIDED:
        out = tl.where(norm <= center, 0.0, out)
    return out


@triton.jit
def _penalty_value_kernel(
    scale_ptr, squared_ptr, out_ptr, norms_ptr, N, splits, center_high, center_low,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, ONE_SIDED: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
):
    center = _join(center_high, center_low, COMPUTE_DTYPE)
    total = tl.zeros([BLOCK_N], dtype=COMPUTE_DTYPE)
    for start in range(0, N, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        norm = _row_norm(scale_ptr, squared_ptr, tl.where(rows < N, rows, 0), splits, BLOCK_S)
        tl.store(norms_ptr + rows, norm.to(tl.float64), mask=rows < N)
        distance = norm - center
        if ONE_SIDED:
            distance = tl.where(distance < 0.0, 0.0, distance)  # NaN stays NaN
        per_sample = distance * distance
        total += tl.where(rows < N, per_sample, 0.0)
    tl.store(out_ptr, (tl.sum(total, axis=0) / N).to(out_ptr.dtype.element_ty))


@triton.jit
def _backward_kernel(
    grad_out_ptr, g_ptr, g_sn, g_sd, out_ptr, out_sn, out_sd, norms_ptr, D,
    center_high, center_low, two_over_n_high, two_over_n_low,
    tiles, BLOCK_D: tl.constexpr, ONE_SIDED: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
):
    n = (tl.program_id(0) // tiles).to(tl.int64)
    norm = tl.load(norms_ptr + n).to(COMPUTE_DTYPE)
    center = _join(center_high, center_low, COMPUTE_DTYPE)
    two_over_n = _join(two_over_n_high, two_over_n_low, COMPUTE_DTYPE)
    d = (tl.program_id(0) % tiles) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = d < D
    g = tl.load(g_ptr + n * g_sn + d.to(tl.int64) * g_sd, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    grad_g = tl.load(grad_out_ptr).to(COMPUTE_DTYPE) * _times_k(g, norm, center, two_over_n, ONE_SIDED)
    tl.store(out_ptr + n * out_sn + d.to(tl.int64) * out_sd, grad_g.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _double_backward_kernel(
    grad_out_ptr, g_ptr, g_sn, g_sd, gg_ptr, gg_sn, gg_sd, out_ptr, out_sn, out_sd, scale_ptr, squared_ptr, dot_ptr,
    grad_grad_out_ptr, N, D, splits, center_high, center_low, two_over_n_high, two_over_n_low,
    tiles, BLOCK_D: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, ONE_SIDED: tl.constexpr,
    COMPUTE_DTYPE: tl.constexpr,
):
    """``grad_g`` over one tile of one row; program 0 also writes ``grad_grad_out = sum_n k_n d_n`` (one launch
    fewer than a separate reduction)."""
    if tl.program_id(0) == 0:
        total = _weighted_dot_total(
            scale_ptr, squared_ptr, dot_ptr, N, splits, _join(center_high, center_low, COMPUTE_DTYPE),
            _join(two_over_n_high, two_over_n_low, COMPUTE_DTYPE), BLOCK_N, BLOCK_S, ONE_SIDED, COMPUTE_DTYPE,
        )
        tl.store(grad_grad_out_ptr, total.to(grad_grad_out_ptr.dtype.element_ty))
    n = (tl.program_id(0) // tiles).to(tl.int64)
    row = n + tl.zeros([1], dtype=tl.int64)
    norm = tl.sum(_row_norm(scale_ptr, squared_ptr, row, splits, BLOCK_S), axis=0)
    dot = tl.sum(_row_total(dot_ptr, row, splits, BLOCK_S), axis=0)
    k, curvature = _coefficients(
        norm, _join(center_high, center_low, COMPUTE_DTYPE), _join(two_over_n_high, two_over_n_low, COMPUTE_DTYPE),
        ONE_SIDED,
    )
    go = tl.load(grad_out_ptr).to(COMPUTE_DTYPE)
    d = (tl.program_id(0) % tiles) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = d < D
    offsets = d.to(tl.int64)
    g = tl.load(g_ptr + n * g_sn + offsets * g_sd, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    gg = tl.load(gg_ptr + n * gg_sn + offsets * gg_sd, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    safe_norm = tl.where(norm == 0, 1.0, norm)  # divided: 1 / s_n of a subnormal s_n overflows
    along_unit = curvature * (dot / safe_norm)
    grad_g = go * (k * gg + along_unit * (g / safe_norm))
    tl.store(out_ptr + n * out_sn + offsets * out_sd, grad_g.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _weighted_dot_total(
    scale_ptr, squared_ptr, dot_ptr, N, splits, center, two_over_n,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, ONE_SIDED: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
):
    """``sum_n k_n d_n``, the gradient of the double backward's ``go``, in a fixed order."""
    total = tl.zeros([BLOCK_N], dtype=COMPUTE_DTYPE)
    for start in range(0, N, BLOCK_N):
        rows = start + tl.arange(0, BLOCK_N)
        safe_rows = tl.where(rows < N, rows, 0)
        norm = _row_norm(scale_ptr, squared_ptr, safe_rows, splits, BLOCK_S)
        dot = _row_total(dot_ptr, safe_rows, splits, BLOCK_S)
        total += tl.where(rows < N, _times_k(dot, norm, center, two_over_n, ONE_SIDED), 0.0)
    return tl.sum(total, axis=0)


@triton.jit
def _interpolate_kernel(
    real_ptr, r_sn, r_sd, fake_ptr, f_sn, f_sd, eps_ptr, eps_s, out_ptr, out_sn, out_sd, D, tiles,
    BLOCK_D: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
):
    n = (tl.program_id(0) // tiles).to(tl.int64)
    weight = tl.load(eps_ptr + n * eps_s).to(COMPUTE_DTYPE)
    d = (tl.program_id(0) % tiles) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = d < D
    offsets = d.to(tl.int64)
    real = tl.load(real_ptr + n * r_sn + offsets * r_sd, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    fake = tl.load(fake_ptr + n * f_sn + offsets * f_sd, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    out = weight * real + (1.0 - weight) * fake
    tl.store(out_ptr + n * out_sn + offsets * out_sd, out.to(out_ptr.dtype.element_ty), mask=mask)


def _halves(value: float) -> tuple[float, float]:
    """``value`` as float32 ``(high, low)`` with ``high + low == value`` to ~2^-48 (see ``_join``)."""
    high = _to_float32(value)
    return high, _to_float32(value - high)


def _to_float32(value: float) -> float:
    return struct.unpack("f", struct.pack("f", value))[0]


def _sample_rows(t: Tensor, channels_last: bool) -> Tensor:
    """``t`` as ``[N, D]`` rows in the output's memory order: a view where the layouts agree, else a copy."""
    if channels_last:
        t = t.permute(0, 2, 3, 1)
    return t.reshape(t.shape[0], -1)


def _block_s(splits: int) -> int:
    return min(triton.next_power_of_2(splits), _SPLIT_CHUNK)


def _partial_sums_plan(
    g_rows: Tensor, other_rows: Tensor | None, compute_dtype: torch.dtype
) -> tuple[Tensor, Tensor, Tensor | None, int, Launch]:
    """Per-row partial scales and scaled sums of ``g^2`` (and sums of ``g * other``), each ``[N * splits]`` in the
    compute dtype."""
    n, d = g_rows.shape
    splits = max(1, min(triton.cdiv(_TARGET_PROGRAMS, n), triton.cdiv(d, _BLOCK_D)))
    span = triton.cdiv(triton.cdiv(d, splits), _BLOCK_D) * _BLOCK_D
    splits = triton.cdiv(d, span)
    scale = torch.empty(n * splits, dtype=compute_dtype, device=g_rows.device)
    squared = torch.empty_like(scale)
    dot = torch.empty_like(squared) if other_rows is not None else None
    other = other_rows if other_rows is not None else g_rows
    inputs = 1 if other_rows is None else 2
    launch = Launch(
        _partial_sums_kernel, check_grid((n * splits,)),
        (g_rows, *g_rows.stride(), other, *other.stride(), scale, squared, dot if dot is not None else squared,
         d, span, splits),
        dict(BLOCK_D=_BLOCK_D, WITH_DOT=other_rows is not None, COMPUTE_DTYPE=triton_compute_dtype(compute_dtype)),
        bytes_moved=inputs * g_rows.numel() * g_rows.element_size() + (inputs + 1) * squared.numel() * squared.element_size(),
        label=f"BD={_BLOCK_D} splits={splits}",
    )
    return scale, squared, dot, splits, launch


def forward_plan(
    grad: Tensor, center: float, one_sided: bool, *, compute_dtype: torch.dtype, memory_format: torch.memory_format
) -> tuple[tuple[Tensor, Tensor], list[Launch]]:
    """The outputs of ``forward`` and its launches (partial sums, then one program for the batch mean and the
    norms)."""
    rows = _sample_rows(grad, memory_format == torch.channels_last)
    scale, squared, _, splits, partial_sums = _partial_sums_plan(rows, None, compute_dtype)
    out = torch.empty((), dtype=grad.dtype, device=grad.device)
    norms = torch.empty(rows.shape[0], dtype=torch.float64, device=grad.device)
    value = Launch(
        _penalty_value_kernel, (1,),
        (scale, squared, out, norms, rows.shape[0], splits, *_halves(center)),
        dict(BLOCK_N=_BLOCK_N, BLOCK_S=_block_s(splits), ONE_SIDED=one_sided, num_warps=_REDUCTION_WARPS,
             COMPUTE_DTYPE=triton_compute_dtype(compute_dtype)),
        bytes_moved=2 * squared.numel() * squared.element_size() + norms.numel() * norms.element_size(),
        label=f"BN={_BLOCK_N} BS={_block_s(splits)}",
    )
    return (out, norms), [partial_sums, value]


def forward(
    grad: Tensor, center: float, one_sided: bool, *, compute_dtype: torch.dtype, memory_format: torch.memory_format
) -> tuple[Tensor, Tensor]:
    """``mean_n h(||g_n||)`` and the norms ``||g_n||`` (float64 ``[N]``, NaN for a non-finite sample); rows read
    in ``memory_format`` (that of ``grad``), sums in ``compute_dtype``."""
    outputs, launches = forward_plan(grad, center, one_sided, compute_dtype=compute_dtype, memory_format=memory_format)
    run_launches(launches)
    return outputs


def backward_plan(
    grad_out: Tensor, grad: Tensor, norms: Tensor, center: float, one_sided: bool,
    *, compute_dtype: torch.dtype, memory_format: torch.memory_format,
) -> tuple[Tensor, list[Launch]]:
    channels_last = memory_format == torch.channels_last
    rows = _sample_rows(grad, channels_last)
    out = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device, memory_format=memory_format)
    out_rows = _sample_rows(out, channels_last)
    norms = norms.contiguous()  # the kernel reads norms[n] at stride 1
    n, d = rows.shape
    tiles = triton.cdiv(d, _BLOCK_D)
    scaled_gradient = Launch(
        _backward_kernel, check_grid((n * tiles,)),
        (grad_out, rows, *rows.stride(), out_rows, *out_rows.stride(), norms, d,
         *_halves(center), *_halves(2.0 / n), tiles),
        dict(BLOCK_D=_BLOCK_D, ONE_SIDED=one_sided, COMPUTE_DTYPE=triton_compute_dtype(compute_dtype)),
        bytes_moved=2 * rows.numel() * rows.element_size() + n * tiles * norms.element_size(),
        label=f"BD={_BLOCK_D}",
    )
    return out, [scaled_gradient]


def backward(
    grad_out: Tensor, grad: Tensor, norms: Tensor, center: float, one_sided: bool,
    *, compute_dtype: torch.dtype, memory_format: torch.memory_format,
) -> Tensor:
    """``go * k_n * g_n`` with ``s_n`` from ``norms``, the forward's second output."""
    out, launches = backward_plan(
        grad_out, grad, norms, center, one_sided, compute_dtype=compute_dtype, memory_format=memory_format
    )
    run_launches(launches)
    return out


def double_backward_plan(
    grad_grad_grad: Tensor, grad_out: Tensor, grad: Tensor, center: float, one_sided: bool,
    *, compute_dtype: torch.dtype, memory_format: torch.memory_format,
) -> tuple[tuple[Tensor, Tensor], list[Launch]]:
    channels_last = memory_format == torch.channels_last
    rows = _sample_rows(grad, channels_last)
    gg_rows = _sample_rows(grad_grad_grad, channels_last)
    out = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device, memory_format=memory_format)
    out_rows = _sample_rows(out, channels_last)
    scale, squared, dot, splits, partial_sums = _partial_sums_plan(rows, gg_rows, compute_dtype)
    n, d = rows.shape
    tiles = triton.cdiv(d, _BLOCK_D)
    grad_grad_out = torch.empty((), dtype=grad_out.dtype, device=grad.device)
    block_s = _block_s(splits)
    grad_of_grad = Launch(
        _double_backward_kernel, check_grid((n * tiles,)),
        (grad_out, rows, *rows.stride(), gg_rows, *gg_rows.stride(), out_rows, *out_rows.stride(), scale, squared, dot,
         grad_grad_out, n, d, splits, *_halves(center), *_halves(2.0 / n), tiles),
        dict(BLOCK_D=_BLOCK_D, BLOCK_N=_FUSED_BLOCK_N, BLOCK_S=block_s, ONE_SIDED=one_sided,
             COMPUTE_DTYPE=triton_compute_dtype(compute_dtype)),
        # g and gg read, grad_g written; every program reads its row's partials, program 0 all of them.
        bytes_moved=3 * rows.numel() * rows.element_size() + (3 * n * tiles + 3 * n) * splits * squared.element_size(),
        label=f"BD={_BLOCK_D} BN={_FUSED_BLOCK_N} BS={block_s}",
    )
    return (grad_grad_out, out), [partial_sums, grad_of_grad]


def double_backward(
    grad_grad_grad: Tensor, grad_out: Tensor, grad: Tensor, center: float, one_sided: bool,
    *, compute_dtype: torch.dtype, memory_format: torch.memory_format,
) -> tuple[Tensor, Tensor]:
    outputs, launches = double_backward_plan(
        grad_grad_grad, grad_out, grad, center, one_sided, compute_dtype=compute_dtype, memory_format=memory_format
    )
    run_launches(launches)
    return outputs


def interpolate_plan(
    real: Tensor, fake: Tensor, eps: Tensor, *, compute_dtype: torch.dtype, memory_format: torch.memory_format
) -> tuple[Tensor, list[Launch]]:
    channels_last = memory_format == torch.channels_last
    real_rows = _sample_rows(real, channels_last)
    fake_rows = _sample_rows(fake, channels_last)
    out = torch.empty(real.shape, dtype=real.dtype, device=real.device, memory_format=memory_format)
    out_rows = _sample_rows(out, channels_last)
    n, d = real_rows.shape
    tiles = triton.cdiv(d, _BLOCK_D)
    launch = Launch(
        _interpolate_kernel, check_grid((n * tiles,)),
        (real_rows, *real_rows.stride(), fake_rows, *fake_rows.stride(), eps, eps.stride(0),
         out_rows, *out_rows.stride(), d, tiles),
        dict(BLOCK_D=_BLOCK_D, COMPUTE_DTYPE=triton_compute_dtype(compute_dtype)),
        bytes_moved=3 * real_rows.numel() * real_rows.element_size(),
        label=f"BD={_BLOCK_D}",
    )
    return out, [launch]


def interpolate(
    real: Tensor, fake: Tensor, eps: Tensor, *, compute_dtype: torch.dtype, memory_format: torch.memory_format
) -> Tensor:
    out, launches = interpolate_plan(real, fake, eps, compute_dtype=compute_dtype, memory_format=memory_format)
    run_launches(launches)
    return out


KERNELS = {
    "partial_sums": _partial_sums_kernel,
    "penalty_value": _penalty_value_kernel,
    "backward": _backward_kernel,
    "double_backward": _double_backward_kernel,
    "interpolate": _interpolate_kernel,
}
