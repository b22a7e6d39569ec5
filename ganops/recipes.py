"""The training steps of the classic GANs, one small readable recipe each, on ganops ops and losses.

Each recipe owns its networks, optimisers, noise and data streams, and exposes :meth:`Recipe.step` (one
training iteration: the paper's D steps, then its G step; returns the losses) and :meth:`Recipe.sample`.
``python -m ganops demo --recipe NAME`` trains one; ``RECIPES`` maps names to classes.

Images are the procedural shapes of :mod:`ganops.data` in ``[-1, 1]``; SeqGAN learns the toy grammar of
:func:`ganops.data.grammar_sentences`; CycleGAN translates shapes into their colour-swapped versions
(:func:`ganops.data.swap_colours`).

``RecipeConfig(use_reference_ops=True)`` builds the same recipe from the reference implementations: the fused
ops on ``backend="reference"``, torch's spectral norm parametrization, and the per-parameter loops of
:mod:`ganops.reference.training_utils` instead of the multi-tensor utilities. Both builds draw the same random
numbers in the same order and have the same state_dict keys; started from one state (the spectral-norm
power-iteration vectors of the two builds start from different iterates, so the tests load one build's state
into the other), they train identically up to rounding (``tests/test_recipes.py``).

The models are small on purpose (a few CPU minutes per demo); the recipe is the paper's training step, the
architecture a scaled-down version of the paper's.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ganops import data, losses, models
from ganops import training_utils
from ganops.nn import MinibatchDiscrimination, MinibatchStdDev, PixelNorm, VirtualBatchNorm2d, WithReferenceBatch
from ganops.nn.utils import equalized_lr
from ganops.ops.gradient_penalty import gradient_penalty
from ganops.reference import training_utils as reference_training_utils


@dataclass
class RecipeConfig:
    """What every recipe needs: sizes, seed, device and dtype, and which implementation of the ops to use.

    ``steps`` is the planned length of training (ProGAN schedules its fade-in over it); ``options`` holds the
    recipe's own hyperparameters (see each recipe's ``DEFAULTS``)."""

    image_size: int = 16
    width: int = 16
    z_dim: int = 32
    batch_size: int = 32
    steps: int = 1000
    seed: int = 0
    use_reference_ops: bool = False
    backend: str | None = None
    device: str | torch.device = "cpu"
    dtype: torch.dtype = torch.float32
    options: dict | None = None


class Recipe:
    """Base class: seeds, data and noise streams, optimiser helpers, the loss history."""

    name: ClassVar[str]
    paper: ClassVar[str]
    ops: ClassVar[str]
    # python -m ganops demo --recipe NAME: a run of about a CPU minute, with learning rates raised above the
    # papers' (which need thousands of steps) where that made the short run learn.
    demo_steps: ClassVar[int] = 600
    demo_width: ClassVar[int] = 16
    demo_options: ClassVar[dict] = {}
    DEFAULTS: ClassVar[dict] = {}

    def __init__(self, config: RecipeConfig | None = None) -> None:
        self.config = config = config or RecipeConfig()
        unknown = set(config.options or {}) - set(self.DEFAULTS)
        if unknown:
            raise ValueError(f"{type(self).__name__}: unknown options {sorted(unknown)}; known: {sorted(self.DEFAULTS)}")
        self.options = {**self.DEFAULTS, **(config.options or {})}
        self.device = torch.device(config.device)
        self.dtype = config.dtype
        self.reference = config.use_reference_ops
        self.ops_backend = "reference" if self.reference else config.backend
        self.utilities = reference_training_utils if self.reference else training_utils
        self.noise = torch.Generator().manual_seed(config.seed + 1)
        self.data = torch.Generator().manual_seed(config.seed + 2)
        self.history: dict[str, list[float]] = {}
        self.steps_done = 0
        torch.manual_seed(config.seed)
        self.build()
        for network in self.networks().values():
            network.to(device=self.device, dtype=self.dtype)
        self.setup()

    # What each recipe defines.
    def build(self) -> None:
        """Create the networks (before they are moved to the device and dtype)."""
        raise NotImplementedError

    def setup(self) -> None:
        """Create optimisers and anything that copies the networks (after the move)."""
        raise NotImplementedError

    def networks(self) -> dict[str, nn.Module]:
        raise NotImplementedError

    def train_step(self) -> dict[str, Tensor | float]:
        raise NotImplementedError

    def sample(self, count: int) -> Tensor:
        """``count`` generated images ``[count, 3, S, S]`` in ``[-1, 1]`` (SeqGAN: token rows)."""
        raise NotImplementedError

    # Shared helpers.
    def step(self) -> dict[str, float]:
        """One training iteration; returns and records its losses as floats."""
        result = {name: value.item() if isinstance(value, Tensor) else float(value) for name, value in self.train_step().items()}
        for name, value in result.items():
            self.history.setdefault(name, []).append(value)
        self.steps_done += 1
        return result

    def randn(self, *shape: int) -> Tensor:
        return torch.randn(shape, generator=self.noise).to(self.device, self.dtype)

    def rand(self, *shape: int) -> Tensor:
        return torch.rand(shape, generator=self.noise).to(self.device, self.dtype)

    def real_images(self, count: int | None = None) -> Tensor:
        images = data.random_batch(count or self.config.batch_size, self.data, self.config.image_size)
        return images.to(self.device, self.dtype)

    def adam(self, module: nn.Module | list, lr: float, betas: tuple[float, float]) -> torch.optim.Adam:
        parameters = module.parameters() if isinstance(module, nn.Module) else module
        return torch.optim.Adam(parameters, lr=lr, betas=betas)

    @staticmethod
    def update(optimizer: torch.optim.Optimizer, loss: Tensor) -> None:
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def dcgan_pair(self, z_dim: int | None = None, normalization: str = "batch", minibatch_stddev: bool = False):
        config = self.config
        generator = models.DCGANGenerator(z_dim or config.z_dim, config.image_size, config.width)
        discriminator = models.DCGANDiscriminator(
            config.image_size, config.width, normalization=normalization, minibatch_stddev=minibatch_stddev,
            use_reference_ops=self.reference, backend=config.backend,
        )
        return generator, discriminator

    @torch.no_grad()
    def _sample_from(self, generator: nn.Module, count: int, z_dim: int | None = None) -> Tensor:
        was_training = generator.training
        generator.eval()
        images = generator(self.randn(count, z_dim or self.config.z_dim))
        generator.train(was_training)
        return images


def _features_and_logits(discriminator: models.DCGANDiscriminator, x: Tensor) -> tuple[Tensor, Tensor]:
    """The DCGAN discriminator's last hidden feature map (flattened) and its logits."""
    features = discriminator.main[:-1](x)
    return features.flatten(1), discriminator.main[-1](features).flatten()


# ----------------------------------------------------------------------------- standard adversarial games


