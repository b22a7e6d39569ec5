"""Triton kernels for minibatch standard deviation: one kernel per direction (forward, backward, double
backward). The math and notation are those of ``ganops/reference/minibatch_stddev.py``.

Every kernel walks the ``K = c*H*W`` positions of a (group slot ``m``, statistic ``f``) pair in tiles of
``[BLOCK_G, BLOCK_K]``: the ``G`` group members of each position are in one tile, so the mean and variance over
the group are exact two-pass values computed in registers. Inputs are read through their strides, so
contiguous, channels_last and arbitrary views need no copy.

A pair's positions are split over several programs, so that every direction fills the GPU even where there are
few pairs (StyleGAN2's N=32, G=4, one statistic at 4x4x512: 8 pairs). The forward and the double backward, whose
statistic channel is a mean over all ``K`` positions, run in two launches: programs over (pair, span of tiles)
write the per-position outputs and one partial sum each, then one program per pair adds its partials in a fixed
order and fills the statistic channel. The split depends on the shape only (not on the device), so the order of
every sum, and the result, is the same on every GPU. The backward needs no reduction over positions: one program
per pair sums ``grad_out``'s statistic channel, then one program per (pair, tile) writes ``grad_x``. Grids are one-dimensional (grid axis 1 is limited to 65535 blocks). ``eps`` reaches the kernels as a one-element tensor of the compute dtype: a Python float
argument is compiled as fp32, which would give float64 inputs an fp32 ``eps``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import Launch, check_grid, run_launches, scalar_tensor, triton_compute_dtype

# Elements per tile; small enough that a tile of fp64 values stays in registers.
_TILE_ELEMENTS = 1024
# Warps of the double backward, which holds four tiles at once (4 warps spilled a few bytes on sm_80).
_DOUBLE_BACKWARD_WARPS = 8
# Programs a split reduction over positions aims at: several waves of a 132-SM GPU at every benchmark shape.
_TARGET_PROGRAMS = 1024


@triton.jit
def _load_group_tile(
    ptr, stride_n, stride_c, stride_h, stride_w,
    m, slots, groups, channel_base, k, positions, height, width,
    BLOCK_G: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
):
    """The ``[BLOCK_G, BLOCK_K]`` tile of ``ptr`` for members ``g`` of slot ``m`` at flat positions ``k``."""
    member = tl.arange(0, BLOCK_G)
    sample = (member * slots + m).to(tl.int64)
    channel = channel_base + k // (height * width)
    row = (k // width) % height
    col = k % width
    offsets = (
        sample[:, None] * stride_n
        + (channel * stride_c + row * stride_h + col * stride_w).to(tl.int64)[None, :]
    )
    mask = (member < groups)[:, None] & (k < positions)[None, :]
    values = tl.load(ptr + offsets, mask=mask, other=0.0).to(COMPUTE_DTYPE)
    return values, offsets, mask


@triton.jit
def _group_deviation(values, mask, groups, eps):
    """``d = x - mean_g(x)`` (zero where masked) and ``sd = sqrt(mean_g(d^2) + eps)`` of a tile."""
    mean = tl.sum(values, axis=0) / groups
    deviation = tl.where(mask, values - mean[None, :], 0.0)
    stddev = tl.sqrt(tl.sum(deviation * deviation, axis=0) / groups + eps)
    return deviation, stddev


@triton.jit
def _statistic_gradient(
    grad_out_ptr, stride_n, stride_c, stride_h, stride_w,
    m, slots, groups, stat_channel, height, width,
    BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
):
    """``gs[m, f]``: the sum of ``grad_out`` over the statistic channel of the ``G`` members of slot ``m``."""
    total = tl.zeros([BLOCK_G, BLOCK_K], dtype=COMPUTE_DTYPE)
    pixels = height * width
    for start in range(0, pixels, BLOCK_K):
        k = start + tl.arange(0, BLOCK_K)
        values, _, _ = _load_group_tile(
            grad_out_ptr, stride_n, stride_c, stride_h, stride_w,
            m, slots, groups, stat_channel, k, pixels, height, width, BLOCK_G, COMPUTE_DTYPE,
        )
        total += values
    return tl.sum(tl.sum(total, axis=1), axis=0)


@triton.jit
def _forward_kernel(
    x_ptr, xs_n, xs_c, xs_h, xs_w,
    out_ptr, os_n, os_c, os_h, os_w,
    partial_ptr,
    slots, groups, stats, per_stat, height, width, eps_ptr, splits, span,
    BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
):
    """Copies ``x`` into ``out`` over positions ``[split * span, (split + 1) * span)`` of a pair and writes the sum
    of their group standard deviations to ``partial[pid]``."""
    pid = tl.program_id(0)
    pair = pid // splits
    m = pair // stats
    f = pair % stats
    eps = tl.load(eps_ptr)
    positions = per_stat * height * width
    first = (pid % splits) * span
    last = tl.minimum(first + span, positions)
    stddev_sum = tl.zeros([BLOCK_K], dtype=COMPUTE_DTYPE)
    for start in range(first, last, BLOCK_K):
        k = start + tl.arange(0, BLOCK_K)
        values, _, mask = _load_group_tile(
            x_ptr, xs_n, xs_c, xs_h, xs_w,
            m, slots, groups, f * per_stat, k, last, height, width, BLOCK_G, COMPUTE_DTYPE,
        )
        _, stddev = _group_deviation(values, mask, groups, eps)
        stddev_sum += tl.where(k < last, stddev, 0.0)
        _, out_offsets, _ = _load_group_tile(
            out_ptr, os_n, os_c, os_h, os_w,
            m, slots, 0, f * per_stat, k, last, height, width, BLOCK_G, COMPUTE_DTYPE,
        )
        tl.store(out_ptr + out_offsets, values.to(out_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + pid, tl.sum(stddev_sum, axis=0))


@triton.jit
def _statistic_kernel(
    partial_ptr, out_ptr, os_n, os_c, os_h, os_w,
    slots, groups, stats, channels, height, width, splits, chunks, divisor,
    BLOCK_S: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """The second phase of a split reduction, one program per (pair, chunk of ``BLOCK_K`` pixels): adds the pair's
    ``splits`` partials in order, divides by ``divisor`` and writes the result to the chunk of the pair's statistic
    channel in all ``G`` members."""
    pid = tl.program_id(0)
    pair = pid // chunks
    index = tl.arange(0, BLOCK_S)
    partials = tl.load(partial_ptr + pair * splits + index, mask=index < splits, other=0.0)
    value = tl.sum(partials, axis=0) / divisor
    pixels = height * width
    member = tl.arange(0, BLOCK_G)
    sample = (member * slots + pair // stats).to(tl.int64)
    k = (pid % chunks) * BLOCK_K + tl.arange(0, BLOCK_K)
    offsets = sample[:, None] * os_n + (
        (channels + pair % stats) * os_c + (k // width) * os_h + (k % width) * os_w
    ).to(tl.int64)[None, :]
    mask = (member < groups)[:, None] & (k < pixels)[None, :]
    tile = tl.zeros([BLOCK_G, BLOCK_K], dtype=out_ptr.dtype.element_ty) + value.to(out_ptr.dtype.element_ty)
    tl.store(out_ptr + offsets, tile, mask=mask)


@triton.jit
def _grad_stat_kernel(
    grad_out_ptr, gs_n, gs_c, gs_h, gs_w, grad_stat_ptr,
    slots, groups, stats, channels, height, width,
    BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
):
    """``grad_stat[pair]``: the sum of ``grad_out`` over the pair's statistic channel, one program per pair."""
    pair = tl.program_id(0)
    total = _statistic_gradient(
        grad_out_ptr, gs_n, gs_c, gs_h, gs_w,
        pair // stats, slots, groups, channels + pair % stats, height, width, BLOCK_G, BLOCK_K, COMPUTE_DTYPE,
    )
    tl.store(grad_stat_ptr + pair, total)


