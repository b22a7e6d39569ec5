"""Fused spectral-norm ops: argument checks, torch.library registration of the Triton and C++ backends, and
the functions that dispatch between them and the reference.

Two ops per backend, each with its backward op:

* ``spectral_norm_<backend>(weight_mat, u, v, n_power_iterations, eps) -> (W_sn, u, v, sigma)``, one layer;
* ``spectral_norm_group_<backend>(weight_mats, us, vs, n_power_iterations, eps) -> (W_sns, us, vs, sigmas)``,
  a list of layers of one dtype and device in one op call per direction, whatever the number of layers: a few
  kernel launches over all layers (Triton and CUDA: 2 n + 1 forward, 2 backward).

``n_power_iterations = 0`` is eval mode: ``u`` and ``v`` are returned unchanged and ``sigma = u^T W v``.
Only ``W_sn`` is differentiable (``u``, ``v``, ``sigma`` are marked non-differentiable: torch treats the
vectors as constants); the backward ops are differentiable again through the reference formula.
The math lives in ``ganops/reference/spectral_norm.py``; the kernels in ``triton_kernels/spectral_norm.py``,
``csrc/cpu/spectral_norm.cpp`` and ``csrc/cuda/spectral_norm.cu``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ganops import _backend, _extension
from ganops._dtypes import FLOATING_DTYPES, compute_dtype
from ganops.ops._registration import Stage, op, register
from ganops.reference import spectral_norm as reference

OP_NAME = "spectral_norm"


def check_hyperparameters(n_power_iterations: int, eps: float, caller: str, allow_zero_iterations: bool = False) -> None:
    minimum = 0 if allow_zero_iterations else 1
    if isinstance(n_power_iterations, bool) or not isinstance(n_power_iterations, int) or n_power_iterations < minimum:
        raise ValueError(f"{caller}: n_power_iterations must be an int >= {minimum}, got {n_power_iterations!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 <= eps < math.inf:
        raise ValueError(f"{caller}: eps must be a finite non-negative float, got {eps!r}")


def check_layer(weight_mat: Tensor, u: Tensor, v: Tensor, caller: str = "spectral_norm") -> None:
    if not isinstance(weight_mat, Tensor) or weight_mat.dim() != 2:
        shape = tuple(weight_mat.shape) if isinstance(weight_mat, Tensor) else type(weight_mat).__name__
        raise ValueError(f"{caller}: weight_mat must be a 2-D tensor [R, C], got {shape}")
    if weight_mat.dtype not in FLOATING_DTYPES:
        raise TypeError(f"{caller}: weight_mat must have a floating dtype {FLOATING_DTYPES}, got {weight_mat.dtype}")
    if weight_mat.numel() == 0:
        raise ValueError(f"{caller}: weight_mat must not be empty, got shape {tuple(weight_mat.shape)}")
    rows, cols = weight_mat.shape
    for name, vector, size in (("u", u, rows), ("v", v, cols)):
        if not isinstance(vector, Tensor) or vector.shape != (size,):
            shape = tuple(vector.shape) if isinstance(vector, Tensor) else type(vector).__name__
            raise ValueError(f"{caller}: {name} must have shape ({size},) for weight_mat {tuple(weight_mat.shape)}, got {shape}")
        if vector.dtype != weight_mat.dtype or vector.device != weight_mat.device:
            raise TypeError(
                f"{caller}: {name} must have weight_mat's dtype {weight_mat.dtype} and device {weight_mat.device}, "
                f"got {vector.dtype} on {vector.device}"
            )


# ---------------------------------------------------------------- fake kernels (shapes of every backend)


def _fake_forward(weight_mat: Tensor, u: Tensor, v: Tensor, n_power_iterations: int, eps: float):
    sigma_dtype = compute_dtype(weight_mat.dtype)
    return (
        weight_mat.new_empty(weight_mat.shape),
        u.new_empty(u.shape),
        v.new_empty(v.shape),
        weight_mat.new_empty((), dtype=sigma_dtype),
    )


def _fake_backward(grad_sn: Tensor, weight_mat: Tensor, u: Tensor, v: Tensor, sigma: Tensor) -> Tensor:
    return weight_mat.new_empty(weight_mat.shape)


def _fake_group(weight_mats: list[Tensor], us: list[Tensor], vs: list[Tensor], n_power_iterations: int, eps: float):
    outputs = [_fake_forward(w, u, v, n_power_iterations, eps) for w, u, v in zip(weight_mats, us, vs)]
    return tuple([layer[i] for layer in outputs] for i in range(4))


def _fake_group_backward(grads, weight_mats, us, vs, sigmas) -> list[Tensor]:
    return [w.new_empty(w.shape) for w in weight_mats]


# ---------------------------------------------------------------- Triton ops


@torch.library.custom_op("ganops::spectral_norm_triton", mutates_args=())
def _triton_forward(
    weight_mat: Tensor, u: Tensor, v: Tensor, n_power_iterations: int, eps: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    from ganops.triton_kernels import spectral_norm as kernels

    check_layer_arguments(weight_mat, u, v, n_power_iterations, eps)
    weight_sn, u_out, v_out, sigma = kernels.forward(
        [weight_mat], [u], [v], n_power_iterations, eps, compute_dtype=compute_dtype(weight_mat.dtype)
    )
    return weight_sn[0], u_out[0], v_out[0], sigma[0]


@torch.library.custom_op("ganops::spectral_norm_backward_triton", mutates_args=())
def _triton_backward(grad_sn: Tensor, weight_mat: Tensor, u: Tensor, v: Tensor, sigma: Tensor) -> Tensor:
    from ganops.triton_kernels import spectral_norm as kernels

    _check_backward(grad_sn, weight_mat, u, v, sigma)
    return kernels.backward([grad_sn], [weight_mat], [u], [v], [sigma], compute_dtype=compute_dtype(weight_mat.dtype))[0]


@torch.library.custom_op("ganops::spectral_norm_group_triton", mutates_args=())
def _triton_group(
    weight_mats: list[Tensor], us: list[Tensor], vs: list[Tensor], n_power_iterations: int, eps: float
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
    from ganops.triton_kernels import spectral_norm as kernels

    check_group_arguments(weight_mats, us, vs, n_power_iterations, eps)
    return kernels.forward(
        weight_mats, us, vs, n_power_iterations, eps, compute_dtype=compute_dtype(weight_mats[0].dtype)
    )


@torch.library.custom_op("ganops::spectral_norm_group_backward_triton", mutates_args=())
def _triton_group_backward(
    grads: list[Tensor], weight_mats: list[Tensor], us: list[Tensor], vs: list[Tensor], sigmas: list[Tensor]
) -> list[Tensor]:
    from ganops.triton_kernels import spectral_norm as kernels

    _check_group_backward(grads, weight_mats, us, vs, sigmas)
    return kernels.backward(grads, weight_mats, us, vs, sigmas, compute_dtype=compute_dtype(weight_mats[0].dtype))


# ---------------------------------------------------------------- autograd


def _reference_backward_vjp(grad_sn, weight_mat, u, v, grad_of_grad_w):
    """Gradients of the backward formula w.r.t. ``grad_sn`` and ``weight_mat`` (double backward)."""
    _, vjp = torch.func.vjp(lambda g, w: reference.spectral_norm_backward(g, w, u, v), grad_sn, weight_mat)
    return vjp(grad_of_grad_w)


def check_layer_arguments(weight_mat: Tensor, u: Tensor, v: Tensor, n_power_iterations: int, eps: float) -> None:
    check_layer(weight_mat, u, v)
    check_hyperparameters(n_power_iterations, eps, "spectral_norm", allow_zero_iterations=True)


def check_group_arguments(
    weight_mats: list[Tensor], us: list[Tensor], vs: list[Tensor], n_power_iterations: int, eps: float
) -> None:
    if not (len(weight_mats) == len(us) == len(vs)) or not weight_mats:
        raise ValueError(
            f"spectral_norm_group: weight_mats, us and vs must be non-empty lists of one length, got "
            f"{len(weight_mats)}, {len(us)}, {len(vs)}"
        )
    for w, u, v in zip(weight_mats, us, vs):
        check_layer(w, u, v, caller="spectral_norm_group")
    check_hyperparameters(n_power_iterations, eps, "spectral_norm_group", allow_zero_iterations=True)


def _check_backward(
    grad_sn: Tensor, weight_mat: Tensor, u: Tensor, v: Tensor, sigma: Tensor, caller: str = "spectral_norm_backward"
) -> None:
    check_layer(weight_mat, u, v, caller=caller)
    if not isinstance(grad_sn, Tensor) or grad_sn.shape != weight_mat.shape:
        shape = tuple(grad_sn.shape) if isinstance(grad_sn, Tensor) else type(grad_sn).__name__
        raise ValueError(f"{caller}: grad_sn must have weight_mat's shape {tuple(weight_mat.shape)}, got {shape}")
    if not isinstance(sigma, Tensor) or sigma.dim() != 0:
        shape = tuple(sigma.shape) if isinstance(sigma, Tensor) else type(sigma).__name__
        raise ValueError(f"{caller}: sigma must be a 0-dim tensor, got {shape}")


def _check_group_backward(grads, weight_mats, us, vs, sigmas) -> None:
    caller = "spectral_norm_group_backward"
    if not (len(grads) == len(weight_mats) == len(us) == len(vs) == len(sigmas)) or not weight_mats:
        raise ValueError(
            f"{caller}: grads, weight_mats, us, vs and sigmas must be non-empty lists of one length, got "
            f"{len(grads)}, {len(weight_mats)}, {len(us)}, {len(vs)}, {len(sigmas)}"
        )
    for g, w, u, v, sigma in zip(grads, weight_mats, us, vs, sigmas):
        _check_backward(g, w, u, v, sigma, caller)


def _register(suffix: str) -> None:
    """Per backend: the layer op and the group op, each with its backward op; the backward ops are
    differentiated through the reference formula (module docstring)."""
    backward_op = op(f"ganops::spectral_norm_backward_{suffix}")
    group_backward_op = op(f"ganops::spectral_norm_group_backward_{suffix}")

    def gradient_of_group_backward(saved, attributes, grads_of_grad_w):
        grads, weight_mats, us, vs = saved
        pairs = [
            _reference_backward_vjp(g, w, u, v, gg)
            for g, w, u, v, gg in zip(grads, weight_mats, us, vs, grads_of_grad_w[0])
        ]
        return [pair[0] for pair in pairs], [pair[1] for pair in pairs]

    def gradient_of_group(saved, attributes, grads):
        weight_mats, us, vs, sigmas = saved
        grads = [torch.zeros_like(w) if g is None else g for g, w in zip(grads[0], weight_mats)]
        return (group_backward_op(grads, weight_mats, us, vs, sigmas),)

    register(Stage(
        f"ganops::spectral_norm_{suffix}", _fake_forward, (0,),
        lambda saved, attributes, grads: (backward_op(grads[0], *saved),),
        save=lambda inputs, output: (inputs[0], *output[1:]),
        non_differentiable=lambda output: output[1:],
        check=check_layer_arguments,
    ))
    register(Stage(
        f"ganops::spectral_norm_backward_{suffix}", _fake_backward, (0, 1),
        lambda saved, attributes, grads: _reference_backward_vjp(*saved[:4], grads[0]),
        check=_check_backward,
    ))
    register(Stage(
        f"ganops::spectral_norm_group_{suffix}", _fake_group, (0,), gradient_of_group,
        save=lambda inputs, output: (inputs[0], *output[1:]),
        non_differentiable=lambda output: [t for outputs in output[1:] for t in outputs],
        check=check_group_arguments,
    ))
    register(Stage(
        f"ganops::spectral_norm_group_backward_{suffix}", _fake_group_backward, (0, 1), gradient_of_group_backward,
        save=lambda inputs, output: inputs[:4],
        check=_check_group_backward,
    ))


_register("triton")
if _extension.is_loaded():
    _register("cpp")


# ---------------------------------------------------------------- public functions


def fused_spectral_norm(
    weight_mat: Tensor,
    u: Tensor,
    v: Tensor,
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    *,
    backend: str | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One layer: ``n_power_iterations`` power iterations from ``(u, v)``, then ``W / sigma``.

    Args:
        weight_mat: ``[R, C]`` floating weight matrix (any strides); differentiable.
        u, v: ``[R]`` and ``[C]`` vectors of ``weight_mat``'s dtype; treated as constants.
        n_power_iterations: iterations to run; 0 (eval mode) keeps ``u`` and ``v``.
        eps: ``normalize(x) = x / max(||x||, eps)``.
        backend: ``"reference"``, ``"triton"``, ``"cpp"`` or ``"auto"`` (see :func:`ganops.use_backend`).

    Returns:
        ``(W_sn [R, C], u_new, v_new, sigma)``; ``sigma`` is 0-dim, float64 for float64 weights, else float32.
        Never aliases its inputs: callers copy ``u_new``/``v_new`` into their buffers.
    """
    check_layer_arguments(weight_mat, u, v, n_power_iterations, eps)
    chosen = _backend.select(OP_NAME, weight_mat.device.type, backend, weight_mat, u, v)
    if chosen == "reference":
        return reference.spectral_norm_forward(weight_mat, u, v, n_power_iterations, eps)
    return op(f"ganops::spectral_norm_{chosen}")(weight_mat, u, v, n_power_iterations, float(eps))


