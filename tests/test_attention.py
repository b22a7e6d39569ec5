"""attention: the reference against independent math, every backend against the reference, the compiled (cpp)
kernels also against naive float64 math, memory linear in N. The SAGAN/BigGAN block is tested in
test_nn_attention.py, its converters in test_conversion.py; the Triton launches as compiled for a GPU in
test_attention_triton_compile.py."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from benchmarks.harness import tf32_matmuls
from ganops.nn import SelfAttention2d
from ganops.ops.attention import attention, cpp_ops_available
from ganops.reference import attention as reference
from helpers import KERNEL_BACKENDS, TOLERANCE, assert_close, relative_error, require_backend

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
        pytest.fail("ganops._C loaded but lacks attention_cpp or attention_double_backward_cpp: rebuild the extension")


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
    """The backend's chain of three ops and the attributes after ``scale`` that each takes (``allow_tf32``)."""
    ops = torch.ops.ganops
    if backend == "triton":
        return ops.attention_triton.default, ops.attention_backward_triton.default, ops.attention_double_backward_triton.default, (False,)
    return ops.attention_cpp.default, ops.attention_backward_cpp.default, ops.attention_double_backward_cpp.default, (False,)


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
    torch.library.opcheck(double_backward, (*cotangents, grad_out, q, k, v, out.detach(), lse, 0.5, *extra))


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
    with tf32_matmuls(False):
        assert_close(attention(q, k, v, 1.0, backend="triton").double(), expected, torch.float32)
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
    """The blockwise reference formulas, which the cpp backend's double backward ports to C++ (whose temporaries
    the accounting of the test above cannot see; see test_compiled_double_backward_memory_grows_linearly_in_tokens):
    measured here directly, they grow linearly in N at a fixed block."""
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


def compiled_double_backward_peak_bytes(tokens: int) -> int:
    """Peak bytes the CPU allocator holds during one attention_double_backward_cpp at Nq = Nk = tokens, from the
    profiler's allocation records: the op's temporaries are made in C++, out of peak_memory_bytes's sight."""
    q, k, v = random_inputs(((1,), tokens, tokens, 8, 8), torch.float32)
    out, lse = torch.ops.ganops.attention_cpp(q, k, v, 1.0)
    grad_out, *cotangents = (torch.randn_like(t) for t in (out, q, k, v))
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities, profile_memory=True) as profile:
        torch.ops.ganops.attention_double_backward_cpp(*cotangents, grad_out, q, k, v, out, lse, 1.0)
    events = profile.profiler.kineto_results.events()
    records = sorted((event.start_ns(), event.nbytes()) for event in events if event.name() == "[memory]")
    return max(itertools.accumulate(nbytes for _, nbytes in records))


def test_compiled_double_backward_memory_grows_linearly_in_tokens():
    """One query block of 256 rows at N = 256, four at N = 1024: the [block, Nk] temporaries grow 4-fold, where
    [Nq, Nk] ones would grow 16-fold."""
    require_attention_backend("cpp")
    small, large = (compiled_double_backward_peak_bytes(tokens) for tokens in (256, 1024))
    assert small > 256 * 256 * 4, "the measurement must see the op's [block, Nk] float32 temporaries"
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


# --- the compiled kernels (torch.ops.ganops.attention_cpp / attention_backward_cpp, csrc/cpu and csrc/cuda) ----
# against naive float64 math: softmax(q k^T scale) v, torch.logsumexp and autograd's gradients; their double
# backward (attention_double_backward_cpp) against the float64 reference formulas.

# Around the CPU kernel's tiles (64 rows, chunks of 256; the double backward's query blocks of 256) and the CUDA
# kernel's (8 to 64), and 1.
SEQUENCE_LENGTHS = (1, 2, 7, 63, 64, 65, 130, 257)
HEAD_DIMS = (1, 3, 8, 12, 48, 130)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def require_cpp_attention(device_type: str = "cpu") -> None:
    """Skip where the compiled backend cannot run; once it can, a missing attention op is a failure."""
    require_backend("cpp", device_type)
    assert hasattr(torch.ops.ganops, "attention_cpp"), "ganops._C was built without csrc/cpu/attention.cpp"
    assert hasattr(torch.ops.ganops, "attention_double_backward_cpp"), "ganops._C predates its double backward"


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def naive_attention_with_logits(q, k, v, scale):
    """(out, lse, logits) in float64 with the N x N matrix, the definition the kernels must match."""
    logits = (q.double() @ k.double().transpose(-1, -2)) * scale
    return torch.softmax(logits, dim=-1) @ v.double(), torch.logsumexp(logits, dim=-1), logits