class GAN(Recipe):
    """Goodfellow et al. 2014: MLP generator and discriminator, the minimax game (``generator_loss="minimax"``)
    or its non-saturating variant (the default, recommended by the paper), one D step per G step."""

    name = "gan"
    paper = "Goodfellow et al. 2014, Generative Adversarial Nets"
    ops = "losses.minimax / non_saturating"
    DEFAULTS = {"generator_loss": "non-saturating", "hidden": 256, "lr": 2e-4}
    demo_steps = 2000
    demo_options = {"lr": 1e-3}

    def build(self) -> None:
        pixels, hidden = 3 * self.config.image_size**2, self.options["hidden"]
        self.generator = nn.Sequential(
            nn.Linear(self.config.z_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, pixels), nn.Tanh()
        )
        self.discriminator = nn.Sequential(
            nn.Flatten(), nn.Linear(pixels, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, hidden), nn.LeakyReLU(0.2), nn.Linear(hidden, 1)
        )

    def setup(self) -> None:
        self.optimizer_g = self.adam(self.generator, self.options["lr"], (0.5, 0.999))
        self.optimizer_d = self.adam(self.discriminator, self.options["lr"], (0.5, 0.999))

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def generate(self, z: Tensor) -> Tensor:
        size = self.config.image_size
        return self.generator(z).view(-1, 3, size, size)

    def train_step(self) -> dict[str, Tensor]:
        real, z = self.real_images(), self.randn(self.config.batch_size, self.config.z_dim)
        fake = self.generate(z)
        loss_d = losses.discriminator_loss("non-saturating", self.discriminator(real), self.discriminator(fake.detach()))
        self.update(self.optimizer_d, loss_d)
        loss_g = losses.generator_loss(self.options["generator_loss"], self.discriminator(fake))
        self.update(self.optimizer_g, loss_g)
        return {"d": loss_d, "g": loss_g}

    @torch.no_grad()
    def sample(self, count: int) -> Tensor:
        return self.generate(self.randn(count, self.config.z_dim))


class DCGAN(Recipe):
    """Radford et al. 2016: the all-convolutional G and D with batch norm, the non-saturating loss, Adam
    (2e-4, beta1 0.5). LSGAN and RGAN reuse this step with their losses (``loss`` option)."""

    name = "dcgan"
    paper = "Radford et al. 2016, Unsupervised Representation Learning with DCGANs"
    ops = "models.DCGAN*, losses.non_saturating"
    DEFAULTS = {"loss": "non-saturating", "lr": 2e-4, "betas": (0.5, 0.999)}
    demo_options = {"lr": 1e-3}

    def build(self) -> None:
        self.generator, self.discriminator = self.dcgan_pair()

    def setup(self) -> None:
        self.optimizer_g = self.adam(self.generator, self.options["lr"], self.options["betas"])
        self.optimizer_d = self.adam(self.discriminator, self.options["lr"], self.options["betas"])

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def train_step(self) -> dict[str, Tensor]:
        kind = self.options["loss"]
        real, z = self.real_images(), self.randn(self.config.batch_size, self.config.z_dim)
        fake = self.generator(z)
        real_logits = self.discriminator(real)
        loss_d = losses.discriminator_loss(kind, real_logits, self.discriminator(fake.detach()))
        self.update(self.optimizer_d, loss_d)
        relativistic = kind in losses.RELATIVISTIC_KINDS
        real_for_g = self.discriminator(real) if relativistic else None
        loss_g = losses.generator_loss(kind, self.discriminator(fake), real_for_g)
        self.update(self.optimizer_g, loss_g)
        return {"d": loss_d, "g": loss_g}

    def sample(self, count: int) -> Tensor:
        return self._sample_from(self.generator, count)


class LSGAN(DCGAN):
    """Mao et al. 2017: least-squares losses (targets a=0, b=1, c=1) on the DCGAN architecture."""

    name = "lsgan"
    paper = "Mao et al. 2017, Least Squares Generative Adversarial Networks"
    ops = "losses.least_squares"
    DEFAULTS = {**DCGAN.DEFAULTS, "loss": "least-squares"}


class RGAN(DCGAN):
    """Jolicoeur-Martineau 2019: the relativistic average standard GAN (RaSGAN) on the DCGAN architecture; D
    estimates whether real data is more realistic than fake on average (``loss`` picks any relativistic kind)."""

    name = "rgan"
    paper = "Jolicoeur-Martineau 2019, The relativistic discriminator"
    ops = "losses.relativistic_average"
    DEFAULTS = {**DCGAN.DEFAULTS, "loss": "relativistic-average"}
    demo_steps = 400


class WGAN(Recipe):
    """Arjovsky et al. 2017, Algorithm 1: ``n_critic`` critic steps per G step with RMSprop, the critic's
    weights clipped to ``[-c, c]`` after each of its steps (:func:`ganops.clip_weights_`, c = 0.01)."""

    name = "wgan"
    paper = "Arjovsky et al. 2017, Wasserstein GAN"
    ops = "clip_weights_, losses.wasserstein"
    DEFAULTS = {"n_critic": 5, "clip_value": 0.01, "lr": 5e-5}
    demo_steps = 200
    demo_options = {"lr": 5e-4}

    def build(self) -> None:
        self.generator, self.discriminator = self.dcgan_pair(normalization="batch")

    def setup(self) -> None:
        self.optimizer_g = torch.optim.RMSprop(self.generator.parameters(), lr=self.options["lr"])
        self.optimizer_d = torch.optim.RMSprop(self.discriminator.parameters(), lr=self.options["lr"])

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def train_step(self) -> dict[str, Tensor]:
        for _ in range(self.options["n_critic"]):
            real, z = self.real_images(), self.randn(self.config.batch_size, self.config.z_dim)
            with torch.no_grad():
                fake = self.generator(z)
            loss_d = losses.wasserstein_discriminator_loss(self.discriminator(real), self.discriminator(fake))
            self.update(self.optimizer_d, loss_d)
            self.utilities.clip_weights_(self.discriminator.parameters(), self.options["clip_value"])
        loss_g = losses.wasserstein_generator_loss(self.discriminator(self.generator(self.randn(self.config.batch_size, self.config.z_dim))))
        self.update(self.optimizer_g, loss_g)
        return {"d": loss_d, "g": loss_g}

    def sample(self, count: int) -> Tensor:
        return self._sample_from(self.generator, count)


