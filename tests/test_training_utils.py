"""The multi-tensor training utilities (G_ema, weight clipping, historical averaging), CycleGAN's image pool,
ProGAN's pixel norm and equalised learning rate, virtual batch norm and the losses of the other GAN families,
each against a per-parameter loop or the paper's formula written out here."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import ganops
from ganops import losses
from ganops.nn import PixelNorm, VirtualBatchNorm2d, WithReferenceBatch
from ganops.nn.utils import equalized_lr, remove_equalized_lr

from helpers import assert_close


def _mixed_model() -> nn.Module:
    """Parameters in two dtypes (two foreach groups), batch norm buffers including an int64 counter."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))
    model[3].double()
    return model


def _perturb(model: nn.Module, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator).to(parameter.dtype))
        for buffer in model.buffers():
            buffer.add_(torch.ones((), dtype=buffer.dtype))


# ------------------------------------------------------------------------------------------------- EMA


@pytest.mark.parametrize("warmup", [0, 2])
def test_ema_equals_per_parameter_loop_and_copies_buffers(warmup):
    model = _mixed_model()
    ema = ganops.ExponentialMovingAverage(model, decay=0.9, warmup=warmup)
    expected = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    for step in range(4):
        _perturb(model, step)
        ema.update(model)
        for name, parameter in model.named_parameters():
            if step < warmup:
                expected[name] = parameter.detach().clone()
            else:
                expected[name] = 0.9 * expected[name] + 0.1 * parameter.detach()
    averaged = dict(ema.module.named_parameters())
    for name, value in expected.items():
        assert averaged[name].dtype == value.dtype
        assert_close(averaged[name], value, torch.float32 if value.dtype == torch.float32 else None)
        assert not averaged[name].requires_grad
    for (name, buffer), (_, ema_buffer) in zip(model.named_buffers(), ema.module.named_buffers()):
        assert torch.equal(buffer, ema_buffer), name
    assert ema.num_updates == 4


def test_ema_state_dict_round_trip_and_mismatched_model():
    model = _mixed_model()
    ema = ganops.ExponentialMovingAverage(model, decay=0.5, warmup=1)
    _perturb(model, 0)
    ema.update(model)
    ema.update(model)
    restored = ganops.ExponentialMovingAverage(_mixed_model(), decay=0.1)
    restored.load_state_dict(ema.state_dict())
    assert (restored.decay, restored.warmup, restored.num_updates) == (0.5, 1, 2)
    for (name, a), (_, b) in zip(ema.module.state_dict().items(), restored.module.state_dict().items()):
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="parameters and buffers"):
        ema.update(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="decay"):
        ganops.ExponentialMovingAverage(model, decay=1.5)


# -------------------------------------------------------------------------------------------- clipping


def test_clip_weights_equals_per_parameter_clamp():
    model = _mixed_model()
    _perturb(model, 1)
    expected = [parameter.detach().clamp(-0.3, 0.3) for parameter in model.parameters()]
    ganops.clip_weights_(model.parameters(), 0.3)
    for parameter, value in zip(model.parameters(), expected):
        assert torch.equal(parameter.detach(), value)
    with pytest.raises(ValueError, match="clip_value"):
        ganops.clip_weights_(model.parameters(), 0.0)
    with pytest.raises(TypeError, match="floating"):
        ganops.clip_weights_([torch.ones(2, dtype=torch.int64)], 1.0)


# ---------------------------------------------------------------------------------- historical average


def test_historical_average_mean_and_penalty_against_the_formula():
    model = _mixed_model()
    history = ganops.HistoricalAverage(model.parameters())
    recorded = [[parameter.detach().clone() for parameter in model.parameters()]]
    for step in range(3):
        _perturb(model, step)
        history.update()
        recorded.append([parameter.detach().clone() for parameter in model.parameters()])
    _perturb(model, 10)
    means = [torch.stack([values[i] for values in recorded]).mean(dim=0) for i in range(len(recorded[0]))]
    for mean, expected in zip(history.means, means):
        assert_close(mean, expected, torch.float32 if expected.dtype == torch.float32 else None)
    penalty = history.penalty(weight=0.5)
    expected_penalty = 0.5 * sum((p.double() - m.double()).square().sum() for p, m in zip(model.parameters(), means))
    assert abs(penalty.item() - expected_penalty.item()) <= 1e-5 * expected_penalty.item()
    penalty.backward()
    for parameter, mean in zip(model.parameters(), means):
        assert_close(parameter.grad, (parameter.detach() - mean), torch.float32 if mean.dtype == torch.float32 else None)


# ------------------------------------------------------------------------------------------- image pool


