"""ProGAN's equalised learning rate (Karras et al. 2018, section 4.1).

The stored weights are drawn from ``N(0, 1)`` and scaled at run time by He's constant
``c = gain / sqrt(fan_in)`` (``gain = sqrt(2)``), so every layer's weights have the same dynamic range and
Adam's per-parameter normalisation gives every layer the same effective learning rate.

:func:`equalized_lr` implements the scaling as ``layer(c * x)`` for a layer ``y = W x + b`` linear in its input,
which equals ``(c W) x + b`` with the same gradients (``dL/dW = c dL/dy x^T``). Done as a forward pre-hook, it
leaves the module's class, its ``weight`` / ``bias`` parameters and therefore its ``state_dict`` keys unchanged:
a checkpoint stores the unscaled ``N(0, 1)`` weights under ``weight``, as ProGAN's own checkpoints do.
"""

from __future__ import annotations

import math

from torch import Tensor, nn

_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def fan_in(module: nn.Module) -> int:
    """Inputs per output of a linear / conv / transposed-conv layer: ``in_features`` or
    ``in_channels / groups * prod(kernel_size)`` (ProGAN counts a transposed conv's fan-in the same way)."""
    if isinstance(module, nn.Linear):
        return module.in_features
    return module.in_channels // module.groups * math.prod(module.kernel_size)


class EqualizedLR:
    """The forward pre-hook that multiplies the layer's input by ``scale`` (see the module docstring)."""

    def __init__(self, scale: float) -> None:
        self.scale = scale

    def __call__(self, module: nn.Module, inputs: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        return (inputs[0] * self.scale, *inputs[1:])


def equalized_lr(module: nn.Module, gain: float = math.sqrt(2.0), *, initialize: bool = True) -> nn.Module:
    """Give ``module`` (``nn.Linear`` or a conv / transposed conv) ProGAN's equalised learning rate, in place;
    returns it.

    The effective weight is ``weight * gain / sqrt(fan_in)``. With ``initialize=True`` (ProGAN) the weight is
    redrawn from ``N(0, 1)`` and the bias set to 0; pass ``initialize=False`` to keep weights loaded from a
    checkpoint of an equalised-LR model. ProGAN uses ``gain = sqrt(2)`` everywhere except the last layers
    (``gain = 1``: D's output, G's toRGB).
    """
    if not isinstance(module, _LAYERS):
        raise TypeError(f"equalized_lr: module must be a Linear or a (transposed) conv layer, got {type(module).__name__}")
    if isinstance(gain, bool) or not isinstance(gain, (int, float)) or not 0 < gain < float("inf"):
        raise ValueError(f"equalized_lr: gain must be a finite float > 0, got {gain!r}")
    if any(isinstance(hook, EqualizedLR) for hook in module._forward_pre_hooks.values()):
        raise RuntimeError(f"equalized_lr: {type(module).__name__} already has an equalised learning rate")
    if initialize:
        nn.init.normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    hook = EqualizedLR(gain / math.sqrt(fan_in(module)))
    module._equalized_lr_handle = module.register_forward_pre_hook(hook)
    module.equalized_lr_scale = hook.scale
    return module


def remove_equalized_lr(module: nn.Module) -> nn.Module:
    """Bake the scale into ``weight`` and remove the hook: the module then computes the same function as a
    plain layer."""
    handle = getattr(module, "_equalized_lr_handle", None)
    if handle is None:
        raise ValueError(f"remove_equalized_lr: {type(module).__name__} has no equalised learning rate")
    handle.remove()
    module.weight.data.mul_(module.equalized_lr_scale)
    del module._equalized_lr_handle, module.equalized_lr_scale
    return module
