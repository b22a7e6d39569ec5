"""minibatch_discrimination: the reference against the naive N x N x B x C form, every backend against the reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ganops
from ganops import _triton
from ganops.reference import minibatch_discrimination as reference
from helpers import KERNEL_BACKENDS, assert_close, autograd_derivatives, relative_error, require_backend

ALL_BACKENDS = ("reference",) + KERNEL_BACKENDS
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
LAYOUTS = ("contiguous", "transposed", "sliced")


def naive_minibatch_discrimination(features: torch.Tensor, T: torch.Tensor, exclude_self: bool) -> torch.Tensor:
    """The paper's formula with every pairwise difference at once (N x N x B x C), in float64."""
    features, T = features.double(), T.double()
    n = features.shape[0]
    m = torch.einsum("na,abc->nbc", features, T)
    similarity = torch.exp(-(m[:, None] - m[None]).abs().sum(dim=-1))
    if exclude_self:
        similarity = similarity * (1 - torch.eye(n, dtype=torch.float64))[:, :, None]
    return torch.cat([features, similarity.sum(dim=1)], dim=1)


def in_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``t`` stored as a plain, a transposed or a strided view."""
    if layout == "contiguous":
        return t.contiguous()
    if layout == "transposed":
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    if layout == "sliced":
        padded = torch.zeros(*t.shape[:-1], 2 * t.shape[-1], dtype=t.dtype)
        padded[..., ::2] = t
        return padded[..., ::2]
    raise ValueError(layout)


@st.composite
def problems(draw, max_batch: int = 9, max_kernels: int = 4, max_dim: int = 6):
    """(N, A, B, C) and a scale: large scales make the similarities underflow, small ones make them all ~1."""
    shape = (
        draw(st.integers(1, max_batch)), draw(st.integers(1, 5)), draw(st.integers(1, max_kernels)),
        draw(st.integers(1, max_dim)),
    )
    return shape, draw(st.sampled_from([1.0, 1e-3, 0.3, 30.0]))


def draw_inputs(shape, scale, seed, dtype=torch.float64):
    n, a, b, c = shape
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(n, a, dtype=torch.float64, generator=generator)
    T = torch.randn(a, b, c, dtype=torch.float64, generator=generator) * scale
    return features.to(dtype), T.to(dtype)


@given(problem=problems(), exclude_self=st.booleans(), seed=st.integers(0, 2**16))
def test_reference_matches_naive_form(problem, exclude_self, seed):
    shape, scale = problem
    features, T = draw_inputs(shape, scale, seed)
    expected = naive_minibatch_discrimination(features, T, exclude_self)
    assert_close(reference.minibatch_discrimination(features, T, exclude_self), expected)


def test_reference_works_in_blocks_larger_than_one():
    """N above ROWS_PER_BLOCK: the blocks must tile the rows exactly."""
    features, T = draw_inputs((2 * reference.ROWS_PER_BLOCK + 3, 3, 2, 2), 0.2, 0)
    for exclude_self in (False, True):
        expected = naive_minibatch_discrimination(features, T, exclude_self)
        assert_close(reference.minibatch_discrimination(features, T, exclude_self), expected)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_known_values(backend):
    """Two identical samples and one far away: o = 2 (or 1 without self) for the pair, 1 (or 0) for the loner."""
    require_backend(backend)
    features = torch.tensor([[1.0], [1.0], [1e4]], dtype=torch.float64)
    T = torch.ones(1, 2, 3, dtype=torch.float64)
    out = ganops.minibatch_discrimination(features, T, backend=backend)
    assert out[:, 1:].tolist() == [[2.0, 2.0], [2.0, 2.0], [1.0, 1.0]]
    assert torch.equal(out[:, :1], features)
    out = ganops.minibatch_discrimination(features, T, exclude_self=True, backend=backend)
    assert out[:, 1:].tolist() == [[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_exclude_self_keeps_tiny_scores(backend):
    """The j = i term is left out, not subtracted: scores far below float32's 1 + eps survive."""
    require_backend(backend)
    features = torch.tensor([[0.0], [20.0]])
    T = torch.ones(1, 1, 1)
    out = ganops.minibatch_discrimination(features, T, exclude_self=True, backend=backend)
    assert out[:, 1].tolist() == pytest.approx([float(torch.exp(torch.tensor(-20.0)))] * 2, rel=1e-5)