def naive_gradients(q, k, v, scale, grad_out):
    """Autograd's (grad_q, grad_k, grad_v) of the float64 naive attention."""
    inputs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out, _, _ = naive_attention_with_logits(*inputs, scale)
    return torch.autograd.grad(out, inputs, grad_out.double())


def cancellation_floors(q, k, v, scale, grad_out):
    """Natural sizes of the terms that make up grad_q and grad_k.

    dS = P * (dP - Delta) cancels where the softmax is nearly one-hot, so grad_q and grad_k can be far smaller
    than the terms they are computed from; rounding is then measured against |P| (|dP| + |Delta|), the size
    of those terms (as tests/helpers.relative_error's floor intends). grad_v = P^T grad_out does not cancel.
    """
    q, k, v, grad_out = (t.double() for t in (q, k, v, grad_out))
    probabilities = torch.softmax((q @ k.transpose(-1, -2)) * scale, dim=-1)
    grad_probabilities = grad_out @ v.transpose(-1, -2)
    delta = (grad_out * (probabilities @ v)).sum(-1, keepdim=True)
    terms = probabilities * (grad_probabilities.abs() + delta.abs())
    return {
        "grad_q": abs(scale) * (terms @ k.abs()).norm().item(),
        "grad_k": abs(scale) * (terms.transpose(-1, -2) @ q.abs()).norm().item(),
        "grad_v": 0.0,
    }


def tolerance(dtype: torch.dtype, max_logit: float) -> float:
    """TOLERANCE of the dtype plus the conditioning of softmax: the kernels round each logit s in their
    accumulation dtype, a relative error of eps * |s| in exp(s), however exact the algorithm."""
    return TOLERANCE[dtype] + 16 * torch.finfo(accumulate_dtype(dtype)).eps * max_logit


def check_against_naive(q, k, v, grad_out, scale):
    """Forward and backward of torch.ops.ganops.attention_cpp on q's device against the float64 naive math."""
    dtype = q.dtype
    out, lse = torch.ops.ganops.attention_cpp(q, k, v, scale)
    assert out.dtype == dtype and out.shape == (*q.shape[:2], v.shape[2])
    assert lse.dtype == accumulate_dtype(dtype) and lse.shape == q.shape[:2]
    expected_out, expected_lse, logits = naive_attention_with_logits(q, k, v, scale)
    max_logit = logits.abs().max().item()
    bound = tolerance(dtype, max_logit)
    assert relative_error(out.double().cpu(), expected_out.cpu()) <= bound
    # lse is about max_j s_ij, so its rounding is relative to the largest logit, not to lse itself.
    lse_bound = tolerance(accumulate_dtype(dtype), max_logit)
    lse_floor = max_logit * math.sqrt(lse.numel())
    assert relative_error(lse.double().cpu(), expected_lse.cpu(), floor=lse_floor) <= lse_bound

    grads = torch.ops.ganops.attention_backward_cpp(grad_out, q, k, v, out, lse, scale)
    expected_grads = naive_gradients(q, k, v, scale, grad_out)
    floors = cancellation_floors(q, k, v, scale, grad_out)
    for name, got, want, like in zip(("grad_q", "grad_k", "grad_v"), grads, expected_grads, (q, k, v)):
        assert got.dtype == dtype and got.shape == like.shape, name
        error = relative_error(got.double().cpu(), want.cpu(), floor=floors[name])
        assert error <= bound, f"{name}: relative error {error:.3e} > {bound:.1e}"


