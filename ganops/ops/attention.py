"""``ganops.attention``: argument checks, torch.library registration of the Triton and C++ backends, and the
public function. The math lives in ``ganops/reference/attention.py``; the kernels in
``triton_kernels/attention.py``, ``csrc/cpu/attention.cpp`` and ``csrc/cuda/attention.cu``.

Each backend is a chain of three ops, each the gradient of the one before:

* ``attention_<b>(q, k, v, scale, ...) -> (out, lse)``; ``lse`` (log-sum-exp per query, float32 or float64)
  is saved for the backward and is not differentiable;
* ``attention_backward_<b>(grad_out, q, k, v, out, lse, scale, ...) -> (grad_q, grad_k, grad_v)``;
* a double backward ``(gg_q, gg_k, gg_v, grad_out, q, k, v, out, lse, scale, ...) -> (grad of grad_out,
  grad_q, grad_k, grad_v)``: the Triton kernels for ``triton``; for ``cpp`` the compiled op
  ``attention_double_backward_cpp``, which on a GPU runs fused tensor-core kernels for float16/bfloat16, and
  for float32 when ``allow_tf32`` is true, with ``Dqk <= 16`` and ``Dv <= 64`` (sm_80 or later), and otherwise
  a blockwise composite of torch matmuls (O(N) memory as well) that follows torch's float32 matmul setting.

``out`` and ``lse`` enter the backward ops only as cached functions of ``(q, k, v)``: the gradient of a
backward op is its full derivative with respect to ``(grad_out, q, k, v)`` and nothing flows through ``out``
or ``lse`` (it would be counted twice). Third derivatives are the vector-Jacobian product of the reference.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ganops import _backend, _dtypes, _extension
from ganops._dtypes import FLOATING_DTYPES, compute_dtype
from ganops.ops._registration import Stage, autocast_inputs, op, register
from ganops.reference import attention as reference

OP_NAME = "attention"


def check_arguments(q: Tensor, k: Tensor, v: Tensor, scale: float | None) -> float:
    """Raise a clear error for bad arguments; return the scale to use (``1/sqrt(Dqk)`` by default)."""
    for name, value in (("q", q), ("k", k), ("v", v)):
        if not isinstance(value, Tensor):
            raise TypeError(f"attention: {name} must be a torch.Tensor, got {type(value).__name__}")
    expected = {"q": "[..., Nq, Dqk]", "k": "[..., Nk, Dqk]", "v": "[..., Nk, Dv]"}
    for name, value in (("q", q), ("k", k), ("v", v)):
        if value.dim() < 2:
            raise ValueError(
                f"attention: {name} must have at least 2 dimensions {expected[name]}, got shape {tuple(value.shape)}"
            )
        if value.dtype not in FLOATING_DTYPES:
            raise TypeError(f"attention: {name} must have a floating dtype {FLOATING_DTYPES}, got {value.dtype}")
        if value.numel() == 0:
            raise ValueError(f"attention: {name} must have no empty dimension, got shape {tuple(value.shape)}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"attention: q, k and v must have the same dtype, got {q.dtype}, {k.dtype} and {v.dtype}")
    if not q.device == k.device == v.device:
        raise ValueError(f"attention: q, k and v must be on one device, got {q.device}, {k.device} and {v.device}")
    for name, value in (("k", k), ("v", v)):
        if value.shape[:-2] != q.shape[:-2]:
            raise ValueError(
                f"attention: {name} must have the leading (batch) dims of q {tuple(q.shape[:-2])}, "
                f"got shape {tuple(value.shape)}"
            )
    if k.shape[-1] != q.shape[-1]:
        raise ValueError(
            f"attention: k must have the head dim of q, Dqk={q.shape[-1]}, as its last dim; got shape {tuple(k.shape)}"
        )
    if v.shape[-2] != k.shape[-2]:
        raise ValueError(
            f"attention: v must have one row per key, Nk={k.shape[-2]}, in dim -2; got shape {tuple(v.shape)}"
        )
    if scale is None:
        return 1.0 / math.sqrt(q.shape[-1])
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise ValueError(f"attention: scale must be a finite float or None, got {scale!r}")
    return float(scale)


def _check_op_arguments(q: Tensor, k: Tensor, v: Tensor, scale: float, *attributes) -> None:
    """The registered ops take 3-D ``[B, N, D]`` tensors and an explicit scale."""
    for name, value in (("q", q), ("k", k), ("v", v)):
        if isinstance(value, Tensor) and value.dim() != 3:
            raise ValueError(f"attention: the registered ops take 3-D {name} [B, N, D], got shape {tuple(value.shape)}")
    check_arguments(q, k, v, scale)


def _fake_forward(q: Tensor, k: Tensor, v: Tensor, scale: float, *attributes) -> tuple[Tensor, Tensor]:
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[2])
    return out, q.new_empty(q.shape[:2], dtype=compute_dtype(q.dtype))


def _fake_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float, *attributes):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


def _fake_double_backward(
    grad_grad_q: Tensor, grad_grad_k: Tensor, grad_grad_v: Tensor,
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float, *attributes,
):
    return grad_out.new_empty(grad_out.shape), q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@torch.library.custom_op("ganops::attention_triton", mutates_args=())
def _triton_forward(q: Tensor, k: Tensor, v: Tensor, scale: float, allow_tf32: bool) -> tuple[Tensor, Tensor]:
    from ganops.triton_kernels import attention as kernels

    _check_op_arguments(q, k, v, scale)
    return kernels.forward(q, k, v, scale, allow_tf32, compute_dtype=_dtypes.compute_dtype(q.dtype))


@torch.library.custom_op("ganops::attention_backward_triton", mutates_args=())
def _triton_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float, allow_tf32: bool
) -> tuple[Tensor, Tensor, Tensor]:
    from ganops.triton_kernels import attention as kernels

    _check_op_arguments(q, k, v, scale)
    return kernels.backward(
        grad_out, q, k, v, out, lse, scale, allow_tf32, compute_dtype=_dtypes.compute_dtype(q.dtype)
    )


@torch.library.custom_op("ganops::attention_double_backward_triton", mutates_args=())
def _triton_double_backward(
    grad_grad_q: Tensor, grad_grad_k: Tensor, grad_grad_v: Tensor,
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float, allow_tf32: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from ganops.triton_kernels import attention as kernels

    _check_op_arguments(q, k, v, scale)
    return kernels.double_backward(
        grad_grad_q, grad_grad_k, grad_grad_v, grad_out, q, k, v, out, lse, scale, allow_tf32,
        compute_dtype=_dtypes.compute_dtype(q.dtype),
    )


def _third_order_vjp(saved: tuple[Tensor, ...], attributes: tuple, grads: tuple[Tensor, ...]):
    _, vjp = torch.func.vjp(
        lambda *tensors: reference.attention_double_backward_from_inputs(*tensors, attributes[0]), *saved
    )
    return vjp(tuple(grads))


def _register(suffix: str, double_backward_name: str, contiguous: bool) -> None:
    """The chain of one backend (module docstring); ``contiguous``: its ops need contiguous inputs.
    ``out`` and ``lse`` enter the backward ops as cached functions of ``(q, k, v)``: no gradient flows to them."""
    forward, backward = f"ganops::attention_{suffix}", f"ganops::attention_backward_{suffix}"
    backward_op, double_backward_op = op(backward), op(double_backward_name)

    def prepare(tensor: Tensor) -> Tensor:
        return tensor.contiguous() if contiguous else tensor

    def check_backward(grad_out, q, k, v, out, lse, scale, *attributes):
        _check_op_arguments(q, k, v, scale)

    def check_double_backward(grad_grad_q, grad_grad_k, grad_grad_v, grad_out, q, k, v, out, lse, scale, *attributes):
        _check_op_arguments(q, k, v, scale)

    register(Stage(
        forward, _fake_forward, (0, 1, 2),
        lambda saved, attrs, grads: backward_op(prepare(grads[0]), *saved, *attrs),
        save=lambda inputs, output: (*inputs[:3], *output),
        non_differentiable=lambda output: (output[1],),
        check=_check_op_arguments,
    ))
    register(Stage(
        backward, _fake_backward, (0, 1, 2, 3),
        lambda saved, attrs, grads: double_backward_op(*(prepare(g) for g in grads), *saved, *attrs),
        check=check_backward,
    ))
    register(Stage(
        double_backward_name, _fake_double_backward, (0, 1, 2, 3, 4, 5, 6),
        _third_order_vjp,
        save=lambda inputs, output: inputs[:7],
        check=check_double_backward,
    ))


def cpp_ops_available() -> bool:
    """Whether the compiled extension has the attention kernels, its double backward included (an extension
    built before them has not)."""
    ops = torch.ops.ganops
    return _extension.is_loaded() and hasattr(ops, "attention_cpp") and hasattr(ops, "attention_double_backward_cpp")


_register("triton", "ganops::attention_double_backward_triton", contiguous=False)
if cpp_ops_available():
    _register("cpp", "ganops::attention_double_backward_cpp", contiguous=True)


def _flatten_batch(x: Tensor) -> Tensor:
    return x.reshape(-1, x.shape[-2], x.shape[-1])


@torch.compiler.assume_constant_result  # Dynamo cannot trace the fp32_precision getter: read it at trace time
def _matmul_allows_tf32() -> bool:
    """torch's float32-matmul precision setting: the ``fp32_precision`` API where torch has it (reading the legacy
    ``allow_tf32`` raises once a user has mixed the two APIs), the legacy flag before."""
    matmul = torch.backends.cuda.matmul
    precision = getattr(torch.backends, "fp32_precision", None)
    if precision is None:
        return matmul.allow_tf32
    if matmul.fp32_precision != "none":  # "none": inherit the global setting
        precision = matmul.fp32_precision
    return precision == "tf32"


def attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    scale: float | None = None,
    *,
    allow_tf32: bool | None = None,
    backend: str | None = None,
) -> Tensor:
    """``softmax(q @ k^T * scale) @ v``, fused: never holds the ``Nq x Nk`` matrix, in any derivative order.

    Unlike SDPA's fused kernels, the query/key width may differ from the value width, ``Nq`` from ``Nk``, and
    the result is differentiable to any order (double backward for WGAN-GP / R1 is fused and O(N) in memory).

    Args:
        q: ``[..., Nq, Dqk]`` queries; float16, bfloat16, float32 or float64.
        k: ``[..., Nk, Dqk]`` keys, same leading dims and dtype as ``q``.
        v: ``[..., Nk, Dv]`` values.
        scale: logit scale; ``None`` means ``1/sqrt(Dqk)`` like SDPA (SAGAN/BigGAN use ``1.0``).
        allow_tf32: float32 products on a GPU's tf32 tensor cores (about 1e-3 relative error): every Triton
            kernel, and the CUDA kernels of ``cpp``'s forward and backward. ``cpp``'s double backward is the
            compiled op ``attention_double_backward_cpp``: on a GPU it runs fused tensor-core kernels for
            float16/bfloat16, and for float32 when ``allow_tf32`` is true, with ``Dqk <= 16`` and ``Dv <= 64``
            (sm_80 or later); otherwise a blockwise composite of torch matmuls (O(N) memory), which follow
            torch's float32 matmul setting whatever ``allow_tf32`` says. ``None`` follows torch's float32 matmul
            setting (``torch.backends.cuda.matmul.fp32_precision``, or ``allow_tf32`` on a torch without it).
        backend: ``"reference"``, ``"triton"``, ``"cpp"`` or ``"auto"``; ``None`` defers to
            :func:`ganops.use_backend` and ``GANOPS_BACKEND``.

    Returns:
        ``[..., Nq, Dv]`` tensor of ``q``'s dtype; under ``torch.autocast`` q, k and v are first cast to the
        autocast dtype (float64 excepted), like ``scaled_dot_product_attention``.
    """
    # Attention is a matmul-like op, as SDPA is: projections of mixed precision meet in the autocast dtype.
    q, k, v = autocast_inputs(q, k, v)
    scale = check_arguments(q, k, v, scale)
    chosen = _backend.select(OP_NAME, q.device.type, backend, q, k, v)
    if chosen == "reference":
        return reference.attention(q, k, v, scale)
    q3, k3, v3 = _flatten_batch(q), _flatten_batch(k), _flatten_batch(v)
    tf32 = _matmul_allows_tf32() if allow_tf32 is None else bool(allow_tf32)
    if chosen == "cpp":
        if not cpp_ops_available():
            raise RuntimeError(
                "ganops.attention: backend 'cpp' is unavailable: the compiled extension ganops._C has no attention "
                "kernels (rebuild it: python setup.py build_ext --inplace)"
            )
        out, _ = torch.ops.ganops.attention_cpp(q3.contiguous(), k3.contiguous(), v3.contiguous(), scale, tf32)
    else:
        out, _ = torch.ops.ganops.attention_triton(q3, k3, v3, scale, tf32)
    return out.reshape(*q.shape[:-1], v.shape[-1])
