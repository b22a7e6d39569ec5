"""Minibatch standard deviation: StyleGAN2 discriminator heads and one large map."""

from __future__ import annotations

from functools import partial

import torch

import ganops
from benchmarks.harness import Case, compiled, double_backward, dtype_name, forward_backward, forward_only, ganops_implementations

OP = "minibatch_stddev"
GROUP_SIZE, NUM_CHANNELS, EPS = 4, 1, 1e-8

# StyleGAN2 D heads at 4x4 (C=512, batch 32 and 64), an 8x8 head with C=256, and a large 32x32 map.
SHAPES = [(32, 512, 4, 4), (64, 512, 4, 4), (64, 256, 8, 8), (64, 512, 32, 32)]


def _forward_with(backend: str):
    return lambda x: ganops.minibatch_stddev(x, GROUP_SIZE, NUM_CHANNELS, EPS, backend=backend)








def cases(device: torch.device, quick: bool) -> list[Case]:
    dtypes = [torch.float32] if device.type == "cpu" or quick else [torch.float32, torch.bfloat16]
    directions = {
        "forward": (partial(forward_only, num_inputs=1), lambda n, c, hw: n * (2 * c + NUM_CHANNELS) * hw),
        "forward+backward": (partial(forward_backward, num_inputs=1), lambda n, c, hw: n * (3 * c + NUM_CHANNELS) * hw),
        "double backward": (partial(double_backward, num_inputs=1), lambda n, c, hw: n * (6 * c + 2 * NUM_CHANNELS) * hw),
    }
    result = []
    for shape in SHAPES:
        n, c, h, w = shape
        for dtype in dtypes:

            def setup(shape=shape, dtype=dtype):
                n, c, h, w = shape
                x = torch.randn(shape, device=device, dtype=dtype, requires_grad=True)
                grad_out = torch.randn(n, c + NUM_CHANNELS, h, w, device=device, dtype=dtype, requires_grad=True)
                return x, grad_out, torch.randn(shape, device=device, dtype=dtype)

            for direction, (wrap, elements) in directions.items():
                implementations = {
                    "eager": wrap(_forward_with("reference")),
                    "torch.compile": wrap(compiled(_forward_with("reference"))),
                    **{name: wrap(fn) for name, fn in ganops_implementations(_forward_with, device).items()},
                }
                result.append(
                    Case(
                        label=f"N={n} C={c} {h}x{w} {dtype_name(dtype)}",
                        direction=direction,
                        setup=setup,
                        implementations=implementations,
                        bytes_moved=elements(n, c, h * w) * dtype.itemsize,
                    )
                )
    return result
