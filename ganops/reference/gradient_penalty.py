"""Plain-PyTorch reference of the fused parts of the gradient penalties: the specification every backend of
``ganops/ops/gradient_penalty.py`` is tested against.

Notation shared by every backend (``triton_kernels/gradient_penalty.py``, ``csrc/cpu/gradient_penalty.cpp``,
``csrc/cuda/gradient_penalty.cu``):

* ``g`` is the gradient of D's output with respect to its input, shape ``[N, ...]``; every non-batch
  dimension is reduced. ``q_n = sum of g_n^2`` and ``s_n = sqrt(q_n) = ||g_n||_2`` per sample ``n``.
* Non-finite and extreme values, one rule for every backend and derivative order:

  - NaN in, NaN out: a sample ``g_n`` with a NaN or an infinite element makes the penalty NaN, and every
    derivative with respect to that sample NaN (so is the gradient of ``go`` in the double backward); the other
    samples' derivatives stay finite. (An infinite input gradient has no meaningful penalty.)
  - No overflow or underflow in the squares: ``|g| = 1e20`` or ``1e-21`` in float32 gives the true norm and
    finite derivatives wherever they are representable, as a norm scaled by ``max |g_n|`` (LAPACK's ``nrm2``)
    does; the kernels scale or accumulate wide enough, the reference computes in float64 (a float64 input is
    limited to ``|g| < ~1e150``). A penalty that itself exceeds the dtype's range (``(2e20)^2`` in float32) is
    ``inf``, its derivatives stay finite.
  - ``s_n = 0`` (``g_n = 0``) takes the zero subgradient, as ``torch.linalg.vector_norm`` does.
* Penalty with centre ``c >= 0``: ``P = (1 / N) sum_n h(s_n)`` with ``h(s) = (s - c)^2`` (two-sided: WGAN-GP,
  DRAGAN, and R1/R2 with ``c = 0``, computed as ``q_n`` then, without a square root) or
  ``h(s) = max(0, s - c)^2`` (one-sided: WGAN-LP).
* Backward, for the incoming scalar gradient ``go``: ``grad_g_n = go * k_n * g_n`` with
  ``k_n = (2 / N) (1 - c / s_n)`` where the sample is active (always for two-sided, ``s_n > c`` for
  one-sided) and ``0`` elsewhere; ``c / s_n`` is taken as ``0`` at ``s_n = 0`` (the gradient is then zero
  anyway because ``g_n = 0``).
* Double backward, for the incoming gradient ``gg`` of ``grad_g`` and ``d_n = <g_n, gg_n>``:
  ``grad_go = sum_n k_n d_n`` and ``grad_g_n = go * (k_n gg_n + m_n d_n g_n)`` with
  ``m_n = (2 / N) c / s_n^3`` where active (the derivative of ``k_n`` along ``g_n``), ``0`` elsewhere. In a
  narrow dtype, ``m_n d_n g_n = ((2 / N) c / s_n) <u_n, gg_n> u_n`` with the unit vector ``u_n = g_n / s_n``
  keeps ``s_n^3`` and ``d_n g_n`` in range.
* Interpolation: ``x_hat_n = eps_n real_n + (1 - eps_n) fake_n`` with one ``eps_n`` per sample.

The penalty and its derivatives are computed in float64 and cast back; the interpolation in float32 for
float16/bfloat16 inputs, as the fused kernels do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ganops._dtypes import compute_dtype


def _rows(t: Tensor) -> Tensor:
    """``t`` as ``[N, D]`` float64 rows: no square of a float32 (or narrower) value over- or underflows."""
    return t.to(torch.float64).reshape(t.shape[0], -1)


def _nan_unless_finite(rows: Tensor) -> Tensor:
    """Per sample: 1, or NaN where the row has a non-finite element. Multiplied into the penalty of each sample,
    it makes every derivative of that sample NaN too (NaN * 0 is NaN), in every order (module docstring)."""
    return torch.where(rows.isfinite().all(dim=1), 1.0, float("nan")).to(rows.dtype)


def per_sample_squared_norm(grad: Tensor) -> Tensor:
    """``q_n = ||g_n||^2`` over every non-batch dimension, in float64."""
    return _rows(grad).square().sum(dim=1)


def per_sample_norm(grad: Tensor) -> Tensor:
    """``s_n = ||g_n||`` in float64; ``0`` for ``g_n = 0``, with the zero subgradient (module docstring)."""
    squared = per_sample_squared_norm(grad)
    nonzero = squared != 0
    # The inner where keeps sqrt's infinite derivative at 0 out of the (unselected) branch's gradient.
    return torch.where(nonzero, torch.where(nonzero, squared, 1.0).sqrt(), 0.0)


def gradient_penalty(grad: Tensor, center: float, one_sided: bool) -> Tensor:
    """``P = mean_n h(||g_n||)`` (module docstring), a 0-dim tensor of ``grad``'s dtype."""
    if center == 0:
        # (s - 0)^2 and max(0, s)^2 are both q: no square root, whose derivative is infinite at g_n = 0.
        per_sample = per_sample_squared_norm(grad)
    else:
        distance = per_sample_norm(grad) - center
        per_sample = distance.clamp(min=0).square() if one_sided else distance.square()
    return (per_sample * _nan_unless_finite(_rows(grad))).mean().to(grad.dtype)


