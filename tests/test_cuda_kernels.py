"""The CUDA attention kernels' own paths, called through the registered ops: the tensor-core kernels (fp16 and
bf16, and fp32 as TF32 where torch allows it; one instantiation per head-dim bound: (16, 64), (64, 64),
(64, 128)), the CUDA-core kernels (fp32 without TF32, fp64, and every dtype above the bounds), the fused
tensor-core double backward (Dqk <= 16, Dv <= 64) and its blockwise fallback, ragged tiles and spans that start off a
16-byte boundary (odd head dims). Skipped without a GPU; scripts/gpu_check.sh runs them."""

from __future__ import annotations

import pytest
import torch

from benchmarks.harness import tf32_matmuls
from ganops.reference import attention as reference
from helpers import relative_error, require_backend

# Relative error against float64: fp16/bf16 round the MMA operands (q, k, v, P, dS) to 11 or 8 bits (TF32 to 11).
TOLERANCE = {torch.float64: 1e-10, torch.float32: 2e-5, torch.float16: 2e-2, torch.bfloat16: 4e-2}

SHAPES = [
    (2, 4096, 1024, 12, 48),  # BigGAN-128 D: bounds (16, 64)
    (3, 77, 129, 5, 7),  # odd head dims: spans off 16-byte boundaries; partial tiles on both sides
    (2, 200, 130, 64, 64),  # bounds (64, 64)
    (1, 130, 65, 40, 100),  # bounds (64, 128)
    (1, 70, 65, 128, 128),  # Dqk above every bound: the CUDA-core kernels in every dtype
    (2, 70, 33, 20, 256),  # Dv above every bound
    (1, 1, 1, 1, 1),
]


def cuda_ops():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    ops = torch.ops.ganops
    if not hasattr(ops, "attention_cpp"):
        pytest.fail("ganops._C has no attention_cpp op: rebuild the extension")
    return ops


def inputs(shape, dtype, seed=0):
    batch, n_q, n_k, d_qk, d_v = shape
    generator = torch.Generator().manual_seed(seed)
    tensors = [
        torch.randn(batch, n_q, d_qk, generator=generator),
        torch.randn(batch, n_k, d_qk, generator=generator),
        torch.randn(batch, n_k, d_v, generator=generator),
        torch.randn(batch, n_q, d_v, generator=generator),
    ]
    return [t.to("cuda", dtype) for t in tensors]


def attention_errors(ops, shape, dtype, allow_tf32=False) -> dict[str, float]:
    """Relative errors of the CUDA op's out, lse and gradients against float64 (gradients against the largest
    gradient's norm)."""
    q, k, v, grad_out = inputs(shape, dtype)
    scale = shape[3] ** -0.5
    out, lse = ops.attention_cpp(q, k, v, scale, allow_tf32)
    grads = ops.attention_backward_cpp(grad_out, q, k, v, out, lse, scale, allow_tf32)

    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected_out = reference.attention(*exact, scale)
    expected_lse = torch.logsumexp(scale * exact[0] @ exact[1].transpose(-1, -2), dim=-1)
    expected_grads = torch.autograd.grad(expected_out, exact, grad_out.double())
    assert out.dtype == dtype and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    errors = {"out": relative_error(out.double(), expected_out.detach()),
              "lse": relative_error(lse.double(), expected_lse.detach())}
    floor = max(g.norm().item() for g in expected_grads)
    for name, got, want in zip(("grad_q", "grad_k", "grad_v"), grads, expected_grads):
        errors[name] = relative_error(got.double(), want, floor)
    return errors


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_attention_forward_and_backward_match_reference(shape, dtype):
    """allow_tf32 False (the ops' default): fp32 on the exact CUDA-core kernels, whatever torch's setting."""
    ops = cuda_ops()
    tolerance = 2 * TOLERANCE[dtype]
    with tf32_matmuls(True):
        errors = attention_errors(ops, shape, dtype)
    for name, error in errors.items():
        assert error < tolerance, f"{name}: relative error {error:.3e} > {tolerance:.1e}"


