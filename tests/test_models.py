"""ganops.models: shapes, ganops build == reference build (forward, backward, WGAN-GP D step, training steps),
state_dict transfer, and convert() of models written in BigGAN-PyTorch / StudioGAN style."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ganops import convert, models
from ganops.conversion import replace_attention_layers
from ganops.nn import SelfAttention2d
from ganops.training import make_trainer
from helpers import assert_close, relative_error, require_backend

BACKENDS = ("cpp", "triton")


def _set_attention_gains(model: nn.Module, value: float) -> None:
    """Attention starts with gamma = 0 (output = input); a non-zero gain makes every attention weight count."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, SelfAttention2d):
                module.gamma.fill_(value)


def _pair(kind: str, part: str, backend: str, seed: int = 0, image_size: int = 8, width: int = 8):
    """The ganops and the reference build of one model, float64, identical parameters."""
    built = []
    for reference in (False, True):
        torch.manual_seed(seed)
        generator, discriminator = models.build(
            kind, image_size, width, 16, minibatch_stddev=True, dcgan_normalization="spectral",
            use_reference_ops=reference, backend=backend,
        )
        model = (generator if part == "G" else discriminator).double()
        _set_attention_gains(model, 0.7)
        built.append(model)
    return built


def _input(kind_part: str, seed: int, image_size: int = 8) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    if kind_part == "G":
        return torch.randn(4, 16, generator=generator, dtype=torch.float64)
    return torch.rand(4, 3, image_size, image_size, generator=generator, dtype=torch.float64) * 2 - 1


def _assert_same_state(model: nn.Module, reference: nn.Module) -> None:
    """Parameters to 1e-9 of the size of all parameters; power-iteration vectors to 1e-7, because a step of the
    power method amplifies rounding by sigma_1 / (sigma_1 - sigma_2), large for the tiny 4x8 attention
    weights drawn here."""
    state, reference_state = model.state_dict(), reference.state_dict()
    assert list(state) == list(reference_state)
    scale = torch.cat([p.flatten() for p in reference.parameters()]).norm().item()
    for key, value in state.items():
        if not value.dtype.is_floating_point:
            assert torch.equal(value, reference_state[key]), key
        elif key.endswith(("._u", "._v")):
            assert relative_error(value, reference_state[key]) <= 1e-7, key
        else:
            assert relative_error(value, reference_state[key], floor=scale) <= 1e-9, key


@pytest.mark.parametrize("kind", models.MODELS)
@pytest.mark.parametrize("image_size", [8, 16, 32])
def test_output_shapes(kind, image_size):
    torch.manual_seed(0)
    generator, discriminator = models.build(kind, image_size, 8, 16, minibatch_stddev=True, backend="reference")
    images = generator(torch.randn(4, 16))
    assert images.shape == (4, 3, image_size, image_size)
    assert images.abs().max() <= 1.0
    assert discriminator(images).shape == (4,)


def test_sagan_attention_sits_at_32x32_or_the_largest_map():
    def attention_inputs(model, x):
        seen = []
        hooks = [m.register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[-1])) for m in model.modules()
                 if isinstance(m, SelfAttention2d)]
        model(x)
        for hook in hooks:
            hook.remove()
        return seen

    for image_size, expected in ((64, 32), (16, 16)):
        generator, discriminator = models.build("sagan", image_size, 8, 16, backend="reference")
        assert attention_inputs(generator, torch.randn(2, 16)) == [expected]
        assert attention_inputs(discriminator, torch.randn(2, 3, image_size, image_size)) == [expected]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", models.MODELS)
@pytest.mark.parametrize("part", ["G", "D"])
def test_ganops_build_equals_reference_build_forward_and_backward(backend, kind, part):
    require_backend(backend)
    model, reference = _pair(kind, part, backend)
    x = _input(part, 1)
    out, expected = model(x), reference(x)
    assert_close(out, expected)
    weights = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (out * weights).sum().backward()
    (expected * weights).sum().backward()
    # Gradients that vanish analytically (a conv bias followed by batch norm) are rounding noise: measure
    # every gradient against the size of the whole gradient.
    scale = torch.cat([p.grad.flatten() for p in reference.parameters()]).norm().item()
    for (name, parameter), (_, reference_parameter) in zip(model.named_parameters(), reference.named_parameters()):
        error = relative_error(parameter.grad, reference_parameter.grad, floor=scale)
        assert error <= 1e-9, f"{name}: relative error {error:.3e}"
    _assert_same_state(model, reference)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", models.MODELS)
