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

Losses of other GAN families, by name only (they take features, reconstructions, codes or rewards, not a pair
of logits): :func:`feature_matching` (improved GAN), ``began_*`` and :class:`BEGANBalance`, ``info_*`` (InfoGAN),
:func:`cycle_consistency` / :func:`identity` (CycleGAN), ``vaegan_*`` and :func:`policy_gradient` (SeqGAN).
"""

from __future__ import annotations

import math

import torch
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


# ------------------------------------------------------------------------- losses of other GAN families
#
# These are not of the form (real logits, fake logits), so they are reached by name only (not through
# discriminator_loss / generator_loss).


def _check_same_shape(first_name: str, first, second_name: str, second, caller: str) -> None:
    _check_logits(first_name, first, caller)
    _check_logits(second_name, second, caller)
    if first.shape != second.shape:
        raise ValueError(
            f"{caller}: {first_name} and {second_name} must have the same shape, got {tuple(first.shape)} and {tuple(second.shape)}"
        )


def feature_matching(real_features: Tensor, fake_features: Tensor) -> Tensor:
    """Feature matching (Salimans et al. 2016, section 3.1), G's loss ``||E_x f(x) - E_z f(G(z))||_2^2 / d``:
    the squared distance between the batch means of an intermediate D layer's ``d`` features on real and on
    generated data (divided by ``d``, as OpenAI's code does, so the scale does not grow with the layer's width).
    ``real_features`` are constants of G's loss (detached here). Inputs ``[N, ...]``; batch sizes may differ."""
    caller = "feature_matching"
    _check_logits("real_features", real_features, caller)
    _check_logits("fake_features", fake_features, caller)
    if real_features.shape[1:] != fake_features.shape[1:]:
        raise ValueError(
            f"{caller}: real_features and fake_features must have the same shape after the batch dimension, "
            f"got {tuple(real_features.shape)} and {tuple(fake_features.shape)}"
        )
    return (real_features.detach().mean(dim=0) - fake_features.mean(dim=0)).square().mean()


# BEGAN (Berthelot et al. 2017): D is an autoencoder; L(v) = |v - D(v)| (eta = 1).


def began_reconstruction_loss(images: Tensor, reconstructions: Tensor) -> Tensor:
    """BEGAN's ``L(v) = E |v - D(v)|`` (the L1 autoencoder loss, a mean over every element)."""
    _check_same_shape("images", images, "reconstructions", reconstructions, "began_reconstruction_loss")
    return (images - reconstructions).abs().mean()


def began_discriminator_loss(real_reconstruction_loss: Tensor, fake_reconstruction_loss: Tensor, k: float) -> Tensor:
    """BEGAN's ``L_D = L(x) - k_t L(G(z_D))`` (``k_t`` from :class:`BEGANBalance`)."""
    return real_reconstruction_loss - k * fake_reconstruction_loss


def began_generator_loss(fake_reconstruction_loss: Tensor) -> Tensor:
    """BEGAN's ``L_G = L(G(z_G))``."""
    return fake_reconstruction_loss


def _scalar(value: Tensor | float) -> float:
    return value.detach().item() if isinstance(value, Tensor) else float(value)