class WGANGP(Recipe):
    """Gulrajani et al. 2017, Algorithm 1: the critic without batch norm, ``n_critic = 5``, the gradient penalty
    ``lambda E (||grad D(x^)|| - 1)^2`` on random interpolates (:func:`ganops.gradient_penalty`, lambda = 10),
    Adam (1e-4, betas 0 / 0.9)."""

    name = "wgan-gp"
    paper = "Gulrajani et al. 2017, Improved Training of Wasserstein GANs"
    ops = "gradient_penalty (fused, double backward), losses.wasserstein"
    DEFAULTS = {"n_critic": 5, "penalty_weight": 10.0, "lr": 1e-4}
    demo_steps = 150
    demo_options = {"lr": 1e-3}

    def build(self) -> None:
        self.generator, self.discriminator = self.dcgan_pair(normalization="none")

    def setup(self) -> None:
        self.optimizer_g = self.adam(self.generator, self.options["lr"], (0.0, 0.9))
        self.optimizer_d = self.adam(self.discriminator, self.options["lr"], (0.0, 0.9))

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def train_step(self) -> dict[str, Tensor]:
        for _ in range(self.options["n_critic"]):
            real, z = self.real_images(), self.randn(self.config.batch_size, self.config.z_dim)
            with torch.no_grad():
                fake = self.generator(z)
            loss_d = losses.wasserstein_discriminator_loss(self.discriminator(real), self.discriminator(fake))
            penalty = gradient_penalty(
                self.discriminator, real, fake, kind="wgan-gp", weight=self.options["penalty_weight"],
                generator=self.noise, backend=self.ops_backend,
            )
            self.update(self.optimizer_d, loss_d + penalty)
        loss_g = losses.wasserstein_generator_loss(self.discriminator(self.generator(self.randn(self.config.batch_size, self.config.z_dim))))
        self.update(self.optimizer_g, loss_g)
        return {"d": loss_d, "g": loss_g, "penalty": penalty}

    def sample(self, count: int) -> Tensor:
        return self._sample_from(self.generator, count)


class SAGAN(Recipe):
    """Zhang et al. 2019: ResNet G and D with self-attention (:class:`ganops.nn.SelfAttention2d`) and spectral
    norm on every layer of both, the hinge loss, TTUR (Heusel et al. 2017: D's learning rate 4x G's; SAGAN uses
    1e-4 / 4e-4, betas 0 / 0.9), one D step per G step."""

    name = "sagan"
    paper = "Zhang et al. 2019, Self-Attention GANs; Heusel et al. 2017 (TTUR)"
    ops = "attention, spectral_norm (fused), losses.hinge"
    DEFAULTS = {"lr_g": 1e-4, "lr_d": 4e-4}
    demo_steps = 150
    demo_width = 8
    demo_options = {"lr_g": 5e-4, "lr_d": 2e-3}

    def build(self) -> None:
        config = self.config
        self.generator, self.discriminator = models.build(
            "sagan", config.image_size, max(8, config.width), config.z_dim, use_reference_ops=self.reference, backend=config.backend
        )

    def setup(self) -> None:
        self.optimizer_g = self.adam(self.generator, self.options["lr_g"], (0.0, 0.9))
        self.optimizer_d = self.adam(self.discriminator, self.options["lr_d"], (0.0, 0.9))

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def train_step(self) -> dict[str, Tensor]:
        real, z = self.real_images(), self.randn(self.config.batch_size, self.config.z_dim)
        with torch.no_grad():
            fake = self.generator(z)
        loss_d = losses.hinge_discriminator_loss(self.discriminator(real), self.discriminator(fake))
        self.update(self.optimizer_d, loss_d)
        loss_g = losses.hinge_generator_loss(self.discriminator(self.generator(self.randn(self.config.batch_size, self.config.z_dim))))
        self.update(self.optimizer_g, loss_g)
        return {"d": loss_d, "g": loss_g}

    def sample(self, count: int) -> Tensor:
        return self._sample_from(self.generator, count)


# ------------------------------------------------------------------------------------------ improved GAN


class _ImprovedDiscriminator(nn.Module):
    """DCGAN's convolutional body (no batch norm), then minibatch discrimination on the flattened features
    (:class:`ganops.nn.MinibatchDiscrimination`, the fused op) and a linear layer to the logit. :meth:`features_and_logits` also returns the body's features for feature matching."""

    def __init__(self, image_size: int, width: int, num_kernels: int, kernel_dim: int, backend: str | None) -> None:
        super().__init__()
        body = models.DCGANDiscriminator(image_size, width, normalization="none").main
        self.body = body[:-1]
        features = width * image_size // 8 * 16
        self.minibatch = MinibatchDiscrimination(features, num_kernels, kernel_dim, backend=backend)
        self.linear = nn.Linear(features + num_kernels, 1)

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        features = self.body(x).flatten(1)
        return features, self.linear(self.minibatch(features)).flatten()

    def forward(self, x: Tensor) -> Tensor:
        return self.features_and_logits(x)[1]


def _with_virtual_batch_norm(generator: nn.Module) -> nn.Module:
    """Replace every BatchNorm2d of ``generator`` by a VirtualBatchNorm2d of the same width."""
    for name, child in generator.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(generator, name, VirtualBatchNorm2d(child.num_features))
        else:
            _with_virtual_batch_norm(child)
    return generator


class ImprovedGAN(Recipe):
    """Salimans et al. 2016's techniques together: G trained by feature matching on D's last hidden layer, D with
    minibatch discrimination, virtual batch norm in G (a reference batch of latents fixed at the start),
    historical averaging of both players' parameters, and one-sided label smoothing (real target 0.9)."""

    name = "improved-gan"
    paper = "Salimans et al. 2016, Improved Techniques for Training GANs"
    ops = "minibatch_discrimination, feature_matching, VirtualBatchNorm2d, HistoricalAverage, label smoothing"
    DEFAULTS = {
        "lr": 2e-4, "real_label": 0.9, "historical_weight": 1e-3, "reference_size": 16, "num_kernels": 16, "kernel_dim": 4,
    }
    demo_steps = 400
    demo_options = {"lr": 1e-3}

    def build(self) -> None:
        config, options = self.config, self.options
        generator, _ = self.dcgan_pair()
        reference_latents = torch.randn(options["reference_size"], config.z_dim, generator=self.noise)
        self.generator = WithReferenceBatch(_with_virtual_batch_norm(generator), reference_latents)
        self.discriminator = _ImprovedDiscriminator(
            config.image_size, config.width, options["num_kernels"], options["kernel_dim"], self.ops_backend
        )

    def setup(self) -> None:
        self.optimizer_g = self.adam(self.generator, self.options["lr"], (0.5, 0.999))
        self.optimizer_d = self.adam(self.discriminator, self.options["lr"], (0.5, 0.999))
        self.history_g = self.utilities.HistoricalAverage(list(self.generator.parameters()))
        self.history_d = self.utilities.HistoricalAverage(list(self.discriminator.parameters()))

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def train_step(self) -> dict[str, Tensor]:
        options = self.options
        real, z = self.real_images(), self.randn(self.config.batch_size, self.config.z_dim)
        fake = self.generator(z)
        loss_d = losses.non_saturating_discriminator_loss(
            self.discriminator(real), self.discriminator(fake.detach()), real_label=options["real_label"]
        )
        self.update(self.optimizer_d, loss_d + self.history_d.penalty(options["historical_weight"]))
        self.history_d.update()
        # Feature matching against the updated D's features of the same real batch.
        with torch.no_grad():
            real_features, _ = self.discriminator.features_and_logits(real)
        fake_features, _ = self.discriminator.features_and_logits(fake)
        loss_g = losses.feature_matching(real_features, fake_features)
        self.update(self.optimizer_g, loss_g + self.history_g.penalty(options["historical_weight"]))
        self.history_g.update()
        return {"d": loss_d, "g": loss_g}

    def sample(self, count: int) -> Tensor:
        return self._sample_from(self.generator, count)


# --------------------------------------------------------------------------------------------- ProGAN


