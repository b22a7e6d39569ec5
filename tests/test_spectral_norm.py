"""spectral_norm: the reference against independent math, the kernels against the reference, the drop-in
API against torch's parametrization, the failures users hit with torch's spectral norm, grouping (convert: test_conversion.py)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import parametrizations as torch_parametrizations

from ganops._dtypes import compute_dtype
from ganops.ops.spectral_norm import fused_spectral_norm, fused_spectral_norm_group
from ganops.reference import spectral_norm as reference
from ganops.nn.spectral_norm import SpectralNormGroup, remove_spectral_norm, spectral_norm
from helpers import KERNEL_BACKENDS, max_state_difference, relative_error, require_backend

ALL_BACKENDS = ("reference",) + KERNEL_BACKENDS
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
KERNEL_TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 3e-2}

# ---------------------------------------------------------------- reference against independent math


def test_reference_sigma_converges_to_the_largest_singular_value():
    weight = torch.randn(7, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    u, v = reference.initial_vectors(weight, 1e-12)
    weight_sn, _, _, sigma = reference.spectral_norm_forward(weight, u, v, 200, 1e-12)
    assert sigma.item() == pytest.approx(torch.linalg.matrix_norm(weight, 2).item(), rel=1e-10)
    assert torch.linalg.matrix_norm(weight_sn, 2).item() == pytest.approx(1.0, rel=1e-10)


@given(rows=st.integers(1, 9), cols=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_reference_backward_is_autograd_of_weight_over_sigma_with_constant_vectors(rows, cols, seed):
    generator = torch.Generator().manual_seed(seed)
    weight = torch.randn(rows, cols, dtype=torch.float64, generator=generator).requires_grad_()
    u, v = torch.randn(rows, dtype=torch.float64, generator=generator), torch.randn(cols, dtype=torch.float64, generator=generator)
    grad = torch.randn(rows, cols, dtype=torch.float64, generator=generator)
    (expected,) = torch.autograd.grad(weight / (u @ weight @ v), weight, grad)
    actual = reference.spectral_norm_backward(grad, weight.detach(), u, v)
    # For a 1x1 weight the gradient is zero up to rounding: measure against the size of its terms.
    terms = (grad.norm() / (u @ weight @ v).abs()).item()
    assert relative_error(actual, expected, floor=terms) < 1e-12


def test_reference_matches_torch_parametrization_step_by_step():
    """Same RNG draws, 15 initial iterations, u-then-v order, bit-for-bit the same buffers."""
    torch.manual_seed(3)
    ours = spectral_norm(nn.Linear(6, 5), backend="reference")
    torch.manual_seed(3)
    theirs = torch_parametrizations.spectral_norm(nn.Linear(6, 5))
    for _ in range(3):
        assert torch.equal(ours.weight, theirs.weight)
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


# ---------------------------------------------------------------- kernels against the reference


@st.composite
def matrices(draw):
    rows = draw(st.one_of(st.just(1), st.integers(1, 40), st.sampled_from([33, 70])))
    cols = draw(st.one_of(st.just(1), st.integers(1, 40), st.sampled_from([129, 200])))
    return rows, cols


def _layer_inputs(rows, cols, dtype, seed, transposed=False, magnitude=1.0):
    generator = torch.Generator().manual_seed(seed)
    if transposed:
        weight = torch.randn(cols, rows, dtype=torch.float64, generator=generator).t()
    else:
        weight = torch.randn(rows, cols, dtype=torch.float64, generator=generator)
    u = F.normalize(torch.randn(rows, dtype=torch.float64, generator=generator), dim=0)
    v = F.normalize(torch.randn(cols, dtype=torch.float64, generator=generator), dim=0)
    grad = torch.randn(rows, cols, dtype=torch.float64, generator=generator)
    return (weight * magnitude).to(dtype), u.to(dtype), v.to(dtype), grad.to(dtype)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@settings(max_examples=8)
@given(
    shape=matrices(),
    dtype=st.sampled_from(DTYPES),
    iterations=st.integers(0, 3),
    transposed=st.booleans(),
    magnitude=st.sampled_from([1.0, 1e-3, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_kernels_match_reference(backend, shape, dtype, iterations, transposed, magnitude, seed):
    """W_sn, u, v, sigma and grad_W of one layer, against the reference on the float64 upcast inputs."""
    require_backend(backend)
    weight, u, v, grad = _layer_inputs(*shape, dtype, seed, transposed, magnitude)
    tolerance = KERNEL_TOLERANCE[dtype]
    w = weight.detach().requires_grad_()
    actual = fused_spectral_norm(w, u, v, iterations, 1e-12, backend=backend)
    (actual_grad,) = torch.autograd.grad(actual[0], w, grad)
    w64 = weight.double().requires_grad_()
    expected = reference.spectral_norm_forward(w64, u.double(), v.double(), iterations, 1e-12)
    (expected_grad,) = torch.autograd.grad(expected[0], w64, grad.double())
    for name, got, want in zip(("W_sn", "u", "v", "sigma", "grad"), (*actual, actual_grad), (*expected, expected_grad)):
        assert got.shape == want.shape, name
        assert got.dtype == (compute_dtype(dtype) if name == "sigma" else dtype), name
        # The gradient is g / sigma minus its projection, which cancels completely for a 1 x 1 weight:
        # rounding is measured against the size of the terms, ||g|| / sigma.
        floor = grad.double().norm().item() / abs(expected[3].item()) if name == "grad" else 0.0
        error = relative_error(got.double(), want.double(), floor=floor)
        assert error <= tolerance, f"{name}: relative error {error:.3e} > {tolerance:.0e}"


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("iterations", [0, 1, 2])
def test_norms_merge_blocks_of_very_different_scales(backend, iterations):
    """A float32 layer of 40 x 300 whose row and column blocks differ by up to 1e20 in scale, one block of rows
    zero: the norms of W v and W^T u are merged from per-block partials (the Triton kernels' programs of 16 rows
    and of 128 columns), where a plain sum of squares overflows (1e40) or loses the small blocks."""
    require_backend(backend)
    generator = torch.Generator().manual_seed(0)
    row_scale = torch.ones(40, dtype=torch.float64)
    row_scale[:16], row_scale[32:] = 1e15, 0.0
    column_scale = torch.ones(300, dtype=torch.float64)
    column_scale[128:256] = 1e5
    weight = (torch.rand(40, 300, dtype=torch.float64, generator=generator) + 0.5) * row_scale[:, None] * column_scale
    u = F.normalize(torch.rand(40, dtype=torch.float64, generator=generator) + 0.5, dim=0)
    v = F.normalize(torch.rand(300, dtype=torch.float64, generator=generator) + 0.5, dim=0)
    expected = reference.spectral_norm_forward(weight, u, v, iterations, 1e-12)
    actual = fused_spectral_norm(weight.float(), u.float(), v.float(), iterations, 1e-12, backend=backend)
    assert torch.isfinite(expected[3]) and expected[3] > 1e20
    for name, got, want in zip(("W_sn", "u", "v", "sigma"), actual, expected):
        torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0, msg=name)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_group_matches_per_layer_op_for_mixed_shapes_and_dtypes(backend):
    require_backend(backend)
    shapes = [(1, 9), (9, 1), (33, 130), (4, 4), (16, 27)]
    layers = [_layer_inputs(r, c, dtype, i) for i, ((r, c), dtype) in enumerate(zip(shapes, [torch.float32] * 4 + [torch.float64]))]
    weights = [w.requires_grad_() for w, _, _, _ in layers]
    grouped = fused_spectral_norm_group(weights, [u for _, u, _, _ in layers], [v for _, _, v, _ in layers], 2, 1e-12, backend=backend)
    grouped_grads = torch.autograd.grad(grouped[0], weights, [g for _, _, _, g in layers])
    for index, (w, u, v, g) in enumerate(layers):
        single = fused_spectral_norm(w, u, v, 2, 1e-12, backend=backend)
        (single_grad,) = torch.autograd.grad(single[0], w, g)
        for got, want in zip((*(out[index] for out in grouped), grouped_grads[index]), (*single, single_grad)):
            assert relative_error(got.detach(), want.detach()) <= KERNEL_TOLERANCE[w.dtype]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("grouped", [False, True])
def test_gradcheck_and_gradgradcheck_float64(backend, grouped):
    """In eval mode (0 iterations) u and v are inputs, so finite differences see the same constants."""
    require_backend(backend)
    generator = torch.Generator().manual_seed(1)
    # Small: every gradcheck column is a kernel launch, slow under the Triton interpreter.
    weights = [torch.randn(shape, dtype=torch.float64, generator=generator, requires_grad=True) for shape in ((3, 2), (1, 3))]
    us = [torch.randn(w.shape[0], dtype=torch.float64, generator=generator) for w in weights]
    vs = [torch.randn(w.shape[1], dtype=torch.float64, generator=generator) for w in weights]

    def function(*ws):
        if grouped:
            return tuple(fused_spectral_norm_group(list(ws), us, vs, 0, 1e-12, backend=backend)[0])
        return tuple(fused_spectral_norm(w, u, v, 0, 1e-12, backend=backend)[0] for w, u, v in zip(ws, us, vs))

    assert torch.autograd.gradcheck(function, tuple(weights))
    assert torch.autograd.gradgradcheck(function, tuple(weights))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_training_gradient_treats_updated_vectors_as_constants(backend):
    """torch's rule: the gradient of a training step is that of W / (u^T W v) at the *updated* u, v."""
    require_backend(backend)
    weight, u, v, grad = _layer_inputs(6, 5, torch.float64, 7)
    w = weight.requires_grad_()
    _, u_new, v_new, _ = fused_spectral_norm(w, u, v, 2, 1e-12, backend=backend)
    (training_grad,) = torch.autograd.grad(fused_spectral_norm(w, u, v, 2, 1e-12, backend=backend)[0], w, grad)
    (eval_grad,) = torch.autograd.grad(fused_spectral_norm(w, u_new, v_new, 0, 1e-12, backend=backend)[0], w, grad)
    assert relative_error(training_grad, eval_grad) < 1e-12


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_opcheck(backend):
    require_backend(backend)
    weight, u, v, _ = _layer_inputs(5, 3, torch.float32, 0)
    weight.requires_grad_()
    ops = torch.ops.ganops
    torch.library.opcheck(getattr(ops, f"spectral_norm_{backend}").default, (weight, u, v, 1, 1e-12))
    torch.library.opcheck(getattr(ops, f"spectral_norm_{backend}").default, (weight, u, v, 0, 1e-12))
    _, _, _, sigma = fused_spectral_norm(weight, u, v, 1, 1e-12, backend=backend)
    grad = torch.randn(5, 3, requires_grad=True)
    torch.library.opcheck(
        getattr(ops, f"spectral_norm_backward_{backend}").default, (grad, weight.detach().requires_grad_(), u, v, sigma.detach())
    )
    second, u2, v2, _ = _layer_inputs(2, 7, torch.float32, 1)
    torch.library.opcheck(
        getattr(ops, f"spectral_norm_group_{backend}").default, ([weight, second.requires_grad_()], [u, u2], [v, v2], 2, 1e-12)
    )


