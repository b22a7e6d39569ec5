"""Plain-PyTorch attention: the specification every backend is tested against.

Notation shared by every backend (``triton_kernels/attention.py``, ``csrc/cpu/attention.cpp``,
``csrc/cuda/attention.cu``), for one batch entry with ``q [Nq, Dqk]``, ``k [Nk, Dqk]``, ``v [Nk, Dv]``:

* ``S = scale * q k^T`` ``[Nq, Nk]``, ``lse_i = logsumexp_j S_ij``, ``P = exp(S - lse)`` (the row softmax),
  ``O = P v`` ``[Nq, Dv]``.
* Backward, for ``dO = grad_out``: ``dV = P^T dO``, ``dP = dO v^T``, ``Delta_i = sum_d dO_id O_id``
  (equal to ``sum_j P_ij dP_ij``), ``dS = P * (dP - Delta)``, ``dQ = scale * dS k``, ``dK = scale * dS^T q``.
* Double backward: the vector-Jacobian product of the backward, i.e. the gradient of
  ``L = <Uq, dQ> + <Uk, dK> + <Uv, dV>`` with respect to ``(dO, q, k, v)`` for cotangents ``Uq, Uk, Uv`` of
  ``(dQ, dK, dV)``. With ``R = scale * (Uq k^T + q Uk^T)`` (the change of ``S`` along ``(Uq, Uk)``),
  ``W = dO Uv^T`` and the row statistics ``rho_i = sum_j P_ij R_ij``,
  ``gamma_i = sum_j P_ij R_ij dP_ij - 2 rho_i Delta_i + sum_j P_ij W_ij``:

  - ``T = P * (R - rho)``, ``dS2 = P * (R * (dP - Delta) - rho * dP + W - gamma)``;
  - ``grad dO = T v + P Uv``;
  - ``grad q = scale * (dS Uk + dS2 k)``;  ``grad k = scale * (dS^T Uq + dS2^T q)``;
  - ``grad v = T^T dO``.

  (``L = <dS, R> + <P, W>``: ``R`` carries the direct dependence on ``q, k``; ``dS2`` is the gradient that
  reaches ``S`` through ``P``; ``T`` is the gradient that reaches ``dP``.)

The double backward has the full rows of ``S`` and ``dP`` of a query block at hand, so it normalises ``P``
itself and takes ``Delta = sum_j P dP``: its rows sum to 1 up to rounding even where ``exp(S - lse)`` with a
saved ``lse`` would be off by ``eps * |S|`` (an error the double backward multiplies by ``|R| |q|``), and unlike
``rowsum(dO * O)`` it does not inherit the rounding of a half-precision ``O``; ``out`` and ``lse`` go unused.

Every blockwise function below walks the queries in blocks of ``block`` rows, so it never holds more than a
``[block, Nk]`` slice of ``S``: peak memory is ``O(block * Nk + N * D)``, never ``O(Nq * Nk)``.
The row statistics of a query block need all keys, which that slice has, so one pass suffices.

Low-precision inputs are computed in float32 (float64 for float64) and cast back, as the kernels do; ``lse``
stays in that compute dtype.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ganops._dtypes import compute_dtype

# Query rows per block of the blockwise functions: large enough for fast matmuls, small enough that a
# [block, Nk] slice stays small next to the inputs for GAN sizes (Nk <= 4096).
DEFAULT_BLOCK = 256


def attention(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """``softmax(q @ k^T * scale) @ v`` over the last two dims, written the obvious way (materialises ``S``)."""
    dtype = compute_dtype(q.dtype)
    logits = torch.matmul(q.to(dtype), k.to(dtype).transpose(-1, -2)) * scale
    return torch.matmul(torch.softmax(logits, dim=-1), v.to(dtype)).to(q.dtype)


def _blocks(length: int, block: int):
    for start in range(0, length, block):
        yield slice(start, min(start + block, length))


def _probabilities(q_block: Tensor, k: Tensor, lse_block: Tensor, scale: float) -> Tensor:
    return torch.exp(torch.matmul(q_block, k.transpose(-1, -2)) * scale - lse_block.unsqueeze(-1))


def attention_forward(q: Tensor, k: Tensor, v: Tensor, scale: float, block: int = DEFAULT_BLOCK) -> tuple[Tensor, Tensor]:
    """``(O, lse)``: the attention output in ``q``'s dtype and the per-query log-sum-exp in the compute dtype."""
    dtype = compute_dtype(q.dtype)
    qc, kc, vc = q.to(dtype), k.to(dtype), v.to(dtype)
    outs, lses = [], []
    for rows in _blocks(q.shape[-2], block):
        logits = torch.matmul(qc[..., rows, :], kc.transpose(-1, -2)) * scale
        lses.append(torch.logsumexp(logits, dim=-1))
        outs.append(torch.matmul(torch.exp(logits - lses[-1].unsqueeze(-1)), vc))
    return torch.cat(outs, dim=-2).to(q.dtype), torch.cat(lses, dim=-1)


