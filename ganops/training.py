"""Training loops shared by the demo (``python -m ganops demo``), the end-to-end benchmark
(``benchmarks/e2e.py``) and the tests: :class:`GANTrainer` (one D step with the gradient penalty for WGAN-GP,
then one G step), :func:`make_trainer` with the demo's models and Adam settings, and :class:`LazyRegularizer`
(StyleGAN2's lazy regularisation).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ganops import losses, models
from ganops.ops.gradient_penalty import gradient_penalty

LOSSES = ("hinge", "wgan-gp")
# Per model: width, learning rates (G, D), Adam betas. SAGAN keeps the paper's betas and a faster D, at higher
# rates: with 2e-4 / 4e-4 and width 8 a run of a few CPU minutes ends on colour blobs, while 1e-3 / 2e-3 with
# width 32, two D steps per G step, at 16x16 gives flat shapes in 1000 steps (benchmarks/NOTES.md: what was tried).
DEMO_SETTINGS = {
    "sagan": {"width": 32, "lr_g": 1e-3, "lr_d": 2e-3, "betas": (0.0, 0.9)},
    "dcgan": {"width": 32, "lr_g": 2e-4, "lr_d": 2e-4, "betas": (0.5, 0.999)},
}


@dataclass
class GANTrainer:
    """One training step: a D step (loss on real and detached fake, plus the penalty for ``"wgan-gp"``),
    then a G step. ``backend`` goes to the penalty's fused ops (``"reference"`` for the reference build)."""

    generator: nn.Module
    discriminator: nn.Module
    optimizer_g: torch.optim.Optimizer
    optimizer_d: torch.optim.Optimizer
    loss: str = "hinge"
    penalty_weight: float = 10.0
    backend: str | None = None
    history: dict[str, list[float]] = field(default_factory=lambda: {"d": [], "g": [], "penalty": []})

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"GANTrainer: loss must be one of {LOSSES}, got {self.loss!r}")

    @property
    def loss_kind(self) -> str:
        return "hinge" if self.loss == "hinge" else "wasserstein"

    def discriminator_step(self, real: Tensor, z: Tensor) -> tuple[Tensor, Tensor]:
        """One D update on ``real`` and ``G(z)``; returns the detached D loss and penalty (0 for hinge)."""
        generator, discriminator = self.generator, self.discriminator
        self.optimizer_d.zero_grad(set_to_none=True)
        with torch.no_grad():
            fake = generator(z)
        loss_d = losses.discriminator_loss(self.loss_kind, discriminator(real), discriminator(fake))
        penalty = torch.zeros((), dtype=real.dtype, device=real.device)
        if self.loss == "wgan-gp":
            penalty = gradient_penalty(
                discriminator, real, fake, kind="wgan-gp", weight=self.penalty_weight, backend=self.backend
            )
        (loss_d + penalty).backward()
        self.optimizer_d.step()
        return loss_d.detach(), penalty.detach()

    def generator_step(self, z: Tensor) -> Tensor:
        """One G update on ``G(z)``; returns the detached G loss."""
        self.optimizer_g.zero_grad(set_to_none=True)
        loss_g = losses.generator_loss(self.loss_kind, self.discriminator(self.generator(z)))
        loss_g.backward()
        self.optimizer_g.step()
        return loss_g.detach()

    def step(self, real: Tensor, z_d: Tensor, z_g: Tensor, record: bool = True) -> dict[str, Tensor]:
        """One D step on ``real`` and ``G(z_d)``, one G step on ``G(z_g)``; returns the detached losses."""
        loss_d, penalty = self.discriminator_step(real, z_d)
        result = {"d": loss_d, "g": self.generator_step(z_g), "penalty": penalty}
        if record:
            for key, value in result.items():
                self.history[key].append(float(value))
        return result


def make_trainer(
    model: str = "sagan",
    loss: str = "hinge",
    image_size: int = 32,
    width: int | None = None,
    z_dim: int = 64,
    *,
    minibatch_stddev: bool = False,
    use_reference_ops: bool = False,
    backend: str | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> GANTrainer:
    """A :class:`GANTrainer` with the demo's models (:func:`ganops.models.build`) and Adam settings."""
    if model not in DEMO_SETTINGS:
        raise ValueError(f"make_trainer: model must be one of {models.MODELS}, got {model!r}")
    settings = DEMO_SETTINGS[model]
    generator, discriminator = models.build(
        model, image_size, width or settings["width"], z_dim, minibatch_stddev=minibatch_stddev,
        # Radford's batch norm in D would couple the samples that WGAN-GP penalises one by one.
        dcgan_normalization="batch" if loss == "hinge" else "spectral",
        use_reference_ops=use_reference_ops, backend=backend,
    )
    generator.to(device=device, dtype=dtype)
    discriminator.to(device=device, dtype=dtype)
    return GANTrainer(
        generator,
        discriminator,
        torch.optim.Adam(generator.parameters(), lr=settings["lr_g"], betas=settings["betas"]),
        torch.optim.Adam(discriminator.parameters(), lr=settings["lr_d"], betas=settings["betas"]),
        loss=loss,
        backend="reference" if use_reference_ops else backend,
    )


class LazyRegularizer:
    """StyleGAN2's lazy regularisation: the penalty only every ``interval`` D steps, scaled by ``interval`` so
    that its expected contribution is unchanged (Karras et al. 2020, section 3.1; StyleGAN2 uses R1 every 16
    steps). When the penalty is lazy, scale the optimiser's learning rate and betas as StyleGAN2 does:
    ``lr * c``, ``beta ** c`` with ``c = interval / (interval + 1)``, which :meth:`adam_hyperparameters` computes.

    >>> lazy_r1 = ganops.LazyRegularizer(interval=16)
    >>> for step, real in enumerate(loader):
    ...     loss_d = discriminator_loss("non-saturating", D(real), D(G(z).detach()))
    ...     penalty = lazy_r1(step, D, real, kind="r1", weight=gamma / 2)   # None on the other steps
    ...     (loss_d if penalty is None else loss_d + penalty).backward()
    """

    def __init__(self, interval: int = 16) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"LazyRegularizer: interval must be a positive int, got {interval!r}")
        self.interval = interval

    def due(self, step: int) -> bool:
        """Whether the penalty is applied at ``step`` (steps 0, interval, 2 * interval, ...)."""
        return step % self.interval == 0

    def adam_hyperparameters(self, lr: float, betas: tuple[float, float]) -> tuple[float, tuple[float, float]]:
        ratio = self.interval / (self.interval + 1)
        return lr * ratio, (betas[0] ** ratio, betas[1] ** ratio)

    def __call__(self, step: int, discriminator: Callable[..., Tensor], *args, weight: float = 10.0, **kwargs) -> Tensor | None:
        """:func:`gradient_penalty` with ``weight * interval`` at due steps, ``None`` at the others."""
        if not self.due(step):
            return None
        return gradient_penalty(discriminator, *args, weight=weight * self.interval, **kwargs)

    def __repr__(self) -> str:
        return f"LazyRegularizer(interval={self.interval})"
