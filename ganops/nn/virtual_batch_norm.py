"""Virtual batch normalisation (Salimans et al. 2016, section 3.5).

Batch normalisation makes a sample's output depend on the other samples of its minibatch. VBN instead
normalises each sample ``x`` with statistics of a *reference batch* chosen once at the start of training and
of ``x`` itself: with ``R`` reference samples, per channel,

    mu(x)  = 1/(R+1) * mean_hw(x)   + R/(R+1) * mean_{ref, hw}(r)
    nu(x)  = 1/(R+1) * mean_hw(x^2) + R/(R+1) * mean_{ref, hw}(r^2)
    y      = gamma * (x - mu) / sqrt(nu - mu^2 + eps) + beta

(as in OpenAI's improved-GAN code), while the reference samples are normalised by the reference statistics
alone. The reference batch runs through the network at every forward, so its statistics follow the current
parameters and gradients flow through them (which is why VBN costs a second forward).

Usage: build the network with :class:`VirtualBatchNorm2d` layers and wrap it in :class:`WithReferenceBatch`,
which prepends the fixed reference batch to every input and drops its outputs::

    G = ganops.nn.WithReferenceBatch(generator_with_vbn, reference_input=z_ref)
    fake = G(z)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class VirtualBatchNorm2d(nn.Module):
    """VBN over ``[R + N, C, H, W]`` inputs whose first ``R = reference_size`` rows are the reference batch.

    Set ``reference_size`` through :class:`WithReferenceBatch` (which also sets it on every nested layer).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"VirtualBatchNorm2d: num_features must be a positive int, got {num_features!r}")
        self.num_features = num_features
        self.eps = eps
        self.reference_size = 0
        self.weight = nn.Parameter(torch.ones(num_features)) if affine else None
        self.bias = nn.Parameter(torch.zeros(num_features)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.num_features:
            raise ValueError(f"VirtualBatchNorm2d: x must be [N, {self.num_features}, H, W], got {tuple(x.shape)}")
        r = self.reference_size
        if not 0 < r <= x.shape[0]:
            raise RuntimeError(
                f"VirtualBatchNorm2d: the input must start with the reference batch ({r} rows; use "
                f"ganops.nn.WithReferenceBatch), got {x.shape[0]} rows"
            )
        reference, samples = x[:r], x[r:]
        reference_mean = reference.mean(dim=(0, 2, 3), keepdim=True)
        reference_mean_square = reference.square().mean(dim=(0, 2, 3), keepdim=True)
        new = 1.0 / (r + 1)
        mean = new * samples.mean(dim=(2, 3), keepdim=True) + (1.0 - new) * reference_mean
        mean_square = new * samples.square().mean(dim=(2, 3), keepdim=True) + (1.0 - new) * reference_mean_square
        normalized = torch.cat([
            (reference - reference_mean) * torch.rsqrt(reference_mean_square - reference_mean.square() + self.eps),
            (samples - mean) * torch.rsqrt(mean_square - mean.square() + self.eps),
        ])
        if self.weight is None:
            return normalized
        return normalized * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.weight is not None}"


class WithReferenceBatch(nn.Module):
    """``module(cat([reference_input, x]))[R:]``: runs ``module`` (containing :class:`VirtualBatchNorm2d`
    layers) on ``x`` normalised against the reference batch ``reference_input``, fixed here (a buffer) once."""

    def __init__(self, module: nn.Module, reference_input: Tensor) -> None:
        super().__init__()
        layers = [layer for layer in module.modules() if isinstance(layer, VirtualBatchNorm2d)]
        if not layers:
            raise ValueError("WithReferenceBatch: module has no VirtualBatchNorm2d layer")
        if not isinstance(reference_input, Tensor) or reference_input.dim() < 1 or reference_input.shape[0] < 1:
            raise ValueError("WithReferenceBatch: reference_input must be a tensor with a non-empty batch dimension")
        self.module = module
        self.register_buffer("reference_input", reference_input.detach().clone())
        for layer in layers:
            layer.reference_size = reference_input.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        reference = self.reference_input.to(dtype=x.dtype)
        return self.module(torch.cat([reference, x]))[reference.shape[0] :]
