"""Multi-tensor training utilities of the GAN literature, and CycleGAN's history of fakes.

* :class:`ExponentialMovingAverage` — G_ema, the moving average of the generator's weights that ProGAN,
  BigGAN and StyleGAN sample from: ``ema <- decay * ema + (1 - decay) * theta`` (Karras et al. 2018, Brock et
  al. 2019), buffers (batch-norm statistics, spectral-norm vectors) copied; before the start step (BigGAN's
  ``ema_start``) the average is a plain copy of the weights.
* :func:`clip_weights_` — WGAN's weight clipping ``theta <- clamp(theta, -c, c)`` (Arjovsky et al. 2017, c = 0.01).
* :class:`HistoricalAverage` — Salimans et al. 2016, section 3.3: the penalty ``||theta - (1/t) sum_i theta[i]||^2``
  on the distance of the parameters from their running mean over the past steps.
* :class:`ImagePool` — Shrivastava et al. 2017 / CycleGAN (Zhu et al. 2017, section 4): D is updated on a
  history of 50 generated images; each query returns the new fake, or with probability 0.5 a stored one (which
  the new fake then replaces).

The first three update all their tensors with ``torch._foreach_*`` ops, one call per (device, dtype) group, so on
a GPU each update is one multi-tensor launch per group instead of one launch per parameter and per
elementwise operation. Each is tested against a per-parameter loop (``tests/test_training_utils.py``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import Tensor, nn


def _grouped(*tensor_lists: list[Tensor]) -> list[tuple[list[Tensor], ...]]:
    """Split parallel tensor lists into groups of one (device, dtype), in first-seen order, keeping them aligned."""
    groups: dict[tuple[torch.device, torch.dtype], tuple[list[Tensor], ...]] = {}
    for tensors in zip(*tensor_lists):
        key = (tensors[0].device, tensors[0].dtype)
        group = groups.setdefault(key, tuple([] for _ in tensor_lists))
        for destination, tensor in zip(group, tensors):
            destination.append(tensor)
    return list(groups.values())


def _parameter_list(parameters: Iterable[Tensor] | Tensor, caller: str) -> list[Tensor]:
    if isinstance(parameters, Tensor):
        parameters = [parameters]
    result = list(parameters)
    for index, parameter in enumerate(result):
        if not isinstance(parameter, Tensor):
            raise TypeError(f"{caller}: parameters must be tensors, got {type(parameter).__name__} at position {index}")
        if not parameter.is_floating_point():
            raise TypeError(f"{caller}: parameters must have a floating dtype, got {parameter.dtype} at position {index}")
    return result


def _check_unit_interval(name: str, value: float, caller: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{caller}: {name} must be a float in [0, 1], got {value!r}")


def _check_count(name: str, value: int, caller: str, minimum: int = 0) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{caller}: {name} must be an int >= {minimum}, got {value!r}")


# --------------------------------------------------------------------------------------------- G_ema


class ExponentialMovingAverage:
    """The exponential moving average of a model's parameters, held in a copy of the model (``.module``).

    After each optimiser step call :meth:`update`; sample from ``ema.module``. At update number ``t`` (counted
    from 0):

    * ``t < warmup`` (BigGAN's ``ema_start``): ``ema = theta`` (the early weights are too far from the final ones
      to be worth averaging);
    * otherwise ``ema <- decay * ema + (1 - decay) * theta`` (ProGAN: decay 0.999; BigGAN: 0.9999).

    Buffers (batch-norm running statistics, spectral-norm power-iteration vectors, counters) are copied, not
    averaged, at every update, as in BigGAN's ``ema`` class and StyleGAN2's G_ema. ``state_dict`` /
    ``load_state_dict`` carry the averaged model and the update count.

    >>> g_ema = ganops.ExponentialMovingAverage(G, decay=0.999, warmup=1000)
    >>> for step in range(steps):
    ...     train_step(G, D)
    ...     g_ema.update(G)
    >>> samples = g_ema.module(z)
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: int = 0) -> None:
        caller = "ExponentialMovingAverage"
        if not isinstance(model, nn.Module):
            raise TypeError(f"{caller}: model must be a torch.nn.Module, got {type(model).__name__}")
        _check_unit_interval("decay", decay, caller)
        _check_count("warmup", warmup, caller)
        self.decay = float(decay)
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    def _pairs(self, model: nn.Module) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        ema_parameters = dict(self.module.named_parameters())
        ema_buffers = dict(self.module.named_buffers())
        parameters = dict(model.named_parameters())
        buffers = dict(model.named_buffers())
        if parameters.keys() != ema_parameters.keys() or buffers.keys() != ema_buffers.keys():
            raise ValueError(
                "ExponentialMovingAverage.update: model must have the parameters and buffers of the averaged model "
                f"(names differ: {sorted(parameters.keys() ^ ema_parameters.keys() | buffers.keys() ^ ema_buffers.keys())[:5]})"
            )
        names = list(parameters)
        buffer_names = list(buffers)
        return (
            [ema_parameters[name] for name in names],
            [parameters[name].detach() for name in names],
            [ema_buffers[name] for name in buffer_names],
            [buffers[name].detach() for name in buffer_names],
        )

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold ``model``'s current parameters into the average and copy its buffers."""
        ema_parameters, parameters, ema_buffers, buffers = self._pairs(model)
        if self.num_updates < self.warmup:
            for ema_group, group in _grouped(ema_parameters, parameters):
                torch._foreach_copy_(ema_group, group)
        else:
            for ema_group, group in _grouped(ema_parameters, parameters):
                torch._foreach_lerp_(ema_group, group, 1.0 - self.decay)
        for ema_group, group in _grouped(ema_buffers, buffers):
            torch._foreach_copy_(ema_group, group)
        self.num_updates += 1

    def state_dict(self) -> dict:
        return {"module": self.module.state_dict(), "num_updates": self.num_updates, "decay": self.decay, "warmup": self.warmup}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.num_updates = int(state["num_updates"])
        self.decay = float(state["decay"])
        self.warmup = int(state["warmup"])

    def __repr__(self) -> str:
        return f"ExponentialMovingAverage(decay={self.decay}, warmup={self.warmup}, num_updates={self.num_updates})"