def fused_spectral_norm_group(
    weight_mats: list[Tensor],
    us: list[Tensor],
    vs: list[Tensor],
    n_power_iterations: int = 1,
    eps: float = 1e-12,
    *,
    backend: str | None = None,
) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
    """:func:`fused_spectral_norm` for many layers: one grouped op call per (dtype, device) and direction, whose
    kernels cover all its layers in a few launches."""
    check_group_arguments(weight_mats, us, vs, n_power_iterations, eps)
    results: list = [None] * len(weight_mats)
    buckets: dict[tuple, list[int]] = {}
    for index, w in enumerate(weight_mats):
        buckets.setdefault((w.device, w.dtype), []).append(index)
    for (device, _), indices in buckets.items():
        ws, bu, bv = ([seq[i] for i in indices] for seq in (weight_mats, us, vs))
        chosen = _backend.select(OP_NAME, device.type, backend, ws, bu, bv)
        if chosen == "reference":
            outputs = [reference.spectral_norm_forward(w, u, v, n_power_iterations, eps) for w, u, v in zip(ws, bu, bv)]
        elif _backend.vmap_active():
            # vmap has no batching rule for an op on lists of tensors: the one-layer op per layer instead.
            layer_op = op(f"ganops::spectral_norm_{chosen}")
            outputs = [layer_op(w, u, v, n_power_iterations, float(eps)) for w, u, v in zip(ws, bu, bv)]
        else:
            grouped = op(f"ganops::spectral_norm_group_{chosen}")(ws, bu, bv, n_power_iterations, float(eps))
            outputs = list(zip(*grouped))
        for index, output in zip(indices, outputs):
            results[index] = output
    return tuple([layer[i] for layer in results] for i in range(4))
