"""attention: the reference against independent math, every backend against the reference, memory linear in N.
The SAGAN/BigGAN block is tested in test_nn_attention.py, its converters in test_conversion.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from ganops.nn import SelfAttention2d
from ganops.ops.attention import attention, cpp_ops_available
from ganops.reference import attention as reference
from helpers import KERNEL_BACKENDS, assert_close, relative_error, require_backend

ALL_BACKENDS = ("reference",) + KERNEL_BACKENDS
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# Relative error bounds against the float64 reference: a floor per dtype (rounding of the results and, for
# fp16/bf16, of the dot operands on the GPU) plus a term per unit of logit size, since an absolute error
# eps * |S| in a logit computed with accumulation precision eps is a relative error of that size in the softmax.
KERNEL_TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 4e-2}
# The double backward multiplies logit-sized factors (R ~ |S| / |q|) by q and k again: ten times the slope.
TOLERANCE_PER_LOGIT_UNIT = {torch.float64: 3e-15, torch.float32: 2e-6, torch.float16: 2e-6, torch.bfloat16: 2e-6}
SECOND_ORDER_SLOPE = 10.0


def require_attention_backend(backend: str, device_type: str = "cpu") -> None:
    require_backend(backend, device_type)
    if backend == "cpp" and not cpp_ops_available():
        pytest.fail("ganops._C loaded but has no attention_cpp op: rebuild the extension")


@st.composite
def problems(draw, max_tokens: int = 40):
    """(batch dims, Nq, Nk, Dqk, Dv): ragged sizes around the interpreter's block of 16, odd head dims."""
    batch = draw(st.sampled_from([(), (1,), (3,), (2, 1)]))
    n_q = draw(st.one_of(st.just(1), st.integers(1, max_tokens)))
    n_k = draw(st.one_of(st.just(1), st.integers(1, max_tokens)))
    d_qk = draw(st.sampled_from([1, 3, 8, 12, 20, 33]))
    d_v = draw(st.sampled_from([2, 8, 17, 48, 64]))
    return batch, n_q, n_k, d_qk, d_v


def random_inputs(problem, dtype=torch.float64, seed=0, magnitude=1.0):
    batch, n_q, n_k, d_qk, d_v = problem
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(*batch, n_q, d_qk, dtype=torch.float64, generator=generator) * magnitude
    k = torch.randn(*batch, n_k, d_qk, dtype=torch.float64, generator=generator)
    v = torch.randn(*batch, n_k, d_v, dtype=torch.float64, generator=generator)
    return q.to(dtype), k.to(dtype), v.to(dtype)


def naive_attention(q, k, v, scale):
    """Query by query with explicit exp and division: shares nothing with the reference but the definition."""
    rows = []
    for i in range(q.shape[-2]):
        logits = (q[..., i : i + 1, :] * k).sum(-1) * scale
        weights = torch.exp(logits - logits.max(dim=-1, keepdim=True).values)
        rows.append((weights / weights.sum(dim=-1, keepdim=True)).unsqueeze(-1).mul(v).sum(-2))
    return torch.stack(rows, dim=-2)


def derivatives(function, q, k, v, grad_out, cotangents):
    """(out, (dq, dk, dv), grad of <cotangents, (dq, dk, dv)> w.r.t. (grad_out, q, k, v)) via autograd."""
    inputs = [t.detach().requires_grad_() for t in (grad_out, q, k, v)]
    grad_out, q, k, v = inputs
    out = function(q, k, v)
    first = torch.autograd.grad(out, (q, k, v), grad_out, create_graph=True)
    second = torch.autograd.grad(first, inputs, cotangents)
    return out, first, second