class _ProGANGenerator(nn.Module):
    """ProGAN's G at two resolutions: latent pixel norm, an equalised-LR dense layer to 4x4, 3x3 conv blocks
    with LeakyReLU(0.2) and pixel norm, 2x nearest upsampling, and toRGB 1x1 convs at ``S/2`` and ``S``;
    the output fades from the upsampled low-resolution image to the high-resolution one as ``alpha`` goes 0 -> 1."""

    def __init__(self, z_dim: int, image_size: int, width: int) -> None:
        super().__init__()
        self.image_size = image_size
        channels = width * 2
        self.dense = equalized_lr(nn.Linear(z_dim, channels * 16))
        self.channels = channels
        blocks, resolution = [self._block(channels, channels, first=True)], 4
        while resolution < image_size:
            blocks.append(self._block(channels, channels))
            resolution *= 2
        self.blocks = nn.ModuleList(blocks)
        self.to_rgb_low = equalized_lr(nn.Conv2d(channels, 3, 1), gain=1.0)
        self.to_rgb_high = equalized_lr(nn.Conv2d(channels, 3, 1), gain=1.0)
        self.pixel_norm = PixelNorm()

    @staticmethod
    def _block(inputs: int, outputs: int, first: bool = False) -> nn.Sequential:
        layers: list[nn.Module] = [] if first else [nn.Upsample(scale_factor=2.0, mode="nearest")]
        for channels_in in (inputs, outputs):
            layers += [equalized_lr(nn.Conv2d(channels_in, outputs, 3, padding=1)), nn.LeakyReLU(0.2), PixelNorm()]
        return nn.Sequential(*layers)

    def forward(self, z: Tensor, alpha: float = 1.0) -> Tensor:
        h = F.leaky_relu(self.dense(self.pixel_norm(z)), 0.2).view(-1, self.channels, 4, 4)
        h = self.pixel_norm(h)
        for block in self.blocks[:-1]:
            h = block(h)
        low = F.interpolate(self.to_rgb_low(h), scale_factor=2.0, mode="nearest")
        high = self.to_rgb_high(self.blocks[-1](h))
        return torch.lerp(low, high, alpha)


class _ProGANDiscriminator(nn.Module):
    """ProGAN's D mirrored: fromRGB at ``S`` and (on the 2x average-pooled image) at ``S/2``, faded by ``alpha``;
    3x3 conv blocks with 2x average pooling, the minibatch stddev layer (:class:`ganops.nn.MinibatchStdDev`) at 4x4,
    a 3x3 conv, a 4x4 conv and a linear output, all with equalised learning rate."""

    def __init__(self, image_size: int, width: int, group_size: int, backend: str | None) -> None:
        super().__init__()
        channels = width * 2
        self.from_rgb_high = equalized_lr(nn.Conv2d(3, channels, 1))
        self.from_rgb_low = equalized_lr(nn.Conv2d(3, channels, 1))
        blocks, resolution = [], image_size
        while resolution > 4:
            blocks.append(nn.Sequential(
                equalized_lr(nn.Conv2d(channels, channels, 3, padding=1)), nn.LeakyReLU(0.2),
                equalized_lr(nn.Conv2d(channels, channels, 3, padding=1)), nn.LeakyReLU(0.2), nn.AvgPool2d(2),
            ))
            resolution //= 2
        self.blocks = nn.ModuleList(blocks)
        self.stddev = MinibatchStdDev(group_size, backend=backend)
        self.head = nn.Sequential(
            equalized_lr(nn.Conv2d(channels + 1, channels, 3, padding=1)), nn.LeakyReLU(0.2),
            equalized_lr(nn.Conv2d(channels, channels, 4)), nn.LeakyReLU(0.2), nn.Flatten(),
            equalized_lr(nn.Linear(channels, 1), gain=1.0),
        )
        self.alpha = 1.0

    def forward(self, x: Tensor) -> Tensor:
        high = self.blocks[0](F.leaky_relu(self.from_rgb_high(x), 0.2))
        low = F.leaky_relu(self.from_rgb_low(F.avg_pool2d(x, 2)), 0.2)
        h = torch.lerp(low, high, self.alpha)
        for block in self.blocks[1:]:
            h = block(h)
        return self.head(self.stddev(h)).flatten()


class ProGAN(Recipe):
    """Karras et al. 2018's building blocks on the last growth stage, from ``S/2`` to ``S``: pixel norm in G,
    equalised learning rate everywhere, minibatch stddev in D, the fade-in of the new resolution (``alpha``
    from 0 to 1 over the middle third of training, real images blended the same way), WGAN-GP with the drift
    term ``0.001 E D(x)^2``, Adam (1e-3, betas 0 / 0.99), and G_ema (decay 0.999) for sampling; G_ema copies G
    until ``ema_start`` of the planned steps (BigGAN's start step; short runs would otherwise sample near the
    initial weights)."""

    name = "progan"
    paper = "Karras et al. 2018, Progressive Growing of GANs"
    ops = "minibatch_stddev, gradient_penalty, PixelNorm, equalized_lr, ExponentialMovingAverage"
    DEFAULTS = {"lr": 1e-3, "penalty_weight": 10.0, "drift": 1e-3, "ema_decay": 0.999, "ema_start": 0.5, "group_size": 4}
    demo_steps = 200
    demo_width = 8
    # The paper's decay averages over ~1000 steps, longer than a demo: G_ema then still shows the weights of the
    # fade-in (8x8, 300 steps: sliced Wasserstein distance 0.74 for G_ema against 0.20 for G). 0.95 averages ~20.
    demo_options = {"ema_decay": 0.95}

    def build(self) -> None:
        config = self.config
        self.generator = _ProGANGenerator(config.z_dim, config.image_size, config.width)
        self.discriminator = _ProGANDiscriminator(config.image_size, config.width, self.options["group_size"], self.ops_backend)
        ema_start = int(self.options["ema_start"] * config.steps)
        self.generator_ema = self.utilities.ExponentialMovingAverage(self.generator, self.options["ema_decay"], ema_start)

    def setup(self) -> None:
        self.optimizer_g = self.adam(self.generator, self.options["lr"], (0.0, 0.99))
        self.optimizer_d = self.adam(self.discriminator, self.options["lr"], (0.0, 0.99))

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator, "generator_ema": self.generator_ema.module}

    def alpha(self) -> float:
        """0 for the first third of ``config.steps``, rising linearly to 1 over the second third, then 1."""
        third = max(1, self.config.steps // 3)
        return min(max((self.steps_done - third) / third, 0.0), 1.0)

    def train_step(self) -> dict[str, Tensor | float]:
        options, alpha = self.options, self.alpha()
        self.discriminator.alpha = alpha
        real = self.real_images()
        low = F.interpolate(F.avg_pool2d(real, 2), scale_factor=2.0, mode="nearest")
        real = torch.lerp(low, real, alpha)
        z = self.randn(self.config.batch_size, self.config.z_dim)
        with torch.no_grad():
            fake = self.generator(z, alpha)
        real_logits = self.discriminator(real)
        loss_d = losses.wasserstein_discriminator_loss(real_logits, self.discriminator(fake))
        penalty = gradient_penalty(
            self.discriminator, real, fake, kind="wgan-gp", weight=options["penalty_weight"],
            generator=self.noise, backend=self.ops_backend,
        )
        self.update(self.optimizer_d, loss_d + penalty + options["drift"] * real_logits.square().mean())
        z = self.randn(self.config.batch_size, self.config.z_dim)
        loss_g = losses.wasserstein_generator_loss(self.discriminator(self.generator(z, alpha)))
        self.update(self.optimizer_g, loss_g)
        self.generator_ema.update(self.generator)
        return {"d": loss_d, "g": loss_g, "penalty": penalty, "alpha": alpha}

    @torch.no_grad()
    def sample(self, count: int) -> Tensor:
        return self.generator_ema.module(self.randn(count, self.config.z_dim), self.alpha())


# ---------------------------------------------------------------------------------------------- BEGAN


class _BEGANDecoder(nn.Sequential):
    """BEGAN's decoder: a dense layer to ``8 x 8 x n``, pairs of 3x3 convs with ELU, nearest upsampling."""

    def __init__(self, hidden: int, image_size: int, width: int) -> None:
        layers: list[nn.Module] = [nn.Linear(hidden, width * 64), nn.Unflatten(1, (width, 8, 8))]
        resolution = 8
        while True:
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ELU(), nn.Conv2d(width, width, 3, padding=1), nn.ELU()]
            if resolution == image_size:
                break
            layers.append(nn.Upsample(scale_factor=2.0, mode="nearest"))
            resolution *= 2
        layers.append(nn.Conv2d(width, 3, 3, padding=1))
        super().__init__(*layers)


