"""``ganops.convert``: swap ganops's ops into a model built by another codebase, keeping its numbers and state."""

from __future__ import annotations

from collections.abc import Mapping

from torch import nn

from ganops import spectral_norm as _spectral_norm
from ganops.attention_block import replace_attention_layers


def convert(
    model: nn.Module,
    revert: bool = False,
    *,
    attention_layers: Mapping[type, str] | None = None,
    backend: str | None = None,
) -> nn.Module:
    """Swap ganops's ops into ``model`` in place and return it.

    * Spectral norm: torch's parametrization, torch's old hook API (``torch.nn.utils.spectral_norm``, as in
      StudioGAN) and BigGAN-PyTorch's ``SN`` layers become :func:`ganops.spectral_norm` (see
      :func:`ganops.spectral_norm.convert` for the update-order note). ``revert=True`` turns ganops's spectral norms
      back into torch's parametrization.
    * Attention: ``attention_layers`` maps a codebase's attention class to the name of its parameter layout
      (``{Attention: "biggan_pytorch"}``, ``{Self_Attn: "studiogan"}``, ``"sagan_pytorch"``); each instance
      becomes a :class:`ganops.nn.SelfAttention2d` with the same weights (see
      :func:`ganops.attention_block.replace_attention_layers`).

    Outputs stay equal to float tolerance and the converted model's state_dict loads into its torch form.
    """
    if attention_layers is not None and not isinstance(attention_layers, Mapping):
        raise TypeError(f"convert: attention_layers must be a mapping {{layer class: source}}, got {attention_layers!r}")
    if not revert:
        for layer_type, source in (attention_layers or {}).items():
            replace_attention_layers(model, layer_type, source, backend=backend)
    return _spectral_norm.convert(model, revert=revert, backend=backend)