@given(problem=problems(max_tokens=12), scale=st.sampled_from([None, 1.0, 0.07, 3.0]), seed=st.integers(0, 2**16))
def test_reference_matches_sdpa_and_naive_formula(problem, scale, seed):
    q, k, v = random_inputs(problem, seed=seed)
    used_scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    out = reference.attention(q, k, v, used_scale)
    assert_close(out, naive_attention(q, k, v, used_scale))
    assert_close(out, F.scaled_dot_product_attention(q, k, v, scale=scale))
    blockwise_out, lse = reference.attention_forward(q, k, v, used_scale, block=5)
    assert_close(blockwise_out, out)
    assert_close(lse, torch.logsumexp(torch.matmul(q, k.transpose(-1, -2)) * used_scale, dim=-1))


@given(problem=problems(max_tokens=20), block=st.integers(1, 9), seed=st.integers(0, 2**16))
def test_reference_blockwise_derivatives_match_autograd(problem, block, seed):
    q, k, v = random_inputs(problem, seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    scale = 0.6
    grad_out = torch.randn(*q.shape[:-1], v.shape[-1], dtype=torch.float64, generator=generator)
    cotangents = [torch.randn(t.shape, dtype=torch.float64, generator=generator) for t in (q, k, v)]
    out, first, second = derivatives(lambda *t: naive_attention(*t, scale), q, k, v, grad_out, cotangents)
    blockwise_out, lse = reference.attention_forward(q, k, v, scale, block)
    assert_close(blockwise_out, out.detach())
    for got, want in zip(reference.attention_backward(grad_out, q, k, v, blockwise_out, lse, scale, block), first):
        assert_close(got, want.detach())
    formulas = reference.attention_double_backward(*cotangents, grad_out, q, k, v, blockwise_out, lse, scale, block)
    for got, want in zip(formulas, second):
        assert_close(got, want)


def logit_magnitude(q, k, scale):
    return torch.matmul(q.double(), k.double().transpose(-1, -2)).abs().max().item() * scale


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@given(
    problem=problems(),
    dtype=st.sampled_from(DTYPES),
    scale=st.sampled_from([None, 1.0, 0.05]),
    magnitude=st.sampled_from([1.0, 100.0]),
    seed=st.integers(0, 2**16),
)
def test_kernels_match_reference(backend, problem, dtype, scale, magnitude, seed):
    """Forward, backward and double backward against autograd of the float64 reference; logits up to ~1e4
    must not overflow (online softmax)."""
    require_attention_backend(backend)
    if dtype == torch.float16:
        magnitude = min(magnitude, 10.0)  # second derivatives at logits ~1e4 exceed float16's range (65504)
    q, k, v = random_inputs(problem, dtype, seed, magnitude)
    generator = torch.Generator().manual_seed(seed + 1)
    grad_out = torch.randn(*q.shape[:-1], v.shape[-1], generator=generator).to(dtype)
    cotangents = [torch.randn(t.shape, generator=generator).to(dtype) for t in (q, k, v)]
    used_scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    actual = derivatives(
        lambda *t: attention(*t, scale, allow_tf32=False, backend=backend), q, k, v, grad_out, cotangents
    )
    expected = derivatives(
        lambda *t: reference.attention(*t, used_scale), q.double(), k.double(), v.double(), grad_out.double(),
        [c.double() for c in cotangents],
    )
    assert_derivatives_close(actual, expected, dtype, logit_magnitude(q, k, used_scale), magnitude)


def assert_derivatives_close(actual, expected, dtype, logit_size, magnitude=1.0, slack=1.0):
    """Compare the results of :func:`derivatives`. A gradient can vanish exactly (grad_q for Nk = 1: a softmax over
    one key is constant; nearly so for saturated softmaxes), so each is measured against the size of the
    largest gradient of its order too, times q's ``magnitude``: the terms that cancel there carry it
    (``dS^T q`` in grad_k, ``R`` and ``dS2^T q`` in the second order), and the half-precision rounding of ``O``
    enters ``Delta``, which such a cancellation amplifies."""
    slopes = [1.0] * 4 + [SECOND_ORDER_SLOPE] * 4
    names = ("out", "grad_q", "grad_k", "grad_v", "gg_grad_out", "gg_q", "gg_k", "gg_v")
    flat_actual = (actual[0], *actual[1], *actual[2])
    flat_expected = (expected[0], *expected[1], *expected[2])
    floors = [0.0] + [magnitude * max(g.norm().item() for g in expected[1])] * 3
    floors += [magnitude * max(g.norm().item() for g in expected[2])] * 4
    for name, got, want, floor, slope in zip(names, flat_actual, flat_expected, floors, slopes):
        tolerance = slack * (KERNEL_TOLERANCE[dtype] + slope * TOLERANCE_PER_LOGIT_UNIT[dtype] * logit_size)
        assert got.dtype == dtype and got.shape == want.shape and got.device == want.device, name
        assert torch.isfinite(got).all(), name
        error = relative_error(got.detach().double(), want.detach(), floor=floor)
        assert error <= tolerance, f"{name}: relative error {error:.3e} > {tolerance:.1e}"


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_gradcheck_and_gradgradcheck_float64(backend):
    """Several query and key blocks (the interpreter's blocks are 16), ragged edges, Dqk != Dv, batch dims."""
    require_attention_backend(backend)
    q, k, v = (t.requires_grad_() for t in random_inputs(((1,), 19, 17, 5, 3)))

    def function(q, k, v):
        return attention(q, k, v, 0.8, backend=backend)

    assert torch.autograd.gradcheck(function, (q, k, v), fast_mode=True)
    assert torch.autograd.gradgradcheck(function, (q, k, v), fast_mode=True)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_third_order_derivative_matches_reference(backend):
    require_attention_backend(backend)
    inputs = random_inputs(((), 5, 4, 3, 2))

    def third_derivative(name):
        tensors = [t.clone().requires_grad_() for t in inputs]
        out = attention(*tensors, 0.9, backend=name)
        first = torch.autograd.grad(out.square().sum(), tensors, create_graph=True)
        second = torch.autograd.grad(sum(g.square().sum() for g in first), tensors, create_graph=True)
        return torch.autograd.grad(sum(g.sum() for g in second), tensors)

    for got, want in zip(third_derivative(backend), third_derivative("reference")):
        assert_close(got, want)


def kernel_ops(backend):
    ops = torch.ops.ganops
    if backend == "triton":
        return ops.attention_triton.default, ops.attention_backward_triton.default, ops.attention_double_backward_triton.default, (False,)
    return ops.attention_cpp.default, ops.attention_backward_cpp.default, ops.attention_double_backward_blockwise.default, ()


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_opcheck(backend):
    require_attention_backend(backend)
    forward, backward, double_backward = kernel_ops(backend)[:3]
    extra = kernel_ops(backend)[3]
    q, k, v = (t.float().requires_grad_() for t in random_inputs(((1,), 17, 9, 5, 3)))
    torch.library.opcheck(forward, (q, k, v, 0.5, *extra))
    out, lse = forward(q, k, v, 0.5, *extra)
    grad_out = torch.randn_like(out).requires_grad_()
    torch.library.opcheck(backward, (grad_out, q, k, v, out.detach(), lse, 0.5, *extra))
    cotangents = [torch.randn_like(t).requires_grad_() for t in (q, k, v)]
    double_extra = extra if backend == "triton" else ()
    torch.library.opcheck(double_backward, (*cotangents, grad_out, q, k, v, out.detach(), lse, 0.5, *double_extra))


def test_lse_output_is_not_differentiable():
    require_attention_backend("triton")
    q, k, v = (t.requires_grad_() for t in random_inputs(((1,), 3, 4, 2, 2)))
    out, lse = torch.ops.ganops.attention_triton(q, k, v, 1.0, False)
    assert out.requires_grad and not lse.requires_grad
    assert lse.dtype == torch.float64


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_torch_compile_fullgraph(backend):
    """Compiled without graph breaks (aot_eager: the custom ops' fake kernels and autograd), same values and
    gradients as eager."""
    require_attention_backend(backend)
    torch._dynamo.reset()
    q, k, v = random_inputs(((2,), 18, 7, 4, 6), torch.float32)

    def block(q, k, v):
        return attention(q, k, v, 1.0, allow_tf32=False, backend=backend).sin().sum()

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    inputs = [t.clone().requires_grad_() for t in (q, k, v)]
    value = compiled(*inputs)
    grads = torch.autograd.grad(value, inputs)
    expected_inputs = [t.double().requires_grad_() for t in (q, k, v)]
    expected_value = block(*expected_inputs)
    expected_grads = torch.autograd.grad(expected_value, expected_inputs)
    assert relative_error(value.double(), expected_value.detach()) < 1e-5
    for got, want in zip(grads, expected_grads):
        assert relative_error(got.double(), want) < 1e-5


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_torch_compile_fullgraph_under_autocast(backend):
    """The autocast cast compiles without graph breaks and gives what eager autocast gives."""
    require_attention_backend(backend)
    torch._dynamo.reset()
    q, k, v = random_inputs(((2,), 18, 7, 4, 6), torch.float32)

    def block(q, k, v):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return attention(q.bfloat16(), k, v, 1.0, backend=backend)

    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")(q, k, v)
    assert compiled.dtype == torch.bfloat16
    assert relative_error(compiled.double(), block(q, k, v).double()) < KERNEL_TOLERANCE[torch.bfloat16]


@pytest.mark.parametrize("backend", ["cpp"])
def test_torch_compile_inductor(backend):
    require_attention_backend(backend)
    torch._dynamo.reset()
    layer = SelfAttention2d(16, spectral_norm=False, backend=backend)
    nn.init.constant_(layer.gamma, 0.5)
    x = torch.randn(2, 16, 4, 4)
    compiled = torch.compile(layer, fullgraph=True)
    assert_close(compiled(x), layer(x))


def test_float32_without_tf32_is_exact():
    require_attention_backend("triton")
    q, k, v = random_inputs(((2,), 20, 18, 12, 48), torch.float32)
    expected = reference.attention(q.double(), k.double(), v.double(), 1.0)
    previous = torch.backends.cuda.matmul.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        assert_close(attention(q, k, v, 1.0, backend="triton").double(), expected, torch.float32)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    assert_close(attention(q, k, v, 1.0, allow_tf32=False, backend="triton").double(), expected, torch.float32)


def test_default_tf32_follows_the_fp32_precision_api(monkeypatch):
    """Once a user sets the new ``fp32_precision`` API in a way the legacy ``allow_tf32`` cannot express, reading
    ``allow_tf32`` raises on torch 2.13+; the default path reads the new API instead."""
    require_attention_backend("triton")
    if not hasattr(torch.backends, "fp32_precision"):
        pytest.skip("this torch has no fp32_precision API")
    from ganops.triton_kernels import attention as kernels

    seen = []
    launch = kernels.forward
    monkeypatch.setattr(kernels, "forward", lambda *args, **kwargs: seen.append(args[4]) or launch(*args, **kwargs))
    q, k, v = random_inputs(((2,), 20, 18, 12, 48), torch.float32)
    expected = reference.attention(q.double(), k.double(), v.double(), 1.0)
    matmul = torch.backends.cuda.matmul
    previous = torch.backends.fp32_precision, matmul.fp32_precision
    try:
        torch.backends.fp32_precision = "ieee"
        matmul.fp32_precision = "tf32"
        with pytest.raises(RuntimeError):
            matmul.allow_tf32  # the mixed state this test is about
        assert relative_error(attention(q, k, v, 1.0, backend="triton").double(), expected) < 5e-3
        matmul.fp32_precision = "none"  # inherits the global "ieee"
        assert_close(attention(q, k, v, 1.0, backend="triton").double(), expected, torch.float32)
    finally:
        torch.backends.fp32_precision, matmul.fp32_precision = previous
    assert seen == [True, False]


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        ((torch.randn(3), torch.randn(3, 3), torch.randn(3, 3)), {}, ValueError, r"q must have at least 2 dimensions \[\.\.\., Nq, Dqk\], got shape \(3,\)"),
        ((torch.randn(2, 3, 4), torch.randn(3, 3, 4), torch.randn(3, 3, 4)), {}, ValueError, r"k must have the leading \(batch\) dims of q \(2,\)"),
        ((torch.randn(2, 3, 4), torch.randn(2, 5, 4), torch.randn(1, 5, 4)), {}, ValueError, r"v must have the leading \(batch\) dims"),
        ((torch.randn(3, 4), torch.randn(5, 6), torch.randn(5, 4)), {}, ValueError, "k must have the head dim of q, Dqk=4"),
        ((torch.randn(3, 4), torch.randn(5, 4), torch.randn(6, 4)), {}, ValueError, "v must have one row per key, Nk=5"),
        ((torch.randn(3, 4), torch.randn(5, 4).double(), torch.randn(5, 4)), {}, TypeError, "same dtype, got torch.float32, torch.float64"),
        ((torch.ones(3, 4, dtype=torch.int64), torch.randn(5, 4), torch.randn(5, 4)), {}, TypeError, "q must have a floating dtype"),
        ((torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 4, dtype=torch.complex64)), {}, TypeError, "v must have a floating dtype"),
        ((torch.randn(0, 4), torch.randn(5, 4), torch.randn(5, 4)), {}, ValueError, "q must have no empty dimension"),
        ((torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 0)), {}, ValueError, "v must have no empty dimension"),
        ((torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 4), float("nan")), {}, ValueError, "scale must be a finite float"),
        (([[1.0]], torch.randn(5, 4), torch.randn(5, 4)), {}, TypeError, "q must be a torch.Tensor, got list"),
        ((torch.randn(3, 4), torch.randn(5, 4), torch.randn(5, 4)), {"backend": "cuda"}, ValueError, "backend must be one of"),
    ],
)
def test_bad_arguments_raise_clear_errors(args, kwargs, error, message):
    with pytest.raises(error, match=message):
        attention(*args, **kwargs)


