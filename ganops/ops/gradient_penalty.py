"""The fused parts of the gradient penalties as torch ops: argument checks, torch.library registration of the
Triton and C++ backends, and the public functions.

* :func:`gradient_norm_penalty` — ``mean_n h(||g_n||_2)`` of an input gradient ``g`` (per-sample norm over all
  non-batch dimensions, the penalty and the batch mean in one op). Its backward is an op, whose backward is an
  op again, so the penalty can be differentiated to any order. The forward op also returns the per-sample norms
  (float64 ``[N]``, not differentiable), which its backward takes instead of reading ``g`` a second time for them:
  the backward is one pass over ``g``.
* :func:`interpolate` — ``eps_n * real_n + (1 - eps_n) * fake_n`` with one weight per sample.

* :func:`gradient_penalty` — the public penalty (WGAN-GP, WGAN-LP, DRAGAN, R1, R2): builds the penalised points
  with :func:`interpolate`, takes the gradient of D's output with respect to them (``create_graph=True``, so the
  penalty is differentiable with respect to D's parameters) and reduces it with :func:`gradient_norm_penalty`.

The math lives in ``ganops/reference/gradient_penalty.py``; the kernels in ``triton_kernels/gradient_penalty.py``,
``csrc/cpu/gradient_penalty.cpp`` and ``csrc/cuda/gradient_penalty.cu``. StyleGAN2's lazy regularisation is
:class:`ganops.training.LazyRegularizer`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from ganops import _backend, _extension
from ganops._layout import empty_in_layout_of
from ganops._dtypes import FLOATING_DTYPES, compute_dtype
from ganops.ops._registration import Stage, op, register
from ganops.reference import gradient_penalty as reference

OP_NAME = "gradient_penalty"


def check_center(center: float, caller: str) -> None:
    if isinstance(center, bool) or not isinstance(center, (int, float)) or not center >= 0 or center == float("inf"):
        raise ValueError(f"{caller}: center must be a finite float >= 0, got {center!r}")


def check_batch_tensor(name: str, t, caller: str) -> None:
    """``t`` must be a floating tensor ``[N, ...]`` with ``N >= 1`` and at least one element per sample."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{caller}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOATING_DTYPES:
        raise TypeError(f"{caller}: {name} must have a floating dtype {FLOATING_DTYPES}, got {t.dtype}")
    if t.dim() == 0:
        raise ValueError(f"{caller}: {name} must have a batch dimension [N, ...], got a 0-dim tensor")
    if t.numel() == 0:
        raise ValueError(f"{caller}: {name} must not be empty (batch size 0 or an empty dimension), got shape {tuple(t.shape)}")


def check_penalty_arguments(grad: Tensor, center: float, one_sided: bool) -> None:
    caller = "gradient_norm_penalty"
    check_batch_tensor("grad", grad, caller)
    check_center(center, caller)
    if not isinstance(one_sided, bool):
        raise TypeError(f"{caller}: one_sided must be a bool, got {type(one_sided).__name__}")


def check_penalty_backward_arguments(grad_out: Tensor, grad: Tensor, norms: Tensor, center: float, one_sided: bool) -> None:
    """The backward op's arguments: those of the forward, and ``norms`` as the forward returned them."""
    check_penalty_arguments(grad, center, one_sided)
    caller = "gradient_norm_penalty backward"
    if not isinstance(norms, Tensor):
        raise TypeError(f"{caller}: norms must be a torch.Tensor, got {type(norms).__name__}")
    if norms.dtype != torch.float64 or norms.shape != grad.shape[:1]:
        raise ValueError(
            f"{caller}: norms must be the forward's per-sample norms, float64 of shape [N] = {tuple(grad.shape[:1])}, "
            f"got {norms.dtype} of shape {tuple(norms.shape)}"
        )
    if norms.device != grad.device:
        raise ValueError(f"{caller}: norms must be on the device of grad ({grad.device}), got {norms.device}")


def check_interpolate_arguments(real: Tensor, fake: Tensor, eps: Tensor) -> None:
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
    for name, value in (("fake", fake), ("eps", eps)):
        if value.device != real.device:
            raise ValueError(f"{caller}: {name} must be on the device of real ({real.device}), got {value.device}")


