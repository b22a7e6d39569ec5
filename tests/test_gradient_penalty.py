"""Gradient penalties: the fused norm+penalty op and the interpolation (reference against autograd and independent
math, every backend against the reference), and ganops.gradient_penalty against eager penalties built from
torch.autograd.grad on small discriminators."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from ganops import minibatch_stddev
from ganops.nn import SelfAttention2d
from ganops.ops.gradient_penalty import gradient_norm_penalty, interpolate
from ganops.ops.gradient_penalty import KINDS, NonFiniteGradientError, gradient_penalty
from ganops.training import LazyRegularizer
from ganops.reference import gradient_penalty as reference
from helpers import KERNEL_BACKENDS, LAYOUTS, assert_close, autograd_derivatives, in_layout, relative_error, require_backend

ALL_BACKENDS = ("reference",) + KERNEL_BACKENDS
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
TOLERANCE = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-2, torch.bfloat16: 2e-2}
# (center, one_sided) of each penalty: WGAN-GP/DRAGAN, R1/R2, WGAN-LP, 0-GP is the R1 row.
SETTINGS = [(1.0, False), (0.0, False), (1.0, True), (2.5, False), (0.5, True)]


def per_sample(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.reshape(-1, *([1] * (like.dim() - 1)))


def independent_penalty(grad: torch.Tensor, center: float, one_sided: bool) -> torch.Tensor:
    """Sample by sample with torch.linalg.vector_norm, in float64."""
    terms = []
    for sample in grad.double():
        distance = torch.linalg.vector_norm(sample) - center
        terms.append(distance.clamp(min=0) ** 2 if one_sided else distance**2)
    return torch.stack(terms).mean()




def cancellation_floors(grad, grad_out, grad_grad_grad, center: float) -> dict[str, float]:
    """The size of the terms that cancel in each output (relative errors are measured against at least that).

    penalty: (s - c)^2 = s^2 - 2sc + c^2, terms ~ (s + c)^2; grad: go (2/N)(g - c g/s), terms ~ go (2/N)(s + c);
    grad_grad_out: sum_n k_n d_n, k_n = (2/N)(1 - c/s_n); grad_grad: go (2/N)(gg - c gg/s + c d g/s^3), where the
    last two terms cancel along g (exactly so for one-element samples), terms ~ go (2/N) c ||gg|| / s.
    """
    g = grad.double().flatten(1)
    gg = grad_grad_grad.double().flatten(1)
    n = g.shape[0]
    norm = g.norm(dim=1).clamp(min=1e-300)
    go = abs(grad_out.double().item())
    return {
        "penalty": ((norm + center) ** 2).mean().item(),
        "grad": go * 2 / n * (norm + center).square().sum().sqrt().item(),
        "grad_grad_out": 2 / n * ((1 + center / norm) * (g * gg).sum(dim=1).abs()).sum().item(),
        "grad_grad": go * 2 / n * ((1 + center / norm) * gg.norm(dim=1)).square().sum().sqrt().item(),
    }


@st.composite
def gradient_shapes(draw):
    batch = draw(st.integers(1, 6))
    rest = draw(st.lists(st.integers(1, 5), min_size=0, max_size=3))
    return (batch, *rest)


# ------------------------------------------------------------------------------------ the reference itself


@given(shape=gradient_shapes(), setting=st.sampled_from(SETTINGS), seed=st.integers(0, 2**16))
def test_reference_penalty_matches_independent_formulation(shape, setting, seed):
    grad = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    assert_close(reference.gradient_penalty(grad, *setting), independent_penalty(grad, *setting))


@given(shape=gradient_shapes(), setting=st.sampled_from(SETTINGS), seed=st.integers(0, 2**16))
def test_reference_derivative_formulas_match_autograd(shape, setting, seed):
    generator = torch.Generator().manual_seed(seed)
    grad = torch.randn(shape, dtype=torch.float64, generator=generator) * 0.7
    grad_out = torch.randn((), dtype=torch.float64, generator=generator)
    grad_grad_grad = torch.randn(shape, dtype=torch.float64, generator=generator)
    _, first, second_out, second = autograd_derivatives(
        lambda g: independent_penalty(g, *setting), grad, grad_out, grad_grad_grad
    )
    assert_close(reference.gradient_penalty_backward(grad_out, grad, *setting), first.detach())
    formula_out, formula = reference.gradient_penalty_double_backward(grad_grad_grad, grad_out, grad, *setting)
    assert_close(formula_out, second_out)
    assert_close(formula, second)


def test_reference_interpolation_is_the_convex_combination():
    real, fake = torch.randn(3, 2, 2, dtype=torch.float64), torch.randn(3, 2, 2, dtype=torch.float64)
    eps = torch.tensor([0.0, 1.0, 0.25], dtype=torch.float64)
    out = reference.interpolate(real, fake, eps)
    assert torch.equal(out[0], fake[0]) and torch.equal(out[1], real[1])
    assert_close(out[2], 0.25 * real[2] + 0.75 * fake[2])


# ----------------------------------------------------------------------------- kernels against the reference


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@given(
    shape=st.tuples(st.integers(1, 6), st.integers(1, 5), st.integers(1, 5), st.integers(1, 6)),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
    setting=st.sampled_from(SETTINGS),
    magnitude=st.sampled_from([1e-3, 0.3, 1.0, 50.0]),
    seed=st.integers(0, 2**16),
)
def test_kernels_match_reference(backend, shape, dtype, layout, setting, magnitude, seed):
    """Penalty, backward and double backward of each kernel backend against the float64 reference."""
    require_backend(backend)
    generator = torch.Generator().manual_seed(seed)
    grad = in_layout((torch.randn(shape, dtype=torch.float64, generator=generator) * magnitude).to(dtype), layout)
    grad_out = torch.randn((), generator=generator).to(dtype)
    grad_grad_grad = torch.randn(shape, generator=generator).to(dtype)
    actual = autograd_derivatives(
        lambda g: gradient_norm_penalty(g, *setting, backend=backend), grad, grad_out, grad_grad_grad
    )
    expected = autograd_derivatives(
        lambda g: reference.gradient_penalty(g, *setting), grad.double(), grad_out.double(), grad_grad_grad.double()
    )
    # A float16 penalty above 65504 is inf, in the reference too (ganops.gradient_penalty reduces in float32).
    assume(all(t.abs().max() < torch.finfo(dtype).max / 4 for t in expected))
    floors = cancellation_floors(grad, grad_out, grad_grad_grad, setting[0])
    for name, got, want in zip(("penalty", "grad", "grad_grad_out", "grad_grad"), actual, expected):
        assert got.dtype == dtype, name
        # Below the normal range of the output dtype (float16: 6e-5) results have no relative precision to keep.
        error = relative_error(got.double(), want, floor=max(floors[name], torch.finfo(dtype).tiny))
        assert error <= TOLERANCE[dtype], f"{name}: relative error {error:.3e} > {TOLERANCE[dtype]:.0e}"
    if layout == "channels_last" and min(shape[1], shape[2] * shape[3]) > 1:
        assert actual[1].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@given(
    shape=st.tuples(st.integers(2, 5), st.integers(1, 4), st.integers(1, 4), st.integers(1, 5)),
    dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS), setting=st.sampled_from(SETTINGS),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=10)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf / inf in the interpreter's numpy
def test_forward_returns_the_norms_its_backward_takes(backend, shape, dtype, layout, setting, seed):
    """The forward op's second output is ``||g_n||`` in float64 (NaN for a sample with an infinite element), and the
    backward op scales ``g`` by the norms it is given: it does not read ``g`` a second time to recompute them."""
    require_backend(backend)
    ops = torch.ops.ganops
    generator = torch.Generator().manual_seed(seed)
    grad = in_layout(torch.randn(shape, generator=generator).to(dtype), layout)
    grad[-1, 0, 0, 0] = float("inf")
    value, norms = getattr(ops, f"gradient_penalty_{backend}").default(grad, *setting)
    assert norms.dtype == torch.float64 and norms.shape == (shape[0],)
    assert norms[-1].isnan() and value.isnan()
    finite = grad[:-1]
    norm_tolerance = 1e-12 if dtype == torch.float64 else 1e-6  # summed in float32 at least
    assert relative_error(norms[:-1], reference.per_sample_norm(finite)) <= norm_tolerance

    # Any positive norms given to the backward are the ones it uses: go * (2 / N) (1 - c / s_n) g_n (two-sided) or
    # 0 where s_n <= c (one-sided). Given as a strided view: the ops index them by their strides.
    center, one_sided = setting
    given_norms = (torch.rand(2 * (shape[0] - 1), generator=generator, dtype=torch.float64) * 3 + 0.1)[::2]
    grad_out = torch.tensor(0.75, dtype=dtype)
    got = getattr(ops, f"gradient_penalty_backward_{backend}").default(grad_out, finite, given_norms, *setting)
    k = 2.0 / finite.shape[0] * (1.0 - center / given_norms)
    if one_sided:
        k = torch.where(given_norms > center, k, 0.0)
    want = grad_out.double() * per_sample(k, finite) * finite.double()
    assert got.dtype == dtype
    assert relative_error(got.double(), want) <= TOLERANCE[dtype]


def test_triton_backward_is_one_pass_over_grad():
    """The Triton backward is a single launch (no partial sums of g^2): g read once, grad_g written once."""
    from ganops.triton_kernels import gradient_penalty as kernels

    g = torch.empty(64, 3, 64, 64, device="meta")
    norms = torch.empty(64, dtype=torch.float64, device="meta")
    _, launches = kernels.backward_plan(
        torch.empty((), device="meta"), g, norms, 1.0, False,
        compute_dtype=torch.float32, memory_format=torch.contiguous_format,
    )
    assert [launch.name for launch in launches] == ["_backward_kernel"]
    assert launches[0].bytes_moved <= 1.01 * 2 * g.numel() * g.element_size()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@given(
    shape=gradient_shapes(), dtype=st.sampled_from(DTYPES), setting=st.sampled_from(SETTINGS),
    seed=st.integers(0, 2**16),
)
@settings(max_examples=8)
def test_kernels_accept_any_rank(backend, shape, dtype, setting, seed):
    require_backend(backend)
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    got = gradient_norm_penalty(grad, *setting, backend=backend)
    want = reference.gradient_penalty(grad.double(), *setting)
    assert relative_error(got.double(), want, floor=setting[0] ** 2) <= TOLERANCE[dtype]


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_kernels_reduce_long_rows_in_float32(backend):
    """A float16 gradient with 70k elements per sample (more than one block/split): float32 accumulation."""
    require_backend(backend)
    grad = torch.full((2, 7, 100, 100), 0.01, dtype=torch.float16)
    got = gradient_norm_penalty(grad, 0.0, backend=backend)
    want = reference.gradient_penalty(grad.double(), 0.0, False)
    assert relative_error(got.double(), want) <= 1e-3


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@given(
    shape=st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 4), st.integers(1, 5)),
    dtype=st.sampled_from(DTYPES), layout=st.sampled_from(LAYOUTS), seed=st.integers(0, 2**16),
)
@settings(max_examples=8)
def test_interpolation_kernels_match_reference(backend, shape, dtype, layout, seed):
    require_backend(backend)
    generator = torch.Generator().manual_seed(seed)
    real = in_layout(torch.randn(shape, generator=generator).to(dtype), layout)
    fake = torch.randn(shape, generator=generator).to(dtype)
    eps = torch.rand(shape[0], generator=generator)
    got = interpolate(real, fake, eps, backend=backend)
    want = reference.interpolate(real.double(), fake.double(), eps.double())
    assert got.dtype == dtype
    assert relative_error(got.double(), want) <= TOLERANCE[dtype]
    if layout == "channels_last" and min(shape[1], shape[2] * shape[3]) > 1:
        assert got.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("setting", SETTINGS)
def test_gradcheck_and_gradgradcheck_float64(backend, setting):
    require_backend(backend)
    grad = in_layout(torch.randn(2, 3, 1, 2, dtype=torch.float64), "channels_last").requires_grad_()

    def penalty(g):
        return gradient_norm_penalty(g, *setting, backend=backend)

    assert torch.autograd.gradcheck(penalty, grad)
    assert torch.autograd.gradgradcheck(penalty, grad)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_interpolation_gradcheck_and_gradgradcheck_float64(backend):
    require_backend(backend)
    inputs = (
        torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True),
        torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True),
        torch.rand(3, dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(lambda *t: interpolate(*t, backend=backend), inputs)
    assert torch.autograd.gradgradcheck(lambda *t: interpolate(*t, backend=backend), inputs)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_third_order_derivative_matches_reference(backend):
    require_backend(backend)
    grad = torch.randn(3, 4, 2, dtype=torch.float64)

    def third_derivative(name):
        g = grad.clone().requires_grad_()
        (first,) = torch.autograd.grad(gradient_norm_penalty(g, 1.0, backend=name), g, create_graph=True)
        (second,) = torch.autograd.grad(first.square().sum(), g, create_graph=True)
        (third,) = torch.autograd.grad(second.sum(), g)
        return third

    assert_close(third_derivative(backend), third_derivative("reference"))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("center", [0.0, 1.0])
def test_zero_gradient_sample_gives_finite_derivatives(backend, center):
    """A sample whose gradient is exactly zero (saturated D) must not produce NaN through 1 / ||g||."""
    require_backend(backend)
    grad = torch.randn(3, 4, dtype=torch.float64)
    grad[1] = 0.0
    value, first, second_out, second = autograd_derivatives(
        lambda g: gradient_norm_penalty(g, center, backend=backend), grad, torch.tensor(1.0, dtype=torch.float64),
        torch.randn(3, 4, dtype=torch.float64),
    )
    for t in (value, first, second_out, second):
        assert torch.isfinite(t).all()
    assert torch.equal(first[1], torch.zeros(4, dtype=torch.float64))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_opcheck(backend, layout):
    require_backend(backend)
    grad = in_layout(torch.randn(3, 4, 2, 5), layout).requires_grad_()
    grad_out = torch.randn((), requires_grad=True)
    gg = torch.randn(3, 4, 2, 5).requires_grad_()
    ops = torch.ops.ganops
    for one_sided in (False, True):
        torch.library.opcheck(getattr(ops, f"gradient_penalty_{backend}").default, (grad, 1.0, one_sided))
        norms = reference.per_sample_norm(grad.detach())
        torch.library.opcheck(
            getattr(ops, f"gradient_penalty_backward_{backend}").default, (grad_out, grad, norms, 1.0, one_sided)
        )
        torch.library.opcheck(
            getattr(ops, f"gradient_penalty_double_backward_{backend}").default, (gg, grad_out, grad, 1.0, one_sided)
        )
    real = in_layout(torch.randn(3, 4, 2, 5), layout).requires_grad_()
    eps = torch.rand(3, requires_grad=True)
    torch.library.opcheck(getattr(ops, f"gradient_penalty_interpolate_{backend}").default, (real, gg, eps))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_torch_compile_fullgraph(backend):
    """The fused ops traced without graph breaks, penalty and its parameter gradient equal to eager."""
    require_backend(backend)
    torch._dynamo.reset()
    weight = torch.randn(5, 4, dtype=torch.float32, requires_grad=True)
    real, fake, eps = torch.randn(6, 5), torch.randn(6, 5), torch.rand(6)

    def wgan_gp(real, fake, eps):
        x_hat = interpolate(real, fake, eps, backend=backend).requires_grad_()
        (grad,) = torch.autograd.grad(torch.tanh(x_hat @ weight).sum(), x_hat, create_graph=True)
        return gradient_norm_penalty(grad, 1.0, backend=backend)

    compiled = torch.compile(gradient_norm_penalty, fullgraph=True, backend="aot_eager")
    grad = torch.randn(6, 5)
    assert_close(compiled(grad, 1.0, backend=backend), reference.gradient_penalty(grad, 1.0, False))
    compiled_interpolate = torch.compile(interpolate, fullgraph=True, backend="aot_eager")
    assert_close(compiled_interpolate(real, fake, eps, backend=backend), reference.interpolate(real, fake, eps))
    value = wgan_gp(real, fake, eps)
    (param_grad,) = torch.autograd.grad(value, weight)
    weight64 = weight.detach().double().requires_grad_()
    x_hat = reference.interpolate(real.double(), fake.double(), eps.double()).requires_grad_()
    (grad64,) = torch.autograd.grad(torch.tanh(x_hat @ weight64).sum(), x_hat, create_graph=True)
    expected = independent_penalty(grad64, 1.0, False)
    (expected_grad,) = torch.autograd.grad(expected, weight64)
    assert relative_error(value.double(), expected.detach()) < 1e-5
    assert relative_error(param_grad.double(), expected_grad) < 1e-4


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_torch_compile_inductor(backend):
    require_backend(backend)
    torch._dynamo.reset()
    grad = torch.randn(4, 3, 5)
    compiled = torch.compile(lambda g: gradient_norm_penalty(g * 2.0, 1.0, backend=backend), fullgraph=True)
    assert_close(compiled(grad), reference.gradient_penalty(grad * 2.0, 1.0, False))


def test_cpp_kernels_check_their_inputs_too():
    """The C++ ops are reachable through torch.ops directly; they must not trust their caller."""
    require_backend("cpp")
    ops = torch.ops.ganops
    with pytest.raises(RuntimeError, match="0-dim grad_out"):
        ops.gradient_penalty_backward_cpp(torch.randn(2), torch.randn(2, 3), torch.ones(2, dtype=torch.float64), 1.0, False)
    with pytest.raises(RuntimeError, match="center must be a finite float >= 0"):
        ops.gradient_penalty_cpp(torch.randn(2, 3), -1.0, False)
    with pytest.raises(RuntimeError, match="grad_grad_grad of shape"):
        ops.gradient_penalty_double_backward_cpp(torch.randn(2, 2), torch.randn(()), torch.randn(2, 3), 1.0, False)
    with pytest.raises(RuntimeError, match="eps of shape"):
        ops.gradient_penalty_interpolate_cpp(torch.randn(2, 3), torch.randn(2, 3), torch.rand(3))


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: gradient_norm_penalty(torch.ones(3, 2, dtype=torch.int64)), TypeError, "grad must have a floating dtype"),
        (lambda: gradient_norm_penalty(torch.ones(())), ValueError, "grad must have a batch dimension"),
        (lambda: gradient_norm_penalty(torch.ones(0, 3)), ValueError, "grad must not be empty"),
        (lambda: gradient_norm_penalty(torch.ones(2, 3), -1.0), ValueError, "center must be a finite float >= 0"),
        (lambda: gradient_norm_penalty(torch.ones(2, 3), 1.0, 1), TypeError, "one_sided must be a bool"),
        (lambda: interpolate(torch.ones(2, 3), torch.ones(2, 4), torch.ones(2)), ValueError, "fake must have the shape of real"),
        (lambda: interpolate(torch.ones(2, 3), torch.ones(2, 3), torch.ones(3)), ValueError, r"eps must have shape \[N\]"),
        (lambda: interpolate(torch.ones(2, 3), torch.ones(2, 3).double(), torch.ones(2)), TypeError, "fake must have the dtype"),
    ],
)
def test_op_bad_arguments_raise_clear_errors(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ------------------------------------------------------------------------ penalties against eager autograd


def mlp(features: int, dtype=torch.float64) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(features, 8), nn.Tanh(), nn.Linear(8, 1)).to(dtype)


def conv(channels: int, dtype=torch.float64) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1), nn.Softplus(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Tanh(),
        nn.Flatten(), nn.LazyLinear(1),
    ).to(dtype)


class ConvWithMinibatchStddev(nn.Module):
    """A ProGAN/StyleGAN-like D tail: conv, minibatch stddev (ganops, twice differentiable), conv, linear."""

    def __init__(self, channels: int, backend: str, dtype=torch.float64) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4, 3, padding=1, dtype=dtype)
        self.conv2 = nn.Conv2d(5, 4, 3, padding=1, dtype=dtype)
        self.head = nn.LazyLinear(1, dtype=dtype)
        self.backend = backend

    def forward(self, x):
        h = torch.nn.functional.softplus(self.conv1(x))
        h = minibatch_stddev(h, group_size=2, backend=self.backend)
        return self.head(torch.tanh(self.conv2(h)).flatten(1))


class ConvWithSelfAttention(nn.Module):
    """A SAGAN-like D: conv, ganops self-attention over the 16 positions (gamma non-zero), linear."""

    def __init__(self, channels: int, backend: str, dtype=torch.float64) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1, dtype=dtype)
        self.attention = SelfAttention2d(8, variant="sagan", spectral_norm=False, backend=backend).to(dtype)
        with torch.no_grad():
            self.attention.gamma.fill_(0.7)
        self.head = nn.LazyLinear(1, dtype=dtype)

    def forward(self, x):
        return self.head(torch.tanh(self.attention(torch.nn.functional.softplus(self.conv(x)))).flatten(1))


def eager_penalty(discriminator, real, fake, kind, center, weight, seed, drawn_dtype=None):
    """The penalty written out with torch.autograd.grad, drawing eps/alpha/noise in the documented order (per-sample
    weights in float32, float64 for float64 samples; noise in ``drawn_dtype``, the dtype of the original samples)."""
    generator = torch.Generator().manual_seed(seed)
    n = real.shape[0]
    drawn_dtype = drawn_dtype or real.dtype
    weights_dtype = torch.float64 if drawn_dtype == torch.float64 else torch.float32
    if kind in ("wgan-gp", "wgan-lp"):
        eps = per_sample(torch.rand(n, dtype=weights_dtype, generator=generator), real).to(real.dtype)
        x_hat = eps * real + (1 - eps) * fake
    elif kind == "dragan":
        noise = torch.rand(real.shape, dtype=drawn_dtype, generator=generator).to(real.dtype)
        perturbed = real + 0.5 * real.std(correction=0) * noise
        alpha = per_sample(torch.rand(n, dtype=weights_dtype, generator=generator), real).to(real.dtype)
        x_hat = real + alpha * (perturbed - real)
    else:
        x_hat = (real if kind == "r1" else fake).clone()
    x_hat.requires_grad_()
    (grad,) = torch.autograd.grad(discriminator(x_hat).sum(), x_hat, create_graph=True)
    norm = grad.flatten(1).norm(dim=1)
    if kind in ("r1", "r2"):
        return weight * grad.flatten(1).square().sum(dim=1).mean()
    distance = norm - center
    if kind == "wgan-lp":
        distance = distance.clamp(min=0)
    return weight * distance.square().mean()


def penalty_and_parameter_grads(function, discriminator):
    value = function()
    # The last layer's bias does not change D's input gradient: its gradient is zero (materialised).
    params = [p for p in discriminator.parameters() if p.requires_grad]
    return value.detach(), torch.autograd.grad(value, params, allow_unused=True, materialize_grads=True)


DISCRIMINATORS = {
    "mlp": lambda backend: mlp(3 * 4 * 4),
    "conv": lambda backend: conv(3),
    "conv+minibatch_stddev": lambda backend: ConvWithMinibatchStddev(3, backend),
    "conv+attention": lambda backend: ConvWithSelfAttention(3, backend),
}


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("architecture", list(DISCRIMINATORS))
@pytest.mark.parametrize("kind", KINDS)
def test_penalty_matches_eager_autograd_float64(backend, architecture, kind):
    """Value and gradients w.r.t. D's parameters against the eager penalty, in float64."""
    require_backend(backend)
    torch.manual_seed(0)
    discriminator = DISCRIMINATORS[architecture](backend)
    real, fake = torch.randn(4, 3, 4, 4, dtype=torch.float64), torch.randn(4, 3, 4, 4, dtype=torch.float64)
    discriminator(real)  # materialise lazy layers
    center, weight = 0.8, 3.0
    got, got_grads = penalty_and_parameter_grads(
        lambda: gradient_penalty(
            discriminator, real, fake, kind, center, weight, generator=torch.Generator().manual_seed(7), backend=backend
        ),
        discriminator,
    )
    want, want_grads = penalty_and_parameter_grads(
        lambda: eager_penalty(discriminator, real, fake, kind, center, weight, seed=7), discriminator
    )
    assert_close(got, want)
    for got_grad, want_grad in zip(got_grads, want_grads):
        assert relative_error(got_grad, want_grad, floor=1e-8) <= 1e-9


