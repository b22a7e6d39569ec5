"""The CUDA attention kernels' own paths, called through the registered ops: the tensor-core kernels (fp16 and
bf16, one instantiation per head-dim bound: (16, 64), (64, 64), (64, 128)), the CUDA-core kernels (fp32,
fp64, and half precision above the bounds), ragged tiles and spans that start off a 16-byte boundary (odd
head dims). Skipped without a GPU; scripts/gpu_check.sh runs them."""

from __future__ import annotations

import pytest
import torch

from ganops.reference import attention as reference
from helpers import relative_error

# Relative error against float64: fp16/bf16 round the MMA operands (q, k, v, P, dS) to 11 or 8 bits.
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


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_cuda_attention_forward_and_backward_match_reference(shape, dtype):
    ops = cuda_ops()
    q, k, v, grad_out = inputs(shape, dtype)
    scale = shape[3] ** -0.5
    out, lse = ops.attention_cpp(q, k, v, scale)
    grads = ops.attention_backward_cpp(grad_out, q, k, v, out, lse, scale)

    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    expected_out = reference.attention(*exact, scale)
    expected_lse = torch.logsumexp(scale * exact[0] @ exact[1].transpose(-1, -2), dim=-1)
    expected_grads = torch.autograd.grad(expected_out, exact, grad_out.double())
    tolerance = 2 * TOLERANCE[dtype]
    assert out.dtype == dtype and lse.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert relative_error(out.double(), expected_out.detach()) < tolerance
    assert relative_error(lse.double(), expected_lse.detach()) < tolerance
    floor = max(g.norm().item() for g in expected_grads)
    for name, got, want in zip(("grad_q", "grad_k", "grad_v"), grads, expected_grads):
        error = relative_error(got.double(), want, floor)
        assert error < tolerance, f"{name}: relative error {error:.3e} > {tolerance:.1e}"


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_attention_is_deterministic_and_leaves_no_nan_in_partial_tiles(dtype):
    ops = cuda_ops()
    q, k, v, grad_out = inputs((3, 77, 129, 5, 7), dtype, seed=1)
    runs = []
    for _ in range(2):
        out, lse = ops.attention_cpp(q, k, v, 0.3)
        runs.append((out, lse, *ops.attention_backward_cpp(grad_out, q, k, v, out, lse, 0.3)))
    for first, second in zip(*runs):
        assert torch.isfinite(first).all()
        assert torch.equal(first, second)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_attention_large_logits_stay_exact(dtype):
    """Logits of ~1e3 in half precision: the online softmax in fp32 must not overflow."""
    ops = cuda_ops()
    q, k, v, grad_out = inputs((2, 150, 200, 12, 48), dtype, seed=2)
    q = q * 30
    out, lse = ops.attention_cpp(q, k, v, 1.0)
    expected = reference.attention(q.double(), k.double(), v.double(), 1.0)
    assert torch.isfinite(out).all() and torch.isfinite(lse).all()
    assert relative_error(out.double(), expected) < 2 * TOLERANCE[dtype]


def biggan_128_d_shapes() -> list[tuple[int, int]]:
    from benchmarks.spectral_norm import layer_shapes

    return layer_shapes("BigGAN-128 D", 96)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("n_power_iterations", [0, 1, 3])
def test_cuda_spectral_norm_group_work_list_matches_reference(dtype, n_power_iterations):
    """A whole BigGAN-128 D group (23 layers from 1 x 1536 to 1536 x 13824) plus odd and transposed layers: the
    work list spreads items of every layer over all blocks; each layer must match the float64 reference."""
    from ganops.ops.spectral_norm import fused_spectral_norm_group
    from ganops.reference import spectral_norm as sn_reference

    cuda_ops()
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
    outputs = fused_spectral_norm_group(params, us, vs, n_power_iterations, 1e-12, backend="cpp")
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