def check_double_backward_against_reference(q, k, v, grad_out, scale, magnitude, seed):
    """torch.ops.ganops.attention_double_backward_cpp on q's device, for random cotangents of (grad_q, grad_k,
    grad_v), against the reference's formulas in float64 on the same inputs. The errors are measured as in
    assert_derivatives_close: the double backward multiplies logit-sized factors by q and k again (ten times the
    forward's slope), and its results can cancel to nothing (all of them but grad_grad_out for Nk = 1), so each
    is also measured against the largest of them times q's magnitude."""
    dtype = q.dtype
    generator = torch.Generator().manual_seed(seed + 1)
    cotangents = [
        torch.randn(t.shape, dtype=torch.float64, generator=generator).to(dtype).to(q.device) for t in (q, k, v)
    ]
    out, lse = torch.ops.ganops.attention_cpp(q, k, v, scale)
    grads = torch.ops.ganops.attention_double_backward_cpp(*cotangents, grad_out, q, k, v, out, lse, scale)
    exact = [t.double().cpu() for t in (*cotangents, grad_out, q, k, v)]
    expected = reference.attention_double_backward(*exact, *reference.attention_forward(*exact[4:], scale), scale)
    _, _, logits = naive_attention_with_logits(q, k, v, scale)
    bound = tolerance(dtype, SECOND_ORDER_SLOPE * logits.abs().max().item())
    floor = magnitude * max(want.norm().item() for want in expected)
    names = ("grad_grad_out", "grad_q", "grad_k", "grad_v")
    for name, got, want, like in zip(names, grads, expected, (grad_out, q, k, v)):
        assert got.dtype == dtype and got.shape == like.shape and got.device == q.device, name
        assert got.is_contiguous(), name
        error = relative_error(got.double().cpu(), want, floor=floor)
        assert error <= bound, f"{name}: relative error {error:.3e} > {bound:.1e}"


@st.composite
def attention_problems(draw, lengths=SEQUENCE_LENGTHS, head_dims=HEAD_DIMS, max_batch=3):
    batch = draw(st.integers(1, max_batch))
    queries = draw(st.sampled_from(lengths))
    keys = draw(st.sampled_from(lengths))
    qk_dim = draw(st.sampled_from(head_dims))
    v_dim = draw(st.sampled_from(head_dims))
    dtype = draw(st.sampled_from(DTYPES))
    scale = draw(st.sampled_from([1.0, 1.0 / math.sqrt(qk_dim), 0.1, -0.5]))
    # 30: logits of several thousands, whose exp overflows without the running max of the online softmax.
    magnitude = draw(st.sampled_from([1.0, 30.0]))
    seed = draw(st.integers(0, 2**16))
    return (batch, queries, keys, qk_dim, v_dim), dtype, scale, magnitude, seed


def make_inputs(shape, dtype, magnitude, seed, device="cpu"):
    batch, queries, keys, qk_dim, v_dim = shape
    generator = torch.Generator().manual_seed(seed)

    def draw(*size, factor=1.0):
        return (torch.randn(size, dtype=torch.float64, generator=generator) * factor).to(dtype).to(device)

    q = draw(batch, queries, qk_dim, factor=magnitude)
    k = draw(batch, keys, qk_dim, factor=magnitude)
    v = draw(batch, keys, v_dim)
    grad_out = draw(batch, queries, v_dim)
    return q, k, v, grad_out


@given(problem=attention_problems())
def test_cpu_kernels_match_naive_math(problem):
    require_cpp_attention()
    shape, dtype, scale, magnitude, seed = problem
    check_against_naive(*make_inputs(shape, dtype, magnitude, seed), scale)


@given(problem=attention_problems())
def test_cpu_double_backward_matches_reference(problem):
    """Query counts around and past the double backward's block of 256 rows, Nq != Nk and Dqk != Dv drawn."""
    require_cpp_attention()
    shape, dtype, scale, magnitude, seed = problem
    if dtype == torch.float16:
        magnitude = min(magnitude, 10.0)  # second derivatives at logits ~1e4 exceed float16's range (65504)
    check_double_backward_against_reference(*make_inputs(shape, dtype, magnitude, seed), scale, magnitude, seed)


@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
def test_huge_logits_stay_finite_and_exact(dtype):
    """Logits up to ~1e4 (fp16: ~3e3): a softmax without the running max would give inf / nan."""
    require_cpp_attention()
    q, k, v, grad_out = make_inputs((2, 70, 300, 12, 5), dtype, magnitude=20.0, seed=3)
    out, lse = torch.ops.ganops.attention_cpp(q, k, v, 2.0)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert lse.abs().max() > 1000
    check_against_naive(q, k, v, grad_out, 2.0)


def test_biggan_discriminator_shape_with_pooled_keys():
    """BigGAN-128's D block (Nq = 4 Nk, Dqk = 12, Dv = 48), scaled down to Nq = 1024, Nk = 256."""
    require_cpp_attention()
    check_against_naive(*make_inputs((1, 1024, 256, 12, 48), torch.float32, 1.0, seed=0), 1.0)


def test_results_do_not_depend_on_the_thread_count():
    require_cpp_attention()
    q, k, v, grad_out = make_inputs((2, 130, 300, 12, 20), torch.float32, 1.0, seed=1)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out, lse = torch.ops.ganops.attention_cpp(q, k, v, 0.3)
            results.append((out, lse, *torch.ops.ganops.attention_backward_cpp(grad_out, q, k, v, out, lse, 0.3)))
    finally:
        torch.set_num_threads(previous)
    for single, multi in zip(*results):
        assert torch.equal(single, multi)


