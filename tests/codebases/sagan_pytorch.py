"""SAGAN-PyTorch (heykeetae/Self-Attention-GAN) as its ``spectral.py`` and ``sagan_models.py`` behave, shrunk.

Kept: the ``SpectralNorm(module)`` wrapper (the module's ``weight`` becomes parameters ``weight_bar``, and
``weight_u``/``weight_v`` registered as parameters with ``requires_grad=False``; every call, in training and
in eval mode, runs ``power_iterations`` v-then-u steps with ``x / (||x|| + 1e-12)``, sets the module's
``weight`` to ``weight_bar / sigma`` and calls ``module.forward`` directly), ``Self_Attn`` with plain 1x1 convs
with bias returning ``(out, attention)``, and both models unpacking those tuples and returning
``(out, p1, p2)``. The original hard-codes the attention widths for ``conv_dim=64`` (G: 128 and 64, D: 256 and
512); here they follow ``conv_dim`` in the same ratio.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def l2normalize(v, eps=1e-12):
    return v / (v.norm() + eps)


class SpectralNorm(nn.Module):
    def __init__(self, module, name="weight", power_iterations=1):
        super().__init__()
        self.module = module
        self.name = name
        self.power_iterations = power_iterations
        if not self._made_params():
            self._make_params()

    def _update_u_v(self):
        u = getattr(self.module, self.name + "_u")
        v = getattr(self.module, self.name + "_v")
        w = getattr(self.module, self.name + "_bar")
        height = w.data.shape[0]
        for _ in range(self.power_iterations):
            v.data = l2normalize(torch.mv(torch.t(w.view(height, -1).data), u.data))
            u.data = l2normalize(torch.mv(w.view(height, -1).data, v.data))
        sigma = u.dot(w.view(height, -1).mv(v))
        setattr(self.module, self.name, w / sigma.expand_as(w))

    def _made_params(self):
        return all(hasattr(self.module, self.name + suffix) for suffix in ("_u", "_v", "_bar"))

    def _make_params(self):
        w = getattr(self.module, self.name)
        height = w.data.shape[0]
        width = w.view(height, -1).data.shape[1]
        u = nn.Parameter(w.data.new(height).normal_(0, 1), requires_grad=False)
        v = nn.Parameter(w.data.new(width).normal_(0, 1), requires_grad=False)
        u.data = l2normalize(u.data)
        v.data = l2normalize(v.data)
        w_bar = nn.Parameter(w.data)
        del self.module._parameters[self.name]
        self.module.register_parameter(self.name + "_u", u)
        self.module.register_parameter(self.name + "_v", v)
        self.module.register_parameter(self.name + "_bar", w_bar)

    def forward(self, *args):
        self._update_u_v()
        return self.module.forward(*args)


class Self_Attn(nn.Module):  # noqa: N801 - the codebase's name
    def __init__(self, in_dim, activation):
        super().__init__()
        self.chanel_in = in_dim
        self.activation = activation
        self.query_conv = nn.Conv2d(in_channels=in_dim, out_channels=in_dim // 8, kernel_size=1)
        self.key_conv = nn.Conv2d(in_channels=in_dim, out_channels=in_dim // 8, kernel_size=1)
        self.value_conv = nn.Conv2d(in_channels=in_dim, out_channels=in_dim, kernel_size=1)
        self.gamma = nn.Parameter(torch.zeros(1))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x):
        batch, channels, width, height = x.size()
        query = self.query_conv(x).view(batch, -1, width * height).permute(0, 2, 1)
        key = self.key_conv(x).view(batch, -1, width * height)
        attention = self.softmax(torch.bmm(query, key))
        value = self.value_conv(x).view(batch, -1, width * height)
        out = torch.bmm(value, attention.permute(0, 2, 1)).view(batch, channels, width, height)
        return self.gamma * out + x, attention


class Generator(nn.Module):
    def __init__(self, batch_size, image_size=64, z_dim=100, conv_dim=64):
        super().__init__()
        self.imsize = image_size
        repeat_num = int(np.log2(self.imsize)) - 3
        mult = 2**repeat_num
        self.l1 = nn.Sequential(SpectralNorm(nn.ConvTranspose2d(z_dim, conv_dim * mult, 4)),
                                nn.BatchNorm2d(conv_dim * mult), nn.ReLU())
        curr_dim = conv_dim * mult
        self.l2 = nn.Sequential(SpectralNorm(nn.ConvTranspose2d(curr_dim, curr_dim // 2, 4, 2, 1)),
                                nn.BatchNorm2d(curr_dim // 2), nn.ReLU())
        curr_dim //= 2
        self.l3 = nn.Sequential(SpectralNorm(nn.ConvTranspose2d(curr_dim, curr_dim // 2, 4, 2, 1)),
                                nn.BatchNorm2d(curr_dim // 2), nn.ReLU())
        curr_dim //= 2
        self.l4 = nn.Sequential(SpectralNorm(nn.ConvTranspose2d(curr_dim, curr_dim // 2, 4, 2, 1)),
                                nn.BatchNorm2d(curr_dim // 2), nn.ReLU())
        curr_dim //= 2
        self.last = nn.Sequential(nn.ConvTranspose2d(curr_dim, 3, 4, 2, 1), nn.Tanh())
        self.attn1 = Self_Attn(conv_dim * 2, "relu")
        self.attn2 = Self_Attn(conv_dim, "relu")

    def forward(self, z):
        z = z.view(z.size(0), z.size(1), 1, 1)
        out = self.l3(self.l2(self.l1(z)))
        out, p1 = self.attn1(out)
        out = self.l4(out)
        out, p2 = self.attn2(out)
        return self.last(out), p1, p2


class Discriminator(nn.Module):
    def __init__(self, batch_size=64, image_size=64, conv_dim=64):
        super().__init__()
        self.imsize = image_size
        self.l1 = nn.Sequential(SpectralNorm(nn.Conv2d(3, conv_dim, 4, 2, 1)), nn.LeakyReLU(0.1))
        curr_dim = conv_dim
        self.l2 = nn.Sequential(SpectralNorm(nn.Conv2d(curr_dim, curr_dim * 2, 4, 2, 1)), nn.LeakyReLU(0.1))
        curr_dim *= 2
        self.l3 = nn.Sequential(SpectralNorm(nn.Conv2d(curr_dim, curr_dim * 2, 4, 2, 1)), nn.LeakyReLU(0.1))
        curr_dim *= 2
        self.l4 = nn.Sequential(SpectralNorm(nn.Conv2d(curr_dim, curr_dim * 2, 4, 2, 1)), nn.LeakyReLU(0.1))
        curr_dim *= 2
        self.last = nn.Sequential(nn.Conv2d(curr_dim, 1, 4))
        self.attn1 = Self_Attn(conv_dim * 4, "relu")
        self.attn2 = Self_Attn(conv_dim * 8, "relu")

    def forward(self, x):
        out = self.l3(self.l2(self.l1(x)))
        out, p1 = self.attn1(out)
        out = self.l4(out)
        out, p2 = self.attn2(out)
        return self.last(out).squeeze(), p1, p2