def test_image_pool_fills_then_swaps_with_probability_half():
    pool = ganops.ImagePool(size=4, generator=torch.Generator().manual_seed(0))
    first = torch.arange(4.0).view(4, 1)
    assert torch.equal(pool.query(first), first) and len(pool) == 4
    returned_old, total = 0, 0
    for step in range(200):
        new = torch.full((1, 1), 100.0 + step)
        out = pool.query(new)
        assert out.shape == new.shape
        stored = {float(image) for image in pool.images}
        for value, fake in zip(out.flatten().tolist(), new.flatten().tolist()):
            total += 1
            if value != fake:
                returned_old += 1
                # A stored image handed back leaves the pool; the new fake takes its slot.
                assert value not in stored and fake in stored
        assert len(pool) == 4
    assert 0.38 < returned_old / total < 0.62
    assert ganops.ImagePool(size=2).query(torch.randn(5, 3)).shape == (5, 3)
    assert torch.equal(ganops.ImagePool(size=0).query(first), first)


# ----------------------------------------------------------------------------- pixel norm, equalised LR


def test_pixel_norm_formula():
    x = torch.randn(3, 5, 4, 2, dtype=torch.float64)
    expected = x / torch.sqrt((x**2).sum(dim=1, keepdim=True) / 5 + 1e-8)
    assert_close(PixelNorm()(x), expected)


@pytest.mark.parametrize(
    "layer, fan_in",
    [(lambda: nn.Linear(6, 3), 6), (lambda: nn.Conv2d(4, 3, 3, padding=1), 36), (lambda: nn.ConvTranspose2d(4, 2, 4, 2, 1), 64)],
)
def test_equalized_lr_is_the_scaled_layer_with_plain_state_dict(layer, fan_in):
    torch.manual_seed(0)
    module = equalized_lr(layer().double())
    keys = set(module.state_dict())
    assert keys == {"weight", "bias"}
    assert abs(module.weight.std().item() - 1.0) < 0.5 and module.bias.abs().max().item() == 0.0
    with torch.no_grad():
        module.bias.normal_()
    scale = math.sqrt(2.0 / fan_in)
    x = torch.randn((2, 6) if isinstance(module, nn.Linear) else (2, 4, 5, 5), dtype=torch.float64, requires_grad=True)
    weight = module.weight.detach().clone().requires_grad_()
    if isinstance(module, nn.Linear):
        expected = F.linear(x, weight * scale, module.bias)
    elif isinstance(module, nn.Conv2d):
        expected = F.conv2d(x, weight * scale, module.bias, padding=1)
    else:
        expected = F.conv_transpose2d(x, weight * scale, module.bias, stride=2, padding=1)
    out = module(x)
    assert_close(out, expected)
    grad = torch.randn_like(out)
    assert_close(torch.autograd.grad(out, module.weight, grad)[0], torch.autograd.grad(expected, weight, grad)[0])
    remove_equalized_lr(module)
    assert_close(module(x), expected)
    with pytest.raises(TypeError, match="module"):
        equalized_lr(nn.BatchNorm2d(3))


# ------------------------------------------------------------------------------------- virtual batch norm


def test_virtual_batch_norm_against_salimans_formula():
    torch.manual_seed(0)
    reference, samples = torch.randn(5, 3, 4, 4, dtype=torch.float64), torch.randn(2, 3, 4, 4, dtype=torch.float64)
    layer = VirtualBatchNorm2d(3).double()
    with torch.no_grad():
        layer.weight.uniform_(0.5, 2.0)
        layer.bias.normal_()
    wrapped = WithReferenceBatch(layer, reference)
    out = wrapped(samples)
    gamma, beta = layer.weight.view(1, 3, 1, 1), layer.bias.view(1, 3, 1, 1)
    for i in range(2):
        # Statistics of the reference batch with the sample added to it, as one more (weight 1/(R+1)) member.
        x = samples[i : i + 1]
        mean = (reference.mean(dim=(0, 2, 3), keepdim=True) * 5 + x.mean(dim=(2, 3), keepdim=True)) / 6
        mean_square = (reference.square().mean(dim=(0, 2, 3), keepdim=True) * 5 + x.square().mean(dim=(2, 3), keepdim=True)) / 6
        expected = (x - mean) / torch.sqrt(mean_square - mean**2 + 1e-5) * gamma + beta
        assert_close(out[i : i + 1], expected)
    # A sample's output does not depend on the other samples of its batch.
    assert_close(wrapped(samples[1:]), out[1:])
    # The reference rows are normalised by the reference statistics alone: batch norm's training-mode output.
    full = layer(torch.cat([reference, samples]))
    assert_close(full[:5], F.batch_norm(reference, None, None, layer.weight, layer.bias, training=True, eps=1e-5))
    with pytest.raises(RuntimeError, match="reference batch"):
        VirtualBatchNorm2d(3)(samples.float())


# -------------------------------------------------------------------------------------------------- losses


