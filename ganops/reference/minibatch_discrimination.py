"""Plain-PyTorch minibatch discrimination (Salimans et al. 2016): the specification every backend is tested against.

Notation shared by every backend (``triton_kernels/minibatch_discrimination.py``,
``csrc/cpu/minibatch_discrimination.cpp``, ``csrc/cuda/minibatch_discrimination.cu``):

* ``features`` ``f`` is ``[N, A]``, the paper's tensor ``T`` is ``[A, B, C]`` and ``M = f T`` is ``[N, B, C]``
  (``B`` kernels of dimension ``C``). The kernels take ``M``; the matmul stays a torch matmul.
* For samples ``i, j`` and kernel ``b``: ``D_ijb = sum_c |M_ibc - M_jbc|``, ``E_ijb = exp(-D_ijb)`` and
  ``S_ijbc = sign(M_ibc - M_jbc)``. ``E`` is symmetric in ``(i, j)``, ``S`` antisymmetric, and ``S_iibc = 0``.
* Forward: ``o_ib = sum_j E_ijb``, the ``j = i`` term (``exp(0) = 1``) left out when ``exclude_self``. The
  ``j = i`` terms are the constants ``E_ii = 1``, ``S_ii = 0`` even for a non-finite ``M_i`` (whose other terms
  are NaN: a batch of one scores 1 whatever its values), as the kernels never compute them.
* Backward, for the gradient ``g`` of ``o``: ``grad_M_kbc = -sum_j (g_kb + g_jb) E_kjb S_kjbc``.
* Double backward, for the gradient ``gg`` of ``grad_M``, with ``Q_kjb = sum_c (gg_kbc - gg_jbc) S_kjbc``:
  ``grad_g_kb = -sum_j E_kjb Q_kjb`` and ``grad_M_kbc = sum_j (g_kb + g_jb) E_kjb Q_kjb S_kjbc``
  (``S`` is piecewise constant, so only ``E`` is differentiated).
* ``exclude_self`` changes no derivative: the ``j = i`` term is the constant ``exp(0)`` (``S_ii = 0``).

The naive form holds ``M_i - M_j`` for every pair, ``N x N x B x C`` values; these functions take the rows ``i``
``ROWS_PER_BLOCK`` at a time, so they hold ``ROWS_PER_BLOCK x N x B x C``: memory ``O(N B C)``. (Autograd through
:func:`minibatch_discrimination_scores` saves every block for the backward; the kernel backends do not.)
Low-precision inputs are computed in float32 and the result cast back, as the fused kernels do.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from ganops._dtypes import compute_dtype

ROWS_PER_BLOCK = 16


def _row_blocks(n: int) -> Iterator[slice]:
    for start in range(0, n, ROWS_PER_BLOCK):
        yield slice(start, min(n, start + ROWS_PER_BLOCK))


def _pairs(m: Tensor, rows: slice) -> tuple[Tensor, Tensor]:
    """``E`` ``[R, N, B]`` and ``S`` ``[R, N, B, C]`` of the rows ``i`` in ``rows`` against every ``j``, with the
    constants ``E_ii = 1``, ``S_ii = 0`` even where ``M_i`` is not finite (``NaN - NaN`` would make them NaN)."""
    is_self = torch.arange(rows.start, rows.stop, device=m.device)[:, None] == torch.arange(m.shape[0], device=m.device)
    # M_i - M_i is 0 by definition, also where M_i is not finite; set before exp, so that autograd through this
    # function differentiates a constant there, not NaN * 0.
    difference = torch.where(is_self[:, :, None, None], 0.0, m[rows, None] - m[None])
    return torch.exp(-difference.abs().sum(dim=-1)), difference.sign()


def minibatch_discrimination_scores(m: Tensor, exclude_self: bool = False) -> Tensor:
    """``o [N, B]`` from ``M [N, B, C]``: ``o_ib = sum_j exp(-||M_ib - M_jb||_1)``, without ``j = i`` if
    ``exclude_self``."""
    values = m.to(compute_dtype(m.dtype))
    n = m.shape[0]
    scores = []
    for rows in _row_blocks(n):
        similarity, _ = _pairs(values, rows)
        if exclude_self:
            is_self = torch.arange(rows.start, rows.stop, device=m.device)[:, None] == torch.arange(n, device=m.device)
            similarity = torch.where(is_self[:, :, None], 0.0, similarity)
        scores.append(similarity.sum(dim=1))
    return torch.cat(scores).to(m.dtype)


def minibatch_discrimination_scores_backward(grad_o: Tensor, m: Tensor, exclude_self: bool = False) -> Tensor:
    """Gradient of :func:`minibatch_discrimination_scores` with respect to ``m``, written out (module docstring)."""
    values = m.to(compute_dtype(m.dtype))
    g = grad_o.to(values.dtype)
    grad_m = []
    for rows in _row_blocks(m.shape[0]):
        similarity, sign = _pairs(values, rows)
        weight = (g[rows, None] + g[None]) * similarity
        grad_m.append(-(weight[..., None] * sign).sum(dim=1))
    return torch.cat(grad_m).to(m.dtype)


def minibatch_discrimination_scores_double_backward(
    grad_grad_m: Tensor, grad_o: Tensor, m: Tensor, exclude_self: bool = False
) -> tuple[Tensor, Tensor]:
    """Gradients of :func:`minibatch_discrimination_scores_backward` with respect to ``grad_o`` and ``m``."""
    values = m.to(compute_dtype(m.dtype))
    g = grad_o.to(values.dtype)
    gg = grad_grad_m.to(values.dtype)
    grad_grad_o, grad_m = [], []
    for rows in _row_blocks(m.shape[0]):
        similarity, sign = _pairs(values, rows)
        q = ((gg[rows, None] - gg[None]) * sign).sum(dim=-1)
        grad_grad_o.append(-(similarity * q).sum(dim=1))
        weight = (g[rows, None] + g[None]) * similarity * q
        grad_m.append((weight[..., None] * sign).sum(dim=1))
    return torch.cat(grad_grad_o).to(grad_o.dtype), torch.cat(grad_m).to(m.dtype)


def minibatch_discrimination(features: Tensor, T: Tensor, exclude_self: bool = False) -> Tensor:
    """``cat([features, o], dim=1)`` with ``o`` the scores of ``M = features T``."""
    n, a = features.shape
    _, b, c = T.shape
    m = (features @ T.reshape(a, b * c)).reshape(n, b, c)
    return torch.cat([features, minibatch_discrimination_scores(m, exclude_self).to(features.dtype)], dim=1)
