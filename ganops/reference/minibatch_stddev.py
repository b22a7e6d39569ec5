"""Plain-PyTorch minibatch standard deviation: the specification every backend is tested against.

Notation shared by every backend (``triton_kernels/minibatch_stddev.py``,
``csrc/cpu/minibatch_stddev.cpp``, ``csrc/cuda/minibatch_stddev.cu``):

* ``x`` has shape ``[N, C, H, W]``; ``G = min(group_size, N)`` members per group, ``M = N // G``
  groups, ``F = num_channels`` statistics, ``c = C // F`` channels per statistic, ``K = c * H * W``.
* Sample ``n`` is member ``g = n // M`` of group ``m = n % M`` (StyleGAN2's strided grouping);
  channel ``ch`` belongs to statistic ``f = ch // c``.
* For one element position ``(m, f, j, h, w)`` the ``G`` members give ``d_g = x_g - mean_g(x)`` and
  ``sd = sqrt(mean_g(d_g^2) + eps)``; the statistic is ``s[m, f] = mean over (j, h, w) of sd``.
* Forward: ``out = cat(x, s[n % M, f] broadcast over H, W)``, shape ``[N, C + F, H, W]``.
* Backward, with ``grad_out`` split into ``grad_out[:, :C]`` and the statistic channels:
  ``gs[m, f] = sum over (g, h, w) of grad_out[g*M + m, C + f, h, w]`` and
  ``grad_x = grad_out[:, :C] + gs[m, f] * d_g / (G * K * sd)``.
* Double backward, for the incoming gradient ``gg`` of ``grad_x``:
  ``grad_grad_out = cat(gg, t[n % M, f] broadcast)`` with
  ``t[m, f] = sum over (g, j, h, w) of gg * d_g / (G * K * sd)``, and, with ``a_g = gs[m, f] * gg_g``,
  ``grad_x = (a_g - mean_g(a) - d_g * sum_g(a_g * d_g) / (G * sd^2)) / (G * K * sd)``.

Low-precision inputs are computed in float32 and the result cast back, as the fused kernels do.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ganops._dtypes import compute_dtype


def _grouped(x: Tensor, group_size: int, num_channels: int) -> Tensor:
    """View ``x`` as ``[G, M, F, c, H, W]`` with StyleGAN2's strided grouping, in the compute dtype."""
    n, c, h, w = x.shape
    g = min(group_size, n)
    return x.to(compute_dtype(x.dtype)).reshape(g, n // g, num_channels, c // num_channels, h, w)


def minibatch_stddev(x: Tensor, group_size: int = 4, num_channels: int = 1, eps: float = 1e-8) -> Tensor:
    """``cat(x, per-group standard deviation)``, exactly as StyleGAN2's ``MinibatchStdLayer``."""
    n, _, h, w = x.shape
    y = _grouped(x, group_size, num_channels)
    deviation = y - y.mean(dim=0)
    stddev = (deviation.square().mean(dim=0) + eps).sqrt()
    statistic = stddev.mean(dim=(2, 3, 4))
    groups = y.shape[0]
    statistic = statistic.reshape(-1, num_channels, 1, 1).repeat(groups, 1, h, w)
    return torch.cat([x, statistic.to(x.dtype)], dim=1)


def minibatch_stddev_backward(
    grad_out: Tensor, x: Tensor, group_size: int = 4, num_channels: int = 1, eps: float = 1e-8
) -> Tensor:
    """Gradient of :func:`minibatch_stddev` with respect to ``x``, written out (see module docstring)."""
    n, channels, h, w = x.shape
    y = _grouped(x, group_size, num_channels)
    groups, slots, _, per_stat = y.shape[:4]
    fan_in = groups * per_stat * h * w
    deviation = y - y.mean(dim=0)
    stddev = (deviation.square().mean(dim=0) + eps).sqrt()
    grad_stat = grad_out[:, channels:].to(y.dtype).reshape(groups, slots, num_channels, h, w).sum(dim=(0, 3, 4))
    grad_x = grad_stat[:, :, None, None, None] * deviation / (fan_in * stddev)
    return (grad_out[:, :channels] + grad_x.reshape(x.shape)).to(x.dtype)


def minibatch_stddev_double_backward(
    grad_grad_x: Tensor,
    grad_out: Tensor,
    x: Tensor,
    group_size: int = 4,
    num_channels: int = 1,
    eps: float = 1e-8,
) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`minibatch_stddev_backward` with respect to ``grad_out`` and ``x``."""
    n, channels, h, w = x.shape
    y = _grouped(x, group_size, num_channels)
    groups, slots, _, per_stat = y.shape[:4]
    fan_in = groups * per_stat * h * w
    deviation = y - y.mean(dim=0)
    stddev = (deviation.square().mean(dim=0) + eps).sqrt()
    gg = grad_grad_x.to(y.dtype).reshape(y.shape)
    grad_stat = grad_out[:, channels:].to(y.dtype).reshape(groups, slots, num_channels, h, w).sum(dim=(0, 3, 4))

    grad_of_stat = (gg * deviation / (fan_in * stddev)).sum(dim=(0, 3, 4, 5))
    grad_of_stat = grad_of_stat.reshape(-1, num_channels, 1, 1).repeat(groups, 1, h, w)
    grad_grad_out = torch.cat([grad_grad_x, grad_of_stat.to(grad_grad_x.dtype)], dim=1)

    a = grad_stat[:, :, None, None, None] * gg
    projection = (a * deviation).sum(dim=0) / (groups * stddev.square())
    grad_x = (a - a.mean(dim=0) - deviation * projection) / (fan_in * stddev)
    return grad_grad_out.to(grad_out.dtype), grad_x.reshape(x.shape).to(x.dtype)