def test_gradcheck_float64():
    """The backward kernel against finite differences of the forward kernel (autograd from ganops.ops)."""
    require_cpp_attention()
    q, k, v, _ = make_inputs((2, 5, 7, 3, 4), torch.float64, 1.0, seed=2)
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda *t: torch.ops.ganops.attention_cpp(*t, 0.7)[0], inputs)


def test_gradgradcheck_float64():
    """Second order through the cpp chain (its double backward is the blockwise op of ganops.ops.attention)."""
    require_cpp_attention()
    q, k, v, _ = make_inputs((1, 4, 5, 3, 2), torch.float64, 1.0, seed=4)
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradgradcheck(lambda *t: torch.ops.ganops.attention_cpp(*t, 0.7)[0], inputs)


def test_opcheck_of_the_compiled_ops():
    """Also with allow_tf32 passed (its schema default is False; on the CPU it changes nothing)."""
    require_cpp_attention()
    q, k, v, grad_out = make_inputs((2, 9, 70, 12, 5), torch.float32, 1.0, seed=5)
    torch.library.opcheck(torch.ops.ganops.attention_cpp.default, (q, k, v, 0.5))
    torch.library.opcheck(torch.ops.ganops.attention_cpp.default, (q, k, v, 0.5, True))
    out, lse = torch.ops.ganops.attention_cpp(q, k, v, 0.5)
    torch.library.opcheck(torch.ops.ganops.attention_backward_cpp.default, (grad_out, q, k, v, out, lse, 0.5))
    torch.library.opcheck(torch.ops.ganops.attention_backward_cpp.default, (grad_out, q, k, v, out, lse, 0.5, True))
    cotangents = [torch.randn_like(t) for t in (q, k, v)]
    double_backward = torch.ops.ganops.attention_double_backward_cpp.default
    torch.library.opcheck(double_backward, (*cotangents, grad_out, q, k, v, out, lse, 0.5))
    torch.library.opcheck(double_backward, (*cotangents, grad_out, q, k, v, out, lse, 0.5, True))


def test_torch_compile_fullgraph_forward_and_backward():
    """Traced without graph breaks (fake kernels and autograd from ganops.ops.attention), same numbers as eager."""
    require_cpp_attention()
    torch._dynamo.reset()
    q, k, v, grad_out = make_inputs((2, 70, 33, 12, 5), torch.float32, 1.0, seed=6)

    def attention_and_gradients(function):
        inputs = [t.clone().requires_grad_() for t in (q, k, v)]
        out, lse = function(*inputs)
        return (out, lse, *torch.autograd.grad(out, inputs, grad_out))

    def function(q, k, v):
        return torch.ops.ganops.attention_cpp(q, k, v, 0.5)

    compiled = attention_and_gradients(torch.compile(function, fullgraph=True, backend="aot_eager"))
    for got, want in zip(compiled, attention_and_gradients(function)):
        assert torch.equal(got, want)


