"""The SAGAN / BigGAN self-attention block around :func:`ganops.ops.attention.attention`.

Parameter names (the same in both variants, so one state-dict layout serves both):

=========  =============================  ======================  =============================
name       role                           ``variant="biggan"``    ``variant="sagan"``
=========  =============================  ======================  =============================
theta      1x1 conv, queries              C -> C/8, no bias       C -> C/8, bias
phi        1x1 conv, keys                 C -> C/8, no bias,      C -> C/8, bias
                                          2x2 max-pooled
g          1x1 conv, values               C -> C/2, no bias,      C -> C, bias
                                          2x2 max-pooled
o          1x1 conv, output               C/2 -> C, no bias       (absent)
gamma      scalar, ``gamma * o + x``      starts at 0             starts at 0
=========  =============================  ======================  =============================

Where the names come from, for loading weights (see :func:`ganops.conversion.convert_state_dict`):

* BigGAN-PyTorch ``layers.Attention``: ``theta, phi, g, o, gamma`` exactly (its ``SNConv2d`` stores
  ``weight, u0, sv0``).
* PyTorch-StudioGAN ``ops.SelfAttention``: ``conv1x1_theta, conv1x1_phi, conv1x1_g, conv1x1_attn`` -> ``theta,
  phi, g, o`` and ``sigma`` -> ``gamma`` (``torch.nn.utils.spectral_norm`` state: ``weight_orig, weight_u,
  weight_v``).
* SAGAN-pytorch (heykeetae) ``Self_Attn``: ``query_conv, key_conv, value_conv, gamma`` -> ``theta, phi, g,
  gamma`` (plain convs with bias: use ``spectral_norm=False``). In the SAGAN paper's notation
  ``s_ij = f(x_i)^T g(x_j)`` attends from position ``j``: the paper's ``g`` is ``theta`` here and its ``f`` is
  ``phi``, its ``h`` is ``g``.

With ``spectral_norm=True`` each conv carries :func:`ganops.spectral_norm`, a drop-in for
``torch.nn.utils.parametrizations.spectral_norm`` (one power iteration per training step), so its weight lives at ``<name>.parametrizations.weight.original`` with the
power-iteration vectors at ``<name>.parametrizations.weight.0._u`` / ``._v``.

The three input projections run as one 1x1 convolution over the concatenated (spectrally normalised)
weights, so ``x`` is read once; ``phi`` and ``g`` are pooled in one call.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganops.ops.attention import attention
from ganops.nn.spectral_norm import spectral_norm as ganops_spectral_norm

VARIANTS = ("biggan", "sagan")


def self_attention_2d(
    x: Tensor,
    theta_weight: Tensor,
    phi_weight: Tensor,
    g_weight: Tensor,
    gamma: Tensor,
    o_weight: Tensor | None = None,
    *,
    theta_bias: Tensor | None = None,
    phi_bias: Tensor | None = None,
    g_bias: Tensor | None = None,
    o_bias: Tensor | None = None,
    pool: bool = True,
    backend: str | None = None,
    return_attention_map: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """``gamma * o(attention(theta(x), pool(phi(x)), pool(g(x)))) + x`` with logit scale 1, for ``x [B, C, H, W]``.

    The weights are 1x1 conv weights ``[out, in, 1, 1]``; ``o_weight=None`` leaves out the output conv (SAGAN,
    where ``g`` maps to ``C``). ``pool``: 2x2 max-pooling of keys and values (BigGAN).
    ``return_attention_map=True`` also returns the softmax weights ``[B, H*W, Nk]`` (query position, key
    position), as SAGAN-PyTorch's ``Self_Attn`` does: the fused op never holds that matrix, so this computes it
    separately from the same queries and keys, at O(N^2) memory, differentiably.
    """
    if x.dim() != 4:
        raise ValueError(f"self_attention_2d: x must have 4 dimensions [B, C, H, W], got shape {tuple(x.shape)}")
    if pool and min(x.shape[2], x.shape[3]) < 2:
        raise ValueError(f"self_attention_2d: pooled keys need H, W >= 2, got shape {tuple(x.shape)}")
    widths = [theta_weight.shape[0], phi_weight.shape[0], g_weight.shape[0]]
    biases = (theta_bias, phi_bias, g_bias)
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat([b if b is not None else x.new_zeros(w) for b, w in zip(biases, widths)])
    projected = F.conv2d(x, torch.cat([theta_weight, phi_weight, g_weight]), bias)
    queries, keys_values = projected.split([widths[0], widths[1] + widths[2]], dim=1)
    if pool:
        keys_values = F.max_pool2d(keys_values, 2)
    keys, values = keys_values.split(widths[1:], dim=1)
    batch, _, height, width = x.shape
    queries, keys = queries.flatten(2).transpose(1, 2), keys.flatten(2).transpose(1, 2)
    attended = attention(
        queries,
        keys,
        values.flatten(2).transpose(1, 2),
        scale=1.0,
        backend=backend,
    )
    out = attended.transpose(1, 2).reshape(batch, widths[2], height, width)
    if o_weight is not None:
        out = F.conv2d(out, o_weight, o_bias)
    if return_attention_map:
        return gamma * out + x, torch.softmax(queries @ keys.transpose(1, 2), dim=-1)
    return gamma * out + x


class SelfAttention2d(nn.Module):
    """Self-attention over the ``H*W`` positions of a ``[B, C, H, W]`` feature map (SAGAN, BigGAN).

    Args:
        channels: ``C``; at least 8 (the query/key width is ``C // 8``, rounded down as in BigGAN).
        variant: ``"biggan"`` (pooled keys/values of width ``C/2`` and an output conv) or ``"sagan"``
            (unpooled, values of width ``C``, convs with bias, no output conv). See the module docstring.
        spectral_norm: wrap each conv in :func:`ganops.spectral_norm` (torch's parametrization semantics and
            state_dict layout, fused power iteration).
        backend: passed to :func:`ganops.ops.attention.attention` and :func:`ganops.spectral_norm`.
    """

    def __init__(self, channels: int, variant: str = "biggan", spectral_norm: bool = True, backend: str | None = None):
        super().__init__()
        if isinstance(channels, bool) or not isinstance(channels, int) or channels < 8:
            raise ValueError(f"SelfAttention2d: channels must be an int >= 8, got {channels!r}")
        if variant not in VARIANTS:
            raise ValueError(f"SelfAttention2d: variant must be one of {VARIANTS}, got {variant!r}")
        self.channels = channels
        self.variant = variant
        self.backend = backend
        biggan = variant == "biggan"
        value_width = channels // 2 if biggan else channels

        def conv(inputs: int, outputs: int) -> nn.Conv2d:
            layer = nn.Conv2d(inputs, outputs, kernel_size=1, bias=not biggan)
            return ganops_spectral_norm(layer, backend=backend) if spectral_norm else layer

        self.theta = conv(channels, channels // 8)
        self.phi = conv(channels, channels // 8)
        self.g = conv(channels, value_width)
        self.o = conv(value_width, channels) if biggan else None
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: Tensor) -> Tensor:
        o = self.o
        return self_attention_2d(
            x, self.theta.weight, self.phi.weight, self.g.weight, self.gamma,
            o.weight if o is not None else None,
            theta_bias=self.theta.bias, phi_bias=self.phi.bias, g_bias=self.g.bias,
            pool=self.variant == "biggan", backend=self.backend,
        )

    def extra_repr(self) -> str:
        return f"channels={self.channels}, variant={self.variant!r}"