class _BEGANAutoencoder(nn.Module):
    """BEGAN's discriminator: an encoder (3x3 convs with ELU, strided downsampling, dense to ``hidden``) and
    a decoder like G's; returns the reconstruction."""

    def __init__(self, hidden: int, image_size: int, width: int) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, width, 3, padding=1), nn.ELU()]
        resolution, channels = image_size, width
        while resolution > 8:
            layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ELU(), nn.Conv2d(channels, channels * 2, 3, 2, 1), nn.ELU()]
            channels, resolution = channels * 2, resolution // 2
        layers += [nn.Conv2d(channels, channels, 3, padding=1), nn.ELU(), nn.Flatten(), nn.Linear(channels * 64, hidden)]
        self.encoder = nn.Sequential(*layers)
        self.decoder = _BEGANDecoder(hidden, image_size, width)

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class BEGAN(Recipe):
    """Berthelot et al. 2017: D is an autoencoder, ``L(v) = |v - D(v)|``; ``L_D = L(x) - k_t L(G(z_D))``,
    ``L_G = L(G(z_G))``, and :class:`ganops.losses.BEGANBalance` drives ``k_t`` towards the equilibrium
    ``E L(G(z)) = gamma E L(x)`` (gamma 0.5, lambda_k 0.001) and reports the convergence measure; Adam 1e-4."""

    name = "began"
    paper = "Berthelot et al. 2017, BEGAN: Boundary Equilibrium GANs"
    ops = "losses.began_*, BEGANBalance"
    DEFAULTS = {"lr": 2e-4, "gamma": 0.5, "lambda_k": 1e-3, "hidden": 32}
    demo_steps = 200
    # k_t follows the balance 50x faster than the paper's lambda_k (which is tuned for 100k+ steps); gamma 0.75
    # (diversity) learnt the data in fewer steps than 0.5 at 8x8.
    demo_options = {"lr": 1e-3, "lambda_k": 0.05, "gamma": 0.75}

    def build(self) -> None:
        config, hidden = self.config, self.options["hidden"]
        self.generator = nn.Sequential(_BEGANDecoder(config.z_dim, config.image_size, config.width), nn.Tanh())
        self.discriminator = _BEGANAutoencoder(hidden, config.image_size, config.width)
        self.balance = losses.BEGANBalance(self.options["gamma"], self.options["lambda_k"])

    def setup(self) -> None:
        self.optimizer_g = self.adam(self.generator, self.options["lr"], (0.5, 0.999))
        self.optimizer_d = self.adam(self.discriminator, self.options["lr"], (0.5, 0.999))

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def train_step(self) -> dict[str, Tensor | float]:
        real = self.real_images()
        fake_d = self.generator(self.randn(self.config.batch_size, self.config.z_dim)).detach()
        real_loss = losses.began_reconstruction_loss(real, self.discriminator(real))
        fake_loss_d = losses.began_reconstruction_loss(fake_d, self.discriminator(fake_d))
        self.update(self.optimizer_d, losses.began_discriminator_loss(real_loss, fake_loss_d, self.balance.k))
        fake = self.generator(self.randn(self.config.batch_size, self.config.z_dim))
        loss_g = losses.began_generator_loss(losses.began_reconstruction_loss(fake, self.discriminator(fake)))
        self.update(self.optimizer_g, loss_g)
        convergence = self.balance.convergence(real_loss, loss_g)
        self.balance.update(real_loss, loss_g)
        return {"d": real_loss, "g": loss_g, "k": self.balance.k, "convergence": convergence}

    def sample(self, count: int) -> Tensor:
        return self._sample_from(self.generator, count)


# ---------------------------------------------------------------------------------------------- InfoGAN


