"""Gradient penalty: the fused norm+penalty op alone (memory roofline) and whole WGAN-GP discriminator steps.

* "penalty op": ``gradient_norm_penalty`` on an input gradient of D-input shape, forward, forward+backward
  (the backward feeds D's double backward in a real step) and double backward. ``bytes_moved`` is what an ideal
  fused kernel must touch: forward reads ``g`` once; forward+backward reads it twice and writes ``grad_g``;
  the double backward adds a read of ``g`` and ``gg`` and a write of its output.
* "WGAN-GP D step": critic loss + ``gradient_penalty(kind="wgan-gp")`` and the backward to D's parameters, for a
  DCGAN-64 critic (no batch norm, as WGAN-GP requires) and a SAGAN-64-like residual critic without attention;
  eager = the reference backend of the interpolation and the penalty (D's own ops are identical everywhere).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from benchmarks.harness import (
    Case,
    compiled,
    double_backward,
    dtype_name,
    forward_backward,
    forward_only,
    ganops_implementations,
)
from ganops.ops.gradient_penalty import gradient_norm_penalty
from ganops.ops.gradient_penalty import gradient_penalty

OP = "gradient_penalty"
CENTER = 1.0


def _penalty_with(backend: str):
    return lambda g: gradient_norm_penalty(g, CENTER, backend=backend)








def _penalty_cases(device: torch.device, quick: bool) -> list[Case]:
    if device.type == "cpu":
        shapes = [(16, 3, 32, 32)] if quick else [(64, 3, 64, 64), (16, 3, 128, 128)]
    else:
        shapes = [(64, 3, 64, 64)] if quick else [(64, 3, 64, 64), (256, 3, 64, 64), (64, 3, 128, 128), (64, 3, 256, 256)]
    dtypes = [torch.float32] if device.type == "cpu" or quick else [torch.float32, torch.bfloat16]
    directions = {
        "forward": (partial(forward_only, num_inputs=1), 1),
        "forward+backward": (partial(forward_backward, num_inputs=1), 3),
        "double backward": (partial(double_backward, num_inputs=1), 6),
    }
    result = []
    for shape in shapes:
        for dtype in dtypes:

            def setup(shape=shape, dtype=dtype):
                # Per-sample norms near 1, as a trained WGAN-GP critic has them.
                scale = (shape[1] * shape[2] * shape[3]) ** -0.5
                g = (torch.randn(shape, device=device) * scale).to(dtype).requires_grad_()
                grad_out = torch.ones((), device=device, dtype=dtype, requires_grad=True)
                return g, grad_out, torch.randn(shape, device=device, dtype=dtype)

            for direction, (wrap, passes) in directions.items():
                implementations = {
                    "eager": wrap(_penalty_with("reference")),
                    **{name: wrap(fn) for name, fn in ganops_implementations(_penalty_with, device).items()},
                }
                if direction == "forward":
                    implementations["torch.compile"] = wrap(compiled(_penalty_with("reference")))
                n, c, h, w = shape
                result.append(
                    Case(
                        label=f"penalty op N={n} {c}x{h}x{w} {dtype_name(dtype)}",
                        direction=direction,
                        setup=setup,
                        implementations=implementations,
                        bytes_moved=passes * n * c * h * w * dtype.itemsize,
                    )
                )
    return result


def dcgan64_critic(width: int) -> nn.Module:
    """DCGAN's 64x64 discriminator (Radford et al.) without batch norm: 4x4 stride-2 convs, LeakyReLU(0.2)."""
    layers, channels = [], 3
    for multiple in (1, 2, 4, 8):
        layers += [nn.Conv2d(channels, width * multiple, 4, 2, 1), nn.LeakyReLU(0.2)]
        channels = width * multiple
    return nn.Sequential(*layers, nn.Conv2d(channels, 1, 4, 1, 0), nn.Flatten())


class _DownBlock(nn.Module):
    """SAGAN/BigGAN discriminator residual block: ReLU-conv3x3-ReLU-conv3x3-avgpool, 1x1 conv shortcut."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x):
        h = self.conv2(torch.relu(self.conv1(torch.relu(x))))
        return nn.functional.avg_pool2d(h, 2) + nn.functional.avg_pool2d(self.shortcut(x), 2)


def sagan64_critic(width: int) -> nn.Module:
    """SAGAN-64-like residual critic (64 -> 4), no attention and no spectral norm (those are other ops)."""
    channels = [3, width, 2 * width, 4 * width, 8 * width]
    blocks = [_DownBlock(a, b) for a, b in zip(channels[:-1], channels[1:])]
    return nn.Sequential(*blocks, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels[-1], 1))


def _critic_step(discriminator: nn.Module, backend: str):
    def run(real, fake):
        loss = discriminator(fake).mean() - discriminator(real).mean()
        loss = loss + gradient_penalty(discriminator, real, fake, "wgan-gp", backend=backend)
        return torch.autograd.grad(loss, list(discriminator.parameters()))

    return run


def _step_cases(device: torch.device, quick: bool) -> list[Case]:
    batch, width = (4, 16) if device.type == "cpu" and quick else (16, 32) if device.type == "cpu" else (64, 64)
    result = []
    for name, build in (("DCGAN-64", dcgan64_critic), ("SAGAN-64 (no attention)", sagan64_critic)):
        torch.manual_seed(0)
        discriminator = build(width).to(device)

        def setup():
            return torch.randn(batch, 3, 64, 64, device=device), torch.randn(batch, 3, 64, 64, device=device)

        implementations = {
            "eager": _critic_step(discriminator, "reference"),
            **ganops_implementations(lambda backend, d=discriminator: _critic_step(d, backend), device),
        }
        result.append(
            Case(
                label=f"WGAN-GP D step {name} N={batch} width={width} float32",
                direction="forward+double backward",
                setup=setup,
                implementations=implementations,
            )
        )
    return result


def cases(device: torch.device, quick: bool) -> list[Case]:
    return _penalty_cases(device, quick) + _step_cases(device, quick)
