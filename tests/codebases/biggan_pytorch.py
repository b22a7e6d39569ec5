"""BigGAN-PyTorch (ajbrock/BigGAN-PyTorch) as its ``layers.py`` and ``BigGAN.py`` behave, shrunk.

Kept: the ``SN`` mixin (buffers ``u{i}`` of shape ``[1, out]`` and ``sv{i}``, ``num_itrs`` iterations of
v-then-u with Gram-Schmidt against earlier singular vectors, ``u`` updated in place in training only, the
weight divided by the first singular value), ``SNConv2d``/``SNLinear``/``SNEmbedding`` whose forward calls
``self.W_()``, ``Attention.forward(x, y=None)``, class-conditional BN with SN linear gains, ``G.forward`` calling
every block as ``block(h, ys[index])`` (attention included), ``D.forward`` calling ``block(h)``, projection
with an ``SNEmbedding``, orthogonal init, and Adam built in each model's ``__init__`` as ``self.optim``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import nn


def _remove_components(x, earlier):
    """Gram-Schmidt: subtract from the row vector ``x`` its projections on each earlier row vector."""
    for y in earlier:
        x = x - (y @ x.t()) * y / (y @ y.t())
    return x


def power_iteration(weight_mat, stored_us, update=True, eps=1e-12):
    """One v-then-u step per singular vector; returns (singular values, us, vs). Writes ``u`` back if ``update``."""
    us, vs, svs = [], [], []
    for index, u in enumerate(stored_us):
        with torch.no_grad():
            v = F.normalize(_remove_components(u @ weight_mat, vs), eps=eps)
            vs.append(v)
            u = F.normalize(_remove_components(v @ weight_mat.t(), us), eps=eps)
            us.append(u)
            if update:
                stored_us[index][:] = u
        svs.append(torch.squeeze((v @ weight_mat.t()) @ u.t()))
    return svs, us, vs


class SN:
    def __init__(self, num_svs, num_itrs, num_outputs, transpose=False, eps=1e-12):
        self.num_itrs = num_itrs
        self.num_svs = num_svs
        self.transpose = transpose
        self.eps = eps
        for index in range(num_svs):
            self.register_buffer(f"u{index}", torch.randn(1, num_outputs))
            self.register_buffer(f"sv{index}", torch.ones(1))

    @property
    def u(self):
        return [getattr(self, f"u{index}") for index in range(self.num_svs)]

    @property
    def sv(self):
        return [getattr(self, f"sv{index}") for index in range(self.num_svs)]

    def W_(self):  # noqa: N802 - the codebase's name
        weight_mat = self.weight.view(self.weight.size(0), -1)
        if self.transpose:
            weight_mat = weight_mat.t()
        for _ in range(self.num_itrs):
            svs, _, _ = power_iteration(weight_mat, self.u, update=self.training, eps=self.eps)
        if self.training:
            with torch.no_grad():
                for stored, value in zip(self.sv, svs):
                    stored[:] = value
        return self.weight / svs[0]


class SNConv2d(nn.Conv2d, SN):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 num_svs=1, num_itrs=1, eps=1e-12):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        SN.__init__(self, num_svs, num_itrs, out_channels, eps=eps)

    def forward(self, x):
        return F.conv2d(x, self.W_(), self.bias, self.stride, self.padding, self.dilation, self.groups)


class SNLinear(nn.Linear, SN):
    def __init__(self, in_features, out_features, bias=True, num_svs=1, num_itrs=1, eps=1e-12):
        nn.Linear.__init__(self, in_features, out_features, bias)
        SN.__init__(self, num_svs, num_itrs, out_features, eps=eps)

    def forward(self, x):
        return F.linear(x, self.W_(), self.bias)


class SNEmbedding(nn.Embedding, SN):
    """Its singular vector ``u`` has ``num_embeddings`` entries (the rows of the weight)."""

    def __init__(self, num_embeddings, embedding_dim, num_svs=1, num_itrs=1, eps=1e-12):
        nn.Embedding.__init__(self, num_embeddings, embedding_dim)
        SN.__init__(self, num_svs, num_itrs, num_embeddings, eps=eps)

    def forward(self, x):
        return F.embedding(x, self.W_())


class Attention(nn.Module):
    def __init__(self, ch, which_conv=SNConv2d, name="attention"):
        super().__init__()
        self.ch = ch
        self.which_conv = which_conv
        self.theta = which_conv(ch, ch // 8, kernel_size=1, padding=0, bias=False)
        self.phi = which_conv(ch, ch // 8, kernel_size=1, padding=0, bias=False)
        self.g = which_conv(ch, ch // 2, kernel_size=1, padding=0, bias=False)
        self.o = which_conv(ch // 2, ch, kernel_size=1, padding=0, bias=False)
        self.gamma = nn.Parameter(torch.tensor(0.0), requires_grad=True)

    def forward(self, x, y=None):
        positions = x.shape[2] * x.shape[3]
        theta = self.theta(x).view(-1, self.ch // 8, positions)
        phi = F.max_pool2d(self.phi(x), [2, 2]).view(-1, self.ch // 8, positions // 4)
        g = F.max_pool2d(self.g(x), [2, 2]).view(-1, self.ch // 2, positions // 4)
        beta = F.softmax(torch.bmm(theta.transpose(1, 2), phi), -1)
        o = self.o(torch.bmm(g, beta.transpose(1, 2)).view(-1, self.ch // 2, x.shape[2], x.shape[3]))
        return self.gamma * o + x


class ccbn(nn.Module):  # noqa: N801 - the codebase's name
    """Class-conditional batch norm: gain and bias from (shared embedding + z chunk) through linear layers."""

    def __init__(self, output_size, input_size, which_linear, eps=1e-5):
        super().__init__()
        self.output_size, self.input_size = output_size, input_size
        self.gain = which_linear(input_size, output_size)
        self.bias = which_linear(input_size, output_size)
        self.eps = eps
        self.register_buffer("stored_mean", torch.zeros(output_size))
        self.register_buffer("stored_var", torch.ones(output_size))

    def forward(self, x, y):
        gain = (1 + self.gain(y)).view(y.size(0), -1, 1, 1)
        bias = self.bias(y).view(y.size(0), -1, 1, 1)
        out = F.batch_norm(x, self.stored_mean, self.stored_var, None, None, self.training, 0.1, self.eps)
        return out * gain + bias


class bn(nn.Module):  # noqa: N801 - the codebase's name
    def __init__(self, output_size, eps=1e-5):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(output_size), requires_grad=True)
        self.bias = nn.Parameter(torch.zeros(output_size), requires_grad=True)
        self.eps = eps
        self.register_buffer("stored_mean", torch.zeros(output_size))
        self.register_buffer("stored_var", torch.ones(output_size))

    def forward(self, x, y=None):
        return F.batch_norm(x, self.stored_mean, self.stored_var, self.gain, self.bias, self.training, 0.1, self.eps)


class GBlock(nn.Module):
    def __init__(self, in_channels, out_channels, which_conv, which_bn, activation, upsample=None):
        super().__init__()
        self.activation, self.upsample = activation, upsample
        self.conv1 = which_conv(in_channels, out_channels)
        self.conv2 = which_conv(out_channels, out_channels)
        self.learnable_sc = in_channels != out_channels or upsample
        if self.learnable_sc:
            self.conv_sc = which_conv(in_channels, out_channels, kernel_size=1, padding=0)
        self.bn1 = which_bn(in_channels)
        self.bn2 = which_bn(out_channels)

    def forward(self, x, y):
        h = self.activation(self.bn1(x, y))
        if self.upsample:
            h, x = self.upsample(h), self.upsample(x)
        h = self.conv2(self.activation(self.bn2(self.conv1(h), y)))
        if self.learnable_sc:
            x = self.conv_sc(x)
        return h + x


class DBlock(nn.Module):
    def __init__(self, in_channels, out_channels, which_conv, preactivation, activation, downsample=None):
        super().__init__()
        self.preactivation, self.activation, self.downsample = preactivation, activation, downsample
        self.conv1 = which_conv(in_channels, out_channels)
        self.conv2 = which_conv(out_channels, out_channels)
        self.learnable_sc = in_channels != out_channels or downsample is not None
        if self.learnable_sc:
            self.conv_sc = which_conv(in_channels, out_channels, kernel_size=1, padding=0)

    def shortcut(self, x):
        if self.preactivation:
            if self.learnable_sc:
                x = self.conv_sc(x)
            if self.downsample:
                x = self.downsample(x)
        else:
            if self.downsample:
                x = self.downsample(x)
            if self.learnable_sc:
                x = self.conv_sc(x)
        return x

    def forward(self, x):
        h = self.activation(x) if self.preactivation else x
        h = self.conv2(self.activation(self.conv1(h)))
        if self.downsample:
            h = self.downsample(h)
        return h + self.shortcut(x)


# BigGAN.py's G_arch / D_arch, for a 16x16 output with attention at 8x8 (N = 64 positions).
def G_arch(ch):  # noqa: N802
    return {"in_channels": [ch * 4, ch * 2], "out_channels": [ch * 2, ch], "upsample": [True, True],
            "resolution": [8, 16], "attention": {8: True, 16: False}}


def D_arch(ch):  # noqa: N802
    return {"in_channels": [3, ch * 2, ch * 2], "out_channels": [ch * 2, ch * 2, ch * 4],
            "downsample": [True, True, False], "resolution": [8, 4, 4], "attention": {8: True, 4: False}}


class Generator(nn.Module):
    """Hierarchical latents, shared class embedding, SN everywhere, ``self.optim`` built in ``__init__``."""

    def __init__(self, G_ch=4, dim_z=12, bottom_width=4, n_classes=5, shared_dim=6, num_G_SVs=1, num_G_SV_itrs=1,
                 SN_eps=1e-6, G_lr=1e-3, G_B1=0.0, G_B2=0.999, adam_eps=1e-8, no_optim=False):
        super().__init__()
        self.arch = G_arch(G_ch)
        self.bottom_width = bottom_width
        self.shared_dim = shared_dim
        self.num_slots = len(self.arch["in_channels"]) + 1
        self.z_chunk_size = dim_z // self.num_slots
        self.dim_z = self.z_chunk_size * self.num_slots
        self.activation = nn.ReLU(inplace=False)
        self.which_conv = functools.partial(SNConv2d, kernel_size=3, padding=1, num_svs=num_G_SVs,
                                            num_itrs=num_G_SV_itrs, eps=SN_eps)
        self.which_linear = functools.partial(SNLinear, num_svs=num_G_SVs, num_itrs=num_G_SV_itrs, eps=SN_eps)
        self.which_bn = functools.partial(ccbn, which_linear=functools.partial(self.which_linear, bias=False),
                                          input_size=shared_dim + self.z_chunk_size)
        self.shared = nn.Embedding(n_classes, shared_dim)
        self.linear = self.which_linear(self.z_chunk_size, self.arch["in_channels"][0] * bottom_width**2)
        blocks = []
        for index, out_channels in enumerate(self.arch["out_channels"]):
            blocks.append([GBlock(self.arch["in_channels"][index], out_channels, self.which_conv, self.which_bn,
                                  self.activation, functools.partial(F.interpolate, scale_factor=2)
                                  if self.arch["upsample"][index] else None)])
            if self.arch["attention"][self.arch["resolution"][index]]:
                blocks[-1].append(Attention(out_channels, self.which_conv))
        self.blocks = nn.ModuleList([nn.ModuleList(block) for block in blocks])
        self.output_layer = nn.Sequential(bn(self.arch["out_channels"][-1]), self.activation,
                                          self.which_conv(self.arch["out_channels"][-1], 3))
        self.init_weights()
        if no_optim:
            return
        self.optim = torch.optim.Adam(params=self.parameters(), lr=G_lr, betas=(G_B1, G_B2), weight_decay=0, eps=adam_eps)

    def init_weights(self):
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
                nn.init.orthogonal_(module.weight)

    def forward(self, z, y):
        zs = torch.split(z, self.z_chunk_size, 1)
        z = zs[0]
        ys = [torch.cat([y, item], 1) for item in zs[1:]]
        h = self.linear(z).view(z.size(0), -1, self.bottom_width, self.bottom_width)
        for index, blocklist in enumerate(self.blocks):
            for block in blocklist:
                h = block(h, ys[index])
        return torch.tanh(self.output_layer(h))


class Discriminator(nn.Module):
    def __init__(self, D_ch=4, n_classes=5, num_D_SVs=1, num_D_SV_itrs=2, SN_eps=1e-6, output_dim=1, D_lr=1e-3,
                 D_B1=0.0, D_B2=0.999, adam_eps=1e-8):
        super().__init__()
        self.arch = D_arch(D_ch)
        self.activation = nn.ReLU(inplace=False)
        self.which_conv = functools.partial(SNConv2d, kernel_size=3, padding=1, num_svs=num_D_SVs,
                                            num_itrs=num_D_SV_itrs, eps=SN_eps)
        self.which_linear = functools.partial(SNLinear, num_svs=num_D_SVs, num_itrs=num_D_SV_itrs, eps=SN_eps)
        self.which_embedding = functools.partial(SNEmbedding, num_svs=num_D_SVs, num_itrs=num_D_SV_itrs, eps=SN_eps)
        blocks = []
        for index, out_channels in enumerate(self.arch["out_channels"]):
            blocks.append([DBlock(self.arch["in_channels"][index], out_channels, self.which_conv,
                                  preactivation=index > 0, activation=self.activation,
                                  downsample=nn.AvgPool2d(2) if self.arch["downsample"][index] else None)])
            if self.arch["attention"][self.arch["resolution"][index]]:
                blocks[-1].append(Attention(out_channels, self.which_conv))
        self.blocks = nn.ModuleList([nn.ModuleList(block) for block in blocks])
        self.linear = self.which_linear(self.arch["out_channels"][-1], output_dim)
        self.embed = self.which_embedding(n_classes, self.arch["out_channels"][-1])
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear, nn.Embedding)):
                nn.init.orthogonal_(module.weight)
        self.optim = torch.optim.Adam(params=self.parameters(), lr=D_lr, betas=(D_B1, D_B2), weight_decay=0, eps=adam_eps)

    def forward(self, x, y=None):
        h = x
        for blocklist in self.blocks:
            for block in blocklist:
                h = block(h)
        h = torch.sum(self.activation(h), [2, 3])
        out = self.linear(h)
        return out + torch.sum(self.embed(y) * h, 1, keepdim=True)
