"""GAN losses of the literature, computed from the discriminator's raw outputs (logits), numerically stable.

Every loss has a discriminator form and a generator form, reachable by name through
:func:`discriminator_loss` / :func:`generator_loss` or as a named function (``hinge_discriminator_loss``, ...).
All losses are means over the batch (and over any further dimensions of the logits, e.g. PatchGAN maps).

Stability: ``-log(sigmoid(t)) = softplus(-t)`` and ``-log(1 - sigmoid(t)) = softplus(t)``; softplus is
evaluated by torch without ever forming ``log(sigmoid(t))``, so logits of +-100 (or +-1e4) give finite values
and finite gradients.

Notation: ``r`` = D(real) logits, ``f`` = D(fake) logits; ``E`` = mean.

=====================================  ======================================================  ==========================================================
kind                                   discriminator loss                                       generator loss
=====================================  ======================================================  ==========================================================
``non-saturating`` (Goodfellow 2014)   ``E softplus(-r) + E softplus(f)``                       ``E softplus(-f)``  (= -E log D(G(z)))
``minimax`` (Goodfellow 2014)          same as non-saturating                                   ``-E softplus(f)``  (= E log(1 - D(G(z))))
``hinge`` (Lim & Ye; SAGAN, BigGAN)    ``E relu(1 - r) + E relu(1 + f)``                        ``-E f``
``wasserstein`` (Arjovsky 2017)        ``E f - E r``                                            ``-E f``
``least-squares`` (Mao 2017)           ``E (r - b)^2 / 2 + E (f - a)^2 / 2``                    ``E (f - c)^2 / 2``
``relativistic`` (RSGAN)               ``E softplus(-(r - f))``                                 ``E softplus(-(f - r))``
``relativistic-average`` (RaSGAN)      ``E softplus(-(r - E f)) + E softplus(f - E r)``          ``E softplus(-(f - E r)) + E softplus(r - E f)``
``relativistic-least-squares``         ``E (r - f - 1)^2``                                      ``E (f - r - 1)^2``
``relativistic-average-least-squares`` ``E (r - E f - 1)^2 + E (f - E r + 1)^2``                 ``E (f - E r - 1)^2 + E (r - E f + 1)^2``
``relativistic-hinge``                 ``E relu(1 - (r - f))``                                  ``E relu(1 - (f - r))``
``relativistic-average-hinge``         ``E relu(1 - (r - E f)) + E relu(1 + (f - E r))``         ``E relu(1 - (f - E r)) + E relu(1 + (r - E f))``
=====================================  ======================================================  ==========================================================

The relativistic losses (Jolicoeur-Martineau 2018) are written as in the paper (no factor 1/2); the paired
(non-average) forms pair ``r[i]`` with ``f[i]``, so ``real_logits`` and ``fake_logits`` must have one shape.
One-sided label smoothing (Salimans et al. 2016): ``real_label=0.9`` replaces the target 1 of the real samples
in the standard (non-saturating / minimax) discriminator loss by 0.9, i.e. ``E[0.9 softplus(-r) + 0.1 softplus(r)]``;
the fake target stays 0.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

KINDS = (
    "non-saturating",
    "minimax",
    "hinge",
    "wasserstein",
    "least-squares",
    "relativistic",
    "relativistic-average",
    "relativistic-least-squares",
    "relativistic-average-least-squares",
    "relativistic-hinge",
    "relativistic-average-hinge",
)
RELATIVISTIC_KINDS = tuple(kind for kind in KINDS if kind.startswith("relativistic"))


def _check_logits(name: str, logits, caller: str) -> None:
    if not isinstance(logits, Tensor):
        raise TypeError(f"{caller}: {name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{caller}: {name} must have a floating dtype, got {logits.dtype}")
    if logits.numel() == 0:
        raise ValueError(f"{caller}: {name} must not be empty, got shape {tuple(logits.shape)}")


def _check_pair(real_logits, fake_logits, caller: str, paired: bool) -> None:
    _check_logits("real_logits", real_logits, caller)
    _check_logits("fake_logits", fake_logits, caller)
    if paired and real_logits.shape != fake_logits.shape:
        raise ValueError(
            f"{caller}: real_logits and fake_logits must have the same shape (sample i of one is compared with "
            f"sample i of the other), got {tuple(real_logits.shape)} and {tuple(fake_logits.shape)}"
        )


def _check_real_label(real_label: float, caller: str) -> None:
    if isinstance(real_label, bool) or not isinstance(real_label, (int, float)) or not 0.0 <= real_label <= 1.0:
        raise ValueError(f"{caller}: real_label must be a float in [0, 1], got {real_label!r}")


# ----------------------------------------------------------------------------------------------- standard


def non_saturating_discriminator_loss(real_logits: Tensor, fake_logits: Tensor, real_label: float = 1.0) -> Tensor:
    """``-E[t log D(x) + (1 - t) log(1 - D(x))] - E log(1 - D(G(z)))`` with real target ``t = real_label``."""
    caller = "non_saturating_discriminator_loss"
    _check_pair(real_logits, fake_logits, caller, paired=False)
    _check_real_label(real_label, caller)
    real_term = F.softplus(-real_logits)
    if real_label != 1.0:
        real_term = real_label * real_term + (1.0 - real_label) * F.softplus(real_logits)
    return real_term.mean() + F.softplus(fake_logits).mean()


def non_saturating_generator_loss(fake_logits: Tensor) -> Tensor:
    """``-E log D(G(z))``: the generator loss Goodfellow et al. recommend in practice."""
    _check_logits("fake_logits", fake_logits, "non_saturating_generator_loss")
    return F.softplus(-fake_logits).mean()


def minimax_discriminator_loss(real_logits: Tensor, fake_logits: Tensor, real_label: float = 1.0) -> Tensor:
    """The discriminator side of the minimax game: identical to :func:`non_saturating_discriminator_loss`."""
    return non_saturating_discriminator_loss(real_logits, fake_logits, real_label)


def minimax_generator_loss(fake_logits: Tensor) -> Tensor:
    """``E log(1 - D(G(z)))`` (saturates when D rejects the fakes confidently)."""
    _check_logits("fake_logits", fake_logits, "minimax_generator_loss")
    return -F.softplus(fake_logits).mean()


# -------------------------------------------------------------------------- hinge, Wasserstein, least squares


def hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    _check_pair(real_logits, fake_logits, "hinge_discriminator_loss", paired=False)
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def hinge_generator_loss(fake_logits: Tensor) -> Tensor:
    _check_logits("fake_logits", fake_logits, "hinge_generator_loss")
    return -fake_logits.mean()


def wasserstein_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """The critic loss ``E D(G(z)) - E D(x)``; pair it with :func:`ganops.gradient_penalty` (WGAN-GP)."""
    _check_pair(real_logits, fake_logits, "wasserstein_discriminator_loss", paired=False)
    return fake_logits.mean() - real_logits.mean()


def wasserstein_generator_loss(fake_logits: Tensor) -> Tensor:
    _check_logits("fake_logits", fake_logits, "wasserstein_generator_loss")
    return -fake_logits.mean()


def least_squares_discriminator_loss(
    real_logits: Tensor, fake_logits: Tensor, a: float = 0.0, b: float = 1.0
) -> Tensor:
    """LSGAN: ``E (D(x) - b)^2 / 2 + E (D(G(z)) - a)^2 / 2`` (fake target ``a``, real target ``b``)."""
    _check_pair(real_logits, fake_logits, "least_squares_discriminator_loss", paired=False)
    return 0.5 * (real_logits - b).square().mean() + 0.5 * (fake_logits - a).square().mean()


def least_squares_generator_loss(fake_logits: Tensor, c: float = 1.0) -> Tensor:
    """LSGAN: ``E (D(G(z)) - c)^2 / 2`` (``c`` is the value G wants D to believe for fakes)."""
    _check_logits("fake_logits", fake_logits, "least_squares_generator_loss")
    return 0.5 * (fake_logits - c).square().mean()


# ------------------------------------------------------------------------------------------- relativistic


def _relativistic_differences(real_logits: Tensor, fake_logits: Tensor, caller: str) -> tuple[Tensor, Tensor]:
    """``(r - f, f - r)``, sample by sample."""
    _check_pair(real_logits, fake_logits, caller, paired=True)
    return real_logits - fake_logits, fake_logits - real_logits


def _average_differences(real_logits: Tensor, fake_logits: Tensor, caller: str) -> tuple[Tensor, Tensor]:
    """``(r - E f, f - E r)``: each sample against the mean of the other batch."""
    _check_pair(real_logits, fake_logits, caller, paired=False)
    return real_logits - fake_logits.mean(), fake_logits - real_logits.mean()


def relativistic_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    real_vs_fake, _ = _relativistic_differences(real_logits, fake_logits, "relativistic_discriminator_loss")
    return F.softplus(-real_vs_fake).mean()


def relativistic_generator_loss(fake_logits: Tensor, real_logits: Tensor) -> Tensor:
    _, fake_vs_real = _relativistic_differences(real_logits, fake_logits, "relativistic_generator_loss")
    return F.softplus(-fake_vs_real).mean()


def relativistic_average_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    real_vs_fake, fake_vs_real = _average_differences(
        real_logits, fake_logits, "relativistic_average_discriminator_loss"
    )
    return F.softplus(-real_vs_fake).mean() + F.softplus(fake_vs_real).mean()


def relativistic_average_generator_loss(fake_logits: Tensor, real_logits: Tensor) -> Tensor:
    real_vs_fake, fake_vs_real = _average_differences(real_logits, fake_logits, "relativistic_average_generator_loss")
    return F.softplus(-fake_vs_real).mean() + F.softplus(real_vs_fake).mean()


def relativistic_least_squares_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    real_vs_fake, _ = _relativistic_differences(
        real_logits, fake_logits, "relativistic_least_squares_discriminator_loss"
    )
    return (real_vs_fake - 1.0).square().mean()


def relativistic_least_squares_generator_loss(fake_logits: Tensor, real_logits: Tensor) -> Tensor:
    _, fake_vs_real = _relativistic_differences(real_logits, fake_logits, "relativistic_least_squares_generator_loss")
    return (fake_vs_real - 1.0).square().mean()


def relativistic_average_least_squares_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    real_vs_fake, fake_vs_real = _average_differences(
        real_logits, fake_logits, "relativistic_average_least_squares_discriminator_loss"
    )
    return (real_vs_fake - 1.0).square().mean() + (fake_vs_real + 1.0).square().mean()


def relativistic_average_least_squares_generator_loss(fake_logits: Tensor, real_logits: Tensor) -> Tensor:
    real_vs_fake, fake_vs_real = _average_differences(
        real_logits, fake_logits, "relativistic_average_least_squares_generator_loss"
    )
    return (fake_vs_real - 1.0).square().mean() + (real_vs_fake + 1.0).square().mean()


def relativistic_hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    real_vs_fake, _ = _relativistic_differences(real_logits, fake_logits, "relativistic_hinge_discriminator_loss")
    return F.relu(1.0 - real_vs_fake).mean()


def relativistic_hinge_generator_loss(fake_logits: Tensor, real_logits: Tensor) -> Tensor:
    _, fake_vs_real = _relativistic_differences(real_logits, fake_logits, "relativistic_hinge_generator_loss")
    return F.relu(1.0 - fake_vs_real).mean()


def relativistic_average_hinge_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    real_vs_fake, fake_vs_real = _average_differences(
        real_logits, fake_logits, "relativistic_average_hinge_discriminator_loss"
    )
    return F.relu(1.0 - real_vs_fake).mean() + F.relu(1.0 + fake_vs_real).mean()


def relativistic_average_hinge_generator_loss(fake_logits: Tensor, real_logits: Tensor) -> Tensor:
    real_vs_fake, fake_vs_real = _average_differences(
        real_logits, fake_logits, "relativistic_average_hinge_generator_loss"
    )
    return F.relu(1.0 - fake_vs_real).mean() + F.relu(1.0 + real_vs_fake).mean()


# ------------------------------------------------------------------------------------------------ by name

_DISCRIMINATOR_LOSSES = {
    "non-saturating": non_saturating_discriminator_loss,
    "minimax": minimax_discriminator_loss,
    "hinge": hinge_discriminator_loss,
    "wasserstein": wasserstein_discriminator_loss,
    "least-squares": least_squares_discriminator_loss,
    "relativistic": relativistic_discriminator_loss,
    "relativistic-average": relativistic_average_discriminator_loss,
    "relativistic-least-squares": relativistic_least_squares_discriminator_loss,
    "relativistic-average-least-squares": relativistic_average_least_squares_discriminator_loss,
    "relativistic-hinge": relativistic_hinge_discriminator_loss,
    "relativistic-average-hinge": relativistic_average_hinge_discriminator_loss,
}
_GENERATOR_LOSSES = {
    "non-saturating": non_saturating_generator_loss,
    "minimax": minimax_generator_loss,
    "hinge": hinge_generator_loss,
    "wasserstein": wasserstein_generator_loss,
    "least-squares": least_squares_generator_loss,
    "relativistic": relativistic_generator_loss,
    "relativistic-average": relativistic_average_generator_loss,
    "relativistic-least-squares": relativistic_least_squares_generator_loss,
    "relativistic-average-least-squares": relativistic_average_least_squares_generator_loss,
    "relativistic-hinge": relativistic_hinge_generator_loss,
    "relativistic-average-hinge": relativistic_average_hinge_generator_loss,
}


def _check_kind(kind, caller: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"{caller}: kind must be one of {KINDS}, got {kind!r}")


def discriminator_loss(kind: str, real_logits: Tensor, fake_logits: Tensor, **options) -> Tensor:
    """The discriminator loss ``kind`` (see the module docstring); ``options`` are the named function's
    keyword arguments (``real_label`` for non-saturating/minimax, ``a``/``b`` for least-squares).

    >>> loss_d = discriminator_loss("hinge", D(x), D(G(z).detach()))
    """
    _check_kind(kind, "discriminator_loss")
    return _DISCRIMINATOR_LOSSES[kind](real_logits, fake_logits, **options)


def generator_loss(kind: str, fake_logits: Tensor, real_logits: Tensor | None = None, **options) -> Tensor:
    """The generator loss ``kind``; the relativistic kinds also need ``real_logits`` (``c`` for least-squares).

    >>> loss_g = generator_loss("relativistic-average", D(G(z)), D(x))
    """
    _check_kind(kind, "generator_loss")
    function = _GENERATOR_LOSSES[kind]
    if kind in RELATIVISTIC_KINDS:
        if real_logits is None:
            raise ValueError(f"generator_loss: kind {kind!r} compares fakes with reals and needs real_logits")
        return function(fake_logits, real_logits, **options)
    if real_logits is not None:
        raise ValueError(f"generator_loss: kind {kind!r} does not use real_logits; pass None")
    return function(fake_logits, **options)


__all__ = ["KINDS", "discriminator_loss", "generator_loss"] + [
    function.__name__ for function in (*_DISCRIMINATOR_LOSSES.values(), *_GENERATOR_LOSSES.values())
]