def valid_forward_args():
    q, k, v, _ = make_inputs((2, 3, 4, 5, 6), torch.float32, 1.0, seed=0)
    return {"q": q, "k": k, "v": v, "scale": 1.0}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(q=a["q"][0]), r"q must be a 3-D tensor \[B, Nq, Dqk\]"),
        (lambda a: a.update(q=a["q"].int()), "q must have dtype float64, float32, float16 or bfloat16"),
        (lambda a: a.update(k=a["k"].double()), r"k must have the dtype of q \(Float\)"),
        (lambda a: a.update(v=a["v"].half()), r"v must have the dtype of q \(Float\)"),
        (lambda a: a.update(k=a["k"][..., :4].contiguous()), r"k must have the batch size and head dim of q"),
        (lambda a: a.update(k=a["k"][:1]), r"k must have the batch size and head dim of q"),
        (lambda a: a.update(v=a["v"][:, :3].contiguous()), r"v must have the batch size of q and the key count of k"),
        (lambda a: a.update(v=a["v"].transpose(1, 2).contiguous().transpose(1, 2)), "v must be contiguous"),
        (lambda a: a.update(scale=math.inf), "scale must be finite"),
        # An empty key set has no softmax; the public function refuses it too.
        (lambda a: a.update(k=a["k"][:, :0], v=a["v"][:, :0]), "k must have no empty dimension"),
        (lambda a: a.update(q=a["q"][:, :0]), "q must have no empty dimension"),
    ],
)
def test_forward_rejects_bad_input(change, message):
    require_cpp_attention()
    args = valid_forward_args()
    change(args)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.ganops.attention_cpp(args["q"], args["k"], args["v"], args["scale"])


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(grad_out=a["grad_out"][:, :2].contiguous()), r"grad_out must have shape \[B, Nq, Dv\]"),
        (lambda a: a.update(grad_out=a["grad_out"].double()), "grad_out must have the dtype of q"),
        (lambda a: a.update(out=a["out"][..., :5].contiguous()), r"out must have shape \[B, Nq, Dv\]"),
        (lambda a: a.update(lse=a["lse"].double()), "lse must have dtype Float"),
        (lambda a: a.update(lse=a["lse"][:, :2].contiguous()), r"lse must have shape \[B, Nq\]"),
        (lambda a: a.update(lse=a["lse"].t().contiguous().t()), "lse must be contiguous"),
        (lambda a: a.update(k=a["k"][:, :, :2].contiguous()), "k must have the batch size and head dim of q"),
    ],
)
def test_backward_rejects_bad_input(change, message):
    require_cpp_attention()
    args = valid_forward_args()
    out, lse = torch.ops.ganops.attention_cpp(args["q"], args["k"], args["v"], 1.0)
    args.update(grad_out=torch.randn_like(out), out=out, lse=lse)
    change(args)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.ganops.attention_backward_cpp(
            args["grad_out"], args["q"], args["k"], args["v"], args["out"], args["lse"], args["scale"]
        )


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.update(grad_grad_q=a["grad_grad_q"][:, :2].contiguous()),
         r"grad_grad_q must have the shape of q \[B, Nq, Dqk\] = \[2, 3, 5\], got \[2, 2, 5\]"),
        (lambda a: a.update(grad_grad_k=a["grad_grad_k"][..., :4].contiguous()),
         r"grad_grad_k must have the shape of k \[B, Nk, Dqk\] = \[2, 4, 5\], got \[2, 4, 4\]"),
        (lambda a: a.update(grad_grad_v=a["grad_grad_v"][:1]),
         r"grad_grad_v must have the shape of v \[B, Nk, Dv\] = \[2, 4, 6\], got \[1, 4, 6\]"),
        (lambda a: a.update(grad_grad_v=a["grad_grad_v"].double()), r"grad_grad_v must have the dtype of q \(Float\)"),
        (lambda a: a.update(grad_grad_k=a["grad_grad_k"].half()), r"grad_grad_k must have the dtype of q \(Float\)"),
        (lambda a: a.update(grad_grad_q=a["grad_grad_q"][0]), r"grad_grad_q must be a 3-D tensor \[B, Nq, Dqk\]"),
        (lambda a: a.update(grad_grad_k=a["grad_grad_k"].transpose(1, 2).contiguous().transpose(1, 2)),
         "grad_grad_k must be contiguous"),
        # The backward's checks come first.
        (lambda a: a.update(lse=a["lse"].double()), "lse must have dtype Float"),
        (lambda a: a.update(grad_out=a["grad_out"][:, :2].contiguous()), r"grad_out must have shape \[B, Nq, Dv\]"),
    ],
)
def test_double_backward_rejects_bad_input(change, message):
    require_cpp_attention()
    args = valid_forward_args()
    out, lse = torch.ops.ganops.attention_cpp(args["q"], args["k"], args["v"], 1.0)
    cotangents = {f"grad_grad_{name}": torch.randn_like(args[name]) for name in ("q", "k", "v")}
    args.update(cotangents, grad_out=torch.randn_like(out), out=out, lse=lse)
    change(args)
    names = ("grad_grad_q", "grad_grad_k", "grad_grad_v", "grad_out", "q", "k", "v", "out", "lse", "scale")
    with pytest.raises(RuntimeError, match=message) as error:
        torch.ops.ganops.attention_double_backward_cpp(*(args[name] for name in names))
    assert "ganops::attention_double_backward_cpp" in str(error.value)


