"""``ganops.convert``: swap ganops's ops into a model built by another codebase, keeping its numbers and state.

* Spectral norm: torch's parametrization, torch's old hook API (``torch.nn.utils.spectral_norm``, used by
  StudioGAN) and BigGAN-PyTorch's ``SN`` layers become :func:`ganops.spectral_norm`, keeping parameters (the
  same ``Parameter`` objects, so optimizers keep working), buffers and eval outputs; ``revert=True`` gives
  torch's parametrization back.
* Attention: a codebase's attention layers become :class:`ganops.nn.SelfAttention2d` with the same weights
  (:func:`replace_attention_layers`, :func:`convert_state_dict`).

Update order: torch's parametrization (and ganops) update ``u`` first, then ``v``; torch's old hook API and
BigGAN-PyTorch update ``v`` from ``u`` first, then ``u``. Both converge to the same singular pair and eval
outputs are identical after conversion, but training steps after :func:`convert` of a hook-API or BigGAN
model follow the parametrization's order, so ``sigma`` differs from the original code's by the difference
of one half-iteration of the power method.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm as _TorchSpectralNorm
from torch.nn.utils.spectral_norm import SpectralNorm as _TorchSpectralNormHook

from ganops import _backend
from ganops.nn.attention import SelfAttention2d
from ganops.nn.spectral_norm import SpectralNorm

_PLAIN_LAYERS = (
    nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.Embedding
)


# ---------------------------------------------------------------- spectral norm


def _replace_torch_parametrization(module: nn.Module, name: str, backend: str | None) -> None:
    plist = module.parametrizations[name]
    for index, existing in enumerate(plist):
        if not isinstance(existing, _TorchSpectralNorm):
            continue
        if hasattr(existing, "_u"):
            replacement = SpectralNorm(
                plist.original, existing.n_power_iterations, existing.dim, existing.eps,
                backend=backend, vectors=(existing._u, existing._v),
            )
        else:
            # A 1-D weight: plain normalisation, no vectors.
            replacement = SpectralNorm(plist.original, 1, existing.dim, existing.eps, backend=backend)
        replacement.train(existing.training)
        plist[index] = replacement


def _register_keeping_vectors(module: nn.Module, name: str, sn: SpectralNorm) -> None:
    """register_parametrization evaluates the parametrization once, in the module's mode: in eval mode that
    leaves the converted vectors as they are."""
    training = module.training
    module.train(False)
    parametrize.register_parametrization(module, name, sn)
    module.train(training)


def _replace_hook(module: nn.Module, hook_id: int, hook: _TorchSpectralNormHook, backend: str | None) -> None:
    name = hook.name
    original = getattr(module, name + "_orig")
    u, v = getattr(module, name + "_u"), getattr(module, name + "_v")
    del module._forward_pre_hooks[hook_id]
    # The hook API also keeps state_dict hooks that rename keys; they go with it (as in its own remover).
    for hooks in (module._state_dict_hooks, module._load_state_dict_pre_hooks):
        for key, state_hook in list(hooks.items()):
            unwrapped = getattr(state_hook, "hook", state_hook)
            if isinstance(getattr(unwrapped, "fn", None), _TorchSpectralNormHook) and unwrapped.fn.name == name:
                del hooks[key]
    for suffix in ("", "_orig", "_u", "_v"):
        delattr(module, name + suffix)
    module.register_parameter(name, original)
    sn = SpectralNorm(original, hook.n_power_iterations, hook.dim, hook.eps, backend=backend, vectors=(u, v))
    _register_keeping_vectors(module, name, sn)


def _is_biggan_sn(module: nn.Module) -> bool:
    return all(hasattr(module, attr) for attr in ("num_svs", "num_itrs", "u0", "sv0", "W_"))


def _replace_biggan(module: nn.Module, backend: str | None) -> None:
    if getattr(module, "transpose", False):
        raise ValueError(f"convert: BigGAN-PyTorch SN layers with transpose=True are not supported ({type(module).__name__})")
    base = next((cls for cls in type(module).__mro__ if cls in _PLAIN_LAYERS), None)
    if base is None:
        raise ValueError(f"convert: BigGAN-PyTorch SN layer {type(module).__name__} is not a Linear, Conv or Embedding")
    weight = module.weight
    eps = module.eps
    # BigGAN keeps only u; its eval output is one power iteration from it (v first, then u): computing that
    # iteration here gives the (u, v) whose u^T W v is exactly BigGAN's eval sigma.
    with torch.no_grad():
        weight_mat = weight.view(weight.shape[0], -1)
        v = F.normalize(torch.mm(module.u0, weight_mat), eps=eps)
        u = F.normalize(torch.mm(v, weight_mat.t()), eps=eps)
    iterations = module.num_itrs
    for index in range(module.num_svs):
        delattr(module, f"u{index}")
        delattr(module, f"sv{index}")
    for attr in ("num_svs", "num_itrs", "num_outputs", "transpose", "eps"):
        if attr in module.__dict__:
            delattr(module, attr)
    module.__class__ = base
    sn = SpectralNorm(weight, iterations, 0, eps, backend=backend, vectors=(u[0].clone(), v[0].clone()))
    _register_keeping_vectors(module, "weight", sn)


def _revert(module: nn.Module, name: str) -> None:
    plist = module.parametrizations[name]
    for index, existing in enumerate(plist):
        if isinstance(existing, SpectralNorm):
            torch_sn = _TorchSpectralNorm.__new__(_TorchSpectralNorm)
            nn.Module.__init__(torch_sn)
            torch_sn.dim, torch_sn.eps = existing.dim, existing.eps
            if hasattr(existing, "_u"):
                torch_sn.n_power_iterations = existing.n_power_iterations
                torch_sn.register_buffer("_u", existing._u)
                torch_sn.register_buffer("_v", existing._v)
            torch_sn.train(existing.training)
            plist[index] = torch_sn


def convert_spectral_norms(model: nn.Module, revert: bool = False, *, backend: str | None = None) -> nn.Module:
    """Swap the spectral norms of ``model`` (in place) for ganops's, or back with ``revert=True``.

    Converted: torch's parametrization (state_dict keys unchanged), torch's old hook API
    ``torch.nn.utils.spectral_norm`` (keys ``weight_orig/_u/_v`` become torch's parametrization keys; its
    ``eps``, ``dim`` and iterations are kept) and BigGAN-PyTorch's ``SN`` layers (``SNConv2d``, ``SNLinear``,
    ``SNEmbedding``: buffers ``u0``/``sv0`` dropped, the module becomes its torch base class). Parameters
    stay the same objects. ``revert=True`` turns every ganops spectral norm into torch's parametrization.
    See the module docstring for the difference in update order.
    """
    if backend is not None:
        _backend.requested_backend(backend)
    for module in list(model.modules()):
        if revert:
            for name in list(getattr(module, "parametrizations", {}).keys()):
                _revert(module, name)
            continue
        for name in list(getattr(module, "parametrizations", {}).keys()):
            _replace_torch_parametrization(module, name, backend)
        for hook_id, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, _TorchSpectralNormHook):
                _replace_hook(module, hook_id, hook, backend)
        if _is_biggan_sn(module):
            _replace_biggan(module, backend)
    return model


# ---------------------------------------------------------------- attention


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


# ---------------------------------------------------------------- everything


def convert(
    model: nn.Module,
    revert: bool = False,
    *,
    attention_layers: Mapping[type, str] | None = None,
    backend: str | None = None,
) -> nn.Module:
    """Swap ganops's ops into ``model`` in place and return it.

    * Spectral norm: torch's parametrization, torch's old hook API (``torch.nn.utils.spectral_norm``, as in
      StudioGAN) and BigGAN-PyTorch's ``SN`` layers become :func:`ganops.spectral_norm` (see the
      module docstring for the update-order note). ``revert=True`` turns ganops's spectral norms
      back into torch's parametrization.
    * Attention: ``attention_layers`` maps a codebase's attention class to the name of its parameter layout
      (``{Attention: "biggan_pytorch"}``, ``{Self_Attn: "studiogan"}``, ``"sagan_pytorch"``); each instance
      becomes a :class:`ganops.nn.SelfAttention2d` with the same weights (see
      :func:`replace_attention_layers`).

    Outputs stay equal to float tolerance and the converted model's state_dict loads into its torch form.
    """
    if attention_layers is not None and not isinstance(attention_layers, Mapping):
        raise TypeError(f"convert: attention_layers must be a mapping {{layer class: source}}, got {attention_layers!r}")
    if not revert:
        for layer_type, source in (attention_layers or {}).items():
            replace_attention_layers(model, layer_type, source, backend=backend)
    return convert_spectral_norms(model, revert=revert, backend=backend)
