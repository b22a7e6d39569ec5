"""ganops.losses against the papers' formulas written naively (sigmoid, log, explicit targets) in float64."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ganops import losses
from helpers import assert_close


def sigmoid(t):
    return 1.0 / (1.0 + torch.exp(-t))


def log(t):
    return torch.log(t)


# The papers' formulas, with D(x) = sigmoid(logit) where the paper has a probability. Naive on purpose: they
# overflow for large logits, which is why they are only evaluated on moderate ones.
PAPER_DISCRIMINATOR = {
    "non-saturating": lambda r, f: -log(sigmoid(r)).mean() - log(1 - sigmoid(f)).mean(),
    "minimax": lambda r, f: -log(sigmoid(r)).mean() - log(1 - sigmoid(f)).mean(),
    "hinge": lambda r, f: torch.clamp(1 - r, min=0).mean() + torch.clamp(1 + f, min=0).mean(),
    "wasserstein": lambda r, f: f.mean() - r.mean(),
    "least-squares": lambda r, f: 0.5 * ((r - 1) ** 2).mean() + 0.5 * (f**2).mean(),
    "relativistic": lambda r, f: -log(sigmoid(r - f)).mean(),
    "relativistic-average": lambda r, f: -log(sigmoid(r - f.mean())).mean() - log(1 - sigmoid(f - r.mean())).mean(),
    "relativistic-least-squares": lambda r, f: ((r - f - 1) ** 2).mean(),
    "relativistic-average-least-squares": lambda r, f: ((r - f.mean() - 1) ** 2).mean()
    + ((f - r.mean() + 1) ** 2).mean(),
    "relativistic-hinge": lambda r, f: torch.clamp(1 - (r - f), min=0).mean(),
    "relativistic-average-hinge": lambda r, f: torch.clamp(1 - (r - f.mean()), min=0).mean()
    + torch.clamp(1 + (f - r.mean()), min=0).mean(),
}
PAPER_GENERATOR = {
    "non-saturating": lambda f, r: -log(sigmoid(f)).mean(),
    "minimax": lambda f, r: log(1 - sigmoid(f)).mean(),
    "hinge": lambda f, r: -f.mean(),
    "wasserstein": lambda f, r: -f.mean(),
    "least-squares": lambda f, r: 0.5 * ((f - 1) ** 2).mean(),
    "relativistic": lambda f, r: -log(sigmoid(f - r)).mean(),
    "relativistic-average": lambda f, r: -log(sigmoid(f - r.mean())).mean() - log(1 - sigmoid(r - f.mean())).mean(),
    "relativistic-least-squares": lambda f, r: ((f - r - 1) ** 2).mean(),
    "relativistic-average-least-squares": lambda f, r: ((f - r.mean() - 1) ** 2).mean()
    + ((r - f.mean() + 1) ** 2).mean(),
    "relativistic-hinge": lambda f, r: torch.clamp(1 - (f - r), min=0).mean(),
    "relativistic-average-hinge": lambda f, r: torch.clamp(1 - (f - r.mean()), min=0).mean()
    + torch.clamp(1 + (r - f.mean()), min=0).mean(),
}


def generator_loss(kind, fake, real):
    return losses.generator_loss(kind, fake, real if kind in losses.RELATIVISTIC_KINDS else None)


def value_and_grads(function, *tensors):
    """The value and the gradient w.r.t. every tensor (zeros for one the loss does not use, e.g. real for G)."""
    tensors = [t.detach().clone().requires_grad_() for t in tensors]
    value = function(*tensors)
    grads = torch.autograd.grad(value, tensors, allow_unused=True, materialize_grads=True)
    return value.detach(), grads


def assert_matches_paper(actual, expected):
    """The naive formulas lose ~1e-16 / (1 - sigmoid(|logit|)) relative accuracy; logit differences here stay below ~15."""
    (value, grads), (expected_value, expected_grads) = actual, expected
    assert torch.allclose(value, expected_value, rtol=1e-8, atol=1e-12), (value, expected_value)
    for grad, expected_grad in zip(grads, expected_grads):
        assert torch.allclose(grad, expected_grad, rtol=1e-8, atol=1e-12), (grad, expected_grad)


def test_every_kind_has_a_paper_formula():
    assert set(PAPER_DISCRIMINATOR) == set(losses.KINDS) == set(PAPER_GENERATOR)


@pytest.mark.parametrize("kind", losses.KINDS)
@given(
    batch=st.integers(1, 9), extra=st.sampled_from([(), (1,), (3, 2)]), scale=st.sampled_from([0.1, 1.0, 2.5]),
    seed=st.integers(0, 2**16),
)
def test_losses_match_paper_formulas_float64(kind, batch, extra, scale, seed):
    generator = torch.Generator().manual_seed(seed)
    real = torch.randn((batch, *extra), dtype=torch.float64, generator=generator) * scale
    fake = torch.randn((batch, *extra), dtype=torch.float64, generator=generator) * scale
    assert_matches_paper(
        value_and_grads(lambda r, f: losses.discriminator_loss(kind, r, f), real, fake),
        value_and_grads(PAPER_DISCRIMINATOR[kind], real, fake),
    )
    assert_matches_paper(
        value_and_grads(lambda f, r: generator_loss(kind, f, r), fake, real),
        value_and_grads(PAPER_GENERATOR[kind], fake, real),
    )


@pytest.mark.parametrize("kind", losses.KINDS)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_extreme_logits_give_finite_values_and_gradients(kind, dtype):
    """Logits of +-100 (where the naive log(sigmoid) is -inf) keep finite losses and gradients."""
    real = torch.tensor([100.0, -100.0, 100.0, -100.0], dtype=dtype)
    fake = torch.tensor([-100.0, 100.0, 100.0, -100.0], dtype=dtype)
    for function, tensors in (
        (lambda r, f: losses.discriminator_loss(kind, r, f), (real, fake)),
        (lambda f, r: generator_loss(kind, f, r), (fake, real)),
    ):
        value, grads = value_and_grads(function, *tensors)
        assert torch.isfinite(value), value
        assert all(torch.isfinite(grad).all() for grad in grads), grads


def test_extreme_logits_have_the_asymptotic_values():
    """Confidently wrong logits cost |logit|, confidently right ones cost exp(-|logit|) (log1p(e^-100) ~ 3.7e-44)."""
    wrong = losses.non_saturating_discriminator_loss(torch.tensor([-100.0]), torch.tensor([100.0]))
    assert wrong.item() == pytest.approx(200.0)
    right = losses.non_saturating_discriminator_loss(torch.tensor([100.0], dtype=torch.float64), torch.tensor([-100.0], dtype=torch.float64))
    assert right.item() == pytest.approx(2 * math.exp(-100.0), rel=1e-12)
    fake = torch.tensor([-100.0], requires_grad=True)
    (grad,) = torch.autograd.grad(losses.non_saturating_generator_loss(fake), fake)
    assert grad.item() == pytest.approx(-1.0)


def test_minimax_generator_saturates_and_non_saturating_does_not():
    """Goodfellow et al.'s motivation: with D sure the fakes are fake, minimax's gradient vanishes."""
    fake = torch.tensor([-10.0], dtype=torch.float64, requires_grad=True)
    (minimax_grad,) = torch.autograd.grad(losses.minimax_generator_loss(fake), fake)
    (non_saturating_grad,) = torch.autograd.grad(losses.non_saturating_generator_loss(fake), fake)
    assert abs(minimax_grad.item()) < 1e-4 < 0.99 < abs(non_saturating_grad.item())


@given(label=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_one_sided_label_smoothing_matches_binary_cross_entropy_with_soft_target(label, seed):
    generator = torch.Generator().manual_seed(seed)
    real = torch.randn(6, dtype=torch.float64, generator=generator) * 3
    fake = torch.randn(6, dtype=torch.float64, generator=generator) * 3
    expected = -(label * log(sigmoid(real)) + (1 - label) * log(1 - sigmoid(real))).mean() - log(1 - sigmoid(fake)).mean()
    for kind in ("non-saturating", "minimax"):
        assert_close(losses.discriminator_loss(kind, real, fake, real_label=label), expected)


@given(a=st.floats(-2, 2), b=st.floats(-2, 2), c=st.floats(-2, 2))
def test_least_squares_constants(a, b, c):
    real = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    fake = torch.tensor([1.1, 0.0, -0.7], dtype=torch.float64)
    expected_d = 0.5 * ((real - b) ** 2).mean() + 0.5 * ((fake - a) ** 2).mean()
    assert_close(losses.discriminator_loss("least-squares", real, fake, a=a, b=b), expected_d)
    assert_close(losses.generator_loss("least-squares", fake, c=c), 0.5 * ((fake - c) ** 2).mean())


def test_named_functions_are_the_by_name_ones():
    real, fake = torch.randn(5), torch.randn(5)
    assert torch.equal(losses.hinge_discriminator_loss(real, fake), losses.discriminator_loss("hinge", real, fake))
    assert torch.equal(
        losses.relativistic_average_generator_loss(fake, real),
        losses.generator_loss("relativistic-average", fake, real),
    )
    assert "relativistic_average_hinge_generator_loss" in losses.__all__


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: losses.discriminator_loss("vanilla", torch.zeros(2), torch.zeros(2)), ValueError, "kind must be one of"),
        (lambda: losses.generator_loss("relativistic", torch.zeros(2)), ValueError, "needs real_logits"),
        (lambda: losses.generator_loss("hinge", torch.zeros(2), torch.zeros(2)), ValueError, "does not use real_logits"),
        (lambda: losses.discriminator_loss("relativistic", torch.zeros(2), torch.zeros(3)), ValueError, "same shape"),
        (lambda: losses.discriminator_loss("hinge", torch.zeros(2, dtype=torch.long), torch.zeros(2)), TypeError, "real_logits must have a floating dtype"),
        (lambda: losses.discriminator_loss("hinge", torch.zeros(2), [0.0]), TypeError, "fake_logits must be a torch.Tensor"),
        (lambda: losses.generator_loss("hinge", torch.zeros(0)), ValueError, "fake_logits must not be empty"),
        (lambda: losses.discriminator_loss("non-saturating", torch.zeros(2), torch.zeros(2), real_label=1.5), ValueError, "real_label must be a float in"),
    ],
)
def test_bad_arguments_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()
