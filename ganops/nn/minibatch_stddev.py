"""The module form of :func:`ganops.minibatch_stddev`."""

from __future__ import annotations

from torch import Tensor, nn

from ganops.ops.minibatch_stddev import check_hyperparameters, minibatch_stddev


class MinibatchStdDev(nn.Module):
    """Appends the minibatch standard deviation to a ``[N, C, H, W]`` input (see :func:`ganops.minibatch_stddev`).

    A drop-in for StyleGAN2's ``MinibatchStdLayer(group_size, num_channels)``, giving ``[N, C + num_channels, H, W]``;
    ``group_size=None`` takes the whole batch as one group, as StyleGAN2 does.
    """

    def __init__(self, group_size: int | None = 4, num_channels: int = 1, eps: float = 1e-8, *, backend: str | None = None):
        super().__init__()
        check_hyperparameters(group_size, num_channels, eps, caller="MinibatchStdDev")
        self.group_size = group_size
        self.num_channels = num_channels
        self.eps = eps
        self.backend = backend

    def forward(self, x: Tensor) -> Tensor:
        return minibatch_stddev(x, self.group_size, self.num_channels, self.eps, backend=self.backend)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}, num_channels={self.num_channels}, eps={self.eps}"
