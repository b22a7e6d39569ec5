"""``ganops.convert`` on faithful re-implementations of BigGAN-PyTorch, StudioGAN and SAGAN-PyTorch
(``tests/codebases``): the converted models, driven by each codebase's own call patterns, compute what the
unconverted ones compute (eval outputs, training steps with optimizers built before conversion, WGAN-GP),
keep their classes, parameters and checkpoint layout, and go back with ``revert=True``. float64, CPU."""

from __future__ import annotations

import copy
import io
import logging
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ganops
from codebases import biggan_pytorch, sagan_pytorch, studiogan
from ganops.conversion import ConversionSummary
from helpers import relative_error

BACKEND = "cpp" if ganops.unavailable_reason("cpp", "cpu") is None else "reference"
BATCH = 4
CLASSES = 5


@dataclass
class Codebase:
    """How one codebase builds its models, calls them and trains them (its own patterns)."""

    name: str
    build: Callable[[], tuple[nn.Module, nn.Module]]  # (G, D) with any optimizers the codebase builds in __init__
    attention_layers: dict
    generate: Callable  # (G, z, y) -> images
    discriminate: Callable  # (D, x, y) -> logits
    z_dim: int
    image_size: int
    optimizers_in_init: bool = False
    expected_kinds: dict | None = None
    # Rounding only, except SAGAN-PyTorch: x / (||x|| + 1e-12) against ganops's x / max(||x||, 1e-12).
    tolerance: float = 1e-12


def _biggan_models():
    return biggan_pytorch.Generator(), biggan_pytorch.Discriminator()


def _studiogan_models():
    return studiogan.Generator(), studiogan.Discriminator()


def _sagan_models():
    return (
        sagan_pytorch.Generator(BATCH, image_size=64, z_dim=8, conv_dim=8),
        sagan_pytorch.Discriminator(BATCH, image_size=64, conv_dim=8),
    )


CODEBASES = {
    "biggan_pytorch": Codebase(
        "biggan_pytorch", _biggan_models, {biggan_pytorch.Attention: "biggan_pytorch"},
        generate=lambda G, z, y: G(z, G.shared(y)),  # BigGAN's G_D: G(z, G.shared(gy))
        discriminate=lambda D, x, y: D(x, y),
        z_dim=12, image_size=16, optimizers_in_init=True,
        # G: linear, 2 x (conv1, conv2, conv_sc, 2 ccbn x 2 linears), attention 4, output conv; D: 3 blocks x 3
        # convs, attention 4, linear, embed.
        expected_kinds={"attention": 2, "biggan_pytorch_sn": 1 + 2 * 7 + 4 + 1 + 3 * 3 + 4 + 2},
    ),
    "studiogan": Codebase(
        "studiogan", _studiogan_models, {studiogan.SelfAttention: "studiogan"},
        generate=lambda G, z, y: G(z, y),
        discriminate=lambda D, x, y: D(x, y)["adv_output"],
        z_dim=12, image_size=16,
        expected_kinds={"attention": 2, "torch_hook_sn": 1 + 2 * 7 + 4 + 1 + 3 + 3 + 3 + 4 + 2},
    ),
    "sagan_pytorch": Codebase(
        "sagan_pytorch", _sagan_models, {sagan_pytorch.Self_Attn: "sagan_pytorch"},
        generate=lambda G, z, y: G(z)[0],
        discriminate=lambda D, x, y: D(x)[0],
        z_dim=8, image_size=64,
        expected_kinds={"attention": 4, "sagan_pytorch_sn": 8}, tolerance=1e-10,
    ),
}


def _twins(codebase: Codebase, seed: int = 0):
    """Two identical (G, D) pairs in float64 (optimizers, where the codebase builds them, already built)."""
    pairs = []
    for _ in range(2):
        torch.manual_seed(seed)
        generator, discriminator = codebase.build()
        pairs.append((generator.double(), discriminator.double()))
    return pairs


def _convert(models, codebase: Codebase, **kwargs):
    return [ganops.convert(model, attention_layers=codebase.attention_layers, backend=BACKEND, **kwargs) for model in models]


def _inputs(codebase: Codebase, seed: int):
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(BATCH, codebase.z_dim, dtype=torch.float64, generator=generator)
    y = torch.randint(0, CLASSES, (BATCH,), generator=generator)
    real = torch.rand(BATCH, 3, codebase.image_size, codebase.image_size, dtype=torch.float64, generator=generator) * 2 - 1
    return z, y, real


def _max_state_difference(a: nn.Module, b: nn.Module, floor: float = 1e-12) -> float:
    state_a, state_b = a.state_dict(), b.state_dict()
    assert list(state_a) == list(state_b)
    return max(relative_error(state_b[key].double(), state_a[key].double(), floor=floor) for key in state_a)


