"""The fused parts of the gradient penalties as torch ops: argument checks, torch.library registration of the
Triton and C++ backends, and the public functions.

* :func:`gradient_norm_penalty` — ``mean_n h(||g_n||_2)`` of an input gradient ``g`` (per-sample norm over all
  non-batch dimensions, the penalty and the batch mean in one op). Its backward is an op, whose backward is an
  op again (``register_autograd_chain``), so the penalty can be differentiated to any order.
* :func:`interpolate` — ``eps_n * real_n + (1 - eps_n) * fake_n`` with one weight per sample.

The math lives in ``ganops/reference/gradient_penalty.py``; the kernels in ``triton_kernels/gradient_penalty.py``,
``csrc/cpu/gradient_penalty.cpp`` and ``csrc/cuda/gradient_penalty.cu``. The penalties built on them are in
``ganops/penalties.py``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ganops import _backend, _extension
from ganops._layout import empty_in_layout_of
from ganops.ops._registration import register_autograd_chain
from ganops.reference import gradient_penalty as reference

OP_NAME = "gradient_penalty"
_FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_center(center: float, caller: str) -> None:
    if isinstance(center, bool) or not isinstance(center, (int, float)) or not center >= 0 or center == float("inf"):
        raise ValueError(f"{caller}: center must be a finite float >= 0, got {center!r}")


def check_batch_tensor(name: str, t, caller: str) -> None:
    """``t`` must be a floating tensor ``[N, ...]`` with ``N >= 1`` and at least one element per sample."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{caller}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOATING_DTYPES:
        raise TypeError(f"{caller}: {name} must have a floating dtype {_FLOATING_DTYPES}, got {t.dtype}")
    if t.dim() == 0:
        raise ValueError(f"{caller}: {name} must have a batch dimension [N, ...], got a 0-dim tensor")
    if t.numel() == 0:
        raise ValueError(f"{caller}: {name} must not be empty (batch size 0 or an empty dimension), got shape {tuple(t.shape)}")


# ------------------------------------------------------------------------------ penalty of the input gradient


def _fake_penalty(grad: Tensor, center: float, one_sided: bool) -> Tensor:
    return grad.new_empty(())


def _fake_penalty_backward(grad_out: Tensor, grad: Tensor, center: float, one_sided: bool) -> Tensor:
    return empty_in_layout_of(grad, grad.shape)


def _fake_penalty_double_backward(
    grad_grad_grad: Tensor, grad_out: Tensor, grad: Tensor, center: float, one_sided: bool
) -> tuple[Tensor, Tensor]:
    return grad_out.new_empty(()), empty_in_layout_of(grad, grad.shape)


def _third_order_vjp(saved: tuple[Tensor, ...], attributes: tuple, grads: tuple[Tensor, Tensor]):
    _, vjp = torch.func.vjp(
        lambda gg, go, g: reference.gradient_penalty_double_backward(gg, go, g, *attributes), *saved
    )
    return vjp(grads)


@torch.library.custom_op("ganops::gradient_penalty_triton", mutates_args=())
def _triton_penalty(grad: Tensor, center: float, one_sided: bool) -> Tensor:
    from ganops._dtypes import compute_dtype
    from ganops._layout import memory_format_of
    from ganops.triton_kernels import gradient_penalty as kernels

    return kernels.forward(
        grad, center, one_sided,
        compute_dtype=compute_dtype(grad.dtype), memory_format=memory_format_of(grad),
    )


@torch.library.custom_op("ganops::gradient_penalty_backward_triton", mutates_args=())
def _triton_penalty_backward(grad_out: Tensor, grad: Tensor, center: float, one_sided: bool) -> Tensor:
    from ganops._dtypes import compute_dtype
    from ganops._layout import memory_format_of
    from ganops.triton_kernels import gradient_penalty as kernels

    return kernels.backward(
        grad_out, grad, center, one_sided,
        compute_dtype=compute_dtype(grad.dtype), memory_format=memory_format_of(grad),
    )


@torch.library.custom_op("ganops::gradient_penalty_double_backward_triton", mutates_args=())
def _triton_penalty_double_backward(
    grad_grad_grad: Tensor, grad_out: Tensor, grad: Tensor, center: float, one_sided: bool
) -> tuple[Tensor, Tensor]:
    from ganops._dtypes import compute_dtype
    from ganops._layout import memory_format_of
    from ganops.triton_kernels import gradient_penalty as kernels

    return kernels.double_backward(
        grad_grad_grad, grad_out, grad, center, one_sided,
        compute_dtype=compute_dtype(grad.dtype), memory_format=memory_format_of(grad),
    )


# ------------------------------------------------------------------------------------------- interpolation


def _fake_interpolate(real: Tensor, fake: Tensor, eps: Tensor) -> Tensor:
    return empty_in_layout_of(real, real.shape)


@torch.library.custom_op("ganops::gradient_penalty_interpolate_triton", mutates_args=())
def _triton_interpolate(real: Tensor, fake: Tensor, eps: Tensor) -> Tensor:
    from ganops._dtypes import compute_dtype
    from ganops._layout import memory_format_of
    from ganops.triton_kernels import gradient_penalty as kernels

    return kernels.interpolate(
        real, fake, eps,
        compute_dtype=compute_dtype(real.dtype), memory_format=memory_format_of(real),
    )


def _save_interpolation_inputs(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs)


