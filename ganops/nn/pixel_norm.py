"""ProGAN's pixelwise feature vector normalisation (Karras et al. 2018, section 4.2)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def pixel_norm(x: Tensor, eps: float = 1e-8) -> Tensor:
    """``b_{x,y} = a_{x,y} / sqrt(mean_j (a^j_{x,y})^2 + eps)``: each position's feature vector (dim 1 of
    ``[N, C, ...]``) scaled to unit root-mean-square; ``eps = 1e-8`` as in the paper."""
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError(f"pixel_norm: x must be a tensor [N, C, ...], got {getattr(x, 'shape', type(x).__name__)}")
    return x * torch.rsqrt(x.square().mean(dim=1, keepdim=True) + eps)


class PixelNorm(nn.Module):
    """Module form of :func:`pixel_norm`; ProGAN puts it after each 3x3 conv of G (and on the latent)."""

    def __init__(self, eps: float = 1e-8) -> None:
        super().__init__()
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps >= 0:
            raise ValueError(f"PixelNorm: eps must be a float >= 0, got {eps!r}")
        self.eps = float(eps)

    def forward(self, x: Tensor) -> Tensor:
        return pixel_norm(x, self.eps)

    def extra_repr(self) -> str:
        return f"eps={self.eps}"
