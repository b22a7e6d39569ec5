"""The module form of :func:`ganops.minibatch_discrimination`."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ganops.ops.minibatch_discrimination import check_hyperparameters, minibatch_discrimination


class MinibatchDiscrimination(nn.Module):
    """Minibatch discrimination (Salimans et al. 2016): ``[N, in_features] -> [N, in_features + num_kernels]``.

    Holds the paper's tensor ``T`` as the parameter ``T`` of shape ``[in_features, num_kernels, kernel_dim]`` and
    appends the ``num_kernels`` closeness scores of each sample to the rest of the minibatch (see
    :func:`ganops.minibatch_discrimination`). Place it before a discriminator's last linear layer.
    """

    def __init__(
        self,
        in_features: int,
        num_kernels: int,
        kernel_dim: int,
        exclude_self: bool = False,
        *,
        backend: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        check_hyperparameters(in_features, num_kernels, kernel_dim)
        if not isinstance(exclude_self, bool):
            raise TypeError(f"MinibatchDiscrimination: exclude_self must be a bool, got {type(exclude_self).__name__}")
        self.in_features = in_features
        self.num_kernels = num_kernels
        self.kernel_dim = kernel_dim
        self.exclude_self = exclude_self
        self.backend = backend
        self.T = nn.Parameter(torch.empty(in_features, num_kernels, kernel_dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # N(0, 0.05^2) as in the authors' code (improved-gan's MinibatchLayer: Normal(0.05)).
        nn.init.normal_(self.T, std=0.05)

    @property
    def out_features(self) -> int:
        return self.in_features + self.num_kernels

    def forward(self, features: Tensor) -> Tensor:
        return minibatch_discrimination(features, self.T, self.exclude_self, backend=self.backend)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_kernels={self.num_kernels}, kernel_dim={self.kernel_dim}, "
            f"exclude_self={self.exclude_self}"
        )
