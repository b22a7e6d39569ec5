"""The registered C++ ops (``torch.ops.ganops.*_cpp``) check their inputs as the public functions do.

They are reachable without the public functions' Python checks, so each one must refuse inconsistent inputs
itself, with a RuntimeError that names the op and the offending argument (csrc/<op>.h holds the one check
per op that the CPU kernels and the CUDA bindings share). Every case starts from valid arguments, which
``test_valid_arguments_pass`` runs, and changes one thing.
"""

from __future__ import annotations

import math

import pytest
import torch

import ganops  # noqa: F401  (loads ganops._C and registers the autograd of the ops)
from helpers import require_backend

ops = torch.ops.ganops


def attention_args(q=(2, 3, 4), k=(2, 5, 4), v=(2, 5, 6), dtype=torch.float32, scale=0.5):
    return [torch.randn(q), torch.randn(k, dtype=dtype), torch.randn(v), scale]


def attention_backward_args(**changes):
    q, k, v, scale = attention_args()
    out, lse = ops.attention_cpp(q, k, v, scale)
    args = {"grad_out": torch.randn_like(out), "q": q, "k": k, "v": v, "out": out, "lse": lse, "scale": scale}
    args.update(changes)
    return list(args.values())


def attention_double_backward_args(**changes):
    grad_out, q, k, v, out, lse, scale = attention_backward_args()
    args = {"grad_grad_q": torch.randn_like(q), "grad_grad_k": torch.randn_like(k), "grad_grad_v": torch.randn_like(v),
            "grad_out": grad_out, "q": q, "k": k, "v": v, "out": out, "lse": lse, "scale": scale}
    args.update(changes)
    return list(args.values())


def stddev_args(x=(4, 6, 2, 2), group_size=2, num_channels=3, eps=1e-8):
    return [torch.randn(x), group_size, num_channels, eps]


def stddev_backward_args(grad_out=(4, 9, 2, 2), dtype=torch.float32, **changes):
    return [torch.randn(grad_out, dtype=dtype), *stddev_args(**changes)]


def stddev_double_backward_args(grad_grad_x=(4, 6, 2, 2), **changes):
    return [torch.randn(grad_grad_x), *stddev_backward_args(**changes)]


def layer_args(w=(3, 4), u=(3,), v=(4,), u_dtype=torch.float32, n_power_iterations=1, eps=1e-12):
    return [torch.randn(w), torch.randn(u, dtype=u_dtype), torch.randn(v), n_power_iterations, eps]


def group_args(us_lengths=(3, 2), count=2, **changes):
    w, u, v, n, eps = layer_args(**changes)
    second = [torch.randn(2, 5), torch.randn(us_lengths[1]), torch.randn(5)]
    return [[w, second[0]][:count], [u, second[1]], [v, second[2]], n, eps]


def layer_backward_args(grad=(3, 4), sigma_dtype=torch.float32):
    w, u, v, _, _ = layer_args()
    return [torch.randn(grad), w, u, v, torch.tensor(2.0, dtype=sigma_dtype)]


def group_backward_args(sigmas=2):
    ws = [torch.randn(3, 4), torch.randn(2, 5)]
    return [[torch.randn_like(w) for w in ws], ws, [torch.randn(3), torch.randn(2)], [torch.randn(4), torch.randn(5)],
            [torch.tensor(2.0)] * sigmas]


def interpolate_args(real=(4, 3), fake=(4, 3), eps=(4,), fake_dtype=torch.float32, eps_dtype=torch.float32):
    return [torch.randn(real), torch.randn(fake, dtype=fake_dtype), torch.rand(eps).to(eps_dtype)]


