"""Plain-PyTorch reference of the fused parts of the gradient penalties: the specification every backend of
``ganops/ops/gradient_penalty.py`` is tested against.

Notation shared by every backend (``triton_kernels/gradient_penalty.py``, ``csrc/cpu/gradient_penalty.cpp``,
``csrc/cuda/gradient_penalty.cu``):

* ``g`` is the gradient of D's output with respect to its input, shape ``[N, ...]``; every non-batch
  dimension is reduced. ``q_n = sum of g_n^2`` and ``s_n = sqrt(q_n) = ||g_n||_2`` per sample ``n``.
* Non-finite and extreme values (one rule for every backend and derivative order):

  - a sample ``g_n`` with a NaN or an infinite element is treated as all-NaN: the penalty is NaN, and so is every
    derivative with respect to that sample (and the gradient of ``go`` in the double backward); the other
    samples' derivatives stay finite. NaN in, NaN out; an infinite input gradient has no meaningful penalty.
  - ``s_n`` is the overflow- and underflow-safe scaled norm ``a_n sqrt(sum (g_n / a_n)^2)`` with
    ``a_n = max |g_n|`` (``s_n = 0`` for ``g_n = 0``): ``|g| = 1e20`` or ``1e-21`` in float32 gives the true norm
    and finite derivatives wherever they are representable; a penalty that itself exceeds the dtype's range
    (e.g. ``(2e20)^2`` in float32) is ``inf``. Centre 0 uses ``q_n`` directly.
* Penalty with centre ``c >= 0``: ``P = (1 / N) sum_n h(s_n)`` with ``h(s) = (s - c)^2`` (two-sided: WGAN-GP,
  DRAGAN, and R1/R2 with ``c = 0``, computed as ``q_n`` then, without a square root) or
  ``h(s) = max(0, s - c)^2`` (one-sided: WGAN-LP).
* Backward, for the incoming scalar gradient ``go``: ``grad_g_n = go * k_n * g_n`` with
  ``k_n = (2 / N) (1 - c / s_n)`` where the sample is active (always for two-sided, ``s_n > c`` for
  one-sided) and ``0`` elsewhere; ``c / s_n`` is taken as ``0`` at ``s_n = 0`` (the gradient is then zero
  anyway because ``g_n = 0``).
* Double backward, for the incoming gradient ``gg`` of ``grad_g`` and ``d_n = <g_n, gg_n>``:
  ``grad_go = sum_n k_n d_n`` and ``grad_g_n = go * (k_n gg_n + m_n d_n g_n)`` with
  ``m_n = (2 / N) c / s_n^3`` where active (the derivative of ``k_n`` along ``g_n``), ``0`` elsewhere. Computed
  as ``m_n d_n g_n = ((2 / N) c / s_n) <u_n, gg_n> u_n`` with the unit vector ``u_n = g_n / s_n``, so that
  neither ``s_n^3`` nor ``d_n g_n`` leaves the dtype's range for tiny or huge ``g``.
* Interpolation: ``x_hat_n = eps_n real_n + (1 - eps_n) fake_n`` with one ``eps_n`` per sample.

Low-precision inputs are computed in float32 and the result cast back, as the fused kernels do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ganops._dtypes import compute_dtype


def _rows(t: Tensor) -> Tensor:
    """``t`` as ``[N, D]`` in the compute dtype, a sample with a non-finite element made all-NaN (module docstring)."""
    rows = t.to(compute_dtype(t.dtype)).reshape(t.shape[0], -1)
    # Added, not selected with torch.where: the NaN must reach the derivatives too (where's gradient would be 0).
    return rows + torch.where(rows.isfinite().all(dim=1, keepdim=True), 0.0, float("nan"))


def per_sample_squared_norm(grad: Tensor) -> Tensor:
    """``q_n = ||g_n||^2`` over every non-batch dimension, in the compute dtype."""
    return _rows(grad).square().sum(dim=1)


def per_sample_norm(grad: Tensor) -> Tensor:
    """``s_n = ||g_n||``, scaled by ``a_n = max |g_n|`` so that neither huge nor tiny ``g`` overflows or underflows
    in the squares; ``0`` for ``g_n = 0`` with the zero subgradient (the kernels' choice, and torch's)."""
    rows = _rows(grad)
    # The norm does not depend on the scale: a constant to autograd, so every derivative is the norm's own.
    scale = rows.detach().abs().amax(dim=1)
    nonzero = scale != 0  # true for NaN: NaN stays NaN
    scale = torch.where(nonzero, scale, 1.0)
    squared = torch.where(nonzero, (rows / scale[:, None]).square().sum(dim=1), 1.0)
    return torch.where(nonzero, scale * squared.sqrt(), 0.0)


def gradient_penalty(grad: Tensor, center: float, one_sided: bool) -> Tensor:
    """``P = mean_n h(||g_n||)`` (module docstring), a 0-dim tensor of ``grad``'s dtype."""
    if center == 0:
        # (s - 0)^2 and max(0, s)^2 are both q: no square root, whose derivative is infinite at g_n = 0.
        per_sample = per_sample_squared_norm(grad)
    else:
        distance = per_sample_norm(grad) - center
        per_sample = distance.clamp(min=0).square() if one_sided else distance.square()
    return per_sample.mean().to(grad.dtype)