def test_cpp_kernels_check_their_inputs_too():
    require_backend("cpp")
    with pytest.raises(RuntimeError, match="expected u of shape"):
        torch.ops.ganops.spectral_norm_cpp(torch.randn(3, 4), torch.randn(4), torch.randn(4), 1, 1e-12)
    with pytest.raises(RuntimeError, match="n_power_iterations must be >= 0"):
        torch.ops.ganops.spectral_norm_cpp(torch.randn(3, 4), torch.randn(3), torch.randn(4), -1, 1e-12)
    with pytest.raises(RuntimeError, match="one dtype and device"):
        torch.ops.ganops.spectral_norm_group_cpp(
            [torch.randn(3, 4), torch.randn(2, 2, dtype=torch.float64)],
            [torch.randn(3), torch.randn(2, dtype=torch.float64)], [torch.randn(4), torch.randn(2, dtype=torch.float64)], 1, 1e-12,
        )


# ---------------------------------------------------------------- drop-in API against torch's parametrization

LAYER_FACTORIES = {
    "Linear": (lambda: nn.Linear(7, 5), (3, 7)),
    "Conv1d": (lambda: nn.Conv1d(3, 4, 3), (2, 3, 6)),
    "Conv2d": (lambda: nn.Conv2d(3, 4, 3), (2, 3, 5, 5)),
    "Conv3d": (lambda: nn.Conv3d(2, 3, 2), (2, 2, 3, 3, 3)),
    "ConvTranspose1d": (lambda: nn.ConvTranspose1d(3, 4, 3), (2, 3, 5)),
    "ConvTranspose2d": (lambda: nn.ConvTranspose2d(3, 5, 3), (2, 3, 4, 4)),
    "ConvTranspose3d": (lambda: nn.ConvTranspose3d(2, 3, 2), (2, 2, 3, 3, 3)),
    "Embedding": (lambda: nn.Embedding(10, 6), None),
}