def _optimizers(codebase: Codebase, generator: nn.Module, discriminator: nn.Module):
    if codebase.optimizers_in_init:
        return generator.optim, discriminator.optim
    return tuple(
        torch.optim.Adam(filter(lambda p: p.requires_grad, model.parameters()), lr=1e-3, betas=(0.0, 0.9))
        for model in (generator, discriminator)
    )


def _gradient_penalty(codebase: Codebase, discriminator, real, fake, y, alpha):
    """WGAN-GP as SAGAN-PyTorch's trainer writes it (interpolates, autograd.grad with create_graph)."""
    interpolated = (alpha * real + (1 - alpha) * fake).requires_grad_()
    out = codebase.discriminate(discriminator, interpolated, y)
    (grad,) = torch.autograd.grad(out, interpolated, torch.ones_like(out), retain_graph=True, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def _train_step(codebase: Codebase, generator, discriminator, optimizers, seed: int) -> None:
    """One D step (hinge + 10 * WGAN-GP) and one G step, as these codebases' trainers order them."""
    g_optimizer, d_optimizer = optimizers
    z, y, real = _inputs(codebase, seed)
    alpha = torch.rand(BATCH, 1, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 1))
    d_optimizer.zero_grad()
    with torch.no_grad():
        fake = codebase.generate(generator, z, y)
    d_loss = F.relu(1 - codebase.discriminate(discriminator, real, y)).mean()
    d_loss = d_loss + F.relu(1 + codebase.discriminate(discriminator, fake, y)).mean()
    d_loss = d_loss + 10 * _gradient_penalty(codebase, discriminator, real, fake, y, alpha)
    d_loss.backward()
    d_optimizer.step()
    g_optimizer.zero_grad()
    (-codebase.discriminate(discriminator, codebase.generate(generator, z, y), y).mean()).backward()
    g_optimizer.step()


@pytest.fixture(params=list(CODEBASES))
def codebase(request) -> Codebase:
    return CODEBASES[request.param]


def test_convert_keeps_classes_parameters_and_call_contracts(codebase):
    (original_g, original_d), (generator, discriminator) = _twins(codebase)
    parameters = [id(p) for model in (generator, discriminator) for p in model.parameters()]
    types = [type(m) for model in (generator, discriminator) for m in model.modules()]
    summaries = [ganops.convert(model, attention_layers=codebase.attention_layers, backend=BACKEND, strict=True,
                                return_summary=True)[1] for model in (generator, discriminator)]
    counts = {kind: sum(len(s.converted.get(kind, [])) for s in summaries) for kind in codebase.expected_kinds}
    assert counts == codebase.expected_kinds
    assert [id(p) for model in (generator, discriminator) for p in model.parameters()] == parameters
    converted_types = [type(m) for model in (generator, discriminator) for m in model.modules()]
    assert all(issubclass(new, old) and new.__name__ == old.__name__ for new, old in zip(converted_types, types))
    attention_type = next(iter(codebase.attention_layers))
    layers = [m for m in generator.modules() if isinstance(m, attention_type)]
    assert layers and all(type(layer) is not attention_type for layer in layers)  # converted, and still isinstance
    # Each codebase's own forward drives the converted blocks: G with (h, y) / isinstance dispatch / tuple unpacking.
    z, y, real = _inputs(codebase, 1)
    assert codebase.generate(generator, z, y).shape == real.shape
    with pytest.raises(TypeError):  # a call the original forward refuses is refused the same way
        layers[0](real, real, real, real)


def test_eval_and_training_outputs_equal_the_unconverted_models(codebase):
    (original_g, original_d), converted = _twins(codebase)
    generator, discriminator = _convert(converted, codebase)
    z, y, real = _inputs(codebase, 2)
    differences = []
    for mode in ("train", "eval"):  # the training forward also moves every power-iteration state on
        for model in (original_g, original_d, generator, discriminator):
            model.train(mode == "train")
        with torch.no_grad():
            differences.append(relative_error(codebase.generate(generator, z, y), codebase.generate(original_g, z, y)))
            differences.append(relative_error(codebase.discriminate(discriminator, real, y),
                                              codebase.discriminate(original_d, real, y)))
        differences += [_max_state_difference(original_g, generator), _max_state_difference(original_d, discriminator)]
    assert max(differences) < codebase.tolerance, differences