@given(
    batch=st.integers(1, 5), features=st.integers(1, 12), dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(KINDS), center=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**16),
)
@settings(max_examples=10)
def test_penalty_over_shapes_and_dtypes(batch, features, dtype, kind, center, seed):
    torch.manual_seed(seed)
    discriminator = nn.Sequential(nn.Linear(features, 6), nn.Tanh(), nn.Linear(6, 1)).to(dtype)
    generator = torch.Generator().manual_seed(seed)
    real = torch.randn(batch, features, generator=generator).to(dtype)
    fake = torch.randn(batch, features, generator=generator).to(dtype)
    got = gradient_penalty(discriminator, real, fake, kind, center, 1.0, generator=torch.Generator().manual_seed(1))
    # Against the eager penalty of the same D in float64: for half-precision samples only D's own rounding differs.
    wide = discriminator.double()
    want = eager_penalty(wide, real.double(), fake.double(), kind, center, 1.0, seed=1, drawn_dtype=dtype)
    assert got.dtype == (dtype if dtype in (torch.float32, torch.float64) else torch.float32)
    tolerance = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-2, torch.bfloat16: 5e-2}[dtype]
    # (||g|| - c)^2 cancels where ||g|| ~ c: measure against the size c^2 of the cancelling terms.
    assert relative_error(got.detach().double(), want.detach(), floor=center**2) <= tolerance