@given(problem=problems(max_batch=6), seed=st.integers(0, 2**16))
def test_reference_derivative_formulas_match_autograd_of_naive_form(problem, seed):
    (n, _, b, c), _ = problem
    generator = torch.Generator().manual_seed(seed)
    m = torch.randn(n, b, c, dtype=torch.float64, generator=generator)
    grad_o = torch.randn(n, b, dtype=torch.float64, generator=generator)
    grad_grad_m = torch.randn(n, b, c, dtype=torch.float64, generator=generator)

    def naive_scores(t):
        return torch.exp(-(t[:, None] - t[None]).abs().sum(dim=-1)).sum(dim=1)

    _, grad_m, grad_grad_o, second = autograd_derivatives(naive_scores, m, grad_o, grad_grad_m)
    assert_close(reference.minibatch_discrimination_scores_backward(grad_o, m), grad_m.detach())
    formula_grad_grad_o, formula_second = reference.minibatch_discrimination_scores_double_backward(
        grad_grad_m, grad_o, m
    )
    assert_close(formula_grad_grad_o, grad_grad_o)
    assert_close(formula_second, second)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@given(
    problem=problems(),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
    exclude_self=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_kernels_match_reference(backend, problem, dtype, layout, exclude_self, seed):
    """Forward, backward and double backward of the scores op of each kernel backend against float64."""
    require_backend(backend)
    shape, scale = problem
    n, _, b, c = shape
    features, T = draw_inputs(shape, scale, seed)
    m = in_layout(torch.einsum("na,abc->nbc", features, T).to(dtype), layout)
    generator = torch.Generator().manual_seed(seed + 1)
    grad_o = torch.randn(n, b, generator=generator).to(dtype)
    grad_grad_m = in_layout(torch.randn(n, b, c, generator=generator).to(dtype), layout)
    op = getattr(torch.ops.ganops, f"minibatch_discrimination_{backend}")

    actual = autograd_derivatives(lambda t: op(t, exclude_self), m, grad_o, grad_grad_m)
    expected = autograd_derivatives(
        lambda t: reference.minibatch_discrimination_scores(t, exclude_self),
        m.double(), grad_o.double(), grad_grad_m.double(),
    )
    tolerance = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-3}[dtype]
    # Far-apart samples give similarities like exp(-200): below the compute dtype's normal range they lose their
    # relative precision (or flush to zero), which is the dtype's limit, not the kernel's.
    compute = torch.finfo(torch.float64 if dtype == torch.float64 else torch.float32)
    underflow = compute.tiny / compute.eps
    for name, got, want in zip(("o", "grad_m", "grad_grad_o", "grad_grad_m"), actual, expected):
        assert got.dtype == dtype, name
        # Half-precision outputs are rounded once from float32 sums of the same (rounded) inputs.
        floor = max(want.abs().max().item(), underflow) if dtype in (torch.float16, torch.bfloat16) else underflow
        rounding = {torch.float16: 2**-11, torch.bfloat16: 2**-8}.get(dtype, 0.0)
        error = relative_error(got.double(), want, floor=floor)
        assert error <= tolerance + rounding, f"{name}: relative error {error:.3e}"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_public_function_matches_naive_form(backend):
    require_backend(backend)
    features, T = draw_inputs((5, 4, 3, 2), 0.5, 1, torch.float32)
    features = in_layout(features, "transposed")
    out = ganops.minibatch_discrimination(features, T, backend=backend)
    assert out.shape == (5, 4 + 3) and out.dtype == torch.float32
    assert_close(out.double(), naive_minibatch_discrimination(features, T, False), torch.float32)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("exclude_self", [False, True])