# GPU: the CUDA kernels of csrc/cuda/attention.cu, on the shapes that stress their tiling (tiles of 8 to 64
# chosen by shared memory, masking of partial tiles) and the head dims of the GAN blocks up to 256.
COMPILED_GPU_SHAPES = [
    (1, 1, 1, 1, 1),
    (2, 65, 33, 12, 48),
    (3, 130, 257, 3, 130),
    (1, 4096, 1024, 12, 48),  # BigGAN-128 D at 64x64 with pooled keys
    (2, 1024, 1024, 32, 256),  # SAGAN-like C = 256 at 32x32, Dv = C
    (1, 200, 300, 256, 256),  # the largest head dims, smallest tiles
    (1, 77, 129, 130, 7),
]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
@pytest.mark.parametrize("shape", COMPILED_GPU_SHAPES)
def test_cuda_kernels_match_naive_math(shape, dtype):
    require_cpp_attention("cuda")
    scale = 1.0 / math.sqrt(shape[3])
    check_against_naive(*make_inputs(shape, dtype, 1.0, seed=sum(shape), device="cuda"), scale)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES, ids=dtype_name)
def test_cuda_huge_logits_stay_finite_and_exact(dtype):
    require_cpp_attention("cuda")
    q, k, v, grad_out = make_inputs((2, 70, 300, 12, 5), dtype, magnitude=20.0, seed=3, device="cuda")
    out, lse = torch.ops.ganops.attention_cpp(q, k, v, 2.0)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    check_against_naive(q, k, v, grad_out, 2.0)


@pytest.mark.gpu
@settings(max_examples=8)
@given(problem=attention_problems(lengths=(1, 8, 9, 31, 64, 100, 257), head_dims=(1, 3, 12, 48, 64, 130, 256)))
def test_cuda_kernels_match_naive_math_on_drawn_problems(problem):
    require_cpp_attention("cuda")
    shape, dtype, scale, magnitude, seed = problem
    check_against_naive(*make_inputs(shape, dtype, magnitude, seed, device="cuda"), scale)


@pytest.mark.gpu
def test_cuda_kernels_are_deterministic_and_agree_with_the_cpu_kernels():
    require_cpp_attention("cuda")
    require_cpp_attention("cpu")
    q, k, v, grad_out = make_inputs((2, 300, 200, 12, 48), torch.float64, 1.0, seed=7, device="cuda")
    first = torch.ops.ganops.attention_cpp(q, k, v, 0.5)
    second = torch.ops.ganops.attention_cpp(q, k, v, 0.5)
    assert all(torch.equal(a, b) for a, b in zip(first, second))
    backward = torch.ops.ganops.attention_backward_cpp(grad_out, q, k, v, *first, 0.5)
    assert all(
        torch.equal(a, b)
        for a, b in zip(backward, torch.ops.ganops.attention_backward_cpp(grad_out, q, k, v, *first, 0.5))
    )
    cpu = [t.cpu() for t in (grad_out, q, k, v)]
    cpu_out, cpu_lse = torch.ops.ganops.attention_cpp(*cpu[1:], 0.5)
    assert relative_error(first[0].cpu(), cpu_out) <= TOLERANCE[torch.float64]
    assert relative_error(first[1].cpu(), cpu_lse) <= TOLERANCE[torch.float64]
    cpu_backward = torch.ops.ganops.attention_backward_cpp(*cpu, cpu_out, cpu_lse, 0.5)
    for got, want in zip(backward, cpu_backward):
        assert relative_error(got.cpu(), want) <= TOLERANCE[torch.float64]


@pytest.mark.gpu
def test_cuda_kernels_reject_tensors_on_another_device():
    require_cpp_attention("cuda")
    q, k, v, _ = make_inputs((2, 3, 4, 5, 6), torch.float32, 1.0, seed=0, device="cuda")
    with pytest.raises(RuntimeError, match=r"k must be on the device of q \(cuda:0\), got cpu"):
        torch.ops.ganops.attention_cpp(q, k.cpu(), v, 1.0)


@pytest.mark.gpu
def test_cuda_gradcheck_and_opcheck():
    require_cpp_attention("cuda")
    q, k, v, grad_out = make_inputs((2, 5, 9, 3, 4), torch.float64, 1.0, seed=2, device="cuda")
    inputs = tuple(t.requires_grad_() for t in (q, k, v))
    assert torch.autograd.gradcheck(lambda *t: torch.ops.ganops.attention_cpp(*t, 0.7)[0], inputs)
    detached = [t.detach().float() for t in inputs]
    torch.library.opcheck(torch.ops.ganops.attention_cpp.default, (*detached, 0.5))
    out, lse = torch.ops.ganops.attention_cpp(*detached, 0.5)
    torch.library.opcheck(
        torch.ops.ganops.attention_backward_cpp.default, (grad_out.float(), *detached, out, lse, 0.5)
    )