@pytest.mark.gpu
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_attention_fp32_runs_on_tf32_tensor_cores_where_allowed(shape):
    """fp32 with allow_tf32: shapes within the tensor-core bounds (Dqk <= 64, Dv <= 128) run mma.m16n8k8.tf32,
    whose operands keep 11 bits as fp16's do (fp16's tolerance), and show it: their error is above fp32's; the
    other shapes stay on the exact kernels."""
    ops = cuda_ops()
    with tf32_matmuls(False):
        errors = attention_errors(ops, shape, torch.float32, allow_tf32=True)
    _, _, keys, qk_dim, v_dim = shape
    on_tensor_cores = qk_dim <= 64 and v_dim <= 128
    tolerance = 2 * (TOLERANCE[torch.float16] if on_tensor_cores else TOLERANCE[torch.float32])
    for name, error in errors.items():
        assert error < tolerance, f"{name}: relative error {error:.3e} > {tolerance:.1e}"
    if on_tensor_cores and keys >= 64:
        assert errors["out"] > TOLERANCE[torch.float32], errors


# The tensor-core paths: fp16, bf16, and fp32 with TF32 allowed.
TENSOR_CORE_CASES = [(torch.float16, False), (torch.bfloat16, False), (torch.float32, True)]


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tf32", TENSOR_CORE_CASES)
def test_cuda_attention_is_deterministic_and_leaves_no_nan_in_partial_tiles(dtype, tf32):
    ops = cuda_ops()
    q, k, v, grad_out = inputs((3, 77, 129, 5, 7), dtype, seed=1)
    runs = []
    for _ in range(2):
        out, lse = ops.attention_cpp(q, k, v, 0.3, tf32)
        runs.append((out, lse, *ops.attention_backward_cpp(grad_out, q, k, v, out, lse, 0.3, tf32)))
    for first, second in zip(*runs):
        assert torch.isfinite(first).all()
        assert torch.equal(first, second)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tf32", TENSOR_CORE_CASES)
def test_cuda_attention_large_logits_stay_exact(dtype, tf32):
    """Logits of ~1e3 on the tensor cores: the online softmax in fp32 must not overflow."""
    ops = cuda_ops()
    q, k, v, grad_out = inputs((2, 150, 200, 12, 48), dtype, seed=2)
    q = q * 30
    out, lse = ops.attention_cpp(q, k, v, 1.0, tf32)
    expected = reference.attention(q.double(), k.double(), v.double(), 1.0)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert relative_error(out.double(), expected) < 2 * TOLERANCE[torch.float16 if tf32 else dtype]


@pytest.mark.gpu
@pytest.mark.parametrize("argument, torch_setting", [(None, True), (None, False), (True, False), (False, True)])
def test_public_attention_on_cpp_follows_allow_tf32_then_torchs_setting(argument, torch_setting):
    """ganops.attention(..., backend="cpp") on fp32: the allow_tf32 argument decides, None defers to torch's float32
    matmul setting; TF32 shows as an error above fp32's tolerance (BigGAN's shape, on the tensor cores)."""
    import ganops

    cuda_ops()
    q, k, v, _ = inputs((2, 4096, 1024, 12, 48), torch.float32, seed=3)
    expected = reference.attention(q.double(), k.double(), v.double(), 1.0)
    with tf32_matmuls(torch_setting):
        out = ganops.attention(q, k, v, 1.0, allow_tf32=argument, backend="cpp")
    error = relative_error(out.double(), expected)
    uses_tf32 = torch_setting if argument is None else argument
    if uses_tf32:
        assert TOLERANCE[torch.float32] < error < 2 * TOLERANCE[torch.float16], error
    else:
        assert error < 2 * TOLERANCE[torch.float32], error


