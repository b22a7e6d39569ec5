"""Attention layers built the way BigGAN-PyTorch, SAGAN-PyTorch and StudioGAN build them, in eager PyTorch,
shared by the block tests (test_nn_attention.py), the converter tests (test_conversion.py) and the penalty
tests through attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EagerBigGANAttention(nn.Module):
    """BigGAN-PyTorch's ``layers.Attention`` as its description reads: theta/phi to C/8, g to C/2, 2x2 max-pool on
    phi and g, ``bmm``/``softmax`` over the full attention matrix, o back to C, ``gamma * o + x``."""

    def __init__(self, ch: int, which_conv):
        super().__init__()
        self.ch = ch
        self.theta = which_conv(ch, ch // 8)
        self.phi = which_conv(ch, ch // 8)
        self.g = which_conv(ch, ch // 2)
        self.o = which_conv(ch // 2, ch)
        self.gamma = nn.Parameter(torch.tensor(0.0))

    def forward(self, x):
        positions = x.shape[2] * x.shape[3]
        theta = self.theta(x).view(-1, self.ch // 8, positions)
        phi = F.max_pool2d(self.phi(x), [2, 2]).view(-1, self.ch // 8, positions // 4)
        g = F.max_pool2d(self.g(x), [2, 2]).view(-1, self.ch // 2, positions // 4)
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
        o = self.o(torch.bmm(g, beta.transpose(1, 2)).view(-1, self.ch // 2, x.shape[2], x.shape[3]))
        return self.gamma * o + x


class EagerSAGANAttention(nn.Module):
    """SAGAN-pytorch's ``Self_Attn`` as described: query/key convs to C/8, value conv to C (with bias), attention
    over all positions, ``gamma * out + x``."""

    def __init__(self, ch: int):
        super().__init__()
        self.query_conv = nn.Conv2d(ch, ch // 8, 1)
        self.key_conv = nn.Conv2d(ch, ch // 8, 1)
        self.value_conv = nn.Conv2d(ch, ch, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        batch, ch, height, width = x.shape
        query = self.query_conv(x).view(batch, -1, height * width).permute(0, 2, 1)
        key = self.key_conv(x).view(batch, -1, height * width)
        weights = torch.softmax(torch.bmm(query, key), dim=-1)
        value = self.value_conv(x).view(batch, -1, height * width)
        return self.gamma * torch.bmm(value, weights.permute(0, 2, 1)).view(batch, ch, height, width) + x


def sn_conv(inputs, outputs):
    return nn.utils.parametrizations.spectral_norm(nn.Conv2d(inputs, outputs, 1, bias=False))


def plain_conv(inputs, outputs):
    return nn.Conv2d(inputs, outputs, 1, bias=False)


def nonzero_gamma(module, value=0.7):
    with torch.no_grad():
        module.gamma.fill_(value)
    return module


class StudioGANAttention(nn.Module):
    """The StudioGAN naming of the BigGAN block, with ``torch.nn.utils.spectral_norm`` (weight_orig/_u/_v)."""

    def __init__(self, ch):
        super().__init__()

        def conv(inputs, outputs):
            return nn.utils.spectral_norm(nn.Conv2d(inputs, outputs, 1, bias=False))

        self.conv1x1_theta, self.conv1x1_phi = conv(ch, ch // 8), conv(ch, ch // 8)
        self.conv1x1_g, self.conv1x1_attn = conv(ch, ch // 2), conv(ch // 2, ch)
        self.sigma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        batch, ch, height, width = x.shape
        theta = self.conv1x1_theta(x).view(batch, ch // 8, height * width)
        phi = F.max_pool2d(self.conv1x1_phi(x), 2).view(batch, ch // 8, -1)
        g = F.max_pool2d(self.conv1x1_g(x), 2).view(batch, ch // 2, -1)
        weights = torch.softmax(torch.bmm(theta.permute(0, 2, 1), phi), dim=-1)
        attended = torch.bmm(g, weights.permute(0, 2, 1)).view(batch, ch // 2, height, width)
        return x + self.sigma * self.conv1x1_attn(attended)


def small_discriminator(attention_layer):
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.LeakyReLU(0.2), attention_layer, nn.LeakyReLU(0.2),
        nn.Conv2d(16, 1, 4), nn.Flatten(), nn.Linear(1, 1),
    ).double()


def penalties_and_gradients(discriminator, real, fake, alpha):
    """(WGAN-GP, R1) penalties and their gradients w.r.t. D's parameters, written with torch.autograd.grad."""
    parameters = [p for p in discriminator.parameters() if p.requires_grad]
    mixed = (alpha * real + (1 - alpha) * fake).requires_grad_()
    (grad_mixed,) = torch.autograd.grad(discriminator(mixed).sum(), mixed, create_graph=True)
    wgan_gp = (grad_mixed.flatten(1).norm(dim=1) - 1).square().mean()
    real = real.clone().requires_grad_()
    (grad_real,) = torch.autograd.grad(discriminator(real).sum(), real, create_graph=True)
    r1 = grad_real.square().flatten(1).sum(1).mean() / 2
    # The last bias does not reach an input gradient: its penalty gradient is zero (unused in the graph).
    return (wgan_gp, r1), [
        torch.autograd.grad(penalty, parameters, allow_unused=True, materialize_grads=True) for penalty in (wgan_gp, r1)
    ]