# (op, arguments, regex the message must match); each regex names the argument at fault.
BAD_INPUTS = [
    ("attention_cpp", lambda: attention_args(k=(2, 5, 3)), "k must have the batch size and head dim of q"),
    ("attention_cpp", lambda: attention_args(k=(1, 5, 4)), "k must have the batch size and head dim of q"),
    ("attention_cpp", lambda: attention_args(v=(2, 4, 6)), "v must have the batch size of q and the key count of k"),
    ("attention_cpp", lambda: attention_args(k=(2, 0, 4), v=(2, 0, 6)), "k must have no empty dimension"),
    ("attention_cpp", lambda: attention_args(q=(2, 0, 4)), "q must have no empty dimension"),
    ("attention_cpp", lambda: attention_args(v=(2, 5, 0)), "v must have no empty dimension"),
    ("attention_cpp", lambda: attention_args(q=(3, 4)), r"q must be a 3-D tensor \[B, Nq, Dqk\]"),
    ("attention_cpp", lambda: attention_args(dtype=torch.float64), r"k must have the dtype of q"),
    ("attention_cpp", lambda: attention_args(scale=math.nan), "scale must be finite"),
    ("attention_backward_cpp", lambda: attention_backward_args(lse=torch.zeros(2, 3, dtype=torch.float64)),
     "lse must have dtype Float"),
    ("attention_backward_cpp", lambda: attention_backward_args(grad_out=torch.randn(2, 3, 5)),
     r"grad_out must have shape \[B, Nq, Dv\]"),
    ("attention_double_backward_cpp", lambda: attention_double_backward_args(grad_grad_k=torch.randn(2, 5, 3)),
     r"grad_grad_k must have the shape of k \[B, Nk, Dqk\] = \[2, 5, 4\], got \[2, 5, 3\]"),
    ("attention_double_backward_cpp",
     lambda: attention_double_backward_args(grad_grad_v=torch.randn(2, 5, 6, dtype=torch.float64)),
     r"grad_grad_v must have the dtype of q \(Float\)"),
    ("minibatch_stddev_cpp", lambda: stddev_args(x=(4, 6, 2)), r"x must have 4 dimensions \[N, C, H, W\]"),
    ("minibatch_stddev_cpp", lambda: stddev_args(x=(0, 6, 2, 2), group_size=1), "x must have no empty dimension"),
    ("minibatch_stddev_cpp", lambda: stddev_args(group_size=0), "group_size must be a positive int"),
    ("minibatch_stddev_cpp", lambda: stddev_args(group_size=3), "N = 4 of x must be divisible by the group size 3"),
    ("minibatch_stddev_cpp", lambda: stddev_args(group_size=8), r"effective group size min\(group_size, N\)"),
    ("minibatch_stddev_cpp", lambda: stddev_args(num_channels=0), "num_channels must be a positive int"),
    ("minibatch_stddev_cpp", lambda: stddev_args(num_channels=4), "C = 6 of x must be divisible by num_channels = 4"),
    ("minibatch_stddev_cpp", lambda: stddev_args(eps=-1.0), "eps must be a finite non-negative float"),
    ("minibatch_stddev_cpp", lambda: stddev_args(eps=math.inf), "eps must be a finite non-negative float"),
    ("minibatch_stddev_cpp", lambda: stddev_args(eps=math.nan), "eps must be a finite non-negative float"),
    ("minibatch_stddev_backward_cpp", lambda: stddev_backward_args(grad_out=(4, 6, 2, 2)), "expected grad_out of shape"),
    ("minibatch_stddev_backward_cpp", lambda: stddev_backward_args(dtype=torch.float64), "expected grad_out of dtype"),
    ("minibatch_stddev_backward_cpp", lambda: stddev_backward_args(eps=-1.0), "eps must be a finite non-negative"),
    ("minibatch_stddev_double_backward_cpp", lambda: stddev_double_backward_args(grad_grad_x=(4, 9, 2, 2)),
     "expected grad_grad_x of shape"),
    ("spectral_norm_cpp", lambda: layer_args(u=(4,)), r"expected u of shape \[3\] \(the rows of weight_mat\)"),
    ("spectral_norm_cpp", lambda: layer_args(v=(3,)), r"expected v of shape \[4\] \(the columns of weight_mat\)"),
    ("spectral_norm_cpp", lambda: layer_args(u_dtype=torch.float64), "u must have the dtype Float"),
    ("spectral_norm_cpp", lambda: layer_args(w=(12,)), r"weight_mat must be a 2-D tensor \[R, C\]"),
    ("spectral_norm_cpp", lambda: layer_args(w=(0, 4), u=(0,)), "weight_mat must not be empty"),
    ("spectral_norm_cpp", lambda: layer_args(n_power_iterations=-1), "n_power_iterations must be >= 0"),
    ("spectral_norm_cpp", lambda: layer_args(eps=-1.0), "eps must be >= 0"),
    ("spectral_norm_cpp", lambda: layer_args(eps=math.nan), "eps must be >= 0"),
    ("spectral_norm_group_cpp", lambda: group_args(us_lengths=(3, 3)), r"expected us\[1\] of shape \[2\]"),
    ("spectral_norm_group_cpp", lambda: group_args(count=1), "weight_mats, us and vs must be non-empty lists of one length"),
    ("spectral_norm_group_cpp", lambda: group_args(n_power_iterations=-2), "n_power_iterations must be >= 0"),
    ("spectral_norm_backward_cpp", lambda: layer_backward_args(grad=(4, 3)), "grad_sn must have the shape"),
    ("spectral_norm_backward_cpp", lambda: layer_backward_args(sigma_dtype=torch.float64), "sigma must be a 0-dim Float"),
    ("spectral_norm_group_backward_cpp", lambda: group_backward_args(sigmas=1),
     "grads and sigmas must have one entry per weight"),
    ("gradient_penalty_cpp", lambda: [torch.randn(4, 3), -1.0, False], "center must be a finite float >= 0"),
    ("gradient_penalty_cpp", lambda: [torch.randn(4, 3), math.inf, False], "center must be a finite float >= 0"),
    ("gradient_penalty_cpp", lambda: [torch.randn(4, 3), math.nan, False], "center must be a finite float >= 0"),
    ("gradient_penalty_cpp", lambda: [torch.randn(()), 1.0, False], r"grad must have a batch dimension \[N, ...\]"),
    ("gradient_penalty_cpp", lambda: [torch.randn(0, 3), 1.0, False], "grad must not be empty"),
    ("gradient_penalty_cpp", lambda: [torch.ones(4, 3, dtype=torch.int32), 1.0, False], "grad must have dtype float64"),
    ("gradient_penalty_backward_cpp", lambda: [torch.randn(4), torch.randn(4, 3), torch.ones(4, dtype=torch.float64), 1.0, False], "0-dim grad_out"),
    ("gradient_penalty_backward_cpp",
     lambda: [torch.randn((), dtype=torch.float64), torch.randn(4, 3), torch.ones(4, dtype=torch.float64), 1.0, False],
     "expected grad_out of dtype Float"),
    ("gradient_penalty_backward_cpp", lambda: [torch.randn(()), torch.randn(4, 3), torch.ones(4, dtype=torch.float64), -1.0, False], "center must be"),
    ("gradient_penalty_backward_cpp", lambda: [torch.randn(()), torch.randn(4, 3), torch.ones(3, dtype=torch.float64), 1.0, False],
     r"norms must be the forward's per-sample norms, float64 of shape \[N\] = \[4\]"),
    ("gradient_penalty_backward_cpp", lambda: [torch.randn(()), torch.randn(4, 3), torch.ones(4), 1.0, False],
     "norms must be the forward's per-sample norms, float64"),
    ("gradient_penalty_double_backward_cpp", lambda: [torch.randn(4, 2), torch.randn(()), torch.randn(4, 3), 1.0, False],
     "expected grad_grad_grad of shape"),
    ("gradient_penalty_interpolate_cpp", lambda: interpolate_args(fake=(2, 3)), r"expected fake of shape \[4, 3\]"),
    ("gradient_penalty_interpolate_cpp", lambda: interpolate_args(fake_dtype=torch.float64), "expected fake of dtype"),
    ("gradient_penalty_interpolate_cpp", lambda: interpolate_args(eps=(2,)), r"expected eps of shape \[N\] = \[4\]"),
    ("gradient_penalty_interpolate_cpp", lambda: interpolate_args(eps_dtype=torch.int64), "eps must have dtype float64"),
    ("gradient_penalty_interpolate_cpp", lambda: interpolate_args(real=(0, 3), fake=(0, 3), eps=(0,)),
     "real must not be empty"),
    ("minibatch_discrimination_cpp", lambda: [torch.randn(4, 3), False], r"m must have 3 dimensions \[N, B, C\]"),
    ("minibatch_discrimination_cpp", lambda: [torch.randn(4, 0, 2), False], "m must have no empty dimension"),
    ("minibatch_discrimination_cpp", lambda: [torch.ones(4, 3, 2, dtype=torch.int64), False],
     "m must have dtype float64"),
    ("minibatch_discrimination_backward_cpp", lambda: [torch.randn(4, 2), torch.randn(4, 3, 2), False],
     r"expected grad_o of shape \[4, 3\]"),
    ("minibatch_discrimination_backward_cpp",
     lambda: [torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, 2), False], "expected grad_o of dtype Float"),
    ("minibatch_discrimination_double_backward_cpp",
     lambda: [torch.randn(4, 3, 3), torch.randn(4, 3), torch.randn(4, 3, 2), False],
     r"expected grad_grad_m of shape \[4, 3, 2\]"),
]