class BEGANBalance:
    """BEGAN's equilibrium control (Berthelot et al. 2017, section 3.4): the weight ``k_t`` of the fake term in
    D's loss, updated by proportional control towards ``E L(G(z)) = gamma E L(x)``:

        k_{t+1} = clamp(k_t + lambda_k (gamma L(x) - L(G(z))), 0, 1)        (k_0 = 0, lambda_k = 0.001)

    and the convergence measure ``M = L(x) + |gamma L(x) - L(G(z))|``, which decreases as training converges.
    ``gamma`` (the diversity ratio) trades diversity (high) for quality (low).
    """

    def __init__(self, gamma: float = 0.5, lambda_k: float = 1e-3, k: float = 0.0) -> None:
        for name, value in (("gamma", gamma), ("lambda_k", lambda_k), ("k", k)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise ValueError(f"BEGANBalance: {name} must be a float in [0, 1], got {value!r}")
        self.gamma = float(gamma)
        self.lambda_k = float(lambda_k)
        self.k = float(k)

    def update(self, real_reconstruction_loss: Tensor | float, fake_reconstruction_loss: Tensor | float) -> float:
        """One proportional-control step of ``k`` from this step's ``L(x)`` and ``L(G(z_G))``; returns the new ``k``."""
        balance = self.gamma * _scalar(real_reconstruction_loss) - _scalar(fake_reconstruction_loss)
        self.k = min(max(self.k + self.lambda_k * balance, 0.0), 1.0)
        return self.k

    def convergence(self, real_reconstruction_loss: Tensor | float, fake_reconstruction_loss: Tensor | float) -> float:
        """``M_global = L(x) + |gamma L(x) - L(G(z_G))|``."""
        real = _scalar(real_reconstruction_loss)
        return real + abs(self.gamma * real - _scalar(fake_reconstruction_loss))

    def state_dict(self) -> dict:
        return {"gamma": self.gamma, "lambda_k": self.lambda_k, "k": self.k}

    def load_state_dict(self, state: dict) -> None:
        self.gamma, self.lambda_k, self.k = float(state["gamma"]), float(state["lambda_k"]), float(state["k"])

    def __repr__(self) -> str:
        return f"BEGANBalance(gamma={self.gamma}, lambda_k={self.lambda_k}, k={self.k})"


# InfoGAN (Chen et al. 2016): the variational lower bound L_I(G, Q) = E[log Q(c | G(z, c))] + H(c) of the
# mutual information; the losses below are -E log Q(c | x) (H(c) is a constant), to be added to both G's and
# (for the Q head) D's losses with weight lambda.


def info_categorical_loss(logits: Tensor, codes: Tensor) -> Tensor:
    """``-E log Q(c | x)`` for a categorical code: cross-entropy of Q's ``logits [N, K]`` against the sampled
    category indices ``codes [N]`` (int64)."""
    caller = "info_categorical_loss"
    _check_logits("logits", logits, caller)
    if not isinstance(codes, Tensor) or codes.dtype != torch.int64 or codes.shape != logits.shape[:1] or logits.dim() != 2:
        raise ValueError(
            f"{caller}: logits must be [N, K] and codes int64 [N], got {tuple(logits.shape)} and "
            f"{getattr(codes, 'dtype', None)} {tuple(getattr(codes, 'shape', ()))}"
        )
    return F.cross_entropy(logits, codes)


def info_gaussian_loss(mean: Tensor, codes: Tensor, log_std: Tensor | None = None) -> Tensor:
    """``-E log Q(c | x)`` for continuous codes with a factored Gaussian ``Q = N(mean, exp(log_std)^2)``:
    ``E sum_j [(c_j - mean_j)^2 / (2 sigma_j^2) + log sigma_j] + (d/2) log(2 pi)``, a mean over the batch and
    a sum over the ``d`` code dimensions; ``log_std=None`` fixes ``sigma = 1`` (as InfoGAN's code does)."""
    caller = "info_gaussian_loss"
    _check_same_shape("mean", mean, "codes", codes, caller)
    if log_std is None:
        log_std = torch.zeros_like(mean)
    else:
        _check_same_shape("mean", mean, "log_std", log_std, caller)
    standardized = (codes - mean) * torch.exp(-log_std)
    negative_log_likelihood = 0.5 * standardized.square() + log_std + 0.5 * math.log(2.0 * math.pi)
    return negative_log_likelihood.flatten(1).sum(dim=1).mean()


# CycleGAN (Zhu et al. 2017, eq. 2 and section 5.2).


def cycle_consistency(real: Tensor, reconstructed: Tensor) -> Tensor:
    """``E ||F(G(x)) - x||_1``: CycleGAN's cycle-consistency loss (a mean over every element; weight 10)."""
    _check_same_shape("real", real, "reconstructed", reconstructed, "cycle_consistency")
    return (reconstructed - real).abs().mean()


def identity(real: Tensor, mapped: Tensor) -> Tensor:
    """``E ||G(y) - y||_1``: CycleGAN's identity loss on images already in G's target domain (Taigman et al.
    2017; CycleGAN weighs it 0.5 x the cycle weight)."""
    _check_same_shape("real", real, "mapped", mapped, "identity")
    return (mapped - real).abs().mean()


# VAE-GAN (Larsen et al. 2016, section 2).


def vaegan_kl_loss(mean: Tensor, log_var: Tensor) -> Tensor:
    """``L_prior = D_KL(q(z|x) || N(0, I)) = -1/2 sum_j (1 + log sigma_j^2 - mu_j^2 - sigma_j^2)``, summed over
    the latent dimensions and averaged over the batch."""
    _check_same_shape("mean", mean, "log_var", log_var, "vaegan_kl_loss")
    return (-0.5 * (1.0 + log_var - mean.square() - log_var.exp())).flatten(1).sum(dim=1).mean()


def vaegan_feature_reconstruction_loss(real_features: Tensor, reconstructed_features: Tensor) -> Tensor:
    """``L_llike^{Dis_l} = -E log N(Dis_l(x) | Dis_l(x~), I)`` up to its constant: ``1/2 ||Dis_l(x) - Dis_l(x~)||^2``
    in the features of D's ``l``-th layer, summed over the features and averaged over the batch. It replaces
    the VAE's pixel-wise reconstruction error; ``x~ = Dec(Enc(x))``."""
    caller = "vaegan_feature_reconstruction_loss"
    _check_same_shape("real_features", real_features, "reconstructed_features", reconstructed_features, caller)
    return 0.5 * (real_features - reconstructed_features).square().flatten(1).sum(dim=1).mean()


# SeqGAN (Yu et al. 2017, eq. 7-8).


def policy_gradient(log_probs: Tensor, rewards: Tensor, baseline: Tensor | float = 0.0, mask: Tensor | None = None) -> Tensor:
    """REINFORCE for a sequence generator: ``-E_batch sum_t (Q_t - b) log G(y_t | Y_{1:t-1})``.

    ``log_probs [N, T]`` are the generator's log-probabilities of the tokens it sampled, ``rewards [N, T]`` the
    per-step action values ``Q_t`` (SeqGAN: D's probability that Monte-Carlo completions of ``Y_{1:t}`` are
    real; for ``t = T`` D's output on the whole sequence), ``baseline`` a constant or a tensor broadcastable to
    ``[N, T]`` subtracted to reduce the variance, and ``mask`` (bool or float ``[N, T]``) zeroes padding steps.
    ``rewards`` and ``baseline`` are constants of the loss (detached)."""
    caller = "policy_gradient"
    _check_same_shape("log_probs", log_probs, "rewards", rewards, caller)
    if log_probs.dim() != 2:
        raise ValueError(f"{caller}: log_probs must be [N, T], got {tuple(log_probs.shape)}")
    advantage = rewards.detach() - (baseline.detach() if isinstance(baseline, Tensor) else baseline)
    terms = advantage * log_probs
    if mask is not None:
        if not isinstance(mask, Tensor) or mask.shape != log_probs.shape:
            raise ValueError(f"{caller}: mask must be a tensor of shape {tuple(log_probs.shape)}")
        terms = terms * mask.to(terms.dtype)
    return -terms.sum(dim=1).mean()


_OTHER_LOSSES = [
    "BEGANBalance",
    "began_discriminator_loss",
    "began_generator_loss",
    "began_reconstruction_loss",
    "cycle_consistency",
    "feature_matching",
    "identity",
    "info_categorical_loss",
    "info_gaussian_loss",
    "policy_gradient",
    "vaegan_feature_reconstruction_loss",
    "vaegan_kl_loss",
]


__all__ = ["KINDS", "discriminator_loss", "generator_loss"] + [
    function.__name__ for function in (*_DISCRIMINATOR_LOSSES.values(), *_GENERATOR_LOSSES.values())
] + _OTHER_LOSSES
