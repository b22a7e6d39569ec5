"""Spectral norm of every weight of a GAN discriminator, forward + backward of the weights.

Layer lists (weight matrices ``[out, in * k * k]``):

* BigGAN-128 D (BigGAN-PyTorch, ``D_ch=96``, arch 128): channels 3 -> 96 -> 192 -> 384 -> 768 -> 1536 -> 1536,
  one residual block per step with conv3x3 (in -> out), conv3x3 (out -> out) and a 1x1 shortcut where the
  block downsamples (every block but the last); self-attention at 64x64 on 96 channels (theta, phi 96 -> 12,
  g 96 -> 48, o 48 -> 96, all 1x1); linear 1536 -> 1; class embedding 1000 x 1536.
* SAGAN-128 D (StudioGAN's SAGAN, ``d_conv_dim=64``): channels 3 -> 64 -> 128 -> 256 -> 512 -> 1024 -> 1024,
  the same residual blocks; self-attention at 32x32 on 128 channels (theta, phi 128 -> 16, g 128 -> 64,
  o 64 -> 128); linear 1024 -> 1; class embedding 1000 x 1024.

Each implementation computes ``W / sigma`` for every layer (one training power iteration) and the gradient of
every weight for a given ``grad_W_sn``: the eager reference per layer ("eager"), torch's parametrization, its
torch.compile, ganops per layer ("ganops:<backend>") and ganops grouped ("ganops grouped:<backend>", one op per
direction for all layers). Quick mode scales the channel counts down (width / 6) so a CPU run takes ~1 minute.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.harness import Case, compiled, dtype_name, ganops_implementations
from ganops.ops.spectral_norm import fused_spectral_norm, fused_spectral_norm_group
from ganops.reference import spectral_norm as reference

OP = "spectral_norm"
EPS = 1e-12
N_CLASSES = 1000


def _resnet_discriminator(channels: list[int], attention_channels: int, qk_div: int, g_div: int) -> list[tuple[int, int]]:
    """``(rows, cols)`` of every weight matrix of a BigGAN/SAGAN-style residual discriminator."""
    shapes = []
    blocks = list(zip(channels[:-1], channels[1:]))
    for index, (cin, cout) in enumerate(blocks):
        downsample = index < len(blocks) - 1
        shapes += [(cout, cin * 9), (cout, cout * 9)]
        if downsample or cin != cout:
            shapes.append((cout, cin))
        if cout == attention_channels:
            c = attention_channels
            shapes += [(c // qk_div, c), (c // qk_div, c), (c // g_div, c), (c, c // g_div)]
    top = channels[-1]
    shapes += [(1, top), (N_CLASSES, top)]
    return shapes


def layer_shapes(model: str, width: int) -> list[tuple[int, int]]:
    if model == "BigGAN-128 D":
        multipliers = [1, 2, 4, 8, 16, 16]
        return _resnet_discriminator([3] + [width * m for m in multipliers], width, 8, 2)
    if model == "SAGAN-128 D":
        multipliers = [1, 2, 4, 8, 16, 16]
        return _resnet_discriminator([3] + [width * m for m in multipliers], 2 * width, 8, 2)
    raise ValueError(model)


def _setup(shapes, dtype, device):
    def setup():
        weights = [torch.randn(shape, device=device, dtype=dtype).requires_grad_() for shape in shapes]
        us = [torch.nn.functional.normalize(torch.randn(r, device=device, dtype=dtype), dim=0) for r, _ in shapes]
        vs = [torch.nn.functional.normalize(torch.randn(c, device=device, dtype=dtype), dim=0) for _, c in shapes]
        grads = [torch.randn(shape, device=device, dtype=dtype) for shape in shapes]
        modules = _torch_parametrized(weights, us, vs)
        return weights, us, vs, grads, modules

    return setup


def _torch_parametrized(weights, us, vs) -> list[nn.Module]:
    """Linear layers carrying each weight under torch's own spectral-norm parametrization, with our u, v."""
    modules = []
    for weight, u, v in zip(weights, us, vs):
        rows, cols = weight.shape
        module = nn.Linear(cols, rows, bias=False, device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            module.weight.copy_(weight)
        torch.nn.utils.parametrizations.spectral_norm(module, eps=EPS)
        with torch.no_grad():
            module.parametrizations.weight[0]._u.copy_(u)
            module.parametrizations.weight[0]._v.copy_(v)
        modules.append(module)
    return modules


def _per_layer(spectral_norm_fn):
    def run(weights, us, vs, grads, modules):
        outputs = [spectral_norm_fn(w, u, v) for w, u, v in zip(weights, us, vs)]
        return torch.autograd.grad(outputs, weights, grads)

    return run


def _reference_layer(w, u, v):
    return reference.spectral_norm_forward(w, u, v, 1, EPS)[0]


def _ganops_per_layer(backend: str):
    return _per_layer(lambda w, u, v: fused_spectral_norm(w, u, v, 1, EPS, backend=backend)[0])


def _ganops_grouped(backend: str):
    def run(weights, us, vs, grads, modules):
        outputs = fused_spectral_norm_group(weights, us, vs, 1, EPS, backend=backend)[0]
        return torch.autograd.grad(outputs, weights, grads)

    return run


def _torch_parametrization(weights, us, vs, grads, modules):
    originals = [m.parametrizations.weight.original for m in modules]
    return torch.autograd.grad([m.weight for m in modules], originals, grads)


def cases(device: torch.device, quick: bool) -> list[Case]:
    dtypes = [torch.float32] if device.type == "cpu" or quick else [torch.float32, torch.bfloat16]
    widths = {"BigGAN-128 D": 96, "SAGAN-128 D": 64}
    result = []
    for model, width in widths.items():
        width = width // 6 if quick else width
        shapes = layer_shapes(model, width)
        parameters = sum(r * c for r, c in shapes)
        for dtype in dtypes:
            implementations = {
                "eager": _per_layer(_reference_layer),
                "torch.compile": compiled(_per_layer(_reference_layer)),
                "torch parametrization": _torch_parametrization,
                **ganops_implementations(_ganops_per_layer, device),
                **{
                    name.replace("ganops:", "ganops grouped:"): fn
                    for name, fn in ganops_implementations(_ganops_grouped, device).items()
                },
            }
            result.append(
                Case(
                    label=f"{model} width={width} layers={len(shapes)} params={parameters / 1e6:.2f}M {dtype_name(dtype)}",
                    direction="forward+backward",
                    setup=_setup(shapes, dtype, device),
                    implementations=implementations,
                    # An ideal fused step reads W twice (W v, W^T u) and writes W_sn, then reads G and W and
                    # writes grad_W.
                    bytes_moved=6 * parameters * dtype.itemsize,
                )
            )
    return result