def test_wgan_gp_training_steps_equal_reference_build(backend, kind):
    """Two full steps (D step with WGAN-GP through every op's double backward, then G step) in float64; the
    second starts from parameters, Adam state and power-iteration vectors that the first one changed."""
    require_backend(backend)
    trainers = []
    for reference in (False, True):
        torch.manual_seed(3)
        trainer = make_trainer(
            kind, "wgan-gp", 8, 8, 16, minibatch_stddev=True, use_reference_ops=reference, backend=backend,
            dtype=torch.float64,
        )
        _set_attention_gains(trainer.discriminator, 0.7)
        _set_attention_gains(trainer.generator, 0.7)
        trainers.append(trainer)
    data = torch.Generator().manual_seed(4)
    for step in range(2):
        real = torch.rand(2, 3, 8, 8, generator=data, dtype=torch.float64) * 2 - 1
        z = torch.randn(2, 2, 16, generator=data, dtype=torch.float64)
        results = []
        for trainer in trainers:
            torch.manual_seed(step)  # the penalty's interpolation weights come from the global generator
            results.append(trainer.step(real, z[0], z[1]))
        for key in ("d", "g", "penalty"):
            assert abs(float(results[0][key] - results[1][key])) <= 1e-10 * max(1.0, abs(float(results[1][key]))), key
    assert float(results[0]["penalty"]) > 0
    for part in ("generator", "discriminator"):
        _assert_same_state(getattr(trainers[0], part), getattr(trainers[1], part))


@pytest.mark.parametrize("kind", models.MODELS)
def test_state_dict_loads_both_ways_between_builds(kind):
    torch.manual_seed(5)
    generator, discriminator = models.build(kind, 16, 8, 16, minibatch_stddev=True, backend="cpp")
    torch.manual_seed(6)
    reference_generator, reference_discriminator = models.build(
        kind, 16, 8, 16, minibatch_stddev=True, use_reference_ops=True
    )
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    discriminator(x)  # a training step moves the power-iteration vectors: they must travel too
    for source, target in ((discriminator, reference_discriminator), (reference_generator, generator)):
        target.load_state_dict(source.state_dict())
        source.eval(), target.eval()
        inputs = x if source in (discriminator, reference_discriminator) else torch.randn(4, 16)
        assert_close(target(inputs), source(inputs))


def test_bad_arguments_name_the_argument():
    with pytest.raises(ValueError, match="image_size"):
        models.SAGANGenerator(image_size=24)
    with pytest.raises(ValueError, match="width"):
        models.SAGANDiscriminator(width=4)
    with pytest.raises(ValueError, match="normalization"):
        models.DCGANDiscriminator(normalization="layer")
    with pytest.raises(ValueError, match="model"):
        models.build("stylegan")


# ------------------------------------------------------------------- models written in other codebases' style
# Written here from the papers and the codebases' documented layer structure (no code copied).


class _BigGANSN:
    """BigGAN-PyTorch's SN mixin: buffers u0 (left singular vector estimate) and sv0 (last sigma); in every
    forward one power iteration v = normalize(u W), u = normalize(v W^T) (u stored only in training), and
    W / (u W v^T)."""

    def _init_sn(self, eps: float = 1e-12) -> None:
        self.num_svs, self.num_itrs, self.eps, self.transpose = 1, 1, eps, False
        self.register_buffer("u0", torch.randn(1, self.weight.shape[0]))
        self.register_buffer("sv0", torch.ones(1))

    def W_(self):
        matrix = self.weight.view(self.weight.shape[0], -1)
        with torch.no_grad():
            v = F.normalize(self.u0 @ matrix, eps=self.eps)
            u = F.normalize(v @ matrix.t(), eps=self.eps)
            if self.training:
                self.u0[:] = u
        sigma = (v @ matrix.t() @ u.t()).squeeze()
        if self.training:
            with torch.no_grad():
                self.sv0[:] = sigma
        return self.weight / sigma