def _layer_input(shape, seed):
    generator = torch.Generator().manual_seed(seed)
    if shape is None:
        return torch.randint(0, 10, (4,), generator=generator)
    return torch.randn(shape, generator=generator)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@settings(max_examples=6)
@given(kind=st.sampled_from(sorted(LAYER_FACTORIES)), iterations=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_training_steps_match_torch_parametrization(backend, kind, iterations, seed):
    """Same seeds: same state_dict keys, buffers, weights, sigmas and outputs over fwd/bwd/SGD steps."""
    require_backend(backend)
    factory, shape = LAYER_FACTORIES[kind]
    torch.manual_seed(seed)
    theirs = torch_parametrizations.spectral_norm(factory(), n_power_iterations=iterations)
    torch.manual_seed(seed)
    ours = spectral_norm(factory(), n_power_iterations=iterations, backend=backend)
    assert ours.parametrizations.weight[0].dim == theirs.parametrizations.weight[0].dim
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (theirs, ours)]
    for step in range(3):
        x = _layer_input(shape, seed + step)
        outputs = []
        for module, optimizer in zip((theirs, ours), optimizers):
            optimizer.zero_grad()
            out = module(x)
            out.square().mean().backward()
            optimizer.step()
            outputs.append(out.detach())
        assert relative_error(outputs[1].double(), outputs[0].double()) < 1e-5
        assert max_state_difference(theirs, ours) < 1e-5
    for module in (theirs, ours):
        module.eval()
    x = _layer_input(shape, seed)
    assert relative_error(ours(x).double(), theirs(x).double()) < 1e-5


