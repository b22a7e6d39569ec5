"""``ganops.minibatch_stddev``: argument checks, torch.library registration of the Triton and C++ backends,
and the public function. The math lives in ``ganops/reference/minibatch_stddev.py``; the kernels in
``triton_kernels/minibatch_stddev.py``, ``csrc/cpu/minibatch_stddev.cpp`` and ``csrc/cuda/minibatch_stddev.cu``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ganops import _backend, _extension
from ganops._layout import empty_in_layout_of
from ganops._dtypes import FLOATING_DTYPES
from ganops.ops._registration import register_chain
from ganops.reference import minibatch_stddev as reference

OP_NAME = "minibatch_stddev"


def check_hyperparameters(group_size: int | None, num_channels: int, eps: float, caller: str = "minibatch_stddev") -> None:
    """``group_size=None`` is StyleGAN2's "the whole batch is one group"."""
    for name, value in (("group_size", group_size), ("num_channels", num_channels)):
        if name == "group_size" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            hint = " (or None: the whole batch as one group)" if name == "group_size" else ""
            raise ValueError(f"{caller}: {name} must be a positive int, got {value!r}{hint}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < math.inf:
        raise ValueError(f"{caller}: eps must be a finite non-negative float, got {eps!r}")


def check_arguments(x: Tensor, group_size: int | None, num_channels: int, eps: float) -> int:
    """Raise a clear error for bad arguments; return the effective group size ``min(group_size, N)`` (``N`` for
    ``group_size=None``)."""
    check_hyperparameters(group_size, num_channels, eps)
    if not isinstance(x, Tensor):
        raise TypeError(f"minibatch_stddev: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4:
        raise ValueError(f"minibatch_stddev: x must have 4 dimensions [N, C, H, W], got shape {tuple(x.shape)}")
    if x.dtype not in FLOATING_DTYPES:
        raise TypeError(f"minibatch_stddev: x must have a floating dtype {FLOATING_DTYPES}, got {x.dtype}")
    n, c, h, w = x.shape
    if min(n, c, h, w) == 0:
        raise ValueError(f"minibatch_stddev: x must have no empty dimension, got shape {tuple(x.shape)}")
    groups = n if group_size is None else min(group_size, n)
    if n % groups != 0:
        raise ValueError(
            f"minibatch_stddev: the batch size N={n} of x must be divisible by the group size "
            f"min(group_size={group_size}, N)={groups}; use a batch size that is a multiple of {groups} "
            f"(for example drop_last=True in the DataLoader) or a group_size that divides {n}"
        )
    if c % num_channels != 0:
        raise ValueError(
            f"minibatch_stddev: the channel count C={c} of x must be divisible by num_channels={num_channels}"
        )
    return groups


def _fake_forward(x: Tensor, group_size: int, num_channels: int, eps: float) -> Tensor:
    n, c, h, w = x.shape
    return empty_in_layout_of(x, (n, c + num_channels, h, w))


def _fake_backward(grad_out: Tensor, x: Tensor, group_size: int, num_channels: int, eps: float) -> Tensor:
    return empty_in_layout_of(x, x.shape)


def _fake_double_backward(
    grad_grad_x: Tensor, grad_out: Tensor, x: Tensor, group_size: int, num_channels: int, eps: float
) -> tuple[Tensor, Tensor]:
    return empty_in_layout_of(x, grad_out.shape, grad_out.dtype), empty_in_layout_of(x, x.shape)


def _third_order_vjp(saved: tuple[Tensor, ...], attributes: tuple, grads: tuple[Tensor, Tensor]):
    _, vjp = torch.func.vjp(
        lambda gg, go, x: reference.minibatch_stddev_double_backward(gg, go, x, *attributes), *saved
    )
    return vjp(grads)


@torch.library.custom_op("ganops::minibatch_stddev_triton", mutates_args=())
def _triton_forward(x: Tensor, group_size: int, num_channels: int, eps: float) -> Tensor:
    from ganops._dtypes import compute_dtype
    from ganops._layout import memory_format_of
    from ganops.triton_kernels import minibatch_stddev as kernels

    _check_op_arguments(x, group_size, num_channels, eps)
    return kernels.forward(
        x, group_size, num_channels, eps,
        compute_dtype=compute_dtype(x.dtype), memory_format=memory_format_of(x),
    )


@torch.library.custom_op("ganops::minibatch_stddev_backward_triton", mutates_args=())
def _triton_backward(grad_out: Tensor, x: Tensor, group_size: int, num_channels: int, eps: float) -> Tensor:
    from ganops._dtypes import compute_dtype
    from ganops._layout import memory_format_of
    from ganops.triton_kernels import minibatch_stddev as kernels

    _check_op_arguments(x, group_size, num_channels, eps)
    return kernels.backward(
        grad_out, x, group_size, num_channels, eps,
        compute_dtype=compute_dtype(x.dtype), memory_format=memory_format_of(x),
    )


@torch.library.custom_op("ganops::minibatch_stddev_double_backward_triton", mutates_args=())
def _triton_double_backward(
    grad_grad_x: Tensor, grad_out: Tensor, x: Tensor, group_size: int, num_channels: int, eps: float
) -> tuple[Tensor, Tensor]:
    from ganops._dtypes import compute_dtype
    from ganops._layout import memory_format_of
    from ganops.triton_kernels import minibatch_stddev as kernels

    _check_op_arguments(x, group_size, num_channels, eps)
    return kernels.double_backward(
        grad_grad_x, grad_out, x, group_size, num_channels, eps,
        compute_dtype=compute_dtype(x.dtype), memory_format=memory_format_of(x),
    )


def _check_op_arguments(x: Tensor, group_size: int, num_channels: int, eps: float) -> None:
    """The registered ops receive the effective group size, which must divide ``N`` itself."""
    if check_arguments(x, group_size, num_channels, eps) != group_size:
        raise ValueError(
            f"minibatch_stddev: the registered ops take the effective group size min(group_size, N); got "
            f"group_size={group_size} for N={x.shape[0]}"
        )


def _register(suffix: str) -> None:
    names = tuple(f"ganops::minibatch_stddev{part}_{suffix}" for part in ("", "_backward", "_double_backward"))
    register_chain(
        names, (_fake_forward, _fake_backward, _fake_double_backward), num_tensor_inputs=1,
        third_order_vjp=_third_order_vjp, check=_check_op_arguments,
    )


_register("triton")
if _extension.is_loaded():
    _register("cpp")


def _kernel_op(backend: str):
    return getattr(torch.ops.ganops, f"minibatch_stddev_{backend}").default


def minibatch_stddev(
    x: Tensor,
    group_size: int | None = 4,
    num_channels: int = 1,
    eps: float = 1e-8,
    *,
    backend: str | None = None,
) -> Tensor:
    """Minibatch standard deviation (ProGAN, StyleGAN 1/2/3), with StyleGAN2's semantics.

    Splits the batch into groups of ``G = min(group_size, N)`` samples (sample ``i`` belongs to group
    ``i % (N // G)``), takes the standard deviation over the members of each group (biased,
    ``sqrt(var + eps)``), averages it over the pixels and the ``C // num_channels`` channels of each of
    ``num_channels`` slices, and appends the result to every member of the group as extra channels.

    Args:
        x: ``[N, C, H, W]`` floating tensor (float16, bfloat16, float32 or float64; any strides).
            ``N`` must be divisible by ``min(group_size, N)`` and ``C`` by ``num_channels``.
        group_size: samples per group (StyleGAN2 default 4); ``None``: the whole batch is one group
            (StyleGAN2's ``group_size=None``).
        num_channels: number of statistics appended (StyleGAN2 default 1).
        eps: added to the variance before the square root.
        backend: ``"reference"``, ``"triton"``, ``"cpp"`` or ``"auto"``; ``None`` defers to
            :func:`ganops.use_backend` and ``GANOPS_BACKEND`` (see README).

    Returns:
        ``[N, C + num_channels, H, W]`` tensor of ``x``'s dtype, channels_last if ``x`` is.
        Differentiable to any order.
    """
    groups = check_arguments(x, group_size, num_channels, eps)
    chosen = _backend.select(OP_NAME, x.device.type, backend, x)
    if chosen == "reference":
        return reference.minibatch_stddev(x, groups, num_channels, eps)
    return _kernel_op(chosen)(x, groups, num_channels, float(eps))