def test_three_training_steps_with_optimizers_built_before_conversion(codebase):
    (original_g, original_d), (generator, discriminator) = _twins(codebase)
    original_optimizers = _optimizers(codebase, original_g, original_d)
    optimizers = _optimizers(codebase, generator, discriminator)  # built before convert, kept by it
    _convert((generator, discriminator), codebase)
    for step in range(3):
        _train_step(codebase, original_g, original_d, original_optimizers, seed=10 * step)
        _train_step(codebase, generator, discriminator, optimizers, seed=10 * step)
    # Relative to max(norm, lr): StudioGAN's conv biases start at 0 and, followed by batch norm, get an exactly
    # zero gradient, so they hold ~1e-11 of rounding noise, different on each side.
    difference = max(_max_state_difference(original_g, generator, floor=1e-3),
                     _max_state_difference(original_d, discriminator, floor=1e-3))
    assert difference < 1e-6, difference
    moved = _twins(codebase)[0]
    assert _max_state_difference(moved[1], original_d) > 1e-3  # the steps did train every model


def test_checkpoints_load_strictly_both_ways(codebase):
    (original_g, original_d), (generator, discriminator) = _twins(codebase)
    _convert((generator, discriminator), codebase)
    z, y, real = _inputs(codebase, 3)
    for model in (generator, discriminator, original_g, original_d):
        with torch.no_grad():  # different states on both sides before swapping checkpoints
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
    for converted, original in ((generator, original_g), (discriminator, original_d)):
        assert list(converted.state_dict()) == list(original.state_dict())
        fresh_original = copy.deepcopy(original)
        fresh_original.load_state_dict(converted.state_dict(), strict=True)
        assert _max_state_difference(converted, fresh_original) == 0
        converted_copy = copy.deepcopy(converted)
        converted_copy.load_state_dict(original.state_dict(), strict=True)
        assert _max_state_difference(original, converted_copy) == 0
    fresh_g = copy.deepcopy(original_g)
    fresh_g.load_state_dict(generator.state_dict())
    for model in (fresh_g, generator):
        model.eval()
    with torch.no_grad():
        assert relative_error(codebase.generate(generator, z, y), codebase.generate(fresh_g, z, y)) < 1e-12


