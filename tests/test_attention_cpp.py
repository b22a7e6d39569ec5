"""The compiled attention kernels (torch.ops.ganops.attention_cpp / attention_backward_cpp, csrc/cpu and
csrc/cuda) against naive float64 math: softmax(q k^T scale) v, torch.logsumexp and autograd's gradients."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import ganops.ops.attention  # noqa: F401  (registers the fake kernels and autograd of the cpp ops)
from helpers import TOLERANCE, relative_error, require_backend

DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)
# Around the CPU kernel's tiles (64 rows, chunks of 256) and the CUDA kernel's (8 to 64), and 1.
SEQUENCE_LENGTHS = (1, 2, 7, 63, 64, 65, 130, 257)
HEAD_DIMS = (1, 3, 8, 12, 48, 130)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def require_cpp_attention(device_type: str = "cpu") -> None:
    """Skip where the compiled backend cannot run; once it can, a missing attention op is a failure."""
    require_backend("cpp", device_type)
    assert hasattr(torch.ops.ganops, "attention_cpp"), "ganops._C was built without csrc/cpu/attention.cpp"


def accumulate_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def naive_attention(q, k, v, scale):
    """(out, lse, logits) in float64 with the N x N matrix, the definition the kernels must match."""
    logits = (q.double() @ k.double().transpose(-1, -2)) * scale
    return torch.softmax(logits, dim=-1) @ v.double(), torch.logsumexp(logits, dim=-1), logits


def naive_gradients(q, k, v, scale, grad_out):
    """Autograd's (grad_q, grad_k, grad_v) of the float64 naive attention."""
    inputs = [t.detach().double().requires_grad_() for t in (q, k, v)]
    out, _, _ = naive_attention(*inputs, scale)
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
    expected_out, expected_lse, logits = naive_attention(q, k, v, scale)
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


def test_opcheck():
    require_cpp_attention()
    q, k, v, grad_out = make_inputs((2, 9, 70, 12, 5), torch.float32, 1.0, seed=5)
    torch.library.opcheck(torch.ops.ganops.attention_cpp.default, (q, k, v, 0.5))
    out, lse = torch.ops.ganops.attention_cpp(q, k, v, 0.5)
    torch.library.opcheck(torch.ops.ganops.attention_backward_cpp.default, (grad_out, q, k, v, out, lse, 0.5))


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


# GPU: the CUDA kernels of csrc/cuda/attention.cu, on the shapes that stress their tiling (tiles of 8 to 64
# chosen by shared memory, masking of partial tiles) and the head dims of the GAN blocks up to 256.
GPU_SHAPES = [
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
@pytest.mark.parametrize("shape", GPU_SHAPES)
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