def test_generator_makes_the_penalty_reproducible():
    discriminator = mlp(6)
    real, fake = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
    for kind in ("wgan-gp", "dragan"):
        first = gradient_penalty(discriminator, real, fake, kind, generator=torch.Generator().manual_seed(3))
        again = gradient_penalty(discriminator, real, fake, kind, generator=torch.Generator().manual_seed(3))
        other = gradient_penalty(discriminator, real, fake, kind, generator=torch.Generator().manual_seed(4))
        assert torch.equal(first, again) and not torch.equal(first, other)


def test_conditional_discriminator_receives_extra_inputs():
    class Conditional(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(3, 5, dtype=torch.float64)
            self.linear = nn.Linear(5, 1, dtype=torch.float64)

        def forward(self, x, labels, *, temperature):
            return self.linear(torch.tanh(x * self.embed(labels)) / temperature)

    discriminator = Conditional()
    real, fake = torch.randn(4, 5, dtype=torch.float64), torch.randn(4, 5, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1, 2])
    value = gradient_penalty(
        discriminator, real, fake, "r1", discriminator_args=(labels,), discriminator_kwargs={"temperature": 2.0}
    )
    want = eager_penalty(lambda x: discriminator(x, labels, temperature=2.0), real, fake, "r1", 0.0, 10.0, seed=0)
    assert_close(value, want)
    value.backward()
    assert discriminator.embed.weight.grad.abs().sum() > 0


