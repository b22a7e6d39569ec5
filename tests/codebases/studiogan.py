"""PyTorch-StudioGAN (POSTECH-CVLab) as its ``src/utils/ops.py`` and ``src/models/big_resnet.py`` behave, shrunk.

Kept: every SN layer is ``torch.nn.utils.spectral_norm(layer, eps=1e-6)`` (the old hook API: ``weight_orig``,
``weight_u``, ``weight_v``), ``SelfAttention(in_channels, is_generator, MODULES)`` with ``conv1x1_theta/phi/g/
attn`` and ``sigma``, the generator deciding how to call a block by ``isinstance(block, SelfAttention)``
(``block(act)`` for attention, ``block(act, label)`` otherwise), BigGAN-style conditional BN, and the
discriminator's projection (``"PD"``) returning a dict of outputs.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm

# ---------------------------------------------------------------- src/utils/ops.py


class BigGANConditionalBatchNorm2d(nn.Module):
    def __init__(self, in_features, out_features, MODULES):  # noqa: N803
        super().__init__()
        self.in_features = in_features
        self.bn = batchnorm_2d(out_features, eps=1e-4, momentum=0.1, affine=False)
        self.gain = MODULES.g_linear(in_features=in_features, out_features=out_features, bias=False)
        self.bias = MODULES.g_linear(in_features=in_features, out_features=out_features, bias=False)

    def forward(self, x, y):
        gain = (1 + self.gain(y)).view(y.size(0), -1, 1, 1)
        bias = self.bias(y).view(y.size(0), -1, 1, 1)
        return self.bn(x) * gain + bias


class SelfAttention(nn.Module):
    def __init__(self, in_channels, is_generator, MODULES):  # noqa: N803
        super().__init__()
        self.in_channels = in_channels
        conv = MODULES.g_conv2d if is_generator else MODULES.d_conv2d
        self.conv1x1_theta = conv(in_channels=in_channels, out_channels=in_channels // 8, kernel_size=1, stride=1,
                                  padding=0, bias=False)
        self.conv1x1_phi = conv(in_channels=in_channels, out_channels=in_channels // 8, kernel_size=1, stride=1,
                                padding=0, bias=False)
        self.conv1x1_g = conv(in_channels=in_channels, out_channels=in_channels // 2, kernel_size=1, stride=1,
                              padding=0, bias=False)
        self.conv1x1_attn = conv(in_channels=in_channels // 2, out_channels=in_channels, kernel_size=1, stride=1,
                                 padding=0, bias=False)
        self.maxpool = nn.MaxPool2d(2, stride=2, padding=0)
        self.softmax = nn.Softmax(dim=-1)
        self.sigma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        _, ch, h, w = x.size()
        theta = self.conv1x1_theta(x).view(-1, ch // 8, h * w)
        phi = self.maxpool(self.conv1x1_phi(x)).view(-1, ch // 8, h * w // 4)
        attn = self.softmax(torch.bmm(theta.permute(0, 2, 1), phi))
        g = self.maxpool(self.conv1x1_g(x)).view(-1, ch // 2, h * w // 4)
        attn_g = torch.bmm(g, attn.permute(0, 2, 1)).view(-1, ch // 2, h, w)
        return x + self.sigma * self.conv1x1_attn(attn_g)


def init_weights(modules, initialize):
    for module in modules():
        if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and initialize == "ortho":
            nn.init.orthogonal_(module.weight)
            if module.bias is not None:
                module.bias.data.fill_(0.0)
        elif isinstance(module, nn.Embedding) and initialize == "ortho":
            nn.init.orthogonal_(module.weight)


def embedding(num_embeddings, embedding_dim):
    return nn.Embedding(num_embeddings=num_embeddings, embedding_dim=embedding_dim)


def snconv2d(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True):
    layer = nn.Conv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=kernel_size, stride=stride,
                      padding=padding, dilation=dilation, groups=groups, bias=bias)
    return spectral_norm(layer, eps=1e-6)


def snlinear(in_features, out_features, bias=True):
    return spectral_norm(nn.Linear(in_features=in_features, out_features=out_features, bias=bias), eps=1e-6)


def sn_embedding(num_embeddings, embedding_dim):
    return spectral_norm(nn.Embedding(num_embeddings=num_embeddings, embedding_dim=embedding_dim), eps=1e-6)


def batchnorm_2d(in_features, eps=1e-4, momentum=0.1, affine=True):
    return nn.BatchNorm2d(in_features, eps=eps, momentum=momentum, affine=affine, track_running_stats=True)


def modules():
    """StudioGAN's MODULES for SN in G and D with BigGAN-style conditional BN."""
    return SimpleNamespace(
        g_conv2d=snconv2d, d_conv2d=snconv2d, g_linear=snlinear, d_linear=snlinear, d_embedding=sn_embedding,
        g_bn=BigGANConditionalBatchNorm2d, g_act_fn=nn.ReLU(inplace=True), d_act_fn=nn.ReLU(inplace=True),
    )


