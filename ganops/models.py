"""Small reference GANs built from ganops ops and plain torch layers: DCGAN and a SAGAN-style ResNet GAN.

* :class:`DCGANGenerator` / :class:`DCGANDiscriminator` follow Radford et al. 2016: fractionally strided 4x4
  convolutions with batch norm and ReLU in G (tanh output), strided 4x4 convolutions with LeakyReLU(0.2) in D
  (no batch norm on D's first layer), weights drawn from N(0, 0.02). D's normalisation can instead be spectral
  norm (SNGAN's "standard CNN") or none (for WGAN-GP, whose per-sample penalty batch norm would couple).
* :class:`SAGANGenerator` / :class:`SAGANDiscriminator` follow Zhang et al. 2019 (SAGAN) in BigGAN's
  arrangement: ResNet blocks, spectral norm on every layer of G and D, batch norm in G, self-attention
  (:class:`ganops.nn.SelfAttention2d`, BigGAN variant) at 32x32, or at the largest feature map for
  images smaller than 32x32; D ends with a ReLU, sum pooling and a linear layer.
* Both discriminators take ``minibatch_stddev=True`` for ProGAN/StyleGAN's minibatch standard deviation head
  (:class:`ganops.nn.MinibatchStdDev`) before their last layer.

``use_reference_ops=True`` builds the same model from the reference implementations: torch's
``torch.nn.utils.parametrizations.spectral_norm`` and ``backend="reference"`` for attention and minibatch
stddev. Otherwise every spectral norm is ganops's (via :func:`ganops.convert`) and the ops run on ``backend``
(``None``: :func:`ganops.use_backend` / ``GANOPS_BACKEND`` / auto). Both builds draw the same random numbers
in the same order and have the same parameter and buffer names, so with one seed they start identical and a
state_dict of one loads into the other.

Every model takes images ``[B, 3, S, S]`` in ``[-1, 1]`` (``S = image_size``, a power of two >= 8); every
discriminator returns logits ``[B]``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganops.conversion import convert_spectral_norms
from ganops.nn import MinibatchStdDev, SelfAttention2d

ATTENTION_RESOLUTION = 32
DCGAN_NORMALIZATIONS = ("batch", "spectral", "none")
MODELS = ("sagan", "dcgan")


def _check_architecture(caller: str, image_size: int, width: int, z_dim: int | None = None) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"{caller}: image_size must be a power of two >= 8, got {image_size!r}")
    if isinstance(width, bool) or not isinstance(width, int) or width < 1:
        raise ValueError(f"{caller}: width must be a positive int, got {width!r}")
    if z_dim is not None and (isinstance(z_dim, bool) or not isinstance(z_dim, int) or z_dim < 1):
        raise ValueError(f"{caller}: z_dim must be a positive int, got {z_dim!r}")


def _torch_spectral_norm(layer: nn.Module) -> nn.Module:
    # Built with torch's parametrization in both modes (same RNG draws); ganops models are converted afterwards.
    return nn.utils.parametrizations.spectral_norm(layer)


def _finish(model: nn.Module, use_reference_ops: bool, backend: str | None) -> None:
    if not use_reference_ops:
        convert_spectral_norms(model, backend=backend)


def _ops_backend(use_reference_ops: bool, backend: str | None) -> str | None:
    return "reference" if use_reference_ops else backend


def _dcgan_init(model: nn.Module) -> None:
    """Radford et al.: every weight from N(0, 0.02); batch norm scales from N(1, 0.02), shifts 0."""
    for module in model.modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(module.weight, 0.0, 0.02)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.normal_(module.weight, 1.0, 0.02)
            nn.init.zeros_(module.bias)


# ------------------------------------------------------------------------------------------------ DCGAN


class DCGANGenerator(nn.Module):
    """DCGAN generator: ``z [B, z_dim] -> images [B, 3, S, S]``; ``width * S / 8`` channels at 4x4, halved
    at each doubling of the resolution (``S=64, width=64``: 512, 256, 128, 64 as in the paper's code)."""

    def __init__(self, z_dim: int = 100, image_size: int = 32, width: int = 64, out_channels: int = 3) -> None:
        super().__init__()
        _check_architecture("DCGANGenerator", image_size, width, z_dim)
        self.z_dim = z_dim
        self.image_size = image_size
        channels = width * image_size // 8
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(z_dim, channels, 4, 1, 0, bias=False), nn.BatchNorm2d(channels), nn.ReLU(True)
        ]
        resolution = 4
        while resolution < image_size // 2:
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                nn.BatchNorm2d(channels // 2),
                nn.ReLU(True),
            ]
            channels //= 2
            resolution *= 2
        layers += [nn.ConvTranspose2d(channels, out_channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, z: Tensor) -> Tensor:
        return self.main(z.view(z.shape[0], self.z_dim, 1, 1))


class DCGANDiscriminator(nn.Module):
    """DCGAN discriminator: ``images [B, 3, S, S] -> logits [B]``; ``width`` channels after the first
    stride-2 conv, doubled at each halving, a 4x4 valid conv to one logit at 4x4.

    Args:
        normalization: ``"batch"`` (the paper), ``"spectral"`` (spectral norm on every conv, no batch norm) or
            ``"none"`` (use this or ``"spectral"`` with WGAN-GP).
        minibatch_stddev: append the minibatch standard deviation (group size ``stddev_group_size``) before
            the last conv.
        use_reference_ops / backend: see the module docstring.
    """

    def __init__(
        self,
        image_size: int = 32,
        width: int = 64,
        in_channels: int = 3,
        normalization: str = "batch",
        minibatch_stddev: bool = False,
        stddev_group_size: int = 4,
        use_reference_ops: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        _check_architecture("DCGANDiscriminator", image_size, width)
        if normalization not in DCGAN_NORMALIZATIONS:
            raise ValueError(f"DCGANDiscriminator: normalization must be one of {DCGAN_NORMALIZATIONS}, got {normalization!r}")
        self.image_size = image_size

        def conv(inputs: int, outputs: int, stride: int, padding: int) -> nn.Module:
            layer = nn.Conv2d(inputs, outputs, 4, stride, padding, bias=False)
            return _torch_spectral_norm(layer) if normalization == "spectral" else layer

        layers: list[nn.Module] = [conv(in_channels, width, 2, 1), nn.LeakyReLU(0.2, True)]
        channels, resolution = width, image_size // 2
        while resolution > 4:
            layers.append(conv(channels, channels * 2, 2, 1))
            if normalization == "batch":
                layers.append(nn.BatchNorm2d(channels * 2))
            layers.append(nn.LeakyReLU(0.2, True))
            channels *= 2
            resolution //= 2
        if minibatch_stddev:
            layers.append(MinibatchStdDev(stddev_group_size, backend=_ops_backend(use_reference_ops, backend)))
            channels += 1
        layers.append(conv(channels, 1, 1, 0))
        self.main = nn.Sequential(*layers)
        _dcgan_init(self)
        _finish(self, use_reference_ops, backend)

    def forward(self, x: Tensor) -> Tensor:
        return self.main(x).flatten()


# ------------------------------------------------------------------------------------------------ SAGAN


def _channels_at(resolution: int, image_size: int, width: int) -> int:
    """``width`` channels at full resolution, doubled per halving, at most ``16 * width`` (BigGAN's schedule)."""
    return width * min(16, image_size // resolution)


def _attention_resolution(image_size: int) -> int:
    return min(ATTENTION_RESOLUTION, image_size)


class _GeneratorBlock(nn.Module):
    """BigGAN's G block: BN, ReLU, 2x nearest upsampling, 3x3 conv, BN, ReLU, 3x3 conv; 1x1 conv shortcut."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inputs)
        self.conv1 = _torch_spectral_norm(nn.Conv2d(inputs, outputs, 3, padding=1))
        self.bn2 = nn.BatchNorm2d(outputs)
        self.conv2 = _torch_spectral_norm(nn.Conv2d(outputs, outputs, 3, padding=1))
        self.shortcut = _torch_spectral_norm(nn.Conv2d(inputs, outputs, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = F.interpolate(F.relu(self.bn1(x)), scale_factor=2.0, mode="nearest")
        h = self.conv2(F.relu(self.bn2(self.conv1(h))))
        return h + self.shortcut(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class _DiscriminatorBlock(nn.Module):
    """BigGAN's D block (pre-activation): ReLU, 3x3 conv, ReLU, 3x3 conv, 2x2 average pooling; 1x1 conv shortcut."""

    def __init__(self, inputs: int, outputs: int) -> None:
        super().__init__()
        self.conv1 = _torch_spectral_norm(nn.Conv2d(inputs, outputs, 3, padding=1))
        self.conv2 = _torch_spectral_norm(nn.Conv2d(outputs, outputs, 3, padding=1))
        self.shortcut = _torch_spectral_norm(nn.Conv2d(inputs, outputs, 1))

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        return F.avg_pool2d(h, 2) + F.avg_pool2d(self.shortcut(x), 2)


class SAGANGenerator(nn.Module):
    """SAGAN-style generator: ``z [B, z_dim] -> images [B, 3, S, S]``.

    A spectrally normalised linear layer to ``4x4``, one up block per doubling (channels: see
    :func:`_channels_at`), self-attention after the block that reaches 32x32 (or ``S`` when ``S < 32``), then
    BN, ReLU, a 3x3 conv to RGB and tanh. Spectral norm on every conv and linear layer.
    """

    def __init__(
        self,
        z_dim: int = 128,
        image_size: int = 32,
        width: int = 64,
        out_channels: int = 3,
        use_reference_ops: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        _check_architecture("SAGANGenerator", image_size, width, z_dim)
        if width < 8:
            raise ValueError(f"SAGANGenerator: width must be >= 8 (self-attention needs 8 channels), got {width}")
        self.z_dim = z_dim
        self.image_size = image_size
        attention_at = _attention_resolution(image_size)
        channels = _channels_at(4, image_size, width)
        self.linear = _torch_spectral_norm(nn.Linear(z_dim, 16 * channels))
        self.initial_channels = channels
        blocks: list[nn.Module] = []
        resolution = 4
        while resolution < image_size:
            outputs = _channels_at(resolution * 2, image_size, width)
            blocks.append(_GeneratorBlock(channels, outputs))
            channels, resolution = outputs, resolution * 2
            if resolution == attention_at:
                blocks.append(
                    SelfAttention2d(channels, "biggan", spectral_norm=True, backend=_ops_backend(use_reference_ops, backend))
                )
        self.blocks = nn.Sequential(*blocks)
        self.output_bn = nn.BatchNorm2d(channels)
        self.output_conv = _torch_spectral_norm(nn.Conv2d(channels, out_channels, 3, padding=1))
        _finish(self, use_reference_ops, backend)

    def forward(self, z: Tensor) -> Tensor:
        h = self.linear(z).view(z.shape[0], self.initial_channels, 4, 4)
        h = self.blocks(h)
        return torch.tanh(self.output_conv(F.relu(self.output_bn(h))))


class SAGANDiscriminator(nn.Module):
    """SAGAN-style discriminator: ``images [B, 3, S, S] -> logits [B]``.

    A 3x3 conv from RGB to ``width`` channels at full resolution, then one down block per halving down to
    4x4, with self-attention on the 32x32 map (or the full-resolution map when ``S < 32``); optionally the
    minibatch stddev head (``+1`` channel, a 3x3 conv back); ReLU, sum over positions, a linear layer.
    Spectral norm on every conv and linear layer.
    """

    def __init__(
        self,
        image_size: int = 32,
        width: int = 64,
        in_channels: int = 3,
        minibatch_stddev: bool = False,
        stddev_group_size: int = 4,
        use_reference_ops: bool = False,
        backend: str | None = None,
    ) -> None:
        super().__init__()
        _check_architecture("SAGANDiscriminator", image_size, width)
        if width < 8:
            raise ValueError(f"SAGANDiscriminator: width must be >= 8 (self-attention needs 8 channels), got {width}")
        self.image_size = image_size
        ops_backend = _ops_backend(use_reference_ops, backend)
        attention_at = _attention_resolution(image_size)
        self.from_rgb = _torch_spectral_norm(nn.Conv2d(in_channels, width, 3, padding=1))
        blocks: list[nn.Module] = []
        channels, resolution = width, image_size
        while resolution > 4:
            if resolution == attention_at:
                blocks.append(SelfAttention2d(channels, "biggan", spectral_norm=True, backend=ops_backend))
            outputs = _channels_at(resolution // 2, image_size, width)
            blocks.append(_DiscriminatorBlock(channels, outputs))
            channels, resolution = outputs, resolution // 2
        self.blocks = nn.Sequential(*blocks)
        self.stddev = MinibatchStdDev(stddev_group_size, backend=ops_backend) if minibatch_stddev else None
        self.stddev_conv = (
            _torch_spectral_norm(nn.Conv2d(channels + 1, channels, 3, padding=1)) if minibatch_stddev else None
        )
        self.linear = _torch_spectral_norm(nn.Linear(channels, 1))
        _finish(self, use_reference_ops, backend)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(self.from_rgb(x))
        if self.stddev is not None:
            h = self.stddev_conv(F.relu(self.stddev(h)))
        return self.linear(F.relu(h).sum(dim=(2, 3))).flatten()


def build(
    model: str,
    image_size: int = 32,
    width: int = 32,
    z_dim: int = 128,
    *,
    minibatch_stddev: bool = False,
    dcgan_normalization: str = "spectral",
    use_reference_ops: bool = False,
    backend: str | None = None,
) -> tuple[nn.Module, nn.Module]:
    """``(generator, discriminator)`` of ``model`` (``"sagan"`` or ``"dcgan"``) with the same width."""
    if model == "sagan":
        return (
            SAGANGenerator(z_dim, image_size, width, use_reference_ops=use_reference_ops, backend=backend),
            SAGANDiscriminator(
                image_size, width, minibatch_stddev=minibatch_stddev, use_reference_ops=use_reference_ops, backend=backend
            ),
        )
    if model == "dcgan":
        return (
            DCGANGenerator(z_dim, image_size, width),
            DCGANDiscriminator(
                image_size, width, normalization=dcgan_normalization, minibatch_stddev=minibatch_stddev,
                use_reference_ops=use_reference_ops, backend=backend,
            ),
        )
    raise ValueError(f"build: model must be one of {MODELS}, got {model!r}")


def parameter_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


__all__ = [
    "DCGANDiscriminator",
    "DCGANGenerator",
    "MODELS",
    "SAGANDiscriminator",
    "SAGANGenerator",
    "build",
    "parameter_count",
]