# ------------------------------------------------------------------------------------------- clipping


@torch.no_grad()
def clip_weights_(parameters: Iterable[Tensor] | Tensor, clip_value: float) -> None:
    """WGAN's weight clipping, in place: every element of every parameter to ``[-clip_value, clip_value]``
    (Arjovsky et al. 2017, Algorithm 1, ``c = 0.01``). Two multi-tensor ops per (device, dtype) group."""
    tensors = _parameter_list(parameters, "clip_weights_")
    if isinstance(clip_value, bool) or not isinstance(clip_value, (int, float)) or not 0.0 < clip_value < float("inf"):
        raise ValueError(f"clip_weights_: clip_value must be a finite float > 0, got {clip_value!r}")
    for (group,) in _grouped(tensors):
        torch._foreach_clamp_min_(group, -clip_value)
        torch._foreach_clamp_max_(group, clip_value)


# --------------------------------------------------------------------------------- historical average


class HistoricalAverage:
    """Salimans et al. 2016's historical averaging: the running mean ``(1/t) sum_{i=1..t} theta[i]`` of the
    parameter values recorded so far, and the penalty ``sum_params ||theta - mean||^2`` that pulls the
    parameters towards it (a fictitious-play flavour that damps oscillations).

    The values at construction are the first record (``t = 1``); call :meth:`update` after each optimiser step.
    :meth:`penalty` is differentiable with respect to the parameters (the mean is a constant).

    >>> history = ganops.HistoricalAverage(D.parameters())
    >>> loss_d = discriminator_loss(...) + history.penalty(weight=1e-3)
    >>> loss_d.backward(); optimizer_d.step(); history.update()
    """

    def __init__(self, parameters: Iterable[Tensor] | Tensor) -> None:
        self.parameters = _parameter_list(parameters, "HistoricalAverage")
        if not self.parameters:
            raise ValueError("HistoricalAverage: parameters must not be empty")
        self.means = [parameter.detach().clone() for parameter in self.parameters]
        self.count = 1

    @torch.no_grad()
    def update(self) -> None:
        """Add the parameters' current values to the mean: ``mean <- mean + (theta - mean) / (t + 1)``."""
        self.count += 1
        for means, parameters in _grouped(self.means, [parameter.detach() for parameter in self.parameters]):
            torch._foreach_lerp_(means, parameters, 1.0 / self.count)

    def penalty(self, weight: float = 1.0) -> Tensor:
        """``weight * sum_params ||theta - mean||_2^2`` (a 0-dim tensor in the first parameter's dtype)."""
        total = None
        for means, parameters in _grouped(self.means, self.parameters):
            norms = torch._foreach_norm(torch._foreach_sub(parameters, means))
            group_total = torch.stack(norms).square().sum()
            total = group_total if total is None else total + group_total.to(total.dtype)
        return weight * total

    def state_dict(self) -> dict:
        return {"means": [mean.clone() for mean in self.means], "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        if len(state["means"]) != len(self.means):
            raise ValueError(f"HistoricalAverage.load_state_dict: expected {len(self.means)} means, got {len(state['means'])}")
        with torch.no_grad():
            torch._foreach_copy_(self.means, [mean.to(target) for mean, target in zip(state["means"], self.means)])
        self.count = int(state["count"])


# ------------------------------------------------------------------------------------------ image pool


class ImagePool:
    """CycleGAN's history of generated images (Zhu et al. 2017, section 4, after Shrivastava et al. 2017).

    :meth:`query` takes a batch of fakes and returns a batch of the same shape for D's update: while the pool
    holds fewer than ``size`` images each fake is stored and returned; afterwards each fake is returned as is
    with probability 0.5, and otherwise a random stored image is returned in its place and the fake is stored in
    its slot. ``size=0`` disables the pool. Randomness comes from ``generator`` (a CPU ``torch.Generator``).
    """

    def __init__(self, size: int = 50, generator: torch.Generator | None = None) -> None:
        _check_count("size", size, "ImagePool")
        self.size = size
        self.generator = generator
        self.images: list[Tensor] = []

    @torch.no_grad()
    def query(self, images: Tensor) -> Tensor:
        if not isinstance(images, Tensor) or images.dim() < 1:
            raise TypeError("ImagePool.query: images must be a tensor with a batch dimension [N, ...]")
        if self.size == 0:
            return images.detach()
        returned = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                returned.append(image)
            elif torch.rand((), generator=self.generator).item() < 0.5:
                slot = int(torch.randint(len(self.images), (), generator=self.generator))
                returned.append(self.images[slot])
                self.images[slot] = image.clone()
            else:
                returned.append(image)
        return torch.stack(returned)

    def __len__(self) -> int:
        return len(self.images)


__all__ = ["ExponentialMovingAverage", "HistoricalAverage", "ImagePool", "clip_weights_"]
