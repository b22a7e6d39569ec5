"""Minibatch discrimination at the paper's sizes (B = 100 kernels of dimension C = 5) against the naive form.

``eager`` is the reference backend (blockwise, so it never holds all N x N x B x C differences at once, though
autograd keeps its blocks for the backward); ``naive`` is the formula as usually written, with the whole
``N x N x B x C`` tensor of differences; ``torch.compile`` compiles the naive form (inductor may fuse the pairwise
reduction).
"""

from __future__ import annotations

from functools import partial

import torch

import ganops
from benchmarks.harness import Case, compiled, double_backward, dtype_name, forward_backward, forward_only, ganops_implementations

OP = "minibatch_discrimination"
IN_FEATURES, NUM_KERNELS, KERNEL_DIM = 512, 100, 5
BATCH_SIZES = (64, 256)


def naive_minibatch_discrimination(features: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    n, a = features.shape
    m = (features @ T.reshape(a, -1)).reshape(n, NUM_KERNELS, KERNEL_DIM)
    scores = torch.exp(-(m[:, None] - m[None]).abs().sum(dim=-1)).sum(dim=1)
    return torch.cat([features, scores], dim=1)


def _forward_with(backend: str):
    return lambda features, T: ganops.minibatch_discrimination(features, T, backend=backend)


def cases(device: torch.device, quick: bool) -> list[Case]:
    dtypes = [torch.float32] if device.type == "cpu" or quick else [torch.float32, torch.bfloat16]
    wraps = {
        "forward": partial(forward_only, num_inputs=2),
        "forward+backward": partial(forward_backward, num_inputs=2),
        "double backward": partial(double_backward, num_inputs=2),
    }
    result = []
    for n in BATCH_SIZES:
        for dtype in dtypes:

            def setup(n=n, dtype=dtype):
                features = torch.randn(n, IN_FEATURES, device=device, dtype=dtype, requires_grad=True)
                T = (0.05 * torch.randn(IN_FEATURES, NUM_KERNELS, KERNEL_DIM, device=device)).to(dtype).requires_grad_()
                grad_out = torch.randn(n, IN_FEATURES + NUM_KERNELS, device=device, dtype=dtype, requires_grad=True)
                return features, T, grad_out, torch.randn_like(features), torch.randn_like(T)

            # Inputs read once and the output written once (plus M = f T): the op's minimum traffic.
            elements = n * IN_FEATURES + IN_FEATURES * NUM_KERNELS * KERNEL_DIM + n * (IN_FEATURES + NUM_KERNELS)
            for direction, wrap in wraps.items():
                implementations = {
                    "eager": wrap(_forward_with("reference")),
                    "naive": wrap(naive_minibatch_discrimination),
                    "torch.compile": wrap(compiled(naive_minibatch_discrimination)),
                    **{name: wrap(fn) for name, fn in ganops_implementations(_forward_with, device).items()},
                }
                result.append(
                    Case(
                        label=f"N={n} A={IN_FEATURES} B={NUM_KERNELS} C={KERNEL_DIM} {dtype_name(dtype)}",
                        direction=direction,
                        setup=setup,
                        implementations=implementations,
                        bytes_moved=elements * dtype.itemsize,
                    )
                )
    return result