@pytest.mark.parametrize("direction", ["torch_to_ganops", "ganops_to_torch"])
def test_state_dict_round_trip_both_ways(direction):
    torch.manual_seed(0)
    source_factory = torch_parametrizations.spectral_norm if direction == "torch_to_ganops" else spectral_norm
    target_factory = spectral_norm if direction == "torch_to_ganops" else torch_parametrizations.spectral_norm
    source = source_factory(nn.Conv2d(3, 4, 3))
    x = torch.randn(2, 3, 5, 5)
    for _ in range(2):
        source(x).sum().backward()
    target = target_factory(nn.Conv2d(3, 4, 3))
    target.load_state_dict(source.state_dict())
    source.eval(), target.eval()
    assert torch.allclose(target(x), source(x), rtol=1e-5, atol=1e-6)
    assert torch.equal(target.parametrizations.weight[0]._u, source.parametrizations.weight[0]._u)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_vectors_update_in_training_mode_only(backend):
    require_backend(backend)
    module = spectral_norm(nn.Linear(5, 4), n_power_iterations=2, backend=backend)
    sn = module.parametrizations.weight[0]
    before = sn._u.clone(), sn._v.clone()
    module.eval()
    module(torch.randn(2, 5))
    assert torch.equal(sn._u, before[0]) and torch.equal(sn._v, before[1])
    module.train()
    with torch.no_grad():
        module.parametrizations.weight.original.add_(torch.randn(4, 5))
    module(torch.randn(2, 5))
    assert not torch.equal(sn._u, before[0])


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_autocast_keeps_the_normalisation_in_float32_like_torch(backend):
    """Under autocast torch's spectral norm computes the weight from the float32 parameter in float32 (only the
    layer's matmul runs in bfloat16); ganops's gives the same weight, vectors and layer output."""
    require_backend(backend)
    layer = nn.Conv2d(4, 6, 3)
    torch.manual_seed(0)  # both draw their initial vectors from the global generator
    ours = spectral_norm(copy.deepcopy(layer), n_power_iterations=2, backend=backend)
    torch.manual_seed(0)
    theirs = torch_parametrizations.spectral_norm(copy.deepcopy(layer), n_power_iterations=2)
    x = torch.randn(2, 4, 5, 5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_ours, out_theirs = ours(x), theirs(x)
        weight_ours, weight_theirs = ours.weight, theirs.weight
    assert weight_ours.dtype == weight_theirs.dtype == torch.float32
    assert out_ours.dtype == out_theirs.dtype == torch.bfloat16
    assert relative_error(weight_ours, weight_theirs) < 1e-6
    sn_ours, sn_theirs = ours.parametrizations.weight[0], theirs.parametrizations.weight[0]
    assert relative_error(sn_ours._u, sn_theirs._u) < 1e-6 and relative_error(sn_ours._v, sn_theirs._v) < 1e-6
    assert relative_error(out_ours.float(), out_theirs.float()) < KERNEL_TOLERANCE[torch.bfloat16]


def test_one_dimensional_weight_is_plain_normalisation():
    module = spectral_norm(nn.Linear(3, 4), name="bias", eps=1e-6)
    assert torch.allclose(module.bias, F.normalize(module.parametrizations.bias.original, dim=0, eps=1e-6))


# ---------------------------------------------------------------- torch's known failures


def _discriminator(backend):
    torch.manual_seed(0)
    return nn.Sequential(
        spectral_norm(nn.Conv2d(3, 4, 3, padding=1), backend=backend),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        spectral_norm(nn.Linear(4 * 4 * 4, 1), backend=backend),
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_module_used_twice_before_one_backward(backend):
    """pytorch #66363: D(real), D(fake), one loss: no 'modified by an inplace operation' error."""
    require_backend(backend)
    discriminator = _discriminator(backend)
    real, fake = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4, requires_grad=True)
    loss = F.softplus(-discriminator(real)).mean() + F.softplus(discriminator(fake)).mean()
    loss.backward()
    assert fake.grad is not None and all(p.grad is not None for p in discriminator.parameters())


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_backward_twice_with_retain_graph(backend):
    """pytorch #55368: a second backward through the same graph gives the same gradients."""
    require_backend(backend)
    discriminator = _discriminator(backend)
    out = discriminator(torch.randn(2, 3, 4, 4)).sum()
    out.backward(retain_graph=True)
    first = [p.grad.clone() for p in discriminator.parameters()]
    discriminator(torch.randn(2, 3, 4, 4))  # another training forward updates the buffers in between
    out.backward()
    for grad, p in zip(first, discriminator.parameters()):
        assert torch.allclose(p.grad, 2 * grad)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_torch_compile_fullgraph(backend):
    """A model with ganops spectral norm compiles without graph breaks and trains like eager."""
    require_backend(backend)
    torch._dynamo.reset()
    eager, compiled_source = _discriminator(backend), _discriminator(backend)
    compiled = torch.compile(compiled_source, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 3, 4, 4)
    for _ in range(2):
        for module in (eager, compiled):
            module.zero_grad()
            module(x).sum().backward()
    assert max_state_difference(eager, compiled_source) < 1e-5
    for p, q in zip(eager.parameters(), compiled_source.parameters()):
        assert relative_error(q.grad, p.grad) < 1e-5


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("make", "kwargs", "error", "message"),
    [
        (lambda: nn.Linear(3, 3), dict(n_power_iterations=0), ValueError, "n_power_iterations must be an int >= 1, got 0"),
        (lambda: nn.Linear(3, 3), dict(eps=-1.0), ValueError, "eps must be a finite non-negative float"),
        (lambda: nn.Linear(3, 3), dict(name="kernel"), ValueError, "no parameter or buffer named name='kernel'"),
        (lambda: nn.Linear(3, 3), dict(dim=2), IndexError, "dim must be in"),
        (lambda: nn.Linear(3, 3), dict(backend="gpu"), ValueError, "backend must be one of"),
        (lambda: spectral_norm(nn.Linear(3, 3)), {}, ValueError, "already spectrally normalised by ganops"),
        (lambda: torch_parametrizations.spectral_norm(nn.Linear(3, 3)), {}, ValueError, "already spectrally normalised by torch"),
        (lambda: nn.utils.spectral_norm(nn.Linear(3, 3)), {}, ValueError, "old hook API"),
    ],
)
def test_bad_arguments_raise_clear_errors(make, kwargs, error, message):
    with pytest.raises(error, match=message):
        spectral_norm(make(), **kwargs)