# ---------------------------------------------------------------- src/models/big_resnet.py


class GenBlock(nn.Module):
    def __init__(self, in_channels, out_channels, hier_z_dim, MODULES):  # noqa: N803
        super().__init__()
        self.bn1 = MODULES.g_bn(hier_z_dim, in_channels, MODULES)
        self.bn2 = MODULES.g_bn(hier_z_dim, out_channels, MODULES)
        self.activation = MODULES.g_act_fn
        self.conv2d0 = MODULES.g_conv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=1, stride=1,
                                        padding=0)
        self.conv2d1 = MODULES.g_conv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=3, stride=1,
                                        padding=1)
        self.conv2d2 = MODULES.g_conv2d(in_channels=out_channels, out_channels=out_channels, kernel_size=3, stride=1,
                                        padding=1)

    def forward(self, x, label):
        x0 = x
        x = self.activation(self.bn1(x, label))
        x = self.conv2d1(F.interpolate(x, scale_factor=2, mode="nearest"))
        x = self.conv2d2(self.activation(self.bn2(x, label)))
        x0 = self.conv2d0(F.interpolate(x0, scale_factor=2, mode="nearest"))
        return x + x0


class Generator(nn.Module):
    """16x16 output (StudioGAN's layout: in/out dims per block, attention after block ``attn_g_loc``)."""

    def __init__(self, z_dim=12, g_shared_dim=6, g_conv_dim=4, apply_attn=True, attn_g_loc=(1,), num_classes=5,
                 g_init="ortho", MODULES=None):  # noqa: N803
        super().__init__()
        MODULES = MODULES or modules()  # noqa: N806
        self.in_dims, self.out_dims, self.bottom = [g_conv_dim * 4, g_conv_dim * 2], [g_conv_dim * 2, g_conv_dim], 4
        self.num_blocks = len(self.in_dims)
        self.chunk_size = z_dim // (self.num_blocks + 1)
        self.hier_z_dim = self.chunk_size + g_shared_dim
        self.linear0 = MODULES.g_linear(in_features=self.chunk_size, out_features=self.in_dims[0] * self.bottom**2,
                                        bias=True)
        self.shared = embedding(num_embeddings=num_classes, embedding_dim=g_shared_dim)
        blocks = []
        for index in range(self.num_blocks):
            blocks.append([GenBlock(self.in_dims[index], self.out_dims[index], self.hier_z_dim, MODULES)])
            if index + 1 in attn_g_loc and apply_attn:
                blocks.append([SelfAttention(self.out_dims[index], is_generator=True, MODULES=MODULES)])
        self.blocks = nn.ModuleList([nn.ModuleList(block) for block in blocks])
        self.bn4 = batchnorm_2d(in_features=self.out_dims[-1])
        self.activation = MODULES.g_act_fn
        self.conv2d5 = MODULES.g_conv2d(in_channels=self.out_dims[-1], out_channels=3, kernel_size=3, stride=1,
                                        padding=1)
        self.tanh = nn.Tanh()
        init_weights(self.modules, g_init)

    def forward(self, z, label, shared_label=None, eval=False):  # noqa: A002 - the codebase's name
        zs = torch.split(z, self.chunk_size, 1)
        z = zs[0]
        if shared_label is None:
            shared_label = self.shared(label)
        labels = [torch.cat([shared_label, item], 1) for item in zs[1:]]
        act = self.linear0(z).view(-1, self.in_dims[0], self.bottom, self.bottom)
        counter = 0
        for blocklist in self.blocks:
            for block in blocklist:
                if isinstance(block, SelfAttention):
                    act = block(act)
                else:
                    act = block(act, labels[counter])
                    counter += 1
        return self.tanh(self.conv2d5(self.activation(self.bn4(act))))


