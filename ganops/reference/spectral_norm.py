"""Plain-PyTorch spectral normalization: the specification every backend is tested against.

Notation shared by every backend (``triton_kernels/spectral_norm.py``, ``csrc/cpu/spectral_norm.cpp``,
``csrc/cuda/spectral_norm.cu``):

* ``W`` is the weight as a matrix of shape ``[R, C]`` (torch's ``_reshape_weight_to_matrix``: dimension
  ``dim`` moved to the front, the others flattened), ``u`` has ``R`` entries and ``v`` has ``C``.
* ``normalize(x) = x / max(||x||, eps)`` (``torch.nn.functional.normalize``), except that where the squares
  of ``x`` overflow or underflow (float32 ``|x|`` beyond ~1e19 or below ~1e-19) ``||x||`` is computed as
  ``m * ||x / m||`` for ``m = max |x|`` (LAPACK's ``nrm2``), so float32 weights up to the float32 range keep
  their true norm where ``F.normalize`` returns zeros. Elsewhere this is torch's computation, bit for bit.
  Kernels may use the scaled norm everywhere (it differs from the plain one by rounding only).
* One power iteration, in torch's order (``torch.nn.utils.parametrizations._SpectralNorm._power_method``):
  ``u <- normalize(W v)``, then ``v <- normalize(W^T u)``; ``n_power_iterations`` of them per training
  forward, none in eval mode (``n_power_iterations = 0`` below).
* ``sigma = u^T W v`` with the updated ``u``, ``v``; the output is ``W_sn = W / sigma``.
* ``u`` and ``v`` are constants for autograd, exactly as in torch, so the gradient is
  ``grad_W = (G - <G, W_sn> u v^T) / sigma`` for the incoming gradient ``G`` of ``W_sn``.

Kernels may compute ``sigma`` as ``s . v`` with ``s = W^T u`` the last unnormalised ``v``: it equals
``u^T W v`` algebraically and saves a pass over ``W``.

Low-precision weights are computed in float32 and the results cast back (``sigma`` stays in the compute
dtype), as the fused kernels do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ganops._dtypes import compute_dtype


def weight_to_matrix(weight: Tensor, dim: int) -> Tensor:
    """``weight`` as the ``[R, C]`` matrix of the power iteration (torch's ``_reshape_weight_to_matrix``)."""
    if dim != 0:
        weight = weight.permute(dim, *(d for d in range(weight.dim()) if d != dim))
    return weight.flatten(1)


def matrix_to_weight(matrix: Tensor, shape: torch.Size, dim: int) -> Tensor:
    """The inverse of :func:`weight_to_matrix`: the ``[R, C]`` matrix back in ``weight``'s shape (a view)."""
    moved = (shape[dim], *(size for d, size in enumerate(shape) if d != dim))
    unflattened = matrix.reshape(moved)
    if dim == 0:
        return unflattened
    order = list(range(1, len(shape)))
    order.insert(dim, 0)
    return unflattened.permute(order)


@torch.no_grad()
def initial_vectors(weight_mat: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Random unit ``u``, ``v`` drawn exactly as torch's ``_SpectralNorm.__init__`` does (same RNG calls)."""
    rows, cols = weight_mat.shape
    u = weight_mat.new_empty(rows).normal_(0, 1)
    v = weight_mat.new_empty(cols).normal_(0, 1)
    return F.normalize(u, dim=0, eps=eps), F.normalize(v, dim=0, eps=eps)


def scaled_norm(x: Tensor) -> Tensor:
    """``||x||`` without overflow or underflow in the squares: ``m * ||x / m||`` with ``m = max |x|`` (0 for
    ``x = 0``; NaN or inf in ``x`` give NaN or inf, as the plain norm does)."""
    largest = x.abs().amax()
    scale = torch.where((largest > 0) & torch.isfinite(largest), largest, torch.ones_like(largest))
    return torch.linalg.vector_norm(x / scale) * scale


def normalize(x: Tensor, eps: float) -> Tensor:
    """``x / max(||x||, eps)``: torch's plain norm where it is representable and not below the square root of the
    smallest normal number (whose square would underflow), else the overflow-safe :func:`scaled_norm`."""
    plain = torch.linalg.vector_norm(x)
    representable = torch.isfinite(plain) & (plain >= torch.finfo(x.dtype).tiny ** 0.5)
    return x / torch.where(representable, plain, scaled_norm(x)).clamp_min(eps)


@torch.no_grad()
def power_iteration(weight_mat: Tensor, u: Tensor, v: Tensor, n_power_iterations: int, eps: float) -> tuple[Tensor, Tensor]:
    """``n_power_iterations`` of torch's power method, out of place, in the compute dtype."""
    for _ in range(n_power_iterations):
        u = normalize(torch.mv(weight_mat, v), eps)
        v = normalize(torch.mv(weight_mat.H, u), eps)
    return u, v


def spectral_norm_forward(
    weight_mat: Tensor, u: Tensor, v: Tensor, n_power_iterations: int, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(W_sn, u_new, v_new, sigma)``: the fused op (see module docstring). Differentiable in ``weight_mat``."""
    dtype = compute_dtype(weight_mat.dtype)
    w = weight_mat.to(dtype)
    u_new, v_new = power_iteration(w.detach(), u.to(dtype), v.to(dtype), n_power_iterations, eps)
    sigma = torch.vdot(u_new, torch.mv(w, v_new))
    weight_sn = (w / sigma).to(weight_mat.dtype)
    return weight_sn, u_new.to(u.dtype), v_new.to(v.dtype), sigma


def sigma_of(weight_mat: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """``u^T W v`` in the compute dtype."""
    dtype = compute_dtype(weight_mat.dtype)
    return torch.vdot(u.to(dtype), torch.mv(weight_mat.to(dtype), v.to(dtype)))


def spectral_norm_backward(grad_sn: Tensor, weight_mat: Tensor, u: Tensor, v: Tensor) -> Tensor:
    """``grad_W = (G - <G, W_sn> u v^T) / sigma`` with ``sigma = u^T W v`` recomputed from ``weight_mat``, so
    that this function is itself differentiable in ``grad_sn`` and ``weight_mat`` (double backward)."""
    dtype = compute_dtype(weight_mat.dtype)
    g, w = grad_sn.to(dtype), weight_mat.to(dtype)
    u, v = u.to(dtype), v.to(dtype)
    sigma = torch.vdot(u, torch.mv(w, v))
    projection = (g * w).sum() / sigma
    return ((g - projection * torch.outer(u, v)) / sigma).to(weight_mat.dtype)
