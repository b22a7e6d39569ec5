"""``ganops.minibatch_discrimination``: argument checks, torch.library registration of the Triton and C++ backends,
and the public function. The math lives in ``ganops/reference/minibatch_discrimination.py``; the kernels in
``triton_kernels/minibatch_discrimination.py``, ``csrc/cpu/minibatch_discrimination.cpp`` and
``csrc/cuda/minibatch_discrimination.cu``.

The registered ops compute the scores ``o [N, B]`` from ``M [N, B, C]``, not the whole layer: the pairwise part
is the one whose naive form holds ``N x N x B x C`` values and that a kernel can stream in ``O(N B C)`` memory,
while ``M = features T`` is a plain matmul that torch already runs at BLAS speed (and differentiates to any order),
and the concatenation is a copy.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ganops import _backend, _extension
from ganops._dtypes import FLOATING_DTYPES
from ganops.ops._registration import register_chain
from ganops.reference import minibatch_discrimination as reference

OP_NAME = "minibatch_discrimination"


def check_hyperparameters(
    in_features: int, num_kernels: int, kernel_dim: int, caller: str = "MinibatchDiscrimination"
) -> None:
    for name, value in (("in_features", in_features), ("num_kernels", num_kernels), ("kernel_dim", kernel_dim)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{caller}: {name} must be a positive int, got {value!r}")


def _check_exclude_self(exclude_self: bool) -> None:
    if not isinstance(exclude_self, bool):
        raise TypeError(f"minibatch_discrimination: exclude_self must be a bool, got {type(exclude_self).__name__}")


def check_arguments(features: Tensor, T: Tensor, exclude_self: bool) -> None:
    """Raise a clear error, naming the argument, for anything the op does not accept."""
    for name, value, dims, layout in (("features", features, 2, "[N, A]"), ("T", T, 3, "[A, B, C]")):
        if not isinstance(value, Tensor):
            raise TypeError(f"minibatch_discrimination: {name} must be a torch.Tensor, got {type(value).__name__}")
        if value.dim() != dims:
            raise ValueError(
                f"minibatch_discrimination: {name} must have {dims} dimensions {layout}, got shape {tuple(value.shape)}"
            )
        if value.dtype not in FLOATING_DTYPES:
            raise TypeError(
                f"minibatch_discrimination: {name} must have a floating dtype {FLOATING_DTYPES}, got {value.dtype}"
            )
        if value.numel() == 0:
            raise ValueError(f"minibatch_discrimination: {name} must have no empty dimension, got shape {tuple(value.shape)}")
    _check_exclude_self(exclude_self)
    if T.shape[0] != features.shape[1]:
        raise ValueError(
            f"minibatch_discrimination: T [A, B, C] must have A = {features.shape[1]} (the features' size), "
            f"got shape {tuple(T.shape)}"
        )
    if T.dtype != features.dtype and not torch.is_autocast_enabled(features.device.type):
        raise TypeError(
            f"minibatch_discrimination: T must have the dtype of features ({features.dtype}), got {T.dtype}"
        )
    if T.device != features.device:
        raise ValueError(
            f"minibatch_discrimination: T must be on the device of features ({features.device}), got {T.device}"
        )


def check_op_arguments(m: Tensor, exclude_self: bool) -> None:
    """The checks of the registered ops, which take ``M [N, B, C]``."""
    if not isinstance(m, Tensor):
        raise TypeError(f"minibatch_discrimination: m must be a torch.Tensor, got {type(m).__name__}")
    if m.dim() != 3:
        raise ValueError(f"minibatch_discrimination: m must have 3 dimensions [N, B, C], got shape {tuple(m.shape)}")
    if m.dtype not in FLOATING_DTYPES:
        raise TypeError(f"minibatch_discrimination: m must have a floating dtype {FLOATING_DTYPES}, got {m.dtype}")
    if m.numel() == 0:
        raise ValueError(f"minibatch_discrimination: m must have no empty dimension, got shape {tuple(m.shape)}")
    _check_exclude_self(exclude_self)


def _fake_forward(m: Tensor, exclude_self: bool) -> Tensor:
    return m.new_empty(m.shape[:2])


def _fake_backward(grad_o: Tensor, m: Tensor, exclude_self: bool) -> Tensor:
    return m.new_empty(m.shape)


def _fake_double_backward(grad_grad_m: Tensor, grad_o: Tensor, m: Tensor, exclude_self: bool) -> tuple[Tensor, Tensor]:
    return grad_o.new_empty(m.shape[:2]), m.new_empty(m.shape)


def _third_order_vjp(saved: tuple[Tensor, ...], attributes: tuple, grads: tuple[Tensor, Tensor]):
    _, vjp = torch.func.vjp(
        lambda gg, go, m: reference.minibatch_discrimination_scores_double_backward(gg, go, m, *attributes), *saved
    )
    return vjp(grads)


@torch.library.custom_op("ganops::minibatch_discrimination_triton", mutates_args=())
def _triton_forward(m: Tensor, exclude_self: bool) -> Tensor:
    from ganops._dtypes import compute_dtype
    from ganops.triton_kernels import minibatch_discrimination as kernels

    check_op_arguments(m, exclude_self)
    return kernels.forward(m, exclude_self, compute_dtype=compute_dtype(m.dtype))


@torch.library.custom_op("ganops::minibatch_discrimination_backward_triton", mutates_args=())
def _triton_backward(grad_o: Tensor, m: Tensor, exclude_self: bool) -> Tensor:
    from ganops._dtypes import compute_dtype
    from ganops.triton_kernels import minibatch_discrimination as kernels

    check_op_arguments(m, exclude_self)
    _check_like_m("grad_o", grad_o, m, m.shape[:2])
    return kernels.backward(grad_o, m, exclude_self, compute_dtype=compute_dtype(m.dtype))


@torch.library.custom_op("ganops::minibatch_discrimination_double_backward_triton", mutates_args=())
def _triton_double_backward(grad_grad_m: Tensor, grad_o: Tensor, m: Tensor, exclude_self: bool) -> tuple[Tensor, Tensor]:
    from ganops._dtypes import compute_dtype
    from ganops.triton_kernels import minibatch_discrimination as kernels

    check_op_arguments(m, exclude_self)
    _check_like_m("grad_o", grad_o, m, m.shape[:2])
    _check_like_m("grad_grad_m", grad_grad_m, m, m.shape)
    return kernels.double_backward(grad_grad_m, grad_o, m, exclude_self, compute_dtype=compute_dtype(m.dtype))


def _check_like_m(name: str, t: Tensor, m: Tensor, shape) -> None:
    if tuple(t.shape) != tuple(shape) or t.dtype != m.dtype or t.device != m.device:
        raise ValueError(
            f"minibatch_discrimination: expected {name} of shape {tuple(shape)}, dtype {m.dtype} and device "
            f"{m.device} (those of m), got {tuple(t.shape)}, {t.dtype}, {t.device}"
        )


def _register(suffix: str) -> None:
    names = tuple(f"ganops::minibatch_discrimination{part}_{suffix}" for part in ("", "_backward", "_double_backward"))
    register_chain(
        names, (_fake_forward, _fake_backward, _fake_double_backward), num_tensor_inputs=1,
        third_order_vjp=_third_order_vjp, check=check_op_arguments,
    )


_register("triton")
if _extension.is_loaded():
    _register("cpp")


def _kernel_op(backend: str):
    return getattr(torch.ops.ganops, f"minibatch_discrimination_{backend}").default


def minibatch_discrimination(
    features: Tensor, T: Tensor, exclude_self: bool = False, *, backend: str | None = None
) -> Tensor:
    """Minibatch discrimination (Salimans et al. 2016, "Improved Techniques for Training GANs", section 3.2).

    With ``M = features T`` viewed as ``[N, B, C]``, appends to each sample ``i`` the ``B`` scores
    ``o_b(x_i) = sum_j exp(-||M_i,b - M_j,b||_1)``, which tell the discriminator how close the sample is to the
    others of the minibatch. The ``N x N x B x C`` differences are never stored: memory is ``O(N B C)`` on the
    kernel backends, in the forward and in both backward passes.

    Args:
        features: ``[N, A]`` floating tensor (float16, bfloat16, float32 or float64; any strides).
        T: ``[A, B, C]`` tensor of ``features``' dtype and device (``B`` kernels of dimension ``C``).
        exclude_self: leave out the ``j = i`` term (which is always ``exp(0) = 1``), as the paper allows.
        backend: ``"reference"``, ``"triton"``, ``"cpp"`` or ``"auto"``; ``None`` defers to
            :func:`ganops.use_backend` and ``GANOPS_BACKEND`` (see README).

    Returns:
        ``[N, A + B]`` tensor ``cat([features, o], dim=1)`` of ``features``' dtype. Differentiable to any order
        (a discriminator with this layer can be trained with WGAN-GP or R1).
    """
    check_arguments(features, T, exclude_self)
    n, a = features.shape
    _, b, c = T.shape
    m = torch.matmul(features, T.reshape(a, b * c)).reshape(n, b, c)
    chosen = _backend.select(OP_NAME, features.device.type, backend, m)
    if chosen == "reference":
        scores = reference.minibatch_discrimination_scores(m, exclude_self)
    else:
        scores = _kernel_op(chosen)(m, exclude_self)
    return torch.cat([features, scores.to(features.dtype)], dim=1)
