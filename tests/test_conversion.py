"""ganops.convert and the checkpoint converters: other codebases' spectral norms (torch's parametrization, torch's
old hook API as StudioGAN uses it, BigGAN-PyTorch's SN layers) run on ganops's ops, keeping parameters, state,
update order and outputs (whole models of three codebases: test_conversion_codebases.py)."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrizations as torch_parametrizations
from torch.nn.utils.spectral_norm import SpectralNorm as TorchHookSpectralNorm

from attention_fixtures import StudioGANAttention
from ganops.conversion import convert_spectral_norms as convert
from ganops.conversion import convert_state_dict
from ganops.nn import SelfAttention2d, self_attention_2d
from ganops.nn.spectral_norm import SpectralNorm
from helpers import assert_close, max_state_difference, relative_error


# ---------------------------------------------------------------- attention checkpoints


def test_convert_studiogan_state_dict():
    torch.manual_seed(0)
    studiogan = StudioGANAttention(16).double()
    studiogan.sigma.data.fill_(0.5)
    studiogan.train()(torch.randn(2, 16, 4, 4, dtype=torch.float64))  # moves u, v away from their init
    block = SelfAttention2d(16).double()
    block.load_state_dict(convert_state_dict(studiogan.state_dict(), "studiogan"))
    x = torch.randn(2, 16, 4, 4, dtype=torch.float64)
    assert_close(block.eval()(x), studiogan.eval()(x))


def test_convert_biggan_pytorch_state_dict():
    """BigGAN-PyTorch's SNConv2d stores (weight, u0, sv0) and divides by sigma = ||W normalize(W^T u0)|| in eval."""
    torch.manual_seed(0)
    raw = {name: torch.randn(out, inp, 1, 1, dtype=torch.float64) for name, out, inp in (("theta", 2, 16), ("phi", 2, 16), ("g", 8, 16), ("o", 16, 8))}
    state = {"gamma": torch.tensor(0.3, dtype=torch.float64)}
    normalized = {}
    for name, weight in raw.items():
        u0 = F.normalize(torch.randn(1, weight.shape[0], dtype=torch.float64))
        matrix = weight.flatten(1)
        v = F.normalize(u0 @ matrix)
        sigma = (v @ matrix.t() @ F.normalize(v @ matrix.t()).t()).squeeze()
        normalized[name] = weight / sigma
        state.update({f"{name}.weight": weight, f"{name}.u0": u0, f"{name}.sv0": sigma.reshape(1)})
    block = SelfAttention2d(16).double()
    block.load_state_dict(convert_state_dict(state, "biggan_pytorch"))
    x = torch.randn(2, 16, 4, 6, dtype=torch.float64)
    expected = self_attention_2d(
        x, normalized["theta"], normalized["phi"], normalized["g"], state["gamma"], normalized["o"], backend="reference"
    )
    assert_close(block.eval()(x), expected)


# ---------------------------------------------------------------- spectral norm


def _eval_outputs_identical(model, converted, x):
    model.eval(), converted.eval()
    with torch.no_grad():
        return relative_error(converted(x), model(x)) < 1e-6


def test_convert_torch_parametrization_keeps_state_and_parameters():
    torch.manual_seed(0)
    model = nn.Sequential(torch_parametrizations.spectral_norm(nn.Conv2d(3, 4, 3)), nn.Flatten(), torch_parametrizations.spectral_norm(nn.Linear(36, 2)))
    x = torch.randn(2, 3, 5, 5)
    reference_model = copy.deepcopy(model)
    parameters = list(model.parameters())
    convert(model)
    assert all(isinstance(m.parametrizations.weight[0], SpectralNorm) for m in (model[0], model[2]))
    assert [id(p) for p in model.parameters()] == [id(p) for p in parameters]
    assert model.state_dict().keys() == reference_model.state_dict().keys()
    # One training step each: same update order, so the same numbers.
    for m in (model, reference_model):
        m(x).sum().backward()
    assert max_state_difference(reference_model, model) < 1e-5
    assert _eval_outputs_identical(reference_model, model, x)
    convert(model, revert=True)
    assert isinstance(model[0].parametrizations.weight[0], torch_parametrizations._SpectralNorm)
    assert _eval_outputs_identical(reference_model, model, x)


