"""Attention: the SAGAN / BigGAN self-attention shapes, forward, forward+backward and the double backward of a
WGAN-GP / R1 discriminator step.

Shapes are ``(label, B, Nq, Nk, Dqk, Dv)`` for a feature map of ``C`` channels at ``H x W``: ``Nq = H*W``, queries
and keys of width ``C/8``, values of width ``C/2`` (BigGAN); "pooled" keys and values are 2x2 max-pooled
(``Nk = Nq/4``), "unpooled" keep every position. Baselines: the eager reference (materialises ``S``), its
``torch.compile``, and SDPA, called as is and with q and k zero-padded to the value width (the padding leaves
the logits unchanged and lets the flash / memory-efficient backends take unequal head dims). SDPA's fused
backends have no double backward; their failure there is a result, not a bug.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F

from benchmarks.harness import (
    Case,
    compiled,
    double_backward,
    dtype_name,
    forward_backward,
    forward_only,
    ganops_implementations,
    tf32_matmuls,
)
from ganops.ops.attention import attention

OP = "attention"
SCALE = 1.0  # SAGAN and BigGAN do not scale their logits

BIGGAN_128_D = ("BigGAN-128 D 64x64 pooled", 64, 4096, 1024, 12, 48)
GPU_SHAPES = [
    BIGGAN_128_D,
    ("BigGAN-128 D 64x64 pooled", 256, 4096, 1024, 12, 48),
    ("C=256 32x32 pooled", 64, 1024, 256, 32, 128),
    ("C=256 32x32 unpooled", 64, 1024, 1024, 32, 128),
    ("C=512 32x32 pooled", 64, 1024, 256, 64, 256),
    ("C=512 32x32 unpooled", 64, 1024, 1024, 64, 256),
    ("C=256 64x64 pooled", 64, 4096, 1024, 32, 128),
    ("C=256 64x64 unpooled", 64, 4096, 4096, 32, 128),
    ("C=512 64x64 pooled", 64, 4096, 1024, 64, 256),
    ("C=512 64x64 unpooled", 64, 4096, 4096, 64, 256),
]
GPU_QUICK_SHAPES = [BIGGAN_128_D, ("C=256 32x32 unpooled", 64, 1024, 1024, 32, 128)]
CPU_SHAPES = [
    ("BigGAN-128 D 64x64 pooled", 2, 4096, 1024, 12, 48),
    ("C=256 32x32 pooled", 2, 1024, 256, 32, 128),
    ("C=256 32x32 unpooled", 2, 1024, 1024, 32, 128),
]
CPU_QUICK_SHAPES = [("BigGAN-like 16x16 pooled", 2, 256, 64, 12, 48), ("C=128 16x16 unpooled", 2, 256, 256, 16, 64)]


def _with_backend(backend: str):
    return lambda q, k, v: attention(q, k, v, SCALE, backend=backend)


def _under_tf32(run):
    """``run`` with torch's float32 matmuls on TF32, the setting the ganops calls follow by default."""

    def wrapped(*arguments):
        with tf32_matmuls(True):
            return run(*arguments)

    return wrapped


def _sdpa(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, scale=SCALE)


def _sdpa_padded(q, k, v):
    """q and k zero-padded to the value width (a multiple of 8): same logits, equal head dims for flash."""
    width = max(q.shape[-1], v.shape[-1])
    width += -width % 8
    q, k = (F.pad(t, (0, width - t.shape[-1])) for t in (q, k))
    v_padded = F.pad(v, (0, width - v.shape[-1]))
    return F.scaled_dot_product_attention(q, k, v_padded, scale=SCALE)[..., : v.shape[-1]]


# Useful matmul FLOPs per (batch, query, key) pair, as multiples of (Dqk, Dv): forward S and P v; backward
# dV, dP, dQ, dK; double backward R (2 dots), W, T v, P Uv, dS Uk, dS2 k, dS^T Uq, dS2^T q, T^T dO.
# Recomputation of S and dP is not counted (FlashAttention's convention for "useful").
_FLOPS_PER_PAIR = {
    "forward": (2, 2),
    "forward+backward": (6, 6),
    "double backward": (18, 14),
}


def _bytes_moved(direction: str, batch: int, n_q: int, n_k: int, d_qk: int, d_v: int, itemsize: int) -> int:
    """Inputs read and outputs written once, nothing else."""
    q, k, v, o = n_q * d_qk, n_k * d_qk, n_k * d_v, n_q * d_v
    elements = {
        "forward": q + k + v + o,
        "forward+backward": 2 * (q + k + v) + 2 * o,
        "double backward": 2 * (q + k + v) + 2 * o + 2 * (q + k + v) + o,
    }[direction]
    return batch * elements * itemsize


def cases(device: torch.device, quick: bool) -> list[Case]:
    # (dtype, TF32): fp32 runs exact and, on a GPU, once more with every implementation under torch's TF32 setting.
    if device.type == "cuda":
        shapes = GPU_QUICK_SHAPES if quick else GPU_SHAPES
        dtypes = [(torch.bfloat16, False), (torch.float32, False), (torch.float32, True)]
    else:
        shapes = CPU_QUICK_SHAPES if quick else CPU_SHAPES
        dtypes = [(torch.float32, False)]
    directions = {"forward": partial(forward_only, num_inputs=3), "forward+backward": partial(forward_backward, num_inputs=3), "double backward": partial(double_backward, num_inputs=3)}
    result = []
    for name, batch, n_q, n_k, d_qk, d_v in shapes:
        for dtype, tf32 in dtypes:

            def setup(batch=batch, n_q=n_q, n_k=n_k, d_qk=d_qk, d_v=d_v, dtype=dtype):
                def make(*shape, requires_grad=True):
                    return torch.randn(shape, device=device, dtype=dtype, requires_grad=requires_grad)

                q, k, v = make(batch, n_q, d_qk), make(batch, n_k, d_qk), make(batch, n_k, d_v)
                grad_out = make(batch, n_q, d_v)
                cotangents = [make(*t.shape, requires_grad=False) for t in (q, k, v)]
                return q, k, v, grad_out, *cotangents

            for direction, plain_wrap in directions.items():
                def wrap(fn, plain_wrap=plain_wrap, tf32=tf32):
                    return _under_tf32(plain_wrap(fn)) if tf32 else plain_wrap(fn)

                implementations = {
                    "eager": wrap(_with_backend("reference")),
                    "torch.compile": wrap(compiled(_with_backend("reference"))),
                    **{label: wrap(fn) for label, fn in ganops_implementations(_with_backend, device).items()},
                    "torch sdpa": wrap(_sdpa),
                    "torch sdpa (q, k padded to Dv)": wrap(_sdpa_padded),
                }
                per_qk, per_v = _FLOPS_PER_PAIR[direction]
                result.append(
                    Case(
                        label=f"{name} B={batch} Nq={n_q} Nk={n_k} Dqk={d_qk} Dv={d_v} {dtype_name(dtype)}"
                        + ("+tf32" if tf32 else ""),
                        direction=direction,
                        setup=setup,
                        implementations=implementations,
                        bytes_moved=_bytes_moved(direction, batch, n_q, n_k, d_qk, d_v, dtype.itemsize),
                        flops=batch * n_q * n_k * (per_qk * d_qk + per_v * d_v),
                    )
                )
    return result