def test_non_floating_weight_is_rejected():
    module = nn.Linear(3, 3)
    module.register_buffer("counts", torch.ones(3, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="'counts' must be floating point"):
        spectral_norm(module, name="counts")


def test_fused_op_rejects_mismatched_vectors():
    with pytest.raises(ValueError, match=r"u must have shape \(3,\)"):
        fused_spectral_norm(torch.randn(3, 4), torch.randn(4), torch.randn(4))
    with pytest.raises(TypeError, match="weight_mat must have a floating dtype"):
        fused_spectral_norm(torch.ones(3, 4, dtype=torch.int32), torch.randn(3), torch.randn(4))


def test_remove_spectral_norm_leaves_the_normalised_weight():
    module = spectral_norm(nn.Linear(4, 3)).eval()
    normalised = module.weight.detach().clone()
    remove_spectral_norm(module)
    assert not hasattr(module, "parametrizations") and torch.equal(module.weight, normalised)
    with pytest.raises(ValueError, match="has no ganops spectral norm"):
        remove_spectral_norm(module)


# ---------------------------------------------------------------- grouped path


def _mixed_model(backend):
    torch.manual_seed(5)
    return nn.Sequential(
        spectral_norm(nn.Conv2d(3, 6, 3, padding=1), backend=backend),
        nn.ReLU(),
        spectral_norm(nn.ConvTranspose2d(6, 4, 2, stride=2), backend=backend),
        nn.ReLU(),
        spectral_norm(nn.Conv2d(4, 1, 1), n_power_iterations=2, backend=backend),
        nn.Flatten(),
        spectral_norm(nn.Linear(64, 1), backend=backend),
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_group_matches_per_layer_training_and_eval(backend):
    require_backend(backend)
    per_layer, grouped = _mixed_model(backend), _mixed_model(backend)
    group = SpectralNormGroup(grouped, backend=backend)
    assert len(group.layers) == 4
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.05) for m in (per_layer, grouped)]
    for step in range(2):
        x = torch.randn(2, 3, 4, 4)
        for module, optimizer in zip((per_layer, grouped), optimizers):
            optimizer.zero_grad()
            module(x).square().mean().backward()
            optimizer.step()
        assert max_state_difference(per_layer, grouped) < 1e-5
    for module in (per_layer, grouped):
        module.eval()
    buffers = copy.deepcopy(grouped.state_dict())
    x = torch.randn(2, 3, 4, 4)
    assert relative_error(grouped(x), per_layer(x)) < 1e-5
    assert all(torch.equal(buffers[k], v) for k, v in grouped.state_dict().items())
    assert all(sn._pending is None for _, _, sn in group.layers)
    group.remove()
    assert relative_error(grouped(x), per_layer(x)) < 1e-5