def test_gradcheck_and_gradgradcheck_float64(backend, exclude_self):
    require_backend(backend)
    features, T = draw_inputs((3, 2, 2, 3), 0.5, 2)
    features.requires_grad_()
    T.requires_grad_()

    def function(f, t):
        return ganops.minibatch_discrimination(f, t, exclude_self, backend=backend)

    # Each Triton launch costs ~0.1 s under the CPU interpreter; fast mode compares random projections of the
    # same Jacobians instead of building them column by column.
    fast_mode = backend == "triton" and _triton.interpreter_enabled()
    assert torch.autograd.gradcheck(function, (features, T), fast_mode=fast_mode)
    assert torch.autograd.gradgradcheck(function, (features, T), fast_mode=fast_mode)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_third_order_derivative_matches_reference(backend):
    require_backend(backend)
    m = torch.randn(4, 2, 3, dtype=torch.float64)

    def third_derivative(name):
        t = m.clone().requires_grad_()
        scores = (
            reference.minibatch_discrimination_scores(t)
            if name == "reference"
            else getattr(torch.ops.ganops, f"minibatch_discrimination_{name}")(t, False)
        )
        (first,) = torch.autograd.grad(scores.square().sum(), t, create_graph=True)
        (second,) = torch.autograd.grad(first.square().sum(), t, create_graph=True)
        (third,) = torch.autograd.grad(second.sum(), t)
        return third

    assert_close(third_derivative(backend), third_derivative("reference"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
def test_opcheck(backend, layout):
    require_backend(backend)
    m = in_layout(torch.randn(3, 2, 3), layout).requires_grad_()
    grad_o = torch.randn(3, 2).requires_grad_()
    grad_grad_m = in_layout(torch.randn(3, 2, 3), layout).requires_grad_()
    ops = torch.ops.ganops
    torch.library.opcheck(getattr(ops, f"minibatch_discrimination_{backend}").default, (m, True))
    torch.library.opcheck(getattr(ops, f"minibatch_discrimination_backward_{backend}").default, (grad_o, m, False))
    torch.library.opcheck(
        getattr(ops, f"minibatch_discrimination_double_backward_{backend}").default, (grad_grad_m, grad_o, m, False)
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_torch_compile_fullgraph_gradient_penalty(backend):
    """The op compiles with fullgraph=True; an R1-style penalty through it in float32 matches float64."""
    require_backend(backend)
    torch._dynamo.reset()
    features, T = draw_inputs((4, 3, 2, 3), 0.5, 3, torch.float32)

    def penalty(f, t):
        out = ganops.minibatch_discrimination(f, t, backend=backend)
        (grad,) = torch.autograd.grad(out.square().sum(), f, create_graph=True)
        return grad.square().sum()

    compiled = torch.compile(ganops.minibatch_discrimination, fullgraph=True, backend="aot_eager")
    compiled_out = compiled(features.clone().requires_grad_(), T, backend=backend)
    assert_close(compiled_out.detach(), ganops.minibatch_discrimination(features, T, backend="reference"))
    f = features.clone().requires_grad_()
    value = penalty(f, T)
    (grad,) = torch.autograd.grad(value, f)
    f64 = features.double().requires_grad_()
    expected_value = penalty(f64, T.double())
    (expected_grad,) = torch.autograd.grad(expected_value, f64)
    assert relative_error(value.double().detach(), expected_value.detach()) < 1e-5
    assert relative_error(grad.double(), expected_grad) < 1e-4


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_wgan_gp_step_through_a_discriminator_with_the_module(backend):
    """One WGAN-GP critic step (gradient penalty on interpolates, so double backward) matches the reference."""
    require_backend(backend)

    def critic_gradients(name):
        torch.manual_seed(0)
        critic = torch.nn.Sequential(
            torch.nn.Linear(6, 5), torch.nn.LeakyReLU(0.2), ganops.nn.MinibatchDiscrimination(5, 4, 3, backend=name),
            torch.nn.Linear(9, 1),
        ).double()
        real, fake = torch.randn(4, 6, dtype=torch.float64), torch.randn(4, 6, dtype=torch.float64)
        alpha = torch.rand(4, 1, dtype=torch.float64)
        mixed = (alpha * real + (1 - alpha) * fake).requires_grad_()
        (grad,) = torch.autograd.grad(critic(mixed).sum(), mixed, create_graph=True)
        penalty = ((grad.norm(dim=1) - 1) ** 2).mean()
        loss = critic(fake).mean() - critic(real).mean() + 10 * penalty
        loss.backward()
        return [p.grad for p in critic.parameters()]

    for got, want in zip(critic_gradients(backend), critic_gradients("reference")):
        assert_close(got, want)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_autocast_runs_the_matmul_in_bfloat16_and_returns_the_features_dtype(backend):
    require_backend(backend)
    features, T = draw_inputs((5, 4, 3, 2), 0.5, 4, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ganops.minibatch_discrimination(features, T, backend=backend)
    assert out.dtype == torch.float32
    assert torch.equal(out[:, :4], features)
    expected = naive_minibatch_discrimination(features, T, False)
    assert relative_error(out[:, 4:].double(), expected[:, 4:]) < 3e-2


def test_module_shapes_parameters_and_repr():
    layer = ganops.nn.MinibatchDiscrimination(6, 4, 3, exclude_self=True, backend="reference")
    assert layer.T.shape == (6, 4, 3) and layer.out_features == 10
    x = torch.randn(5, 6)
    assert torch.equal(layer(x), ganops.minibatch_discrimination(x, layer.T, True, backend="reference"))
    assert "in_features=6, num_kernels=4, kernel_dim=3, exclude_self=True" in repr(layer)
    with pytest.raises(ValueError, match="MinibatchDiscrimination: kernel_dim must be a positive int, got 0"):
        ganops.nn.MinibatchDiscrimination(6, 4, 0)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(features=torch.randn(4, 3, 1), T=torch.randn(3, 2, 2)), ValueError,
         r"features must have 2 dimensions \[N, A\], got shape \(4, 3, 1\)"),
        (dict(features=torch.randn(4, 3), T=torch.randn(3, 2)), ValueError,
         r"T must have 3 dimensions \[A, B, C\], got shape \(3, 2\)"),
        (dict(features=torch.randn(4, 3), T=torch.randn(5, 2, 2)), ValueError, r"T \[A, B, C\] must have A = 3"),
        (dict(features=torch.ones(4, 3, dtype=torch.int64), T=torch.randn(3, 2, 2)), TypeError,
         "features must have a floating dtype"),
        (dict(features=torch.randn(4, 3), T=torch.randn(3, 2, 2, dtype=torch.float64)), TypeError,
         "T must have the dtype of features"),
        (dict(features=[[1.0]], T=torch.randn(1, 2, 2)), TypeError, "features must be a torch.Tensor, got list"),
        (dict(features=torch.randn(0, 3), T=torch.randn(3, 2, 2)), ValueError, "features must have no empty dimension"),
        (dict(features=torch.randn(4, 3), T=torch.randn(3, 0, 2)), ValueError, "T must have no empty dimension"),
        (dict(features=torch.randn(4, 3), T=torch.randn(3, 2, 2), exclude_self=1), TypeError,
         "exclude_self must be a bool, got int"),
        (dict(features=torch.randn(4, 3), T=torch.randn(3, 2, 2), backend="cuda"), ValueError,
         "backend must be one of"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        ganops.minibatch_discrimination(**kwargs)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_registered_ops_check_their_inputs_too(backend):
    """The ops are reachable through torch.ops directly; they must not trust their caller."""
    require_backend(backend)
    ops = torch.ops.ganops
    error = RuntimeError if backend == "cpp" else ValueError
    with pytest.raises(error, match=r"m must have 3 dimensions \[N, B, C\]"):
        getattr(ops, f"minibatch_discrimination_{backend}")(torch.randn(4, 3), False)
    with pytest.raises(error, match="grad_o"):
        getattr(ops, f"minibatch_discrimination_backward_{backend}")(torch.randn(4, 2), torch.randn(4, 3, 2), False)
    with pytest.raises(error, match="grad_grad_m"):
        getattr(ops, f"minibatch_discrimination_double_backward_{backend}")(
            torch.randn(4, 3, 3), torch.randn(4, 3), torch.randn(4, 3, 2), False
        )


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(64, 32, 100, 5), (256, 16, 100, 5), (7, 3, 5, 33), (1, 2, 3, 1)])
def test_cuda_matches_reference(backend, dtype, shape):
    require_backend(backend, "cuda")
    n, a, b, c = shape
    features, T = draw_inputs(shape, 0.1, 0)
    generator = torch.Generator().manual_seed(1)
    grad_o = torch.randn(n, b, generator=generator, dtype=torch.float64)
    grad_grad_m = torch.randn(n, b, c, generator=generator, dtype=torch.float64)
    m = torch.einsum("na,abc->nbc", features, T)
    op = (
        (lambda t: reference.minibatch_discrimination_scores(t))
        if backend == "reference"
        else (lambda t: getattr(torch.ops.ganops, f"minibatch_discrimination_{backend}")(t, False))
    )

    def on_cuda(t):
        return t.to("cuda", dtype)

    actual = autograd_derivatives(op, on_cuda(m), on_cuda(grad_o), on_cuda(grad_grad_m))
    expected = autograd_derivatives(
        reference.minibatch_discrimination_scores, on_cuda(m).double(), on_cuda(grad_o).double(),
        on_cuda(grad_grad_m).double(),
    )
    tolerance = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype]
    for got, want in zip(actual, expected):
        assert got.dtype == dtype and got.is_cuda
        assert relative_error(got.double(), want, floor=want.abs().max().item()) <= tolerance