def _autocast_case(device: str, dtype: torch.dtype, backend: str) -> None:
    q, k, v = (t.to(device) for t in random_inputs(((2,), 20, 12, 8, 16), torch.float32, seed=5))
    q = q.to(dtype)  # a query projection already in the autocast dtype next to float32 keys and values
    inputs = [t.detach().requires_grad_() for t in (q, k, v)]
    with torch.autocast(device, dtype=dtype):
        out = attention(*inputs, 1.0, backend=backend)
        sdpa = F.scaled_dot_product_attention(*inputs, scale=1.0)
        first = torch.autograd.grad(out.float().square().sum(), inputs, create_graph=True)
        second = torch.autograd.grad(sum(g.float().square().sum() for g in first), inputs)
    assert out.dtype == sdpa.dtype == dtype
    assert [g.dtype for g in first] == [g.dtype for g in second] == [dtype, torch.float32, torch.float32]
    cast = [t.detach().to(dtype).double().requires_grad_() for t in (q, k, v)]
    expected_out = reference.attention(*cast, 1.0)
    expected_first = torch.autograd.grad(expected_out.square().sum(), cast, create_graph=True)
    expected_second = torch.autograd.grad(sum(g.square().sum() for g in expected_first), cast)
    tolerance = 3 * KERNEL_TOLERANCE[dtype]
    assert relative_error(out.double(), expected_out.detach()) < tolerance
    for actual, expected in zip((*first, *second), (*expected_first, *expected_second)):
        assert relative_error(actual.double(), expected.detach()) < tolerance


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_autocast_casts_inputs_to_its_dtype_like_sdpa(backend):
    """Under CPU autocast (bfloat16) float32 q, k, v, even mixed with bfloat16 ones, go to bfloat16 as SDPA's do;
    the result and its first and second derivatives match the float64 reference on the cast inputs."""
    require_attention_backend(backend)
    _autocast_case("cpu", torch.bfloat16, backend)