@triton.jit
def _backward_kernel(
    grad_out_ptr, gs_n, gs_c, gs_h, gs_w,
    x_ptr, xs_n, xs_c, xs_h, xs_w,
    grad_x_ptr, ds_n, ds_c, ds_h, ds_w,
    grad_stat_ptr,
    slots, groups, stats, channels, per_stat, height, width, eps_ptr, tiles,
    BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
):
    pid = tl.program_id(0)
    pair = pid // tiles
    m = pair // stats
    f = pair % stats
    eps = tl.load(eps_ptr)
    positions = per_stat * height * width
    grad_stat = tl.load(grad_stat_ptr + pair)
    k = (pid % tiles) * BLOCK_K + tl.arange(0, BLOCK_K)
    values, _, mask = _load_group_tile(
        x_ptr, xs_n, xs_c, xs_h, xs_w,
        m, slots, groups, f * per_stat, k, positions, height, width, BLOCK_G, COMPUTE_DTYPE,
    )
    deviation, stddev = _group_deviation(values, mask, groups, eps)
    passthrough, _, _ = _load_group_tile(
        grad_out_ptr, gs_n, gs_c, gs_h, gs_w,
        m, slots, groups, f * per_stat, k, positions, height, width, BLOCK_G, COMPUTE_DTYPE,
    )
    grad_x = passthrough + grad_stat * deviation / ((groups * positions) * stddev)[None, :]
    _, grad_x_offsets, _ = _load_group_tile(
        grad_x_ptr, ds_n, ds_c, ds_h, ds_w,
        m, slots, 0, f * per_stat, k, positions, height, width, BLOCK_G, COMPUTE_DTYPE,
    )
    tl.store(grad_x_ptr + grad_x_offsets, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _double_backward_kernel(
    gg_ptr, ggs_n, ggs_c, ggs_h, ggs_w,
    grad_out_ptr, gs_n, gs_c, gs_h, gs_w,
    x_ptr, xs_n, xs_c, xs_h, xs_w,
    ggo_ptr, ggos_n, ggos_c, ggos_h, ggos_w,
    grad_x_ptr, ds_n, ds_c, ds_h, ds_w,
    partial_ptr,
    slots, groups, stats, channels, per_stat, height, width, eps_ptr, splits, span,
    BLOCK_G: tl.constexpr, BLOCK_K: tl.constexpr, COMPUTE_DTYPE: tl.constexpr,
):
    """``grad_x`` and the passthrough part of ``grad_grad_out`` over positions ``[split * span, (split + 1) *
    span)`` of a pair; the span's share of the statistic channel's value goes to ``partial[pid]``."""
    pid = tl.program_id(0)
    pair = pid // splits
    m = pair // stats
    f = pair % stats
    eps = tl.load(eps_ptr)
    positions = per_stat * height * width
    first = (pid % splits) * span
    last = tl.minimum(first + span, positions)
    grad_stat = _statistic_gradient(
        grad_out_ptr, gs_n, gs_c, gs_h, gs_w,
        m, slots, groups, channels + f, height, width, BLOCK_G, BLOCK_K, COMPUTE_DTYPE,
    )
    statistic_grad_sum = tl.zeros([BLOCK_K], dtype=COMPUTE_DTYPE)
    for start in range(first, last, BLOCK_K):
        k = start + tl.arange(0, BLOCK_K)
        values, _, mask = _load_group_tile(
            x_ptr, xs_n, xs_c, xs_h, xs_w,
            m, slots, groups, f * per_stat, k, last, height, width, BLOCK_G, COMPUTE_DTYPE,
        )
        deviation, stddev = _group_deviation(values, mask, groups, eps)
        gg, _, _ = _load_group_tile(
            gg_ptr, ggs_n, ggs_c, ggs_h, ggs_w,
            m, slots, groups, f * per_stat, k, last, height, width, BLOCK_G, COMPUTE_DTYPE,
        )
        scale = 1.0 / ((groups * positions) * stddev)
        statistic_grad_sum += tl.where(k < last, tl.sum(gg * deviation, axis=0) * scale, 0.0)
        a = grad_stat * gg
        a_mean = tl.sum(a, axis=0) / groups
        projection = tl.sum(a * deviation, axis=0) / (groups * stddev * stddev)
        grad_x = (a - a_mean[None, :] - deviation * projection[None, :]) * scale[None, :]
        _, grad_x_offsets, _ = _load_group_tile(
            grad_x_ptr, ds_n, ds_c, ds_h, ds_w,
            m, slots, 0, f * per_stat, k, last, height, width, BLOCK_G, COMPUTE_DTYPE,
        )
        tl.store(grad_x_ptr + grad_x_offsets, grad_x.to(grad_x_ptr.dtype.element_ty), mask=mask)
        _, ggo_offsets, _ = _load_group_tile(
            ggo_ptr, ggos_n, ggos_c, ggos_h, ggos_w,
            m, slots, 0, f * per_stat, k, last, height, width, BLOCK_G, COMPUTE_DTYPE,
        )
        tl.store(ggo_ptr + ggo_offsets, gg.to(ggo_ptr.dtype.element_ty), mask=mask)
    tl.store(partial_ptr + pid, tl.sum(statistic_grad_sum, axis=0))


def _launch_parameters(x: Tensor, groups: int, num_channels: int, compute_dtype: torch.dtype) -> dict:
    n, channels, height, width = x.shape
    block_g = triton.next_power_of_2(groups)
    return dict(
        slots=n // groups,
        groups=groups,
        stats=num_channels,
        channels=channels,
        per_stat=channels // num_channels,
        height=height,
        width=width,
        BLOCK_G=block_g,
        BLOCK_K=max(16, _TILE_ELEMENTS // block_g),
        COMPUTE_DTYPE=triton_compute_dtype(compute_dtype),
    )


def _label(params: dict) -> str:
    return f"BG={params['BLOCK_G']} BK={params['BLOCK_K']}"


def position_split(pairs: int, positions: int, block_k: int) -> tuple[int, int]:
    """``(splits, span)``: each pair's ``positions`` cut into ``splits`` spans of ``span`` positions (whole tiles
    of ``block_k``), so that ``pairs * splits`` programs reach about ``_TARGET_PROGRAMS`` where there are enough
    tiles."""
    tiles = triton.cdiv(positions, block_k)
    wanted = min(tiles, max(1, triton.cdiv(_TARGET_PROGRAMS, pairs)))
    tiles_per_span = triton.cdiv(tiles, wanted)
    return triton.cdiv(tiles, tiles_per_span), tiles_per_span * block_k


def _statistic_launch(
    partials: Tensor, out: Tensor, params: dict, splits: int, divisor: int, statistic_elements: int
) -> Launch:
    """The second phase of a split reduction over positions: fills ``out``'s statistic channels, one program per
    (pair, chunk of ``BLOCK_K`` pixels), so that large maps are written by many programs."""
    pairs = params["slots"] * params["stats"]
    chunks = triton.cdiv(params["height"] * params["width"], params["BLOCK_K"])
    fill = {key: params[key] for key in ("slots", "groups", "stats", "channels", "height", "width", "BLOCK_G", "BLOCK_K")}
    return Launch(
        _statistic_kernel, check_grid((pairs * chunks,)),
        (partials, out, *out.stride()),
        dict(splits=splits, chunks=chunks, divisor=divisor, BLOCK_S=triton.next_power_of_2(splits), **fill),
        # Every program reads its pair's partials.
        bytes_moved=chunks * partials.numel() * partials.element_size() + statistic_elements * out.element_size(),
        label=f"splits={splits}",
    )


def forward_plan(
    x: Tensor, groups: int, num_channels: int, eps: float,
    *, compute_dtype: torch.dtype, memory_format: torch.memory_format,
) -> tuple[Tensor, list[Launch]]:
    """The output of ``forward`` (allocated in ``memory_format``) and its two launches: the split pass over
    positions, then the statistic channels."""
    n, channels, height, width = x.shape
    out = torch.empty(
        (n, channels + num_channels, height, width), dtype=x.dtype, device=x.device, memory_format=memory_format
    )
    params = _launch_parameters(x, groups, num_channels, compute_dtype)
    pairs = params["slots"] * num_channels
    positions = params["per_stat"] * height * width
    splits, span = position_split(pairs, positions, params["BLOCK_K"])
    partials = torch.empty(pairs * splits, dtype=compute_dtype, device=x.device)
    positions_launch = Launch(
        _forward_kernel, check_grid((pairs * splits,)),
        (x, *x.stride(), out, *out.stride(), partials),
        dict(
            eps_ptr=scalar_tensor(eps, compute_dtype, x.device), splits=splits, span=span,
            **{key: value for key, value in params.items() if key != "channels"},
        ),
        bytes_moved=2 * x.numel() * x.element_size() + partials.numel() * partials.element_size(),
        label=_label(params) + f" splits={splits}",
    )
    statistic_elements = n * num_channels * height * width
    return out, [positions_launch, _statistic_launch(partials, out, params, splits, positions, statistic_elements)]


def forward(
    x: Tensor, groups: int, num_channels: int, eps: float,
    *, compute_dtype: torch.dtype, memory_format: torch.memory_format,
) -> Tensor:
    """``minibatch_stddev`` with the effective group size ``groups`` (already ``min(group_size, N)``), the
    arithmetic in ``compute_dtype`` and the output in ``memory_format``."""
    out, launches = forward_plan(x, groups, num_channels, eps, compute_dtype=compute_dtype, memory_format=memory_format)
    run_launches(launches)
    return out


def backward_plan(
    grad_out: Tensor, x: Tensor, groups: int, num_channels: int, eps: float,
    *, compute_dtype: torch.dtype, memory_format: torch.memory_format,
) -> tuple[Tensor, list[Launch]]:
    """The output of ``backward`` and its launches: the per-pair sums of ``grad_out``'s statistic channels, then
    one program per (pair, ``BLOCK_K`` tile), folded onto grid axis 0 (``cdiv(K, BLOCK_K)`` on axis 1 would exceed
    its 65535 limit on large maps)."""
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format)
    params = _launch_parameters(x, groups, num_channels, compute_dtype)
    positions = params["per_stat"] * params["height"] * params["width"]
    tiles = triton.cdiv(positions, params["BLOCK_K"])
    pairs = params["slots"] * num_channels
    statistic_elements = x.shape[0] * num_channels * x.shape[2] * x.shape[3]
    grad_stat = torch.empty(pairs, dtype=compute_dtype, device=x.device)
    statistic_gradient = Launch(
        _grad_stat_kernel, check_grid((pairs,)),
        (grad_out, *grad_out.stride(), grad_stat),
        {key: params[key] for key in ("slots", "groups", "stats", "channels", "height", "width", "BLOCK_G", "BLOCK_K",
                                      "COMPUTE_DTYPE")},
        bytes_moved=statistic_elements * x.element_size() + grad_stat.numel() * grad_stat.element_size(),
        label=_label(params),
    )
    launch = Launch(
        _backward_kernel, check_grid((pairs * tiles,)),
        (grad_out, *grad_out.stride(), x, *x.stride(), grad_x, *grad_x.stride(), grad_stat),
        dict(eps_ptr=scalar_tensor(eps, compute_dtype, x.device), tiles=tiles, **params),
        # x and grad_out's passthrough read, grad_x written.
        bytes_moved=3 * x.numel() * x.element_size() + pairs * tiles * grad_stat.element_size(),
        label=_label(params),
    )
    return grad_x, [statistic_gradient, launch]


def backward(
    grad_out: Tensor, x: Tensor, groups: int, num_channels: int, eps: float,
    *, compute_dtype: torch.dtype, memory_format: torch.memory_format,
) -> Tensor:
    grad_x, launches = backward_plan(
        grad_out, x, groups, num_channels, eps, compute_dtype=compute_dtype, memory_format=memory_format
    )
    run_launches(launches)
    return grad_x


def double_backward_plan(
    grad_grad_x: Tensor, grad_out: Tensor, x: Tensor, groups: int, num_channels: int, eps: float,
    *, compute_dtype: torch.dtype, memory_format: torch.memory_format,
) -> tuple[tuple[Tensor, Tensor], list[Launch]]:
    """The outputs of ``double_backward`` and their two launches: the split pass over positions, then the
    statistic channels of ``grad_grad_out``."""
    grad_grad_out = torch.empty(grad_out.shape, dtype=grad_out.dtype, device=x.device, memory_format=memory_format)
    grad_x = torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format)
    params = _launch_parameters(x, groups, num_channels, compute_dtype)
    pairs = params["slots"] * num_channels
    positions = params["per_stat"] * params["height"] * params["width"]
    splits, span = position_split(pairs, positions, params["BLOCK_K"])
    partials = torch.empty(pairs * splits, dtype=compute_dtype, device=x.device)
    statistic_elements = grad_out.numel() - x.numel()
    positions_launch = Launch(
        _double_backward_kernel, check_grid((pairs * splits,)),
        (
            grad_grad_x, *grad_grad_x.stride(),
            grad_out, *grad_out.stride(),
            x, *x.stride(),
            grad_grad_out, *grad_grad_out.stride(),
            grad_x, *grad_x.stride(),
            partials,
        ),
        dict(
            eps_ptr=scalar_tensor(eps, compute_dtype, x.device), splits=splits, span=span,
            num_warps=_DOUBLE_BACKWARD_WARPS, **params,
        ),
        # x and grad_grad_x read, grad_x and grad_grad_out's passthrough written; every program re-reads its
        # pair's statistic channel of grad_out.
        bytes_moved=(4 * x.numel() + splits * statistic_elements) * x.element_size(),
        label=_label(params) + f" splits={splits}",
    )
    return (grad_grad_out, grad_x), [
        positions_launch, _statistic_launch(partials, grad_grad_out, params, splits, 1, statistic_elements)
    ]


def double_backward(
    grad_grad_x: Tensor, grad_out: Tensor, x: Tensor, groups: int, num_channels: int, eps: float,
    *, compute_dtype: torch.dtype, memory_format: torch.memory_format,
) -> tuple[Tensor, Tensor]:
    outputs, launches = double_backward_plan(
        grad_grad_x, grad_out, x, groups, num_channels, eps, compute_dtype=compute_dtype, memory_format=memory_format
    )
    run_launches(launches)
    return outputs


KERNELS = {
    "forward": _forward_kernel,
    "statistic": _statistic_kernel,
    "grad_stat": _grad_stat_kernel,
    "backward": _backward_kernel,
    "double_backward": _double_backward_kernel,
}