VALID_INPUTS = {
    "attention_cpp": attention_args,
    "attention_backward_cpp": attention_backward_args,
    "attention_double_backward_cpp": attention_double_backward_args,
    "minibatch_stddev_cpp": stddev_args,
    "minibatch_stddev_backward_cpp": stddev_backward_args,
    "minibatch_stddev_double_backward_cpp": stddev_double_backward_args,
    "spectral_norm_cpp": layer_args,
    "spectral_norm_group_cpp": group_args,
    "spectral_norm_backward_cpp": layer_backward_args,
    "spectral_norm_group_backward_cpp": group_backward_args,
    "gradient_penalty_cpp": lambda: [torch.randn(4, 3), 1.0, False],
    "gradient_penalty_backward_cpp": lambda: [torch.randn(()), torch.randn(4, 3), torch.ones(4, dtype=torch.float64), 1.0, False],
    "gradient_penalty_double_backward_cpp": lambda: [torch.randn(4, 3), torch.randn(()), torch.randn(4, 3), 1.0, False],
    "gradient_penalty_interpolate_cpp": interpolate_args,
    "minibatch_discrimination_cpp": lambda: [torch.randn(4, 3, 2), True],
    "minibatch_discrimination_backward_cpp": lambda: [torch.randn(4, 3), torch.randn(4, 3, 2), False],
    "minibatch_discrimination_double_backward_cpp":
        lambda: [torch.randn(4, 3, 2), torch.randn(4, 3), torch.randn(4, 3, 2), False],
}


def test_every_registered_cpp_op_is_covered():
    require_backend("cpp")
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("ganops::")}
    assert {name for name in registered if name.endswith("_cpp")} == set(VALID_INPUTS)
    assert {op for op, _, _ in BAD_INPUTS} == set(VALID_INPUTS)


@pytest.mark.parametrize("op", sorted(VALID_INPUTS))
def test_valid_arguments_pass(op):
    """The base arguments every bad case changes one thing of are accepted."""
    require_backend("cpp")
    getattr(ops, op)(*VALID_INPUTS[op]())


@pytest.mark.parametrize(
    "op, make_args, message", BAD_INPUTS, ids=[f"{op}-{i}" for i, (op, _, _) in enumerate(BAD_INPUTS)]
)
def test_bad_input_raises_an_error_naming_the_argument(op, make_args, message):
    require_backend("cpp")
    args = make_args()
    with pytest.raises(RuntimeError, match=message) as error:
        getattr(ops, op)(*args)
    assert f"ganops::{op}" in str(error.value)