class _BigGANConv(nn.Conv2d, _BigGANSN):
    def __init__(self, *args, **kwargs):
        nn.Conv2d.__init__(self, *args, **kwargs)
        self._init_sn()

    def forward(self, x):
        return F.conv2d(x, self.W_(), self.bias, self.stride, self.padding)


class _BigGANLinear(nn.Linear, _BigGANSN):
    def __init__(self, *args, **kwargs):
        nn.Linear.__init__(self, *args, **kwargs)
        self._init_sn()

    def forward(self, x):
        return F.linear(x, self.W_(), self.bias)


def _eager_attention(x, theta, phi, g, o, gain):
    """SAGAN/BigGAN attention in plain torch: softmax over the pooled key positions of theta^T phi."""
    batch, channels, height, width = x.shape
    queries = theta(x).flatten(2)
    keys = F.max_pool2d(phi(x), 2).flatten(2)
    values = F.max_pool2d(g(x), 2).flatten(2)
    beta = torch.softmax(queries.transpose(1, 2) @ keys, dim=-1)
    attended = (values @ beta.transpose(1, 2)).view(batch, -1, height, width)
    return x + gain * o(attended)


class _BigGANAttention(nn.Module):
    """BigGAN-PyTorch's layers.Attention: theta, phi (C/8), g (C/2), o, all SN 1x1 convs without bias; gamma."""

    def __init__(self, channels):
        super().__init__()
        self.theta = _BigGANConv(channels, channels // 8, 1, bias=False)
        self.phi = _BigGANConv(channels, channels // 8, 1, bias=False)
        self.g = _BigGANConv(channels, channels // 2, 1, bias=False)
        self.o = _BigGANConv(channels // 2, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.tensor(0.0))

    def forward(self, x):
        return _eager_attention(x, self.theta, self.phi, self.g, self.o, self.gamma)


def _studiogan_conv(*args, **kwargs):
    # StudioGAN's ops.snconv2d: the old hook API with eps=1e-6.
    return nn.utils.spectral_norm(nn.Conv2d(*args, **kwargs), eps=1e-6)


class _StudioGANAttention(nn.Module):
    """StudioGAN's ops.SelfAttention (discriminator form): conv1x1_theta/phi/g/attn and the gain ``sigma``."""

    def __init__(self, channels):
        super().__init__()
        self.conv1x1_theta = _studiogan_conv(channels, channels // 8, 1, bias=False)
        self.conv1x1_phi = _studiogan_conv(channels, channels // 8, 1, bias=False)
        self.conv1x1_g = _studiogan_conv(channels, channels // 2, 1, bias=False)
        self.conv1x1_attn = _studiogan_conv(channels // 2, channels, 1, bias=False)
        self.sigma = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return _eager_attention(x, self.conv1x1_theta, self.conv1x1_phi, self.conv1x1_g, self.conv1x1_attn, self.sigma)


class _ForeignDiscriminator(nn.Module):
    """A small ResNet D in either codebase's style: conv, attention, down block (conv, ReLU, conv, avg-pool,
    1x1 shortcut), ReLU, sum pooling, linear."""

    def __init__(self, style: str, channels: int = 16):
        super().__init__()
        conv = _BigGANConv if style == "biggan_pytorch" else _studiogan_conv
        self.conv0 = conv(3, channels, 3, padding=1)
        self.attention = (_BigGANAttention if style == "biggan_pytorch" else _StudioGANAttention)(channels)
        self.conv1 = conv(channels, channels, 3, padding=1)
        self.conv2 = conv(channels, channels, 3, padding=1)
        self.shortcut = conv(channels, channels, 1)
        self.linear = (
            _BigGANLinear(channels, 1) if style == "biggan_pytorch" else nn.utils.spectral_norm(nn.Linear(channels, 1), eps=1e-6)
        )

    def forward(self, x):
        h = self.attention(self.conv0(x))
        h = F.avg_pool2d(self.conv2(F.relu(self.conv1(F.relu(h)))), 2) + F.avg_pool2d(self.shortcut(h), 2)
        return self.linear(F.relu(h).sum(dim=(2, 3))).flatten()


@pytest.mark.parametrize("style", ["biggan_pytorch", "studiogan"])
def test_convert_foreign_model_keeps_outputs_and_trains_like_the_original(style):
    require_backend("cpp")
    torch.manual_seed(7)
    original = _ForeignDiscriminator(style).double()
    with torch.no_grad():
        (original.attention.gamma if style == "biggan_pytorch" else original.attention.sigma).fill_(0.6)
    x = torch.rand(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(8)) * 2 - 1
    original(x)  # a training forward, so the stored vectors are not the initial ones
    original.eval()
    with torch.no_grad():  # also leaves the hook API's computed weights as leaves, which deepcopy needs
        expected = original(x)

    converted = copy.deepcopy(original)
    convert(converted, attention_layers={type(converted.attention): style}, backend="cpp")
    assert isinstance(converted.attention, type(original.attention))  # the same object, rerouted to ganops's ops
    with torch.no_grad():  # the hook API's computed weights stay leaves, which deepcopy needs
        assert_close(converted(x), expected)

    # The same model reverted to its own code: loads the converted state_dict, and its state_dict loads back.
    twin = convert(copy.deepcopy(converted), revert=True)
    twin.attention.backend = "reference"
    twin.load_state_dict(converted.state_dict())
    converted.load_state_dict(twin.state_dict())
    assert_close(twin(x), expected)

    optimizers = [torch.optim.Adam(m.parameters(), lr=1e-3, betas=(0.0, 0.9)) for m in (converted, twin)]
    for model in (converted, twin):
        model.train()
    for step in range(3):
        batch = torch.rand(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(20 + step))
        for model, optimizer in zip((converted, twin), optimizers):
            optimizer.zero_grad()
            F.relu(1 - model(batch)).mean().backward()
            optimizer.step()
    for (name, value), (_, twin_value) in zip(converted.state_dict().items(), twin.state_dict().items()):
        assert relative_error(value, twin_value, floor=1e-12) <= 1e-10, name
    converted.eval(), twin.eval()
    assert_close(converted(x), twin(x))


class _SaganPytorchAttention(nn.Module):
    """The attention layer of the SAGAN-PyTorch layout (query/key/value 1x1 convs with bias, gamma), no SN."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.query_conv = nn.Conv2d(channels, channels // 8, 1)
        self.key_conv = nn.Conv2d(channels, channels // 8, 1)
        self.value_conv = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.full((1,), 0.4))

    def forward(self, x):
        b, c, h, w = x.shape
        query = self.query_conv(x).flatten(2).transpose(1, 2)
        key = self.key_conv(x).flatten(2)
        attention = torch.softmax(query @ key, dim=-1)
        out = self.value_conv(x).flatten(2) @ attention.transpose(1, 2)
        return self.gamma * out.view(b, c, h, w) + x


def test_replace_attention_layers_replaces_every_layer_of_a_mapped_class():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), _SaganPytorchAttention(16), nn.ReLU(), _SaganPytorchAttention(16))
    model = model.double().eval()
    x = torch.randn(2, 3, 5, 5, dtype=torch.float64)
    expected = model(x)
    replace_attention_layers(model, _SaganPytorchAttention, "sagan_pytorch", backend="reference")
    assert [type(layer) for layer in model] == [nn.Conv2d, SelfAttention2d, nn.ReLU, SelfAttention2d]
    assert not model[1].training and model[1].variant == "sagan"
    assert_close(model(x), expected)


def test_convert_rejects_a_bad_attention_mapping():
    with pytest.raises(TypeError, match="attention_layers must be a mapping"):
        convert(nn.Linear(2, 2), attention_layers=[_SaganPytorchAttention])
    with pytest.raises(ValueError, match="source must be one of"):
        convert(nn.Linear(2, 2), attention_layers={_SaganPytorchAttention: "keras"})
