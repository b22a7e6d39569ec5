"""Per-parameter loops with the semantics of :mod:`ganops.training_utils` (the specification its multi-tensor
versions are tested against, and what the recipes' reference builds use)."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor, nn


@torch.no_grad()
def clip_weights_(parameters: Iterable[Tensor], clip_value: float) -> None:
    for parameter in parameters:
        parameter.clamp_(-clip_value, clip_value)


class ExponentialMovingAverage:
    """``ema = theta`` for the first ``warmup`` updates, then ``ema = decay * ema + (1 - decay) * theta``;
    buffers copied."""

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: int = 0) -> None:
        self.decay, self.warmup, self.num_updates = decay, warmup, 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        averaged = dict(self.module.named_parameters())
        for name, parameter in model.named_parameters():
            if self.num_updates < self.warmup:
                averaged[name].copy_(parameter)
            else:
                averaged[name].copy_(self.decay * averaged[name] + (1.0 - self.decay) * parameter)
        buffers = dict(self.module.named_buffers())
        for name, buffer in model.named_buffers():
            buffers[name].copy_(buffer)
        self.num_updates += 1


class HistoricalAverage:
    """The mean of every recorded parameter value and ``sum ||theta - mean||^2``."""

    def __init__(self, parameters: Iterable[Tensor]) -> None:
        self.parameters = list(parameters)
        self.sums = [parameter.detach().clone() for parameter in self.parameters]
        self.count = 1

    @torch.no_grad()
    def update(self) -> None:
        self.count += 1
        for total, parameter in zip(self.sums, self.parameters):
            total.add_(parameter)

    def penalty(self, weight: float = 1.0) -> Tensor:
        return weight * sum(((p - total / self.count) ** 2).sum() for p, total in zip(self.parameters, self.sums))
