"""Gradient penalties on the discriminator's input: WGAN-GP, WGAN-LP, DRAGAN, R1 and R2.

:func:`gradient_penalty` builds the penalised points, takes the gradient of D's output with respect to them
(``create_graph=True``, so the penalty is differentiable with respect to D's parameters), and reduces it with
the fused per-sample-norm op :func:`ganops.ops.gradient_penalty.gradient_norm_penalty`. :class:`LazyRegularizer`
implements StyleGAN2's lazy regularisation (the penalty every ``k`` steps, scaled by ``k``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor

from ganops.ops.gradient_penalty import check_batch_tensor, check_center, gradient_norm_penalty, interpolate

KINDS = ("wgan-gp", "wgan-lp", "dragan", "r1", "r2")
_NEEDS_FAKE = ("wgan-gp", "wgan-lp", "r2")


class NonFiniteGradientError(FloatingPointError):
    """The input gradient of D was inf or NaN after unscaling: the loss scale overflowed (see
    :func:`gradient_penalty`, ``grad_scaler=``)."""


def _uniform_per_sample(batch: int, like: Tensor, generator: torch.Generator | None) -> Tensor:
    """``U[0, 1)`` weights ``[N]`` in float32 (float64 for float64 data), drawn on ``generator``'s device."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
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
        spread = data.to(torch.float64 if data.dtype == torch.float64 else torch.float32).std(correction=0).to(data.dtype)
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
    if grad_scaler is not None and not isinstance(grad_scaler, torch.amp.GradScaler):
        raise TypeError(f"{caller}: grad_scaler must be a torch.amp.GradScaler, got {type(grad_scaler).__name__}")

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


class LazyRegularizer:
    """StyleGAN2's lazy regularisation: the penalty only every ``interval`` D steps, scaled by ``interval`` so
    that its expected contribution is unchanged (Karras et al. 2020, section 3.1; StyleGAN2 uses R1 every 16
    steps). When the penalty is lazy, scale the optimiser's learning rate and betas as StyleGAN2 does:
    ``lr * c``, ``beta ** c`` with ``c = interval / (interval + 1)``, which :meth:`adam_hyperparameters` computes.

    >>> lazy_r1 = ganops.LazyRegularizer(interval=16)
    >>> for step, real in enumerate(loader):
    ...     loss_d = discriminator_loss("non-saturating", D(real), D(G(z).detach()))
    ...     penalty = lazy_r1(step, D, real, kind="r1", weight=gamma / 2)   # None on the other steps
    ...     (loss_d if penalty is None else loss_d + penalty).backward()
    """

    def __init__(self, interval: int = 16) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"LazyRegularizer: interval must be a positive int, got {interval!r}")
        self.interval = interval

    def due(self, step: int) -> bool:
        """Whether the penalty is applied at ``step`` (steps 0, interval, 2 * interval, ...)."""
        return step % self.interval == 0

    def adam_hyperparameters(self, lr: float, betas: tuple[float, float]) -> tuple[float, tuple[float, float]]:
        ratio = self.interval / (self.interval + 1)
        return lr * ratio, (betas[0] ** ratio, betas[1] ** ratio)

    def __call__(self, step: int, discriminator: Callable[..., Tensor], *args, weight: float = 10.0, **kwargs) -> Tensor | None:
        """:func:`gradient_penalty` with ``weight * interval`` at due steps, ``None`` at the others."""
        if not self.due(step):
            return None
        return gradient_penalty(discriminator, *args, weight=weight * self.interval, **kwargs)

    def __repr__(self) -> str:
        return f"LazyRegularizer(interval={self.interval})"