class InfoGAN(Recipe):
    """Chen et al. 2016: G takes noise and a latent code (one categorical with ``categories`` values, uniform;
    ``continuous`` codes, uniform on [-1, 1]); a Q head on D's shared body predicts the code, and
    ``lambda * L_I`` (the negative log-likelihood of the code, :func:`ganops.losses.info_categorical_loss` and
    :func:`~ganops.losses.info_gaussian_loss`) is minimised by G and Q; the GAN part is DCGAN's."""

    name = "infogan"
    paper = "Chen et al. 2016, InfoGAN"
    ops = "losses.info_categorical_loss, info_gaussian_loss"
    DEFAULTS = {"categories": 3, "continuous": 2, "info_weight": 1.0, "continuous_weight": 0.1, "lr_d": 2e-4, "lr_g": 1e-3}
    demo_options = {"lr_d": 1e-3, "lr_g": 2e-3}

    def build(self) -> None:
        options = self.options
        self.code_size = options["categories"] + options["continuous"]
        self.generator, self.discriminator = self.dcgan_pair(z_dim=self.config.z_dim + self.code_size)
        features = self.config.width * self.config.image_size // 8 * 16
        self.q_head = nn.Sequential(nn.Linear(features, 64), nn.LeakyReLU(0.2), nn.Linear(64, self.code_size))

    def setup(self) -> None:
        self.optimizer_d = self.adam(self.discriminator, self.options["lr_d"], (0.5, 0.999))
        self.optimizer_g = self.adam([*self.generator.parameters(), *self.q_head.parameters()], self.options["lr_g"], (0.5, 0.999))

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator, "q_head": self.q_head}

    def latent(self, count: int, categories: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``(G's input, categorical codes, continuous codes)``."""
        k = self.options["categories"]
        if categories is None:
            categories = torch.randint(k, (count,), generator=self.noise).to(self.device)
        continuous = self.rand(count, self.options["continuous"]) * 2 - 1
        z = torch.cat([self.randn(count, self.config.z_dim), F.one_hot(categories, k).to(self.dtype), continuous], dim=1)
        return z, categories, continuous

    def train_step(self) -> dict[str, Tensor]:
        k = self.options["categories"]
        real = self.real_images()
        z, categories, continuous = self.latent(self.config.batch_size)
        fake = self.generator(z)
        loss_d = losses.non_saturating_discriminator_loss(self.discriminator(real), self.discriminator(fake.detach()))
        self.update(self.optimizer_d, loss_d)
        features, fake_logits = _features_and_logits(self.discriminator, fake)
        code = self.q_head(features)
        loss_info = losses.info_categorical_loss(code[:, :k], categories) + self.options["continuous_weight"] * losses.info_gaussian_loss(
            code[:, k:], continuous
        )
        loss_g = losses.non_saturating_generator_loss(fake_logits)
        self.update(self.optimizer_g, loss_g + self.options["info_weight"] * loss_info)
        return {"d": loss_d, "g": loss_g, "info": loss_info}

    @torch.no_grad()
    def sample(self, count: int) -> Tensor:
        """Row ``r`` of 8 (in an 8-column grid) uses category ``r mod categories``: rows show what the code means."""
        categories = (torch.arange(count) // 8 % self.options["categories"]).to(self.device)
        self.generator.eval()
        images = self.generator(self.latent(count, categories)[0])
        self.generator.train()
        return images


# -------------------------------------------------------------------------------------------- CycleGAN


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"), nn.InstanceNorm2d(channels, affine=True), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, padding=1, padding_mode="reflect"), nn.InstanceNorm2d(channels, affine=True),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


def _cyclegan_generator(width: int, blocks: int = 2) -> nn.Sequential:
    """CycleGAN's ResNet generator, shortened: 7x7 conv, one stride-2 down conv, residual blocks, one up conv,
    7x7 conv and tanh, with instance norm."""
    return nn.Sequential(
        nn.Conv2d(3, width, 7, padding=3, padding_mode="reflect"), nn.InstanceNorm2d(width, affine=True), nn.ReLU(),
        nn.Conv2d(width, width * 2, 3, 2, 1), nn.InstanceNorm2d(width * 2, affine=True), nn.ReLU(),
        *[_ResidualBlock(width * 2) for _ in range(blocks)],
        nn.ConvTranspose2d(width * 2, width, 3, 2, 1, output_padding=1), nn.InstanceNorm2d(width, affine=True), nn.ReLU(),
        nn.Conv2d(width, 3, 7, padding=3, padding_mode="reflect"), nn.Tanh(),
    )


def _patch_discriminator(width: int) -> nn.Sequential:
    """CycleGAN's PatchGAN D, shortened: 4x4 convs (stride 2, 2, 1) with instance norm and LeakyReLU(0.2), one
    logit per patch."""
    return nn.Sequential(
        nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2),
        nn.Conv2d(width, width * 2, 4, 2, 1), nn.InstanceNorm2d(width * 2, affine=True), nn.LeakyReLU(0.2),
        nn.Conv2d(width * 2, 1, 3, 1, 1),
    )


class CycleGAN(Recipe):
    """Zhu et al. 2017: two generators ``G: A -> B``, ``F: B -> A`` and two PatchGAN discriminators with the
    least-squares loss; G and F also minimise ``lambda (|F(G(a)) - a| + |G(F(b)) - b|)`` (cycle consistency,
    lambda 10) and ``0.5 lambda (|G(b) - b| + |F(a) - a|)`` (identity); each D is updated on a 50-image
    :class:`ganops.ImagePool` of past fakes, its loss halved; Adam (2e-4, 0.5). Domain A is the shapes in red to
    yellow-green hues (:data:`ganops.data.CYCLEGAN_HUES`), B the same kind of images with colours swapped
    (:func:`ganops.data.swap_colours`: blue to magenta), drawn independently (unpaired)."""

    name = "cyclegan"
    paper = "Zhu et al. 2017, Unpaired Image-to-Image Translation (CycleGAN)"
    ops = "losses.cycle_consistency, identity, least_squares, ImagePool"
    DEFAULTS = {"lr": 2e-4, "cycle_weight": 10.0, "identity_weight": 5.0, "pool_size": 50}
    demo_steps = 150
    demo_width = 8
    demo_options = {"lr": 1e-3}

    def build(self) -> None:
        width = self.config.width
        self.g_ab, self.g_ba = _cyclegan_generator(width), _cyclegan_generator(width)
        self.d_a, self.d_b = _patch_discriminator(width), _patch_discriminator(width)
        self.pool_a = training_utils.ImagePool(self.options["pool_size"], torch.Generator().manual_seed(self.config.seed + 3))
        self.pool_b = training_utils.ImagePool(self.options["pool_size"], torch.Generator().manual_seed(self.config.seed + 4))

    def setup(self) -> None:
        lr = self.options["lr"]
        self.optimizer_g = self.adam([*self.g_ab.parameters(), *self.g_ba.parameters()], lr, (0.5, 0.999))
        self.optimizer_d = self.adam([*self.d_a.parameters(), *self.d_b.parameters()], lr, (0.5, 0.999))

    def networks(self) -> dict[str, nn.Module]:
        return {"g_ab": self.g_ab, "g_ba": self.g_ba, "d_a": self.d_a, "d_b": self.d_b}

    def train_step(self) -> dict[str, Tensor]:
        options = self.options
        a, b = self.domain_a(), data.swap_colours(self.domain_a())
        fake_b, fake_a = self.g_ab(a), self.g_ba(b)
        adversarial = losses.least_squares_generator_loss(self.d_b(fake_b)) + losses.least_squares_generator_loss(self.d_a(fake_a))
        cycle = losses.cycle_consistency(a, self.g_ba(fake_b)) + losses.cycle_consistency(b, self.g_ab(fake_a))
        same = losses.identity(b, self.g_ab(b)) + losses.identity(a, self.g_ba(a))
        loss_g = adversarial + options["cycle_weight"] * cycle + options["identity_weight"] * same
        self.update(self.optimizer_g, loss_g)
        loss_d = 0.5 * (
            losses.least_squares_discriminator_loss(self.d_a(a), self.d_a(self.pool_a.query(fake_a)))
            + losses.least_squares_discriminator_loss(self.d_b(b), self.d_b(self.pool_b.query(fake_b)))
        )
        self.update(self.optimizer_d, loss_d)
        return {"d": loss_d, "g": adversarial, "cycle": cycle}

    def domain_a(self, count: int | None = None, generator: torch.Generator | None = None) -> Tensor:
        """Images of domain A from the recipe's data stream (or from ``generator``)."""
        images = data.random_batch(
            count or self.config.batch_size, generator or self.data, self.config.image_size, hues=data.CYCLEGAN_HUES
        )
        return images.to(self.device, self.dtype)

    @torch.no_grad()
    def translation_error(self, count: int = 64) -> float:
        """Mean absolute error of ``G(a)`` against the true colour swap of ``a`` (the data is secretly paired), on a
        fixed set of ``count`` images of domain A."""
        a = self.domain_a(count, torch.Generator().manual_seed(12345))
        return float((self.g_ab(a) - data.swap_colours(a)).abs().mean())

    def identity_error(self, count: int = 64) -> float:
        """:meth:`translation_error` of the identity map, the error of a G that learnt nothing but to copy."""
        a = self.domain_a(count, torch.Generator().manual_seed(12345))
        return float((a - data.swap_colours(a)).abs().mean())

    @torch.no_grad()
    def sample(self, count: int) -> Tensor:
        """Rows of 8: inputs ``a``, ``G(a)``, the true swap, alternating (``count`` rounded down to 24s)."""
        a = self.domain_a(max(8, count // 3), torch.Generator().manual_seed(54321))
        rows = [torch.stack([a[i : i + 8], self.g_ab(a[i : i + 8]), data.swap_colours(a[i : i + 8])]) for i in range(0, a.shape[0] - 7, 8)]
        return torch.cat([row.flatten(0, 1) for row in rows])


# --------------------------------------------------------------------------------------------- VAE-GAN


class _Encoder(nn.Module):
    """Strided 4x4 convs with batch norm and ReLU, then linear maps to the posterior's mean and log-variance."""

    def __init__(self, z_dim: int, image_size: int, width: int) -> None:
        super().__init__()
        body = models.DCGANDiscriminator(image_size, width, normalization="batch").main
        self.body = nn.Sequential(*body[:-1], nn.Flatten())
        features = width * image_size // 8 * 16
        self.mean, self.log_var = nn.Linear(features, z_dim), nn.Linear(features, z_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = self.body(x)
        return self.mean(h), self.log_var(h)


class VAEGAN(Recipe):
    """Larsen et al. 2016: a VAE whose decoder is the GAN's generator and whose reconstruction error is measured
    in the features of D's last hidden layer (:func:`ganops.losses.vaegan_feature_reconstruction_loss`).
    Encoder: ``L_prior + L_llike``; decoder: ``gamma L_llike + L_GAN`` on reconstructions and prior samples;
    D: the GAN loss on data, reconstructions and prior samples (here with spectral norm on D's layers to keep the
    feature scale bounded). RMSprop (3e-4) as in the paper."""

    name = "vaegan"
    paper = "Larsen et al. 2016, Autoencoding beyond pixels using a learned similarity metric"
    ops = "spectral_norm (fused), losses.vaegan_kl_loss, vaegan_feature_reconstruction_loss"
    DEFAULTS = {"lr": 3e-4, "gamma": 1e-2, "kl_weight": 1.0}
    demo_steps = 300
    demo_options = {"lr": 1e-3}

    def build(self) -> None:
        config = self.config
        self.encoder = _Encoder(config.z_dim, config.image_size, config.width)
        self.generator, self.discriminator = self.dcgan_pair(normalization="spectral")

    def setup(self) -> None:
        lr = self.options["lr"]
        self.optimizer_e = torch.optim.RMSprop(self.encoder.parameters(), lr=lr)
        self.optimizer_g = torch.optim.RMSprop(self.generator.parameters(), lr=lr)
        self.optimizer_d = torch.optim.RMSprop(self.discriminator.parameters(), lr=lr)

    def networks(self) -> dict[str, nn.Module]:
        return {"encoder": self.encoder, "generator": self.generator, "discriminator": self.discriminator}

    def train_step(self) -> dict[str, Tensor]:
        options, batch = self.options, self.config.batch_size
        real = self.real_images()
        mean, log_var = self.encoder(real)
        reconstruction = self.generator(mean + torch.exp(0.5 * log_var) * self.randn(*mean.shape))
        prior_sample = self.generator(self.randn(batch, self.config.z_dim))
        fakes = torch.cat([reconstruction, prior_sample])

        real_logits = self.discriminator(real)
        loss_d = losses.non_saturating_discriminator_loss(real_logits, self.discriminator(fakes.detach()))
        self.update(self.optimizer_d, loss_d)

        real_features, _ = _features_and_logits(self.discriminator, real)
        reconstruction_features, _ = _features_and_logits(self.discriminator, reconstruction)
        llike = losses.vaegan_feature_reconstruction_loss(real_features.detach(), reconstruction_features)
        kl = losses.vaegan_kl_loss(mean, log_var)
        loss_gan = losses.non_saturating_generator_loss(self.discriminator(fakes))
        encoder_parameters, generator_parameters = list(self.encoder.parameters()), list(self.generator.parameters())
        self.optimizer_e.zero_grad(set_to_none=True)
        self.optimizer_g.zero_grad(set_to_none=True)
        (options["kl_weight"] * kl + llike).backward(inputs=encoder_parameters, retain_graph=True)
        (options["gamma"] * llike + loss_gan).backward(inputs=generator_parameters)
        self.optimizer_e.step()
        self.optimizer_g.step()
        return {"d": loss_d, "g": loss_gan, "kl": kl, "llike": llike}

    def sample(self, count: int) -> Tensor:
        return self._sample_from(self.generator, count)


# ---------------------------------------------------------------------------------------------- SeqGAN


class _TokenGenerator(nn.Module):
    """An embedding, a GRU and a softmax over the vocabulary; token 0 (".") also starts every sequence."""

    def __init__(self, vocabulary: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.output = nn.Linear(hidden, vocabulary)

    def log_probs(self, tokens: Tensor) -> Tensor:
        """``log G(y_t | y_<t)`` of every next token, ``[N, T, V]``, for teacher-forced ``tokens [N, T]``."""
        start = torch.zeros_like(tokens[:, :1])
        hidden, _ = self.gru(self.embedding(torch.cat([start, tokens[:, :-1]], dim=1)))
        return self.output(hidden).log_softmax(dim=-1)

    @torch.no_grad()
    def complete(self, prefix: Tensor, length: int, generator: torch.Generator) -> Tensor:
        """Sample the tokens after ``prefix [N, t]`` up to ``length`` (``t = 0``: whole sequences)."""
        count = prefix.shape[0]
        inputs = torch.cat([torch.zeros(count, 1, dtype=torch.int64, device=prefix.device), prefix], dim=1)
        hidden_states, state = self.gru(self.embedding(inputs))
        logits = self.output(hidden_states[:, -1])
        tokens = [prefix]
        for _ in range(length - prefix.shape[1]):
            probabilities = logits.double().softmax(dim=-1).cpu()
            token = torch.multinomial(probabilities, 1, generator=generator).to(prefix.device)
            tokens.append(token)
            hidden_state, state = self.gru(self.embedding(token), state)
            logits = self.output(hidden_state[:, -1])
        return torch.cat(tokens, dim=1)


class _TokenDiscriminator(nn.Module):
    """An embedding, a GRU over the whole sequence and a linear layer to one logit."""

    def __init__(self, vocabulary: int, hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocabulary, hidden)
        self.gru = nn.GRU(hidden, hidden, batch_first=True)
        self.output = nn.Linear(hidden, 1)

    def forward(self, tokens: Tensor) -> Tensor:
        _, state = self.gru(self.embedding(tokens))
        return self.output(state[-1]).flatten()


class SeqGAN(Recipe):
    """Yu et al. 2017 on the toy grammar of :func:`ganops.data.grammar_sentences`: G (a GRU) is pre-trained by
    maximum likelihood for ``pretrain_steps``, then trained by policy gradient (:func:`ganops.losses.policy_gradient`)
    with per-step rewards ``Q(Y_1:t-1, y_t)`` = D's mean probability of "real" over ``rollouts`` Monte-Carlo
    completions of ``Y_1:t`` (D's output on the sequence itself at ``t = T``), minus the batch mean reward of
    each step as the baseline, at a learning rate 10x lower than pre-training's (``adversarial_lr``). The rollout policy is G itself (the paper uses a delayed copy). D (a GRU
    classifier) is trained with the non-saturating loss on real and generated sentences."""

    name = "seqgan"
    paper = "Yu et al. 2017, SeqGAN: Sequence GANs with Policy Gradient"
    ops = "losses.policy_gradient"
    DEFAULTS = {"hidden": 32, "lr": 1e-2, "adversarial_lr": 1e-3, "lr_d": 1e-3, "pretrain_steps": 100, "rollouts": 4}
    demo_steps = 160
    demo_options = {"rollouts": 2}

    def build(self) -> None:
        vocabulary, hidden = len(data.VOCABULARY), self.options["hidden"]
        self.generator = _TokenGenerator(vocabulary, hidden)
        self.discriminator = _TokenDiscriminator(vocabulary, hidden)

    def setup(self) -> None:
        self.optimizer_g = self.adam(self.generator, self.options["lr"], (0.9, 0.999))
        self.optimizer_d = self.adam(self.discriminator, self.options["lr_d"], (0.9, 0.999))

    def networks(self) -> dict[str, nn.Module]:
        return {"generator": self.generator, "discriminator": self.discriminator}

    def real_sentences(self) -> Tensor:
        return data.grammar_sentences(self.config.batch_size, self.data).to(self.device)

    def sequences(self, count: int) -> Tensor:
        return self.generator.complete(torch.zeros(count, 0, dtype=torch.int64, device=self.device), data.SENTENCE_LENGTH, self.noise)

    @torch.no_grad()
    def rewards(self, sequences: Tensor) -> Tensor:
        """``[N, T]``: Monte-Carlo estimates of D's probability of "real" after each token."""
        length, rollouts = sequences.shape[1], self.options["rollouts"]
        columns = []
        for t in range(1, length):
            completions = [self.generator.complete(sequences[:, :t], length, self.noise) for _ in range(rollouts)]
            columns.append(torch.stack([torch.sigmoid(self.discriminator(c)) for c in completions]).mean(dim=0))
        columns.append(torch.sigmoid(self.discriminator(sequences)))
        return torch.stack(columns, dim=1)

    def train_step(self) -> dict[str, Tensor]:
        real = self.real_sentences()
        if self.steps_done < self.options["pretrain_steps"]:
            log_probs = self.generator.log_probs(real)
            loss_g = F.nll_loss(log_probs.flatten(0, 1), real.flatten())
            self.update(self.optimizer_g, loss_g)
            fake = self.sequences(real.shape[0])
        else:
            if self.steps_done == self.options["pretrain_steps"]:
                for group in self.optimizer_g.param_groups:
                    group["lr"] = self.options["adversarial_lr"]
            fake = self.sequences(real.shape[0])
            rewards = self.rewards(fake)
            chosen = self.generator.log_probs(fake).gather(2, fake[..., None])[..., 0]
            loss_g = losses.policy_gradient(chosen, rewards, baseline=rewards.mean(dim=0, keepdim=True))
            self.update(self.optimizer_g, loss_g)
        loss_d = losses.non_saturating_discriminator_loss(self.discriminator(real), self.discriminator(fake))
        self.update(self.optimizer_d, loss_d)
        return {"d": loss_d, "g": loss_g, "grammatical": data.is_grammatical(fake).double().mean()}

    def sample(self, count: int) -> Tensor:
        return self.sequences(count)


RECIPES: dict[str, type[Recipe]] = {
    recipe.name: recipe
    for recipe in (GAN, DCGAN, LSGAN, WGAN, WGANGP, ImprovedGAN, RGAN, ProGAN, SAGAN, BEGAN, InfoGAN, CycleGAN, VAEGAN, SeqGAN)
}


def build(name: str, config: RecipeConfig | None = None) -> Recipe:
    """The recipe ``name`` (a key of :data:`RECIPES`) built with ``config``."""
    if name not in RECIPES:
        raise ValueError(f"recipes.build: name must be one of {tuple(RECIPES)}, got {name!r}")
    return RECIPES[name](config)


def learning_metric(recipe: Recipe, seed: int = 0) -> Callable[[], float]:
    """The number that shows whether ``recipe`` learns, as a function of its current state (its docstring names
    it): for the image recipes the sliced Wasserstein distance of 512 samples to 512 real images (lower is
    better), for CycleGAN the fraction of G(a)'s saturated pixels with domain B's hues, for SeqGAN the fraction
    of 200 sampled sentences that are grammatical (higher is better). The real images and CycleGAN's inputs are
    fixed by ``seed``; sampling draws from the recipe's noise stream and restores it, so that measuring leaves
    training unchanged. The demo prints it; the learning tests check it."""

    def restoring_noise(measure: Callable[[], float]) -> Callable[[], float]:
        def measured() -> float:
            state = recipe.noise.get_state()
            try:
                with torch.no_grad():
                    return measure()
            finally:
                recipe.noise.set_state(state)
        measured.__doc__ = measure.__doc__
        return measured

    if isinstance(recipe, SeqGAN):
        def grammatical() -> float:
            """fraction of 200 sampled sentences that are grammatical"""
            return float(data.is_grammatical(recipe.sample(200)).double().mean())
        return restoring_noise(grammatical)
    if isinstance(recipe, CycleGAN):
        domain_a = recipe.domain_a(256, torch.Generator().manual_seed(seed + 99))

        def in_domain_b() -> float:
            """fraction of G(a)'s saturated pixels with domain B's hues (ganops.data.hue_fraction)"""
            return data.hue_fraction(recipe.g_ab(domain_a), data.CYCLEGAN_SWAPPED_HUES)
        return restoring_noise(in_domain_b)
    real = data.random_batch(512, torch.Generator().manual_seed(seed + 123), recipe.config.image_size)

    def distance() -> float:
        """distance of 512 samples to 512 real images (ganops.data.sliced_wasserstein_distance)"""
        samples = recipe.sample(512)[:512]
        return data.sliced_wasserstein_distance(samples, real[: samples.shape[0]])
    return restoring_noise(distance)


__all__ = ["RECIPES", "Recipe", "RecipeConfig", "build", "learning_metric", *(recipe.__name__ for recipe in RECIPES.values())]