def double_backward_errors(ops, shape, dtype, allow_tf32=False) -> dict[str, float]:
    """Relative errors of the CUDA op's double backward (grad of grad_out, q, k, v) against float64, each against
    the largest result's norm."""
    q, k, v, grad_out = inputs(shape, dtype)
    grad_grad_q, grad_grad_k, grad_grad_v, _ = inputs(shape, dtype, seed=1)
    scale = shape[3] ** -0.5
    out, lse = ops.attention_cpp(q, k, v, scale, allow_tf32)
    results = ops.attention_double_backward_cpp(
        grad_grad_q, grad_grad_k, grad_grad_v, grad_out, q, k, v, out, lse, scale, allow_tf32
    )
    exact = [t.double() for t in (grad_grad_q, grad_grad_k, grad_grad_v, grad_out, q, k, v)]
    exact_out, exact_lse = reference.attention_forward(*exact[4:], scale)
    expected = reference.attention_double_backward(*exact, exact_out, exact_lse, scale)
    floor = max(e.norm().item() for e in expected)
    errors = {}
    for name, got, want, like in zip(("grad_grad_out", "grad_q", "grad_k", "grad_v"), results, expected,
                                     (grad_out, q, k, v)):
        assert got.dtype == dtype and got.shape == like.shape and got.is_contiguous()
        errors[name] = relative_error(got.double(), want, floor)
    return errors