def test_convert_old_hook_api_as_used_by_studiogan():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.utils.spectral_norm(nn.Conv2d(3, 4, 3), eps=1e-6), nn.Flatten(), nn.utils.spectral_norm(nn.Linear(36, 2), eps=1e-6)
    )
    x = torch.randn(2, 3, 5, 5)
    with torch.no_grad():
        model(x)  # a training forward, so the vectors are not the initial ones
    original = copy.deepcopy(model)
    weight_orig = model[0].weight_orig
    (hook,) = model[0]._forward_pre_hooks.values()
    convert(model)
    # The same hook object stays registered (with its state_dict hooks), computing on ganops's op.
    assert tuple(model[0]._forward_pre_hooks.values()) == (hook,) and hook.eps == 1e-6
    assert model[0].weight_orig is weight_orig
    assert list(model.state_dict()) == list(original.state_dict())
    # One training step each: the hook API's order (v first), so the same numbers.
    for m in (model, original):
        m(x).sum().backward()
    assert max_state_difference(original, model) < 1e-5
    assert relative_error(model[0].weight_orig.grad, original[0].weight_orig.grad) < 1e-5
    assert _eval_outputs_identical(original, model, x)
    convert(model, revert=True)
    assert type(hook) is TorchHookSpectralNorm
    assert _eval_outputs_identical(original, model, x)
    nn.utils.remove_spectral_norm(model[0])


class _BigGANStyleSN:
    """A stand-in written from BigGAN-PyTorch's description of its SN mixin: buffers u{i} of shape (1, out) and
    sv{i}, num_svs singular values from num_itrs power iterations (v from u first, then u; Gram-Schmidt
    against earlier vectors), u updated in place in training, weight divided by the first singular value."""

    def __init__(self, num_svs, num_itrs, num_outputs, transpose=False, eps=1e-12):
        self.num_itrs, self.num_svs, self.transpose, self.eps = num_itrs, num_svs, transpose, eps
        for i in range(num_svs):
            self.register_buffer(f"u{i}", torch.randn(1, num_outputs))
            self.register_buffer(f"sv{i}", torch.ones(1))

    def W_(self):
        w = self.weight.view(self.weight.size(0), -1)
        for _ in range(self.num_itrs):
            svs, found_us, found_vs = [], [], []
            for i in range(self.num_svs):
                u = getattr(self, f"u{i}")
                with torch.no_grad():
                    v = torch.matmul(u, w)
                    for previous in found_vs:
                        v = v - (v @ previous.t()) * previous
                    v = F.normalize(v, eps=self.eps)
                    found_vs.append(v)
                    u = torch.matmul(v, w.t())
                    for previous in found_us:
                        u = u - (u @ previous.t()) * previous
                    u = F.normalize(u, eps=self.eps)
                    found_us.append(u)
                    if self.training:
                        getattr(self, f"u{i}")[:] = u
                svs.append(torch.squeeze(torch.matmul(torch.matmul(v, w.t()), u.t())))
            if self.training:
                with torch.no_grad():
                    for i, sv in enumerate(svs):
                        getattr(self, f"sv{i}")[:] = sv
        return self.weight / svs[0]


class _SNConv2d(nn.Conv2d, _BigGANStyleSN):
    def __init__(self, in_channels, out_channels, kernel_size, num_svs=1, num_itrs=1, eps=1e-12):
        nn.Conv2d.__init__(self, in_channels, out_channels, kernel_size)
        _BigGANStyleSN.__init__(self, num_svs, num_itrs, out_channels, eps=eps)

    def forward(self, x):
        return F.conv2d(x, self.W_(), self.bias, self.stride, self.padding)


class _SNLinear(nn.Linear, _BigGANStyleSN):
    def __init__(self, in_features, out_features, num_svs=1, num_itrs=1, eps=1e-12):
        nn.Linear.__init__(self, in_features, out_features)
        _BigGANStyleSN.__init__(self, num_svs, num_itrs, out_features, eps=eps)

    def forward(self, x):
        return F.linear(x, self.W_(), self.bias)


def test_convert_biggan_pytorch_layers():
    torch.manual_seed(0)
    model = nn.Sequential(_SNConv2d(3, 4, 3, num_svs=2, num_itrs=2), nn.Flatten(), _SNLinear(36, 2, eps=1e-8))
    x = torch.randn(2, 3, 5, 5)
    model(x)
    original = copy.deepcopy(model)
    weight = model[0].weight
    convert(model)
    # The same objects, subclasses of their own classes, with their settings and buffers.
    assert isinstance(model[0], _SNConv2d) and type(model[0]) is not _SNConv2d and isinstance(model[2], _SNLinear)
    assert model[0].weight is weight
    assert model[0].num_itrs == 2 and model[2].eps == 1e-8
    assert list(model.state_dict()) == list(original.state_dict())  # u0, u1, sv0, sv1 kept
    # One training step each: BigGAN's order (v first), so the same numbers.
    for m in (model, original):
        m(x).sum().backward()
    assert max_state_difference(original, model) < 1e-5
    assert relative_error(model[0].weight.grad, original[0].weight.grad) < 1e-5
    assert _eval_outputs_identical(original, model, x)
    convert(model, revert=True)
    assert type(model[0]) is _SNConv2d and type(model[2]) is _SNLinear