def _coefficients(grad: Tensor, center: float, one_sided: bool) -> tuple[Tensor, Tensor]:
    """``(k_n, m_n)`` of the module docstring, shape ``[N]``, float64; NaN for a non-finite sample."""
    n = grad.shape[0]
    norm = per_sample_norm(grad)
    inverse = torch.where(norm == 0, 0.0, 1.0 / norm)
    active = norm > center if one_sided else torch.ones_like(norm, dtype=torch.bool)
    nan_unless_finite = _nan_unless_finite(_rows(grad))
    k = torch.where(active, (2.0 / n) * (1.0 - center * inverse), 0.0) * nan_unless_finite
    m = torch.where(active, (2.0 / n) * center * inverse**3, 0.0) * nan_unless_finite
    return k, m


def _per_sample(values: Tensor, like: Tensor) -> Tensor:
    """``values[N]`` shaped to broadcast against ``like[N, ...]``."""
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def gradient_penalty_backward(grad_out: Tensor, grad: Tensor, center: float, one_sided: bool) -> Tensor:
    """Gradient of :func:`gradient_penalty` with respect to ``grad``: ``go * k_n * g_n``."""
    k, _ = _coefficients(grad, center, one_sided)
    g = grad.to(k.dtype)
    return (grad_out.to(k.dtype) * _per_sample(k, g) * g).to(grad.dtype)


def gradient_penalty_double_backward(
    grad_grad_grad: Tensor, grad_out: Tensor, grad: Tensor, center: float, one_sided: bool
) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`gradient_penalty_backward` w.r.t. ``grad_out`` and ``grad``, for the incoming
    gradient ``grad_grad_grad`` of its output."""
    k, m = _coefficients(grad, center, one_sided)
    g = grad.to(k.dtype)
    gg = grad_grad_grad.to(k.dtype)
    dot = (_rows(g) * _rows(gg)).sum(dim=1)
    grad_grad_out = (k * dot).sum()
    grad_g = grad_out.to(k.dtype) * (_per_sample(k, g) * gg + _per_sample(m * dot, g) * g)
    return grad_grad_out.to(grad_out.dtype), grad_g.to(grad.dtype)


def interpolate(real: Tensor, fake: Tensor, eps: Tensor) -> Tensor:
    """``eps_n * real_n + (1 - eps_n) * fake_n``, ``eps`` of shape ``[N]``, in ``real``'s dtype."""
    dtype = compute_dtype(real.dtype)
    weight = _per_sample(eps.to(dtype), real)
    return (weight * real.to(dtype) + (1.0 - weight) * fake.to(dtype)).to(real.dtype)