# ------------------------------------------------------------------------------ penalty of the input gradient


def _fake_penalty(grad: Tensor, center: float, one_sided: bool) -> tuple[Tensor, Tensor]:
    return grad.new_empty(()), grad.new_empty(grad.shape[:1], dtype=torch.float64)


def _fake_penalty_backward(grad_out: Tensor, grad: Tensor, norms: Tensor, center: float, one_sided: bool) -> Tensor:
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
def _triton_penalty(grad: Tensor, center: float, one_sided: bool) -> tuple[Tensor, Tensor]:
    from ganops._dtypes import compute_dtype
    from ganops._layout import memory_format_of
    from ganops.triton_kernels import gradient_penalty as kernels

    check_penalty_arguments(grad, center, one_sided)
    return kernels.forward(
        grad, center, one_sided,
        compute_dtype=compute_dtype(grad.dtype), memory_format=memory_format_of(grad),
    )


@torch.library.custom_op("ganops::gradient_penalty_backward_triton", mutates_args=())
def _triton_penalty_backward(grad_out: Tensor, grad: Tensor, norms: Tensor, center: float, one_sided: bool) -> Tensor:
    from ganops._dtypes import compute_dtype
    from ganops._layout import memory_format_of
    from ganops.triton_kernels import gradient_penalty as kernels

    check_penalty_backward_arguments(grad_out, grad, norms, center, one_sided)
    return kernels.backward(
        grad_out, grad, norms, center, one_sided,
        compute_dtype=compute_dtype(grad.dtype), memory_format=memory_format_of(grad),
    )


@torch.library.custom_op("ganops::gradient_penalty_double_backward_triton", mutates_args=())
def _triton_penalty_double_backward(
    grad_grad_grad: Tensor, grad_out: Tensor, grad: Tensor, center: float, one_sided: bool
) -> tuple[Tensor, Tensor]:
    from ganops._dtypes import compute_dtype
    from ganops._layout import memory_format_of
    from ganops.triton_kernels import gradient_penalty as kernels

    check_penalty_arguments(grad, center, one_sided)
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

    check_interpolate_arguments(real, fake, eps)
    return kernels.interpolate(
        real, fake, eps,
        compute_dtype=compute_dtype(real.dtype), memory_format=memory_format_of(real),
    )


def _interpolation_gradient(saved: tuple[Tensor, Tensor, Tensor], attributes: tuple, grads: tuple[Tensor]):
    # Written with differentiable torch ops (the interpolation is linear in real and fake and bilinear in eps),
    # so any higher derivative comes from autograd through these few elementwise ops.
    real, fake, eps = saved
    (grad_out,) = grads
    weight = eps.to(grad_out.dtype).reshape(-1, *([1] * (real.dim() - 1)))
    return (
        (grad_out * weight).to(real.dtype),
        (grad_out * (1 - weight)).to(fake.dtype),
        (grad_out * (real - fake)).reshape(real.shape[0], -1).sum(dim=1).to(eps.dtype),
    )


def _check_penalty_double_backward_arguments(
    grad_grad_grad: Tensor, grad_out: Tensor, grad: Tensor, center: float, one_sided: bool
) -> None:
    check_penalty_arguments(grad, center, one_sided)


def _register(suffix: str) -> None:
    # The chain of ganops.ops._registration.register_chain, except that the forward's second output, the norms,
    # is saved for the backward op and not differentiated: the backward's own gradient (the double backward op,
    # which sums g and gg in one pass anyway) differentiates through the norms' dependence on g.
    forward, backward, double_backward = (
        f"ganops::gradient_penalty{part}_{suffix}" for part in ("", "_backward", "_double_backward")
    )
    backward_op, double_backward_op = op(backward), op(double_backward)
    register(Stage(
        forward, _fake_penalty, (0,),
        lambda saved, attributes, grads: (backward_op(grads[0], *saved, *attributes),),
        save=lambda inputs, output: (inputs[0], output[1]),
        non_differentiable=lambda output: (output[1],),
        check=check_penalty_arguments,
    ))
    register(Stage(
        backward, _fake_penalty_backward, (0, 1),
        lambda saved, attributes, grads: double_backward_op(grads[0], *saved, *attributes),
        save=lambda inputs, output: inputs[:2],
        check=check_penalty_backward_arguments,
    ))
    register(Stage(
        double_backward, _fake_penalty_double_backward, (0, 1, 2), _third_order_vjp,
        check=_check_penalty_double_backward_arguments,
    ))
    register(Stage(
        f"ganops::gradient_penalty_interpolate_{suffix}", _fake_interpolate, (0, 1, 2), _interpolation_gradient,
        check=check_interpolate_arguments,
    ))