def attention_backward(
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float,
    block: int = DEFAULT_BLOCK,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(dQ, dK, dV)`` from ``dO = grad_out``, recomputing ``P`` block by block from the saved ``lse``."""
    dtype = compute_dtype(q.dtype)
    qc, kc, vc, doc = q.to(dtype), k.to(dtype), v.to(dtype), grad_out.to(dtype)
    delta = (doc * out.to(dtype)).sum(dim=-1)
    grad_q = []
    grad_k = torch.zeros_like(kc)
    grad_v = torch.zeros_like(vc)
    for rows in _blocks(q.shape[-2], block):
        p = _probabilities(qc[..., rows, :], kc, lse[..., rows].to(dtype), scale)
        grad_v = grad_v + torch.matmul(p.transpose(-1, -2), doc[..., rows, :])
        dp = torch.matmul(doc[..., rows, :], vc.transpose(-1, -2))
        ds = p * (dp - delta[..., rows].unsqueeze(-1))
        grad_q.append(torch.matmul(ds, kc) * scale)
        grad_k = grad_k + torch.matmul(ds.transpose(-1, -2), qc[..., rows, :]) * scale
    return torch.cat(grad_q, dim=-2).to(q.dtype), grad_k.to(k.dtype), grad_v.to(v.dtype)


def attention_double_backward(
    grad_grad_q: Tensor, grad_grad_k: Tensor, grad_grad_v: Tensor,
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, scale: float,
    block: int = DEFAULT_BLOCK,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Gradients of :func:`attention_backward` w.r.t. ``(grad_out, q, k, v)`` (module docstring formulas)."""
    dtype = compute_dtype(q.dtype)
    qc, kc, vc, doc = q.to(dtype), k.to(dtype), v.to(dtype), grad_out.to(dtype)
    uq, uk, uv = grad_grad_q.to(dtype), grad_grad_k.to(dtype), grad_grad_v.to(dtype)
    grad_do, grad_q = [], []
    grad_k = torch.zeros_like(kc)
    grad_v = torch.zeros_like(vc)
    for rows in _blocks(q.shape[-2], block):
        q_b, do_b, uq_b = qc[..., rows, :], doc[..., rows, :], uq[..., rows, :]
        p = torch.softmax(torch.matmul(q_b, kc.transpose(-1, -2)) * scale, dim=-1)
        dp = torch.matmul(do_b, vc.transpose(-1, -2))
        delta_b = (p * dp).sum(dim=-1, keepdim=True)
        r = (torch.matmul(uq_b, kc.transpose(-1, -2)) + torch.matmul(q_b, uk.transpose(-1, -2))) * scale
        w = torch.matmul(do_b, uv.transpose(-1, -2))
        rho = (p * r).sum(dim=-1, keepdim=True)
        gamma = (p * (r * dp + w)).sum(dim=-1, keepdim=True) - 2 * rho * delta_b
        ds = p * (dp - delta_b)
        t = p * (r - rho)
        ds2 = p * (r * (dp - delta_b) - rho * dp + w - gamma)
        grad_do.append(torch.matmul(t, vc) + torch.matmul(p, uv))
        grad_q.append((torch.matmul(ds, uk) + torch.matmul(ds2, kc)) * scale)
        grad_k = grad_k + (torch.matmul(ds.transpose(-1, -2), uq_b) + torch.matmul(ds2.transpose(-1, -2), q_b)) * scale
        grad_v = grad_v + torch.matmul(t.transpose(-1, -2), do_b)
    return (
        torch.cat(grad_do, dim=-2).to(grad_out.dtype),
        torch.cat(grad_q, dim=-2).to(q.dtype),
        grad_k.to(k.dtype),
        grad_v.to(v.dtype),
    )


def attention_double_backward_from_inputs(
    grad_grad_q: Tensor, grad_grad_k: Tensor, grad_grad_v: Tensor,
    grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, scale: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`attention_double_backward` with ``(O, lse)`` recomputed, so it is a function of its arguments only
    (its autograd derivative is the third derivative of attention)."""
    out, lse = attention_forward(q, k, v, scale)
    return attention_double_backward(grad_grad_q, grad_grad_k, grad_grad_v, grad_out, q, k, v, out, lse, scale)