@pytest.mark.parametrize("kind", ["wgan-gp", "r1"])
def test_gradient_penalties_through_the_converted_discriminator(codebase, kind):
    (_, original_d), (_, discriminator) = _twins(codebase)
    _convert((discriminator,), codebase)
    z, y, real = _inputs(codebase, 4)
    fake = torch.rand_like(real) * 2 - 1
    alpha = torch.rand(BATCH, 1, 1, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    penalties = []
    for model in (original_d, discriminator):
        if kind == "wgan-gp":
            penalty = _gradient_penalty(codebase, model, real, fake, y, alpha)
        else:  # R1: the squared gradient norm at the reals
            reals = real.clone().requires_grad_()
            (grad,) = torch.autograd.grad(codebase.discriminate(model, reals, y).sum(), reals, create_graph=True)
            penalty = grad.square().sum(dim=(1, 2, 3)).mean()
        penalty.backward()
        penalties.append(penalty.detach())
    assert relative_error(penalties[1], penalties[0]) < codebase.tolerance
    for (name, expected), actual in zip(original_d.named_parameters(), discriminator.parameters()):
        if expected.grad is not None:
            assert relative_error(actual.grad, expected.grad, floor=1e-12) < 1e-9, name


def test_revert_restores_the_original_classes_and_outputs(codebase):
    (original_g, _), ((generator, _)) = _twins(codebase)
    types = [type(m) for m in generator.modules()]
    _convert((generator,), codebase)
    ganops.convert(generator, revert=True)
    assert [type(m) for m in generator.modules()] == types
    z, y, _ = _inputs(codebase, 6)
    for model in (original_g, generator):
        model.eval()
    with torch.no_grad():
        assert torch.equal(codebase.generate(generator, z, y), codebase.generate(original_g, z, y))


def test_converted_models_pickle_and_deepcopy(codebase):
    (_, discriminator), _ = _twins(codebase)
    _convert((discriminator,), codebase)
    buffer = io.BytesIO()
    torch.save(discriminator, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False)
    assert [type(m) for m in loaded.modules()] == [type(m) for m in discriminator.modules()]
    _, y, real = _inputs(codebase, 7)
    for model in (loaded, discriminator):
        model.eval()
    with torch.no_grad():
        assert torch.equal(codebase.discriminate(loaded, real, y), codebase.discriminate(discriminator, real, y))


def test_strict_raises_for_attention_layers_left_unconverted(codebase, caplog):
    (generator, _), _ = _twins(codebase)
    attention_type = next(iter(codebase.attention_layers))
    with pytest.raises(ValueError, match=f"{attention_type.__name__} has the {codebase.name} attention layout"):
        ganops.convert(copy.deepcopy(generator), strict=True, backend=BACKEND)
    with caplog.at_level(logging.INFO, logger="ganops.conversion"):
        ganops.convert(generator, backend=BACKEND)
    assert "left as they were" in caplog.text and attention_type.__name__ in caplog.text


# ---------------------------------------------------------------- codebase-specific


def test_sagan_attention_maps_are_returned_or_none():
    torch.manual_seed(0)
    layer = sagan_pytorch.Self_Attn(16, "relu").double()
    with torch.no_grad():
        layer.gamma.fill_(0.7)
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    expected_out, expected_map = layer(x)
    converted = ganops.convert(copy.deepcopy(layer), attention_layers={sagan_pytorch.Self_Attn: "sagan_pytorch"}, backend=BACKEND)
    out, attention = converted(x)
    assert attention.shape == (2, 30, 30)
    assert relative_error(out, expected_out) < 1e-13 and relative_error(attention, expected_map) < 1e-13
    without_maps = ganops.convert(copy.deepcopy(layer), attention_layers={sagan_pytorch.Self_Attn: "sagan_pytorch"},
                                  backend=BACKEND, return_attention_maps=False)
    out, attention = without_maps(x)
    assert attention is None and relative_error(out, expected_out) < 1e-13


def test_sagan_spectral_norm_updates_in_eval_mode_as_the_original():
    torch.manual_seed(0)
    layer = sagan_pytorch.SpectralNorm(nn.ConvTranspose2d(6, 4, 3), power_iterations=2).double().eval()
    converted = ganops.convert(copy.deepcopy(layer), backend=BACKEND)
    x = torch.randn(2, 6, 3, 3, dtype=torch.float64)
    for _ in range(3):
        assert relative_error(converted(x), layer(x)) < 1e-10
    assert _max_state_difference(layer, converted) < 1e-10
    assert not converted.module.weight_u.requires_grad


def test_sagan_spectral_norm_gradient_after_several_calls_is_the_originals():
    """SAGAN's autograd reads the vectors of the latest call for every earlier call (its .data swaps); the
    converted wrapper gives that same gradient, which differs from each call's own vectors."""
    torch.manual_seed(1)
    layer = sagan_pytorch.SpectralNorm(nn.Conv2d(3, 5, 3)).double()
    converted = ganops.convert(copy.deepcopy(layer), backend=BACKEND)
    own_vectors = copy.deepcopy(layer)
    inputs = torch.randn(3, 2, 3, 6, 6, dtype=torch.float64)
    for model in (layer, converted):
        sum(model(x).square().sum() for x in inputs).backward()
    grads = [model.module.weight_bar.grad for model in (layer, converted)]
    assert relative_error(grads[1], grads[0]) < 1e-10
    for x in inputs:  # a backward per call: each call's own vectors
        own_vectors(x).square().sum().backward()
    assert relative_error(own_vectors.module.weight_bar.grad, grads[0]) > 1e-6


@pytest.mark.parametrize(("num_svs", "num_itrs", "transpose"), [(2, 2, False), (1, 3, True), (3, 1, False)])
def test_biggan_sn_layer_settings_are_kept(num_svs, num_itrs, transpose):
    torch.manual_seed(0)
    layer = biggan_pytorch.SNConv2d(5, 4, 3, num_svs=num_svs, num_itrs=num_itrs, eps=1e-6).double()
    layer.transpose = transpose
    if transpose:  # u then lives on the other side of the weight matrix
        for index in range(num_svs):
            setattr(layer, f"u{index}", torch.randn(1, 45, dtype=torch.float64))
    converted = ganops.convert(copy.deepcopy(layer), backend=BACKEND)
    assert converted.eps == 1e-6 and converted.num_itrs == num_itrs
    x = torch.randn(2, 5, 6, 6, dtype=torch.float64)
    for mode in (True, True, False):
        layer.train(mode), converted.train(mode)
        assert relative_error(converted(x), layer(x)) < 1e-12
        assert _max_state_difference(layer, converted) < 1e-10


def test_convert_rejects_an_attention_layer_it_cannot_run():
    class WideKernelAttention(biggan_pytorch.Attention):
        pass

    layer = WideKernelAttention(16, nn.Conv2d)
    layer.phi = nn.Conv2d(16, 2, 3, padding=1, bias=False)
    with pytest.raises(ValueError, match=r"attention layer <model> \(WideKernelAttention.*'phi' is not a plain 1x1"):
        ganops.convert(layer, attention_layers={biggan_pytorch.Attention: "biggan_pytorch"})
    with pytest.raises(ValueError, match="source must be one of .* got 'biggan' for Attention"):
        ganops.convert(layer, attention_layers={biggan_pytorch.Attention: "biggan"})


def test_summary_says_what_was_converted():
    summary = ganops.convert(nn.Sequential(biggan_pytorch.SNLinear(3, 2), nn.ReLU()), return_summary=True)[1]
    assert isinstance(summary, ConversionSummary)
    assert str(summary) == "ganops.convert: converted 1 BigGAN-PyTorch SN layers"
