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

Where the names come from, for loading weights (see :func:`convert_state_dict`):

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
from ganops.spectral_norm import spectral_norm as ganops_spectral_norm

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
) -> Tensor:
    """``gamma * o(attention(theta(x), pool(phi(x)), pool(g(x)))) + x`` with logit scale 1, for ``x [B, C, H, W]``.

    The weights are 1x1 conv weights ``[out, in, 1, 1]``; ``o_weight=None`` leaves out the output conv (SAGAN,
    where ``g`` maps to ``C``). ``pool``: 2x2 max-pooling of keys and values (BigGAN).
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
    attended = attention(
        queries.flatten(2).transpose(1, 2),
        keys.flatten(2).transpose(1, 2),
        values.flatten(2).transpose(1, 2),
        scale=1.0,
        backend=backend,
    )
    out = attended.transpose(1, 2).reshape(batch, widths[2], height, width)
    if o_weight is not None:
        out = F.conv2d(out, o_weight, o_bias)
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


_SOURCE_NAMES = {
    "biggan_pytorch": {"theta": "theta", "phi": "phi", "g": "g", "o": "o", "gamma": "gamma"},
    "studiogan": {"conv1x1_theta": "theta", "conv1x1_phi": "phi", "conv1x1_g": "g", "conv1x1_attn": "o", "sigma": "gamma"},
    "sagan_pytorch": {"query_conv": "theta", "key_conv": "phi", "value_conv": "g", "gamma": "gamma"},
}


def _biggan_power_iteration(weight: Tensor, u0: Tensor) -> tuple[Tensor, Tensor]:
    """BigGAN-PyTorch's one power-iteration step from ``u0``: its eval-mode ``sigma`` is ``u . W v`` of these."""
    matrix = weight.flatten(1)
    v = F.normalize(matrix.t() @ u0, dim=0, eps=1e-12)
    return F.normalize(matrix @ v, dim=0, eps=1e-12), v


def convert_state_dict(state_dict: dict[str, Tensor], source: str, spectral_norm: bool = True) -> dict[str, Tensor]:
    """A state dict of one attention layer of ``source`` (keys relative to that layer) for :class:`SelfAttention2d`.

    ``source``: ``"biggan_pytorch"``, ``"studiogan"`` or ``"sagan_pytorch"`` (see the module docstring).
    ``spectral_norm`` says whether the target module has it. Spectrally normalised sources keep their state:
    ``weight_orig/weight_u/weight_v`` map one to one; from BigGAN-PyTorch's ``u0``, ``_v = normalize(W^T u0)``
    and ``_u = normalize(W _v)`` (its own power-iteration step), so the eval-mode outputs agree; its ``sv0``
    is only a log of past values and is not needed.
    """
    if source not in _SOURCE_NAMES:
        raise ValueError(f"convert_state_dict: source must be one of {tuple(_SOURCE_NAMES)}, got {source!r}")
    names = _SOURCE_NAMES[source]
    converted: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        layer, _, field = key.partition(".")
        if layer not in names:
            raise KeyError(f"convert_state_dict: unexpected key {key!r} for source {source!r}")
        target = names[layer]
        if target == "gamma":
            converted["gamma"] = value.reshape(())
            continue
        if field in ("sv0", "weight_v"):
            continue  # recomputed below (sv0) or carried with its weight (weight_v)
        weight = state_dict.get(f"{layer}.weight_orig", state_dict.get(f"{layer}.weight"))
        if field == "bias":
            converted[f"{target}.bias"] = value
        elif field in ("weight", "weight_orig"):
            converted[f"{target}.parametrizations.weight.original" if spectral_norm else f"{target}.weight"] = value
        elif field in ("u0", "weight_u") and spectral_norm:
            if field == "weight_u":
                u, v = value, state_dict[f"{layer}.weight_v"]
            else:
                u, v = _biggan_power_iteration(weight, value.reshape(-1))
            converted[f"{target}.parametrizations.weight.0._u"] = u
            converted[f"{target}.parametrizations.weight.0._v"] = v
        elif field in ("u0", "weight_u"):
            raise ValueError(
                f"convert_state_dict: {key!r} belongs to a spectrally normalised layer; convert with spectral_norm=True"
            )
        else:
            raise KeyError(f"convert_state_dict: unexpected key {key!r} for source {source!r}")
    return converted


def replace_attention_layers(model: nn.Module, layer_type: type, source: str, backend: str | None = None) -> int:
    """Replace, in place, every submodule of ``model`` of type ``layer_type`` by an equivalent :class:`SelfAttention2d`.

    ``source`` names the parameter layout of ``layer_type`` (see :func:`convert_state_dict`): ``"sagan_pytorch"``
    layers become ``variant="sagan"``, the others ``"biggan"``. Spectral norm is kept where the source has it
    (``weight_orig``/``u0`` keys), as ganops's; weights, power-iteration state, dtype, device and train/eval
    mode carry over, so outputs are unchanged. Returns the number of layers replaced.
    """
    if not isinstance(layer_type, type) or not issubclass(layer_type, nn.Module):
        raise TypeError(f"replace_attention_layers: layer_type must be an nn.Module subclass, got {layer_type!r}")
    if source not in _SOURCE_NAMES:
        raise ValueError(f"replace_attention_layers: source must be one of {tuple(_SOURCE_NAMES)}, got {source!r}")
    targets = [
        (parent, child_name, child)
        for parent in model.modules()
        for child_name, child in parent.named_children()
        if isinstance(child, layer_type)
    ]
    for parent, child_name, layer in targets:
        state = layer.state_dict()
        spectral = any(key.endswith((".weight_orig", ".u0")) for key in state)
        converted = convert_state_dict(state, source, spectral_norm=spectral)
        theta = converted.get("theta.parametrizations.weight.original", converted.get("theta.weight"))
        if theta is None:
            raise KeyError(f"replace_attention_layers: no theta/query weight found in {type(layer).__name__}'s state")
        variant = "sagan" if source == "sagan_pytorch" else "biggan"
        replacement = SelfAttention2d(theta.shape[1], variant, spectral_norm=spectral, backend=backend)
        replacement.to(device=theta.device, dtype=theta.dtype)
        replacement.load_state_dict(converted)
        replacement.train(layer.training)
        setattr(parent, child_name, replacement)
    return len(targets)