def _interpolation_backward(ctx, grad_out: Tensor):
    # Written with differentiable torch ops (the interpolation is linear in real and fake and bilinear in eps),
    # so any higher derivative comes from autograd through these few elementwise ops.
    real, fake, eps = ctx.saved_tensors
    weight = eps.to(grad_out.dtype).reshape(-1, *([1] * (real.dim() - 1)))
    grad_real = grad_fake = grad_eps = None
    if ctx.needs_input_grad[0]:
        grad_real = (grad_out * weight).to(real.dtype)
    if ctx.needs_input_grad[1]:
        grad_fake = (grad_out * (1 - weight)).to(fake.dtype)
    if ctx.needs_input_grad[2]:
        grad_eps = (grad_out * (real - fake)).reshape(real.shape[0], -1).sum(dim=1).to(eps.dtype)
    return grad_real, grad_fake, grad_eps


def _register(suffix: str) -> None:
    names = [f"ganops::gradient_penalty{part}_{suffix}" for part in ("", "_backward", "_double_backward")]
    for name, fake in zip(names, (_fake_penalty, _fake_penalty_backward, _fake_penalty_double_backward)):
        torch.library.register_fake(name, fake)
    register_autograd_chain(*names, num_attributes=2, third_order_vjp=_third_order_vjp)
    interpolate_name = f"ganops::gradient_penalty_interpolate_{suffix}"
    torch.library.register_fake(interpolate_name, _fake_interpolate)
    torch.library.register_autograd(
        interpolate_name, _interpolation_backward, setup_context=_save_interpolation_inputs
    )


_register("triton")
if _extension.is_loaded() and hasattr(torch.ops.ganops, "gradient_penalty_cpp"):
    _register("cpp")


def cpp_kernels_available() -> bool:
    """Whether the compiled extension in use was built with this op's C++ kernels."""
    return _extension.is_loaded() and hasattr(torch.ops.ganops, "gradient_penalty_cpp")


def _select(device_type: str, backend: str | None) -> str:
    chosen = _backend.select(OP_NAME, device_type, backend)
    if chosen == "cpp" and not cpp_kernels_available():
        raise RuntimeError(
            "ganops.gradient_penalty: backend 'cpp' is unavailable: the compiled extension predates the gradient "
            "penalty kernels; rebuild it (python setup.py build_ext --inplace or pip install .)"
        )
    return chosen


def gradient_norm_penalty(
    grad: Tensor, center: float = 1.0, one_sided: bool = False, *, backend: str | None = None
) -> Tensor:
    """``mean_n h(||grad_n||_2)``, the norm taken over every non-batch dimension of ``grad``.

    ``h(s) = (s - center)^2`` (two-sided; ``center=0`` gives R1/R2's squared norm, computed without a square
    root) or ``max(0, s - center)^2`` (``one_sided=True``, WGAN-LP). Fused: one pass over ``grad`` forward, two
    in the backward (norms, then the scaled gradient), differentiable to any order.

    Args:
        grad: ``[N, ...]`` floating tensor (float16, bfloat16, float32 or float64; any strides), typically the
            gradient of D's output w.r.t. its input. Sums are accumulated in float32 (float64 for float64).
        center: the target norm, ``>= 0``.
        one_sided: penalise only norms above ``center``.
        backend: ``"reference"``, ``"triton"``, ``"cpp"`` or ``"auto"`` (see :func:`ganops.use_backend`).

    Returns:
        0-dim tensor of ``grad``'s dtype.
    """
    caller = "gradient_norm_penalty"
    check_batch_tensor("grad", grad, caller)
    check_center(center, caller)
    if not isinstance(one_sided, bool):
        raise TypeError(f"{caller}: one_sided must be a bool, got {type(one_sided).__name__}")
    chosen = _select(grad.device.type, backend)
    if chosen == "reference":
        return reference.gradient_penalty(grad, float(center), one_sided)
    return getattr(torch.ops.ganops, f"gradient_penalty_{chosen}").default(grad, float(center), one_sided)


def interpolate(real: Tensor, fake: Tensor, eps: Tensor, *, backend: str | None = None) -> Tensor:
    """``eps_n * real_n + (1 - eps_n) * fake_n`` per sample ``n`` (WGAN-GP's ``x_hat``), in ``real``'s dtype and
    layout; ``eps`` has shape ``[N]``. Differentiable with respect to all three inputs."""
    caller = "interpolate"
    check_batch_tensor("real", real, caller)
    check_batch_tensor("fake", fake, caller)
    check_batch_tensor("eps", eps, caller)
    if fake.shape != real.shape:
        raise ValueError(f"{caller}: fake must have the shape of real {tuple(real.shape)}, got {tuple(fake.shape)}")
    if fake.dtype != real.dtype:
        raise TypeError(f"{caller}: fake must have the dtype of real ({real.dtype}), got {fake.dtype}")
    if eps.shape != real.shape[:1]:
        raise ValueError(f"{caller}: eps must have shape [N] = {tuple(real.shape[:1])}, got {tuple(eps.shape)}")
    for name, t in (("fake", fake), ("eps", eps)):
        if t.device != real.device:
            raise ValueError(f"{caller}: {name} must be on the device of real ({real.device}), got {t.device}")
    chosen = _select(real.device.type, backend)
    if chosen == "reference":
        return reference.interpolate(real, fake, eps)
    return getattr(torch.ops.ganops, f"gradient_penalty_interpolate_{chosen}").default(real, fake, eps)