def test_feature_matching_and_vaegan_losses():
    real, fake = torch.randn(6, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    expected = sum((real[:, j].mean() - fake[:, j].mean()) ** 2 for j in range(4)) / 4
    assert_close(losses.feature_matching(real, fake), expected)
    mean, log_var = torch.randn(3, 2, dtype=torch.float64), torch.randn(3, 2, dtype=torch.float64)
    # KL(N(mu, sigma^2) || N(0, 1)) = log(1/sigma) + (sigma^2 + mu^2)/2 - 1/2 per dimension.
    sigma = (0.5 * log_var).exp()
    expected_kl = (torch.log(1 / sigma) + (sigma**2 + mean**2) / 2 - 0.5).sum(dim=1).mean()
    assert_close(losses.vaegan_kl_loss(mean, log_var), expected_kl)
    a, b = torch.randn(3, 2, 2, dtype=torch.float64), torch.randn(3, 2, 2, dtype=torch.float64)
    nll = -torch.distributions.Normal(b.flatten(1), 1.0).log_prob(a.flatten(1)).sum(dim=1).mean() - 4 * 0.5 * math.log(2 * math.pi)
    assert_close(losses.vaegan_feature_reconstruction_loss(a, b), nll)
    with pytest.raises(ValueError, match="same shape"):
        losses.vaegan_kl_loss(mean, log_var[:, :1])


def test_began_losses_and_balance():
    images, reconstructions = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    loss = losses.began_reconstruction_loss(images, reconstructions)
    assert_close(loss, (images - reconstructions).abs().sum() / images.numel())
    balance = losses.BEGANBalance(gamma=0.5, lambda_k=0.1)
    assert balance.update(2.0, 0.5) == pytest.approx(0.05)  # 0 + 0.1 * (0.5 * 2 - 0.5)
    assert balance.update(0.0, 10.0) == 0.0  # clamped at 0
    balance.k = 0.99
    assert balance.update(10.0, 0.0) == 1.0  # clamped at 1
    assert balance.convergence(2.0, 1.5) == pytest.approx(2.0 + 0.5)
    assert float(losses.began_discriminator_loss(torch.tensor(1.0), torch.tensor(2.0), 0.25)) == pytest.approx(0.5)


def test_info_losses_are_negative_log_likelihoods():
    logits, codes = torch.randn(5, 3, dtype=torch.float64), torch.tensor([0, 2, 1, 1, 0])
    expected = -torch.distributions.Categorical(logits=logits).log_prob(codes).mean()
    assert_close(losses.info_categorical_loss(logits, codes), expected)
    mean, log_std, c = (torch.randn(5, 2, dtype=torch.float64) for _ in range(3))
    expected = -torch.distributions.Normal(mean, log_std.exp()).log_prob(c).sum(dim=1).mean()
    assert_close(losses.info_gaussian_loss(mean, c, log_std), expected)
    expected = -torch.distributions.Normal(mean, 1.0).log_prob(c).sum(dim=1).mean()
    assert_close(losses.info_gaussian_loss(mean, c), expected)
    with pytest.raises(ValueError, match="codes int64"):
        losses.info_categorical_loss(logits, codes.float())


def test_cycle_identity_and_policy_gradient():
    x, y = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert_close(losses.cycle_consistency(x, y), F.l1_loss(y, x))
    assert_close(losses.identity(x, y), F.l1_loss(y, x))
    logits = torch.randn(3, 4, 5, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(5, (3, 4))
    log_probs = logits.log_softmax(-1).gather(-1, tokens[..., None])[..., 0]
    rewards = torch.rand(3, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.bool)
    loss = losses.policy_gradient(log_probs, rewards, baseline=0.5, mask=mask)
    expected = -sum(
        (rewards[n, t] - 0.5) * log_probs[n, t] for n in range(3) for t in range(4) if mask[n, t]
    ) / 3
    assert_close(loss, expected)
    # The gradient is REINFORCE's: rewards are constants.
    (grad,) = torch.autograd.grad(loss, logits, retain_graph=True)
    (expected_grad,) = torch.autograd.grad(expected, logits)
    assert_close(grad, expected_grad)


def test_multi_tensor_utilities_make_one_foreach_call_per_dtype_group(monkeypatch):
    """Two parameter dtypes (float32 conv and batch norm, float64 linear) and two buffer dtypes (float32 running
    statistics, int64 counter): each update is one torch._foreach_* call per group, whatever the tensor count."""
    calls: dict[str, int] = {}

    def counting(name):
        original = getattr(torch, name)

        def wrapper(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return original(*args, **kwargs)

        monkeypatch.setattr(torch, name, wrapper)

    for name in ("_foreach_lerp_", "_foreach_copy_", "_foreach_clamp_min_", "_foreach_clamp_max_", "_foreach_norm"):
        counting(name)
    model = _mixed_model()
    assert len(list(model.parameters())) == 6
    ema = ganops.ExponentialMovingAverage(model, decay=0.9)
    ema.update(model)
    assert calls == {"_foreach_lerp_": 2, "_foreach_copy_": 2}
    calls.clear()
    ganops.clip_weights_(model.parameters(), 0.1)
    assert calls == {"_foreach_clamp_min_": 2, "_foreach_clamp_max_": 2}
    calls.clear()
    history = ganops.HistoricalAverage(model.parameters())
    history.update()
    history.penalty()
    assert calls == {"_foreach_lerp_": 2, "_foreach_norm": 2}