def _coefficients(grad: Tensor, center: float, one_sided: bool) -> tuple[Tensor, Tensor, Tensor]:
    """``(k_n, (2 / N) c / s_n, 1 / s_n)`` (module docstring), shape ``[N]``, in the compute dtype; ``0`` for
    ``1 / s_n`` at ``s_n = 0``, NaN for a non-finite sample, ``0`` for the first two where one-sided and inactive."""
    n = grad.shape[0]
    norm = per_sample_norm(grad)
    inverse = torch.where(norm == 0, 0.0, 1.0 / norm)
    active = ~(norm <= center) if one_sided else torch.ones_like(norm, dtype=torch.bool)
    k = torch.where(active, (2.0 / n) * (1.0 - center * inverse), 0.0)
    curvature = torch.where(active, (2.0 / n) * center * inverse, 0.0)
    return k, curvature, inverse


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """``values[N]`` shaped to broadcast against ``like[N, ...]``."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def gradient_penalty_backward(grad_out: Tensor, grad: Tensor, center: float, one_sided: bool) -> Tensor:
    """Gradient of :func:`gradient_penalty` with respect to ``grad``: ``go * k_n * g_n``."""
    k, _, _ = _coefficients(grad, center, one_sided)
    g = grad.to(k.dtype)
    return (grad_out.to(k.dtype) * _per_sample(k, g) * g).to(grad.dtype)


def gradient_penalty_double_backward(
    grad_grad_grad: Tensor, grad_out: Tensor, grad: Tensor, center: float, one_sided: bool
) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`gradient_penalty_backward` w.r.t. ``grad_out`` and ``grad``, for the incoming
    gradient ``grad_grad_grad`` of its output."""
    k, curvature, inverse = _coefficients(grad, center, one_sided)
    g = grad.to(k.dtype)
    gg = grad_grad_grad.to(k.dtype)
    dot = (g.reshape(g.shape[0], -1) * gg.reshape(gg.shape[0], -1)).sum(dim=1)
    grad_grad_out = (k * dot).sum()
    unit = _per_sample(inverse, g) * g
    along_unit = curvature * (unit.reshape(g.shape[0], -1) * gg.reshape(gg.shape[0], -1)).sum(dim=1)
    grad_g = grad_out.to(k.dtype) * (_per_sample(k, g) * gg + _per_sample(along_unit, g) * unit)
    return grad_grad_out.to(grad_out.dtype), grad_g.to(grad.dtype)


def interpolate(real: Tensor, fake: Tensor, eps: Tensor) -> Tensor:
    """``eps_n * real_n + (1 - eps_n) * fake_n``, ``eps`` of shape ``[N]``, in ``real``'s dtype."""
    dtype = compute_dtype(real.dtype)
    weight = _per_sample(eps.to(dtype), real)
    return (weight * real.to(dtype) + (1.0 - weight) * fake.to(dtype)).to(real.dtype)