def test_autocast_leaves_float64_alone_and_mixed_dtypes_fail_outside_it():
    q, k, v = random_inputs(((1,), 6, 5, 4, 3), torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attention(q, k, v, backend="reference").dtype == torch.float64
    with pytest.raises(TypeError, match="same dtype"):
        attention(q.float(), k, v, backend="reference")


def test_tensors_on_different_devices_are_rejected():
    q = torch.randn(3, 4)
    k = torch.randn(5, 4, device="meta")
    with pytest.raises(ValueError, match="q, k and v must be on one device, got cpu, meta and cpu"):
        attention(q, k, torch.randn(5, 4))


# --- memory -------------------------------------------------------------------------------------------------


def penalty_step_peak_bytes(backend: str, tokens: int) -> int:
    """Peak tensor memory of forward, backward (create_graph) and the double backward at Nq = Nk = tokens."""
    from ganops.profiling import peak_memory_bytes

    q, k, v = random_inputs(((1,), tokens, tokens, 8, 8), torch.float32)

    def step():
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attention(*inputs, 1.0, allow_tf32=False, backend=backend)
        grads = torch.autograd.grad(out.sin().sum(), inputs, create_graph=True)
        return torch.autograd.grad(sum(g.square().sum() for g in grads), inputs)

    return peak_memory_bytes(step)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_penalty_step_memory_grows_linearly_in_tokens(backend):
    """Quadrupling N quadruples the peak (a little more for the fixed overhead), where the N x N matrices of the
    reference make it grow ~16-fold."""
    require_attention_backend(backend)
    from ganops.triton_kernels.attention import forced_block_sizes

    with forced_block_sizes(128, 128):  # few interpreter iterations at these sizes
        small, large = (penalty_step_peak_bytes(backend, tokens) for tokens in (256, 1024))
    assert large <= 4.5 * small, (small, large)
    reference_small, reference_large = (penalty_step_peak_bytes("reference", tokens) for tokens in (256, 1024))
    assert reference_large >= 10 * reference_small, "the measurement must see the quadratic reference"
    assert large * 20 < reference_large


def test_blockwise_reference_formulas_hold_one_block_of_rows_at_a_time():
    """The cpp backend's double backward is the blockwise reference run inside an op, where the accounting of the
    test above cannot see its temporaries: measured here directly, they grow linearly in N at a fixed block."""
    from ganops.profiling import peak_memory_bytes

    def peak(tokens):
        q, k, v = random_inputs(((1,), tokens, tokens, 8, 8), torch.float32)
        grad_out, *cotangents = (torch.randn_like(t) for t in (v, q, k, v))

        def all_three():
            out, lse = reference.attention_forward(q, k, v, 1.0, block=64)
            reference.attention_backward(grad_out, q, k, v, out, lse, 1.0, block=64)
            return reference.attention_double_backward(*cotangents, grad_out, q, k, v, out, lse, 1.0, block=64)

        return peak_memory_bytes(all_three)

    small, large = peak(256), peak(1024)
    assert large <= 4.5 * small, (small, large)


# --- GPU ----------------------------------------------------------------------------------------------------

GPU_SHAPES = [
    ((2,), 4096, 1024, 12, 48),  # BigGAN-128 D: 64x64 with pooled keys
    ((2,), 1024, 1024, 32, 256),  # C=256 at 32x32, SAGAN-style values
    ((1, 3), 333, 77, 20, 40),  # ragged everything
    ((1,), 1, 1, 8, 16),
]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("problem", GPU_SHAPES)
def test_cuda_matches_reference(backend, dtype, problem):
    require_attention_backend(backend, "cuda")
    q, k, v = (t.cuda() for t in random_inputs(problem, dtype))
    generator = torch.Generator().manual_seed(3)
    grad_out = torch.randn(*q.shape[:-1], v.shape[-1], generator=generator).to("cuda", dtype)
    cotangents = [torch.randn(t.shape, generator=generator).to("cuda", dtype) for t in (q, k, v)]
    actual = derivatives(lambda *t: attention(*t, 1.0, allow_tf32=False, backend=backend), q, k, v, grad_out, cotangents)
    expected = derivatives(
        lambda *t: reference.attention(*t, 1.0), q.double(), k.double(), v.double(), grad_out.double(),
        [c.double() for c in cotangents],
    )
    assert_derivatives_close(actual, expected, dtype, logit_magnitude(q, k, 1.0), slack=2.0)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_casts_inputs_to_its_dtype_like_sdpa(backend, dtype):
    require_attention_backend(backend, "cuda")
    _autocast_case("cuda", dtype, backend)


@pytest.mark.gpu
def test_cuda_tf32_switch():
    require_attention_backend("triton", "cuda")
    q, k, v = (t.cuda() for t in random_inputs(((4,), 512, 256, 64, 64), torch.float32))
    expected = reference.attention(q.double(), k.double(), v.double(), 0.125)
    exact = relative_error(attention(q, k, v, 0.125, allow_tf32=False, backend="triton").double(), expected)
    tf32 = relative_error(attention(q, k, v, 0.125, allow_tf32=True, backend="triton").double(), expected)
    assert exact <= 1e-5 < tf32 <= 5e-3, (exact, tf32)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_cuda_penalty_step_memory_is_far_below_eager(backend):
    require_attention_backend(backend, "cuda")
    q, k, v = (t.cuda() for t in random_inputs(((8,), 4096, 1024, 12, 48), torch.float32))

    def peak(name):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attention(*inputs, 1.0, backend=name)
        grads = torch.autograd.grad(out.sin().sum(), inputs, create_graph=True)
        torch.autograd.grad(sum(g.square().sum() for g in grads), inputs)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - start

    assert peak(backend) * 5 < peak("reference")


@pytest.mark.gpu
@settings(max_examples=5)
@given(problem=problems(max_tokens=300), seed=st.integers(0, 2**16))
def test_cuda_triton_block_sizes_agree(problem, seed):
    """Forced small blocks reach every ragged-edge path of the compiled kernels."""
    require_attention_backend("triton", "cuda")
    from ganops.triton_kernels.attention import forced_block_sizes

    q, k, v = (t.cuda() for t in random_inputs(problem, torch.float64, seed))
    expected = reference.attention(q, k, v, 0.5)
    with forced_block_sizes(16, 32):
        assert_close(attention(q, k, v, 0.5, backend="triton"), expected)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_kernels_read_strided_inputs_and_broadcast_gradients(backend):
    """Transposed projections (as the 2-D block produces them) and the stride-0 gradient of ``out.sum()``."""
    require_attention_backend(backend)
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 6, 21, dtype=torch.float64, generator=generator).transpose(1, 2)
    k = torch.randn(2, 18, 6, dtype=torch.float64, generator=generator)[:, ::2]
    v = torch.randn(2, 9, 10, dtype=torch.float64, generator=generator)[..., 1:8]

    def first_and_second(name):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        out = attention(*inputs, 0.7, backend=name)
        grads = torch.autograd.grad(out.sum(), inputs, create_graph=True)
        return (out, *grads, *torch.autograd.grad(grads[0].square().sum(), inputs))

    for got, want in zip(first_and_second(backend), first_and_second("reference")):
        assert_close(got.detach(), want.detach())