class DiscOptBlock(nn.Module):
    def __init__(self, in_channels, out_channels, MODULES):  # noqa: N803
        super().__init__()
        self.conv2d0 = MODULES.d_conv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=1, stride=1,
                                        padding=0)
        self.conv2d1 = MODULES.d_conv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=3, stride=1,
                                        padding=1)
        self.conv2d2 = MODULES.d_conv2d(in_channels=out_channels, out_channels=out_channels, kernel_size=3, stride=1,
                                        padding=1)
        self.activation = MODULES.d_act_fn
        self.average_pooling = nn.AvgPool2d(2)

    def forward(self, x):
        x0 = x
        x = self.average_pooling(self.conv2d2(self.activation(self.conv2d1(x))))
        return x + self.conv2d0(self.average_pooling(x0))


class DiscBlock(nn.Module):
    def __init__(self, in_channels, out_channels, MODULES, downsample=True):  # noqa: N803
        super().__init__()
        self.downsample = downsample
        self.activation = MODULES.d_act_fn
        self.ch_mismatch = in_channels != out_channels
        if self.ch_mismatch or downsample:
            self.conv2d0 = MODULES.d_conv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=1,
                                            stride=1, padding=0)
        self.conv2d1 = MODULES.d_conv2d(in_channels=in_channels, out_channels=out_channels, kernel_size=3, stride=1,
                                        padding=1)
        self.conv2d2 = MODULES.d_conv2d(in_channels=out_channels, out_channels=out_channels, kernel_size=3, stride=1,
                                        padding=1)
        self.average_pooling = nn.AvgPool2d(2)

    def forward(self, x):
        x0 = x
        x = self.conv2d1(self.activation(x))
        x = self.conv2d2(self.activation(x))
        if self.downsample:
            x = self.average_pooling(x)
        if self.downsample or self.ch_mismatch:
            x0 = self.conv2d0(x0)
            if self.downsample:
                x0 = self.average_pooling(x0)
        return x + x0


class Discriminator(nn.Module):
    """Projection discriminator (``d_cond_mtd="PD"``) for 16x16 inputs, attention after block ``attn_d_loc``."""

    def __init__(self, d_conv_dim=4, apply_attn=True, attn_d_loc=(1,), num_classes=5, d_init="ortho", MODULES=None):  # noqa: N803
        super().__init__()
        MODULES = MODULES or modules()  # noqa: N806
        self.in_dims = [3, d_conv_dim * 2, d_conv_dim * 2]
        self.out_dims = [d_conv_dim * 2, d_conv_dim * 2, d_conv_dim * 4]
        down = [True, True, False]
        blocks = []
        for index in range(len(self.in_dims)):
            if index == 0:
                blocks.append([DiscOptBlock(self.in_dims[index], self.out_dims[index], MODULES)])
            else:
                blocks.append([DiscBlock(self.in_dims[index], self.out_dims[index], MODULES, downsample=down[index])])
            if index + 1 in attn_d_loc and apply_attn:
                blocks.append([SelfAttention(self.out_dims[index], is_generator=False, MODULES=MODULES)])
        self.blocks = nn.ModuleList([nn.ModuleList(block) for block in blocks])
        self.activation = MODULES.d_act_fn
        self.linear1 = MODULES.d_linear(in_features=self.out_dims[-1], out_features=1, bias=True)
        self.embedding = MODULES.d_embedding(num_classes, self.out_dims[-1])
        init_weights(self.modules, d_init)

    def forward(self, x, label, eval=False):  # noqa: A002 - the codebase's name
        h = x
        for blocklist in self.blocks:
            for block in blocklist:
                h = block(h)
        h = torch.sum(self.activation(h), dim=[2, 3])
        adv_output = torch.squeeze(self.linear1(h)) + torch.sum(torch.mul(self.embedding(label), h), 1)
        return {"h": h, "adv_output": adv_output, "embed": None, "proxy": None, "cls_output": None, "label": label}