def test_r1_and_r2_ignore_center_and_use_reals_and_fakes():
    discriminator = mlp(4)
    real, fake = torch.randn(3, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64) * 3
    r1 = gradient_penalty(discriminator, real, None, "r1", center=5.0, weight=1.0)
    r2 = gradient_penalty(discriminator, None, fake, "r2", center=5.0, weight=1.0)
    assert_close(r1, eager_penalty(discriminator, real, fake, "r1", 0.0, 1.0, 0))
    assert_close(r2, eager_penalty(discriminator, real, fake, "r2", 0.0, 1.0, 0))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_autocast_bfloat16(backend):
    """Under CPU autocast (bf16 convs/linears) the penalty stays close to the float32 one and its grads finite."""
    require_backend(backend)
    torch.manual_seed(0)
    discriminator = conv(3, torch.float32)
    real, fake = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    discriminator(real)
    reference_value = gradient_penalty(discriminator, real, fake, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = gradient_penalty(discriminator, real, fake, generator=torch.Generator().manual_seed(0), backend=backend)
    assert value.dtype == torch.float32
    assert relative_error(value.detach().double(), reference_value.detach().double()) < 5e-2
    grads = torch.autograd.grad(value, list(discriminator.parameters()), allow_unused=True, materialize_grads=True)
    assert all(torch.isfinite(g).all() for g in grads)


def test_grad_scaler_gives_the_unscaled_penalty():
    torch.manual_seed(0)
    discriminator = conv(3, torch.float32)
    real, fake = torch.randn(4, 3, 8, 8), torch.randn(4, 3, 8, 8)
    discriminator(real)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    plain = gradient_penalty(discriminator, real, fake, generator=torch.Generator().manual_seed(0))
    scaled = gradient_penalty(discriminator, real, fake, generator=torch.Generator().manual_seed(0), grad_scaler=scaler)
    assert relative_error(scaled.detach().double(), plain.detach().double()) < 1e-5


def test_grad_scaler_overflow_raises_instead_of_an_infinite_penalty():
    discriminator = nn.Linear(4, 1)
    with torch.no_grad():
        discriminator.weight.fill_(1e3)
    scaler = torch.amp.GradScaler("cpu", init_scale=1e38)
    with pytest.raises(NonFiniteGradientError, match="inf/NaN after unscaling"):
        gradient_penalty(discriminator, torch.randn(2, 4), torch.randn(2, 4), grad_scaler=scaler)
    # The documented way out: skip the step and back the scale off, after which the penalty is finite.
    while scaler.get_scale() > 1e30:
        scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
    assert torch.isfinite(gradient_penalty(discriminator, torch.randn(2, 4), torch.randn(2, 4), grad_scaler=scaler))


def test_lazy_regularizer_applies_the_scaled_penalty_every_interval():
    discriminator = mlp(4)
    real = torch.randn(3, 4, dtype=torch.float64)
    lazy = LazyRegularizer(interval=4)
    assert [lazy.due(step) for step in range(6)] == [True, False, False, False, True, False]
    assert lazy(1, discriminator, real, kind="r1", weight=0.5) is None
    value = lazy(8, discriminator, real, kind="r1", weight=0.5)
    assert_close(value, 4 * gradient_penalty(discriminator, real, kind="r1", weight=0.5))
    lr, betas = lazy.adam_hyperparameters(0.002, (0.0, 0.99))
    assert lr == pytest.approx(0.002 * 0.8) and betas[1] == pytest.approx(0.99**0.8)
    with pytest.raises(ValueError, match="interval must be a positive int"):
        LazyRegularizer(0)


def _constant_discriminator(x):
    return torch.zeros(x.shape[0], 1)


class _IgnoresInput(nn.Module):
    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        return self.bias.expand(x.shape[0], 1)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(real=torch.randn(2, 3), fake=torch.randn(2, 4)), ValueError, "real and fake must have the same shape"),
        (dict(real=torch.randn(2, 3)), ValueError, "kind 'wgan-gp' needs fake samples"),
        (dict(real=torch.randn(2, 3), kind="wgan-lp"), ValueError, "kind 'wgan-lp' needs fake samples"),
        (dict(real=None, kind="r2"), ValueError, "kind 'r2' needs fake samples"),
        (dict(real=torch.ones(2, 3, dtype=torch.long), fake=torch.ones(2, 3, dtype=torch.long)), TypeError, "real must have a floating dtype"),
        (dict(real=torch.randn(2, 3), fake=torch.randn(2, 3), kind="gp"), ValueError, "kind must be one of"),
        (dict(real=torch.randn(0, 3), fake=torch.randn(0, 3)), ValueError, "real must not be empty"),
        (dict(real=torch.randn(2, 3), fake=torch.randn(2, 3), center=-1.0), ValueError, "center must be a finite float"),
        (dict(real=torch.randn(2, 3), fake=torch.randn(2, 3), discriminator=_IgnoresInput()), ValueError, "does not depend on its input"),
        (dict(real=torch.randn(2, 3), fake=torch.randn(2, 3), discriminator=_constant_discriminator), ValueError, "does not depend on its input"),
        (dict(real=torch.randn(2, 3), fake=torch.randn(2, 3), discriminator="D"), TypeError, "discriminator must be callable"),
        (dict(real=torch.randn(2, 3), fake=torch.randn(2, 3), grad_scaler=2.0), TypeError, "grad_scaler must be a torch.amp.GradScaler"),
    ],
)
def test_penalty_bad_arguments_raise_clear_errors(kwargs, error, message):
    kwargs.setdefault("discriminator", nn.Linear(3, 1))
    with pytest.raises(error, match=message):
        gradient_penalty(**kwargs)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