_register("triton")
if _extension.is_loaded() and hasattr(torch.ops.ganops, "gradient_penalty_cpp"):
    _register("cpp")


def cpp_kernels_available() -> bool:
    """Whether the compiled extension in use was built with this op's C++ kernels."""
    return _extension.is_loaded() and hasattr(torch.ops.ganops, "gradient_penalty_cpp")


def _select(device_type: str, backend: str | None, *inputs: Tensor) -> str:
    chosen = _backend.select(OP_NAME, device_type, backend, *inputs)
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
    root) or ``max(0, s - center)^2`` (``one_sided=True``, WGAN-LP). Fused: one pass over ``grad`` forward, one
    in the backward (which takes the forward's per-sample norms), differentiable to any order.

    Args:
        grad: ``[N, ...]`` floating tensor (float16, bfloat16, float32 or float64; any strides), typically the
            gradient of D's output w.r.t. its input. Sums are accumulated in float32 (float64 for float64).
        center: the target norm, ``>= 0``.
        one_sided: penalise only norms above ``center``.
        backend: ``"reference"``, ``"triton"``, ``"cpp"`` or ``"auto"`` (see :func:`ganops.use_backend`).

    Returns:
        0-dim tensor of ``grad``'s dtype.
    """
    check_penalty_arguments(grad, center, one_sided)
    chosen = _select(grad.device.type, backend, grad)
    if chosen == "reference":
        return reference.gradient_penalty(grad, float(center), one_sided)
    value, _norms = getattr(torch.ops.ganops, f"gradient_penalty_{chosen}").default(grad, float(center), one_sided)
    return value


def interpolate(real: Tensor, fake: Tensor, eps: Tensor, *, backend: str | None = None) -> Tensor:
    """``eps_n * real_n + (1 - eps_n) * fake_n`` per sample ``n`` (WGAN-GP's ``x_hat``), in ``real``'s dtype and
    layout; ``eps`` has shape ``[N]``. Differentiable with respect to all three inputs."""
    check_interpolate_arguments(real, fake, eps)
    chosen = _select(real.device.type, backend, real, fake, eps)
    if chosen == "reference":
        return reference.interpolate(real, fake, eps)
    return getattr(torch.ops.ganops, f"gradient_penalty_interpolate_{chosen}").default(real, fake, eps)


# ---------------------------------------------------------------- the penalty on a discriminator

KINDS = ("wgan-gp", "wgan-lp", "dragan", "r1", "r2")
_NEEDS_FAKE = ("wgan-gp", "wgan-lp", "r2")


class NonFiniteGradientError(FloatingPointError):
    """The input gradient of D was inf or NaN after unscaling: the loss scale overflowed (see
    :func:`gradient_penalty`, ``grad_scaler=``)."""


def _uniform_per_sample(batch: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """``U[0, 1)`` weights ``[N]`` in float32 (float64 for float64 data), drawn on ``generator``'s device."""
    dtype = compute_dtype(like.dtype)
    device = generator.device if generator is not None else like.device
    return torch.rand(batch, dtype=dtype, device=device, generator=generator).to(like.device)


def _penalised_points(
    kind: str, real: Tensor | None, fake: Tensor | None, generator: torch.Generator | None, backend: str | None
) -> Tensor:
    if kind in ("wgan-gp", "wgan-lp"):
        eps = _uniform_per_sample(real.shape[0], real, generator)
        return interpolate(real.detach(), fake.detach(), eps, backend=backend)
    if kind == "dragan":
        # The DRAGAN authors' perturbation: x_p = x + 0.5 * std(x) * U[0, 1) noise, x_hat = x + alpha (x_p - x),
        # i.e. x_hat = alpha * x_p + (1 - alpha) * x; std over the whole batch, population std (numpy's, as theirs).
        data = real.detach()
        device = generator.device if generator is not None else data.device
        noise = torch.rand(data.shape, dtype=data.dtype, device=device, generator=generator).to(data.device)
        spread = data.to(compute_dtype(data.dtype)).std(correction=0).to(data.dtype)
        perturbed = data + 0.5 * spread * noise
        alpha = _uniform_per_sample(data.shape[0], data, generator)
        return interpolate(perturbed, data, alpha, backend=backend)
    return (real if kind == "r1" else fake).detach()


def gradient_penalty(
    discriminator: Callable[..., Tensor],
    real: Tensor | None,
    fake: Tensor | None = None,
    kind: str = "wgan-gp",
    center: float = 1.0,
    weight: float = 10.0,
    *,
    discriminator_args: Sequence = (),
    discriminator_kwargs: Mapping | None = None,
    generator: torch.Generator | None = None,
    grad_scaler: torch.amp.GradScaler | None = None,
    backend: str | None = None,
) -> Tensor:
    """``weight * penalty`` on the gradient of ``discriminator`` with respect to its input.

    ``g_n`` below is the gradient of ``sum(D(x_hat))`` w.r.t. sample ``n`` of ``x_hat``, its norm taken over every
    non-batch dimension; every mean is over the batch.

    * ``"wgan-gp"`` (Gulrajani et al. 2017): ``x_hat = eps * real + (1 - eps) * fake``, ``eps ~ U[0, 1]`` per
      sample; ``mean((||g|| - center)^2)``.
    * ``"wgan-lp"`` (Petzka et al. 2018): same points, one-sided: ``mean(max(0, ||g|| - center)^2)``.
    * ``"dragan"`` (Kodali et al. 2017): ``x_p = real + 0.5 * std(real) * U[0, 1]`` noise,
      ``x_hat = real + alpha * (x_p - real)``, ``alpha ~ U[0, 1]`` per sample; two-sided about ``center``.
    * ``"r1"`` on ``real`` / ``"r2"`` on ``fake`` (Mescheder et al. 2018): ``mean(||g||^2)``, zero-centred
      (``center`` is ignored). The papers write ``gamma / 2 * E||g||^2``: pass ``weight=gamma / 2``.

    ``real`` and ``fake`` are detached: the penalty is differentiable w.r.t. D's parameters (and any tensors
    in ``discriminator_args``/``discriminator_kwargs``), not w.r.t. the samples. Call it inside the D step and
    add it to D's loss (or use :class:`LazyRegularizer`).

    Args:
        discriminator: called as ``discriminator(x_hat, *discriminator_args, **discriminator_kwargs)`` (e.g.
            class labels of a conditional D); its output (any shape, e.g. ``[N]``, ``[N, 1]`` or patch logits)
            is summed per call, so each sample's gradient is that of its own outputs.
        real: real samples ``[N, ...]`` (unused for ``"r2"``, may then be ``None``).
        fake: generated samples of the same shape (required by ``"wgan-gp"``, ``"wgan-lp"``, ``"r2"``).
        kind: one of :data:`KINDS`.
        center: target norm for ``"wgan-gp"``, ``"wgan-lp"``, ``"dragan"`` (``>= 0``; 0 gives "0-GP").
        weight: the penalty's factor (``lambda = 10`` for WGAN-GP).
        generator: ``torch.Generator`` for ``eps``/``alpha``/noise, for reproducible penalties.
        grad_scaler: an enabled ``torch.amp.GradScaler`` when training in float16. D's output is scaled before
            ``autograd.grad`` (so small input gradients do not underflow) and the input gradient unscaled
            before the norm; a non-finite input gradient raises :class:`NonFiniteGradientError` instead of
            entering the penalty. Do not scale the returned penalty yourself beyond the usual
            ``scaler.scale(loss_d + penalty).backward()``.
        backend: backend of the fused ops (interpolation, norm + penalty); see :func:`ganops.use_backend`.

    Returns:
        0-dim tensor (float32 for float16/bfloat16 samples, else their dtype).

    Example, mixed precision (the recipe of the torch AMP docs, "gradient penalty")::

        scaler = torch.amp.GradScaler("cuda")
        with torch.autocast("cuda", dtype=torch.float16):
            loss_d = ganops.losses.discriminator_loss("wasserstein", D(real), D(fake.detach()))
            try:
                penalty = ganops.gradient_penalty(D, real, fake.detach(), grad_scaler=scaler)
            except ganops.NonFiniteGradientError:
                penalty = None  # the scale overflowed: skip this step and lower the scale
        if penalty is None:
            scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
        else:
            scaler.scale(loss_d + penalty).backward()
            scaler.step(optimizer_d)
            scaler.update()
    """
    caller = "gradient_penalty"
    if kind not in KINDS:
        raise ValueError(f"{caller}: kind must be one of {KINDS}, got {kind!r}")
    if not callable(discriminator):
        raise TypeError(f"{caller}: discriminator must be callable (an nn.Module or function), got {type(discriminator).__name__}")
    if kind != "r2" or real is not None:
        check_batch_tensor("real", real, caller)
    if kind in _NEEDS_FAKE and fake is None:
        raise ValueError(f"{caller}: kind {kind!r} needs fake samples; pass fake=G(z).detach()")
    if fake is not None:
        check_batch_tensor("fake", fake, caller)
        if real is not None and fake.shape != real.shape:
            raise ValueError(
                f"{caller}: real and fake must have the same shape, got {tuple(real.shape)} and {tuple(fake.shape)}"
            )
        if real is not None and fake.dtype != real.dtype:
            raise TypeError(f"{caller}: real and fake must have the same dtype, got {real.dtype} and {fake.dtype}")
    check_center(center, caller)
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise TypeError(f"{caller}: weight must be a float, got {weight!r}")
    if not math.isfinite(weight):
        raise ValueError(f"{caller}: weight must be finite, got {weight!r}")
    if grad_scaler is not None and not isinstance(grad_scaler, torch.amp.GradScaler):
        raise TypeError(f"{caller}: grad_scaler must be a torch.amp.GradScaler, got {type(grad_scaler).__name__}")

    if not torch.is_grad_enabled():
        raise RuntimeError(
            f"{caller}: gradient mode is off (torch.no_grad() or torch.inference_mode() is active), so D's input "
            "gradient cannot be taken; call gradient_penalty outside that block (inside torch.no_grad(), wrapping the call "
            "in torch.enable_grad() also works)"
        )
    x_hat = _penalised_points(kind, real, fake, generator, backend).requires_grad_(True)
    output = discriminator(x_hat, *discriminator_args, **(discriminator_kwargs or {}))
    if not isinstance(output, Tensor):
        raise TypeError(f"{caller}: discriminator must return a tensor, got {type(output).__name__}")
    scaling = grad_scaler is not None and grad_scaler.is_enabled()
    total = output.float().sum() if output.dtype in (torch.float16, torch.bfloat16) else output.sum()
    if scaling:
        total = grad_scaler.scale(total)
    grad = torch.autograd.grad(total, x_hat, create_graph=True, allow_unused=True)[0] if total.requires_grad else None
    if grad is None:
        raise ValueError(
            f"{caller}: the discriminator's output does not depend on its input x, so the gradient penalty is "
            "undefined; check that D uses its first argument (and does not detach it)"
        )
    if scaling:
        grad = grad * (1.0 / grad_scaler.get_scale())
        if not bool(torch.isfinite(grad).all()):
            raise NonFiniteGradientError(
                f"{caller}: D's input gradient is inf/NaN after unscaling by the GradScaler's scale "
                f"{grad_scaler.get_scale():g} (an overflow of the scaled backward). Skip this step and lower the "
                "scale, e.g. scaler.update(scaler.get_scale() * scaler.get_backoff_factor())"
            )
    if grad.dtype in (torch.float16, torch.bfloat16):
        grad = grad.float()
    if kind in ("r1", "r2"):
        penalty = gradient_norm_penalty(grad, 0.0, backend=backend)
    else:
        penalty = gradient_norm_penalty(grad, float(center), one_sided=kind == "wgan-lp", backend=backend)
    return weight * penalty