def kernels_run(function):
    """``function()``'s result and the names of the CUDA kernels it launches."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as trace:
        result = function()
        torch.cuda.synchronize()
    return result, {event.name for event in trace.events() if event.device_type == torch.autograd.DeviceType.CUDA}


def runs_fused_double_backward(shape, dtype, allow_tf32) -> bool:
    """Where the fused tensor-core double backward applies: fp16, bf16, fp32 with TF32; Dqk <= 16, Dv <= 64."""
    _, _, _, qk_dim, v_dim = shape
    tensor_cores = dtype in (torch.float16, torch.bfloat16) or (dtype == torch.float32 and allow_tf32)
    return tensor_cores and qk_dim <= 16 and v_dim <= 64


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tf32", [*TENSOR_CORE_CASES, (torch.float32, False), (torch.float64, False)])
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_attention_double_backward_matches_reference(shape, dtype, tf32):
    """The fused tensor-core kernels where they apply (the profiler shows them), the blockwise composite of torch
    ops elsewhere (torch's float32 matmuls held exact, so fp32 without TF32 meets fp32's tolerance)."""
    ops = cuda_ops()
    with tf32_matmuls(False):
        errors, launched = kernels_run(lambda: double_backward_errors(ops, shape, dtype, tf32))
    fused = runs_fused_double_backward(shape, dtype, tf32)
    assert any("double_backward_query_kernel" in name for name in launched) == fused, sorted(launched)
    assert any("double_backward_key_kernel" in name for name in launched) == fused, sorted(launched)
    tolerance = 2 * TOLERANCE[torch.float16 if dtype == torch.float32 and tf32 else dtype]
    for name, error in errors.items():
        assert error < tolerance, f"{name}: relative error {error:.3e} > {tolerance:.1e}"
    if fused and dtype == torch.float32 and shape[2] >= 64:
        # TF32 shows: the fused kernels' error is above fp32's, where the composite's exact matmuls stay within it.
        assert errors["grad_q"] > TOLERANCE[torch.float32], errors


@pytest.mark.gpu
@pytest.mark.parametrize("dtype, tf32", TENSOR_CORE_CASES)
def test_cuda_attention_double_backward_is_deterministic_and_finite(dtype, tf32):
    """Partial tiles on both sides, odd head dims, and logits of ~1e2 (rows whose exp sums need the
    normalisation by their computed sum)."""
    ops = cuda_ops()
    q, k, v, grad_out = inputs((3, 77, 129, 5, 7), dtype, seed=1)
    q = q * 10
    grad_grad = inputs((3, 77, 129, 5, 7), dtype, seed=2)[:3]
    out, lse = ops.attention_cpp(q, k, v, 1.0, tf32)
    runs = [ops.attention_double_backward_cpp(*grad_grad, grad_out, q, k, v, out, lse, 1.0, tf32) for _ in range(2)]
    exact = [t.double() for t in (*grad_grad, grad_out, q, k, v)]
    exact_out, exact_lse = reference.attention_forward(*exact[4:], 1.0)
    expected = reference.attention_double_backward(*exact, exact_out, exact_lse, 1.0)
    floor = max(e.norm().item() for e in expected)
    for first, second, want in zip(*runs, expected):
        assert torch.isfinite(first).all()
        assert torch.equal(first, second)
        assert relative_error(first.double(), want, floor) < 2 * TOLERANCE[torch.float16 if tf32 else dtype]


def biggan_128_d_shapes() -> list[tuple[int, int]]:
    from benchmarks.spectral_norm import layer_shapes

    return layer_shapes("BigGAN-128 D", 96)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["cpp", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("n_power_iterations", [0, 1, 3])
def test_gpu_spectral_norm_group_matches_reference(backend, dtype, n_power_iterations):
    """A whole BigGAN-128 D group (23 layers from 1 x 1536 to 1536 x 13824) plus odd and transposed layers: the
    CUDA work list, and the Triton launches with their per-program norm partials, spread every layer over all
    blocks; each layer must match the float64 reference."""
    from ganops.ops.spectral_norm import fused_spectral_norm_group
    from ganops.reference import spectral_norm as sn_reference

    cuda_ops()
    require_backend(backend, "cuda")
    shapes = biggan_128_d_shapes() + [(1, 1), (300, 1), (7, 33), (2049, 65)]
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(shape, generator=generator).to("cuda", dtype) for shape in shapes]
    weights.append(torch.randn(40, 70, generator=generator).to("cuda", dtype).t())  # strided: col stride 70
    def unit(n):
        return torch.nn.functional.normalize(torch.randn(n, generator=generator), dim=0).to("cuda", dtype)

    us = [unit(w.shape[0]) for w in weights]
    vs = [unit(w.shape[1]) for w in weights]
    grads = [torch.randn(w.shape, generator=generator).to("cuda", dtype) for w in weights]
    params = [w.detach().requires_grad_() for w in weights]
    outputs = fused_spectral_norm_group(params, us, vs, n_power_iterations, 1e-12, backend=backend)
    actual_grads = torch.autograd.grad(outputs[0], params, grads)
    tolerance = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 3e-2}[dtype]
    for i, (w, u, v, g) in enumerate(zip(weights, us, vs, grads)):
        w64 = w.detach().double().requires_grad_()
        expected = sn_reference.spectral_norm_forward(w64, u.double(), v.double(), n_power_iterations, 1e-12)
        (expected_grad,) = torch.autograd.grad(expected[0], w64, g.double())
        got = (outputs[0][i], outputs[1][i], outputs[2][i], outputs[3][i], actual_grads[i])
        for name, a, b in zip(("W_sn", "u", "v", "sigma", "grad_W"), got, (*expected, expected_grad)):
            error = relative_error(a.double(), b.double())
            assert error <= tolerance, f"layer {i} {tuple(w.shape)} {name}: {error:.2e}"


@pytest.mark.gpu
def test_cuda_spectral_norm_group_is_deterministic():
    from ganops.ops.spectral_norm import fused_spectral_norm_group

    cuda_ops()
    generator = torch.Generator().manual_seed(1)
    weights = [torch.randn(shape, generator=generator).cuda() for shape in biggan_128_d_shapes()]
    us = [torch.randn(w.shape[0], generator=generator).cuda() for w in weights]
    vs = [torch.randn(w.shape[1], generator=generator).cuda() for w in weights]
    first, second = (fused_spectral_norm_group(weights, us, vs, 1, 1e-12, backend="cpp") for _ in range(2))
    for a_list, b_list in zip(first, second):
        for a, b in zip(a_list, b_list):
            assert torch.equal(a, b)
