"""The SAGAN/BigGAN self-attention block (ganops.nn.SelfAttention2d) against eager implementations built the way
those codebases build it, and gradient penalties through a discriminator with it."""

from __future__ import annotations

import pytest
import torch

from attention_fixtures import (
    EagerBigGANAttention, EagerSAGANAttention, nonzero_gamma, penalties_and_gradients, plain_conv, small_discriminator,
    sn_conv,
)
from ganops.conversion import convert_state_dict
from ganops.nn import SelfAttention2d
from helpers import assert_close, relative_error
from test_attention import ALL_BACKENDS, require_attention_backend


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("spectral_norm", [True, False])
def test_biggan_block_matches_eager_biggan_attention(backend, spectral_norm):
    """Same weights (state dict copied by name), same outputs and parameter gradients, in training mode where the
    spectral norm's power iteration runs too."""
    require_attention_backend(backend)
    torch.manual_seed(0)
    eager = nonzero_gamma(EagerBigGANAttention(24, sn_conv if spectral_norm else plain_conv).double())
    block = SelfAttention2d(24, "biggan", spectral_norm=spectral_norm, backend=backend).double()
    block.load_state_dict(eager.state_dict())
    x = torch.randn(2, 24, 6, 4, dtype=torch.float64)
    out, expected = block(x), eager(x)
    assert_close(out, expected)
    out.square().sum().backward()
    expected.square().sum().backward()
    for (name, parameter), (_, eager_parameter) in zip(block.named_parameters(), eager.named_parameters()):
        assert_close(parameter.grad, eager_parameter.grad), name


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_sagan_block_matches_eager_sagan_attention(backend):
    require_attention_backend(backend)
    torch.manual_seed(0)
    eager = nonzero_gamma(EagerSAGANAttention(16).double())
    block = SelfAttention2d(16, "sagan", spectral_norm=False, backend=backend).double()
    block.load_state_dict(convert_state_dict(eager.state_dict(), "sagan_pytorch", spectral_norm=False))
    x = torch.randn(2, 16, 3, 5, dtype=torch.float64)
    assert_close(block(x), eager(x))


def test_block_and_converter_reject_bad_arguments():
    with pytest.raises(ValueError, match="channels must be an int >= 8, got 4"):
        SelfAttention2d(4)
    with pytest.raises(ValueError, match="variant must be one of"):
        SelfAttention2d(16, variant="stylegan")
    with pytest.raises(ValueError, match="pooled keys need H, W >= 2"):
        SelfAttention2d(16, spectral_norm=False)(torch.randn(1, 16, 1, 5))
    with pytest.raises(ValueError, match="source must be one of"):
        convert_state_dict({}, "taming")
    with pytest.raises(ValueError, match="convert with spectral_norm=True"):
        convert_state_dict({"theta.weight": torch.ones(1, 8, 1, 1), "theta.u0": torch.ones(1, 1)}, "biggan_pytorch", spectral_norm=False)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gradient_penalties_through_attention_match_eager(backend):
    require_attention_backend(backend)
    torch.manual_seed(0)
    eager = small_discriminator(nonzero_gamma(EagerBigGANAttention(16, plain_conv)))
    ours = small_discriminator(SelfAttention2d(16, spectral_norm=False, backend=backend))
    ours.load_state_dict(eager.state_dict())
    generator = torch.Generator().manual_seed(1)
    real, fake = (torch.randn(2, 3, 4, 4, dtype=torch.float64, generator=generator) for _ in range(2))
    alpha = torch.rand(2, 1, 1, 1, dtype=torch.float64, generator=generator)
    values, grads = penalties_and_gradients(ours, real, fake, alpha)
    expected_values, expected_grads = penalties_and_gradients(eager, real, fake, alpha)
    for value, expected in zip(values, expected_values):
        assert_close(value.detach(), expected.detach())
    for penalty_grads, expected_penalty_grads in zip(grads, expected_grads):
        for got, want in zip(penalty_grads, expected_penalty_grads):
            assert relative_error(got, want, floor=1e-12) <= 1e-10