def test_group_runs_one_grouped_op_per_direction():
    require_backend("cpp")
    model = _mixed_model("cpp")
    SpectralNormGroup(model, backend="cpp")
    with torch.profiler.profile() as profile:
        model(torch.randn(2, 3, 4, 4)).sum().backward()
    names = [event.name for event in profile.events()]
    # Two buckets: three layers with 1 iteration, one with 2.
    assert names.count("ganops::spectral_norm_group_cpp") == 2
    assert names.count("ganops::spectral_norm_group_backward_cpp") == 2
    assert "ganops::spectral_norm_cpp" not in names


def test_group_needs_a_ganops_spectral_norm():
    with pytest.raises(ValueError, match="has no ganops spectral norm"):
        SpectralNormGroup(nn.Linear(3, 3))


# ---------------------------------------------------------------- GPU


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1536, 13824), (96, 27), (1, 300), (300, 1)])
def test_cuda_matches_reference(backend, dtype, shape):
    require_backend(backend, "cuda")
    weight, u, v, grad = (t.cuda() for t in _layer_inputs(*shape, dtype, 0))
    w = weight.requires_grad_()
    actual = fused_spectral_norm(w, u, v, 1, 1e-12, backend=backend)
    (actual_grad,) = torch.autograd.grad(actual[0], w, grad)
    w64 = weight.detach().double().requires_grad_()
    expected = reference.spectral_norm_forward(w64, u.double(), v.double(), 1, 1e-12)
    (expected_grad,) = torch.autograd.grad(expected[0], w64, grad.double())
    tolerance = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 3e-2}[dtype]
    for got, want in zip((*actual, actual_grad), (*expected, expected_grad)):
        assert got.is_cuda and relative_error(got.double(), want.double()) <= tolerance


@pytest.mark.gpu
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_cuda_group_and_opcheck(backend):
    require_backend(backend, "cuda")
    model = _mixed_model(backend).cuda()
    per_layer = copy.deepcopy(model)
    SpectralNormGroup(model, backend=backend)
    x = torch.randn(2, 3, 4, 4, device="cuda")
    for module in (model, per_layer):
        module(x).sum().backward()
    assert max_state_difference(per_layer, model) < 1e-4
    weight, u, v, _ = (t.cuda() for t in _layer_inputs(5, 3, torch.float32, 0))
    torch.library.opcheck(getattr(torch.ops.ganops, f"spectral_norm_{backend}").default, (weight.requires_grad_(), u, v, 1, 1e-12))