@pytest.mark.parametrize("shape", [(64, 3, 64, 64), (7, 33, 5, 3), (1, 1, 1, 1), (2, 512, 4, 4)])
def test_cuda_matches_reference(backend, dtype, layout, shape):
    require_backend(backend, "cuda")
    generator = torch.Generator().manual_seed(0)
    # Gradients of norm ~1 per sample, as WGAN-GP drives them, so the two-sided penalty does not cancel.
    grad = torch.randn(shape, generator=generator, dtype=torch.float64) / (shape[1] * shape[2] * shape[3]) ** 0.5
    grad_out = torch.randn((), generator=generator, dtype=torch.float64)
    gg = torch.randn(shape, generator=generator, dtype=torch.float64)

    def on_cuda(t):
        return in_layout(t.to("cuda", dtype), layout) if t.dim() == 4 else t.to("cuda", dtype)

    for setting in [(1.0, False), (0.0, False), (1.0, True)]:
        actual = autograd_derivatives(
            lambda g: gradient_norm_penalty(g, *setting, backend=backend), on_cuda(grad), on_cuda(grad_out), on_cuda(gg)
        )
        expected = autograd_derivatives(
            lambda g: reference.gradient_penalty(g, *setting), on_cuda(grad).double(), on_cuda(grad_out).double(),
            on_cuda(gg).double(),
        )
        for got, want in zip(actual, expected):
            assert got.dtype == dtype and got.is_cuda
            assert relative_error(got.double(), want, floor=setting[0] ** 2) <= TOLERANCE[dtype], setting
    real, fake, eps = on_cuda(grad), on_cuda(gg), torch.rand(shape[0], device="cuda")
    got = interpolate(real, fake, eps, backend=backend)
    assert relative_error(got.double(), reference.interpolate(real.double(), fake.double(), eps.double())) <= TOLERANCE[dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_cuda_rows_that_start_off_a_16_byte_boundary(backend, dtype):
    """Rows whose length is a multiple of every 16-byte pack but whose storage starts one element off: the CUDA
    kernels take their element-by-element path there and their packed path on the aligned copy; both agree with
    the reference and with each other up to the order of the sums."""
    require_backend(backend, "cuda")
    generator = torch.Generator().manual_seed(3)
    shape, numel = (6, 8, 4, 8), 6 * 8 * 4 * 8
    values = torch.randn(2 * numel + 1, generator=generator, dtype=torch.float64) / (8 * 4 * 8) ** 0.5
    storage = values.to("cuda", dtype)
    grad, gg = storage[1 : numel + 1].view(shape), storage[numel + 1 :].view(shape)
    assert grad.data_ptr() % 16 != 0
    grad_out = torch.tensor(0.7, device="cuda", dtype=dtype)
    for setting in [(1.0, False), (0.0, False), (1.0, True)]:
        offset = autograd_derivatives(lambda g: gradient_norm_penalty(g, *setting, backend=backend), grad, grad_out, gg)
        aligned = autograd_derivatives(
            lambda g: gradient_norm_penalty(g, *setting, backend=backend), grad.clone(), grad_out, gg.clone()
        )
        expected = autograd_derivatives(
            lambda g: reference.gradient_penalty(g, *setting), grad.double(), grad_out.double(), gg.double()
        )
        for got, other, want in zip(offset, aligned, expected):
            assert relative_error(got.double(), want, floor=setting[0] ** 2) <= TOLERANCE[dtype], setting
            assert relative_error(got.double(), other.double(), floor=setting[0] ** 2) <= TOLERANCE[dtype], setting


@pytest.mark.gpu
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_cuda_opcheck_compile_and_penalty(backend):
    require_backend(backend, "cuda")
    grad = torch.randn(8, 3, 16, 16, device="cuda", requires_grad=True)
    torch.library.opcheck(getattr(torch.ops.ganops, f"gradient_penalty_{backend}").default, (grad, 1.0, False))
    torch._dynamo.reset()
    compiled = torch.compile(gradient_norm_penalty, fullgraph=True)
    assert_close(compiled(grad, backend=backend), reference.gradient_penalty(grad, 1.0, False), torch.float32)
    torch.manual_seed(0)
    discriminator = conv(3, torch.float32).cuda()
    real, fake = torch.randn(8, 3, 16, 16, device="cuda"), torch.randn(8, 3, 16, 16, device="cuda")
    discriminator(real)
    generator = torch.Generator("cuda")
    got = gradient_penalty(discriminator, real, fake, generator=generator.manual_seed(1), backend=backend)
    want = gradient_penalty(discriminator, real, fake, generator=generator.manual_seed(1), backend="reference")
    assert relative_error(got.double(), want.double()) < 1e-5
