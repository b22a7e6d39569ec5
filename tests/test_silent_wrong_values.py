"""No silent wrong values (issue 15): every way the probes found to get a wrong number without an error.

* Forward-mode AD (``jvp``, ``jacfwd``, ``forward_ad`` dual tensors), ``grad``, ``jacrev``, ``hessian``, ``vmap`` and
  ``functional_call`` on every op and backend agree with the reference (``_backend.select`` routes the
  derivatives the kernels do not have to the reference; ``vmap`` alone keeps the kernels).
* Every registered ``torch.ops.ganops.*_triton`` op checks its inputs as the public function does.
* ``gradient_norm_penalty``: one NaN/Inf/overflow rule (``ganops/reference/gradient_penalty.py``) on every backend
  and derivative order.
* ``SpectralNormGroup`` never hands out a weight precomputed for a forward that raised.
* Clear errors for grad mode off in ``gradient_penalty`` and for non-finite or mistyped hyperparameters.
* A property test per op: inputs with non-finite values, zero-size dims, odd strides and extreme magnitudes;
  every backend matches the reference (NaN where it is NaN) or raises the reference's error type.
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ganops
from ganops import _backend
from ganops.ops.gradient_penalty import interpolate
from ganops.ops.spectral_norm import fused_spectral_norm, fused_spectral_norm_group
from helpers import autograd_derivatives, require_backend

# torch.func.jvp imports torch._decomp.decompositions_for_jvp on first use, which calls the deprecated torch.jit.script.
# The Triton interpreter computes with numpy, which warns where IEEE arithmetic makes inf or NaN on purpose here.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
    pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
    pytest.mark.filterwarnings("ignore:divide by zero encountered:RuntimeWarning"),
]

ALL_BACKENDS = ("reference", "cpp", "triton")
F64 = torch.float64


def _inputs(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, dtype=F64, generator=generator)

    return {
        "x": randn(4, 2, 2, 2), "g": randn(3, 2, 2), "fake": randn(3, 2, 2), "eps": torch.rand(3, dtype=F64, generator=generator),
        "q": randn(1, 3, 2), "w": randn(3, 2), "u": torch.nn.functional.normalize(randn(3), dim=0),
        "v": torch.nn.functional.normalize(randn(2), dim=0),
        "features": randn(3, 2), "T": randn(2, 2, 3),
    }


def _op_functions(backend: str) -> dict:
    """Each public op as a function of one float64 tensor (the others fixed), and that tensor."""
    t = _inputs()
    return {
        "minibatch_stddev": (lambda x: ganops.minibatch_stddev(x, 2, backend=backend), t["x"]),
        "gradient_norm_penalty": (lambda g: ganops.gradient_norm_penalty(g, 1.0, backend=backend), t["g"]),
        "gradient_norm_penalty_center_0": (lambda g: ganops.gradient_norm_penalty(g, 0.0, backend=backend), t["g"]),
        "interpolate": (lambda r: interpolate(r, t["fake"], t["eps"], backend=backend), t["g"]),
        "attention": (lambda q: ganops.attention(q, 0.5 * q + 1, q.square(), backend=backend), t["q"]),
        "spectral_norm": (lambda w: fused_spectral_norm(w, t["u"], t["v"], 1, backend=backend)[0], t["w"]),
        "minibatch_discrimination": (
            lambda f: ganops.minibatch_discrimination(f, t["T"], backend=backend), t["features"]
        ),
        "spectral_norm_group": (
            lambda w: torch.cat([
                m.flatten() for m in fused_spectral_norm_group([w, 2 * w], [t["u"], t["u"]], [t["v"], t["v"]], 1, backend=backend)[0]
            ]),
            t["w"],
        ),
    }


OPS = tuple(_op_functions("reference"))


def _weighted_sum(function, like: torch.Tensor):
    weights = torch.linspace(-1.0, 2.0, function(like).numel(), dtype=F64).reshape(function(like).shape)
    return lambda z: (function(z) * weights).sum()


def _forward_ad(function, x):
    with forward_ad.dual_level():
        tangent = forward_ad.unpack_dual(function(forward_ad.make_dual(x, torch.ones_like(x)))).tangent
    assert tangent is not None, "the tangent was dropped"
    return tangent


MODES = {
    "jvp": lambda f, x: torch.func.jvp(f, (x,), (torch.ones_like(x),))[1],
    "forward_ad": _forward_ad,
    "jacfwd": lambda f, x: torch.func.jacfwd(f)(x),
    "jacrev": lambda f, x: torch.func.jacrev(f)(x),
    "grad": lambda f, x: torch.func.grad(_weighted_sum(f, x))(x),
    "hessian": lambda f, x: torch.func.hessian(_weighted_sum(f, x))(x),
    "vmap": lambda f, x: torch.func.vmap(f)(torch.stack([x, 0.5 * x])),
}


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", OPS)
def test_every_autodiff_mode_matches_the_reference(backend, mode, name):
    require_backend(backend)
    if mode == "hessian" and name == "interpolate":
        pytest.skip("interpolate is linear in real: its Hessian is zero")
    if mode == "vmap" and backend == "triton" and name != "gradient_norm_penalty":
        pytest.skip("vmap over the Triton interpreter loops over the batch: covered once, for one op")
    function, x = _op_functions(backend)[name]
    reference_function, _ = _op_functions("reference")[name]
    expected = MODES[mode](reference_function, x)
    assert expected.abs().sum() > 0, "a zero reference would let a dropped tangent pass"
    torch.testing.assert_close(MODES[mode](function, x), expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("backend", ("cpp", "triton"))
def test_vmap_alone_keeps_the_kernel_and_differentiating_transforms_take_the_reference(backend):
    require_backend(backend)
    chosen = {}

    def record(name):
        def function(x):
            chosen[name] = _backend.select("minibatch_stddev", "cpu", backend, x)
            return x.sum()
        return function

    x = torch.ones(2, 3, dtype=F64)
    torch.func.vmap(record("vmap"))(x)
    torch.func.grad(record("grad"))(x[0])
    torch.func.jvp(record("jvp"), (x[0],), (x[0],))
    torch.func.vmap(torch.func.grad(record("vmap of grad")))(x)
    with forward_ad.dual_level():
        record("dual")(forward_ad.make_dual(x, x))
        record("plain inside dual_level")(x)
    record("plain")(x)
    assert chosen == {
        "vmap": backend, "grad": "reference", "jvp": "reference", "vmap of grad": "reference",
        "dual": "reference", "plain inside dual_level": backend, "plain": backend,
    }


class _SmallDiscriminator(nn.Module):
    """Every kernel op in one model, for functional_call."""

    def __init__(self, backend: str) -> None:
        super().__init__()
        self.backend = backend
        self.linear = ganops.spectral_norm(nn.Linear(8, 8).double(), backend=backend)
        self.query = nn.Parameter(torch.linspace(-1, 1, 8, dtype=F64).reshape(1, 4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear(x.reshape(4, 8)).reshape(4, 2, 2, 2)
        h = ganops.minibatch_stddev(h, 2, backend=self.backend)
        a = ganops.attention(self.query, h.reshape(1, 4, -1)[..., :2], h.reshape(1, 4, -1)[..., 2:4], backend=self.backend)
        return a.sum() + ganops.gradient_norm_penalty(h, 1.0, backend=self.backend)


@pytest.mark.parametrize("backend", ("cpp", "triton"))
def test_functional_call_under_grad_matches_the_reference(backend):
    require_backend(backend)
    torch.manual_seed(0)
    model = _SmallDiscriminator(backend).eval()
    reference_model = copy.deepcopy(model)
    reference_model.backend = "reference"
    reference_model.linear.parametrizations.weight[0].backend = "reference"
    x = _inputs()["x"]
    params = {name: p.detach() for name, p in model.named_parameters()}

    def loss(model_, params_):
        return torch.func.functional_call(model_, params_, (x,))

    got = torch.func.grad(lambda p: loss(model, p))(params)
    want = torch.func.grad(lambda p: loss(reference_model, p))(params)
    assert want["query"].abs().sum() > 0
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(loss(model, params), loss(reference_model, params), rtol=1e-7, atol=1e-9)


# ------------------------------------------------------------------------------ registered ops check inputs


def _registered(name: str):
    return getattr(torch.ops.ganops, name).default


def _ones(*shape):
    return torch.ones(*shape)


# (op, arguments, error type, text the message must contain): the inconsistent inputs of issue 15, item 2.
REGISTERED_OP_CASES = [
    ("gradient_penalty_interpolate_triton", (_ones(4, 3), _ones(4, 3), _ones(2)), ValueError, "eps must have shape [N]"),
    ("gradient_penalty_interpolate_triton", (_ones(4, 3), _ones(2, 3), _ones(4)), ValueError, "fake must have the shape"),
    ("gradient_penalty_triton", (_ones(0, 3), 1.0, False), ValueError, "grad must not be empty"),
    ("gradient_penalty_triton", (_ones(2, 3), -1.0, False), ValueError, "center"),
    ("gradient_penalty_backward_triton", (_ones(()), _ones(2, 3), _ones(2).double(), float("nan"), False), ValueError, "center"),
    ("gradient_penalty_backward_triton", (_ones(()), _ones(2, 3), _ones(3).double(), 1.0, False), ValueError, "norms"),
    ("gradient_penalty_backward_triton", (_ones(()), _ones(2, 3), _ones(2), 1.0, False), ValueError, "float64"),
    ("gradient_penalty_double_backward_triton", (_ones(2, 3), _ones(()), _ones(0, 3), 1.0, False), ValueError, "grad"),
    ("spectral_norm_triton", (_ones(3, 2), _ones(2), _ones(2), 1, 1e-12), ValueError, "u must have shape (3,)"),
    ("spectral_norm_triton", (_ones(3, 2), _ones(3), _ones(3), 1, 1e-12), ValueError, "v must have shape (2,)"),
    ("spectral_norm_triton", (_ones(3, 2), _ones(3), _ones(2), -1, 1e-12), ValueError, "n_power_iterations"),
    ("spectral_norm_backward_triton", (_ones(3, 2), _ones(3, 2), _ones(2), _ones(2), _ones(())), ValueError, "u must have shape"),
    ("spectral_norm_backward_triton", (_ones(2, 2), _ones(3, 2), _ones(3), _ones(2), _ones(())), ValueError, "grad_sn"),
    ("spectral_norm_group_triton", ([_ones(3, 2)], [_ones(3), _ones(3)], [_ones(2)], 1, 1e-12), ValueError, "one length"),
    ("spectral_norm_group_triton", ([_ones(3, 2)], [_ones(2)], [_ones(2)], 1, 1e-12), ValueError, "u must have shape"),
    (
        "spectral_norm_group_backward_triton", ([_ones(3, 2)], [_ones(3, 2)], [_ones(3)], [_ones(2)], []),
        ValueError, "one length",
    ),
    ("minibatch_stddev_triton", (_ones(4, 2, 1, 1), 3, 1, 1e-8), ValueError, "divisible by the group size"),
    ("minibatch_stddev_triton", (_ones(4, 3, 1, 1), 2, 2, 1e-8), ValueError, "divisible by num_channels"),
    ("minibatch_stddev_triton", (_ones(4, 2, 1, 1), 2, 1, -1.0), ValueError, "eps"),
    ("minibatch_stddev_triton", (_ones(0, 2, 1, 1), 1, 1, 1e-8), ValueError, "no empty dimension"),
    ("minibatch_stddev_triton", (_ones(4, 2, 1, 1), 8, 1, 1e-8), ValueError, "effective group size"),
    ("minibatch_stddev_backward_triton", (_ones(4, 3, 1, 1), _ones(4, 2, 1, 1), 3, 1, 1e-8), ValueError, "group size"),
    (
        "minibatch_stddev_double_backward_triton", (_ones(4, 3, 1, 1), _ones(4, 4, 1, 1), _ones(4, 3, 1, 1), 2, 2, 1e-8),
        ValueError, "num_channels",
    ),
    ("attention_triton", (_ones(1, 2, 4), _ones(1, 3, 5), _ones(1, 3, 4), 0.5, False), ValueError, "head dim"),
    ("attention_triton", (_ones(1, 2, 4), _ones(1, 3, 4), _ones(1, 2, 4), 0.5, False), ValueError, "Nk=3"),
    ("attention_triton", (_ones(1, 2, 4), _ones(1, 0, 4), _ones(1, 0, 4), 0.5, False), ValueError, "empty"),
    ("attention_triton", (_ones(1, 2, 4), _ones(2, 3, 4), _ones(2, 3, 4), 0.5, False), ValueError, "leading"),
    ("attention_triton", (_ones(1, 2, 4), _ones(1, 3, 4), _ones(1, 3, 4), float("inf"), False), ValueError, "scale"),
    (
        "attention_backward_triton", (_ones(1, 2, 4), _ones(1, 2, 4), _ones(1, 3, 5), _ones(1, 3, 4), _ones(1, 2, 4), _ones(1, 2), 0.5, False),
        ValueError, "head dim",
    ),
    (
        "attention_double_backward_triton",
        (*[_ones(1, 2, 4)] * 3, _ones(1, 2, 4), _ones(1, 2, 4), _ones(1, 3, 4), _ones(1, 2, 4), _ones(1, 2, 4), _ones(1, 2), 0.5, False),
        ValueError, "Nk=3",
    ),
]


@pytest.mark.parametrize(
    "name, arguments, error, message", REGISTERED_OP_CASES, ids=[f"{case[0]}-{case[3]}" for case in REGISTERED_OP_CASES]
)
def test_registered_triton_ops_reject_inconsistent_inputs(name, arguments, error, message):
    require_backend("triton")
    with pytest.raises(error, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        _registered(name)(*arguments)


# ------------------------------------------------------------------ gradient_norm_penalty: non-finite values


def _penalty_derivatives(backend: str, grad: torch.Tensor, center: float, one_sided: bool = False):
    """Value, gradient, and both double-backward gradients (see ``helpers.autograd_derivatives``)."""
    generator = torch.Generator().manual_seed(1)
    grad_out = torch.tensor(0.75, dtype=grad.dtype, device=grad.device)
    grad_grad = torch.randn(grad.shape, generator=generator).to(grad.device, grad.dtype)
    return autograd_derivatives(
        lambda g: ganops.gradient_norm_penalty(g, center, one_sided, backend=backend), grad, grad_out, grad_grad
    )


def _assert_same_values(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    """Equal NaN and infinity patterns, finite values within ``rtol`` of the largest finite expected value (or of
    the smallest normal number: a subnormal result has fewer digits)."""
    assert torch.equal(actual.isnan(), expected.isnan()), (actual, expected)
    finite = expected.isfinite()
    scale = expected[finite].abs().max().item() if finite.any() else 0.0
    atol = max(rtol * scale, torch.finfo(expected.dtype).tiny)
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=True)


def _poisoned(value: float, dtype: torch.dtype) -> torch.Tensor:
    grad = torch.linspace(-1.0, 1.0, 3 * 4, dtype=dtype).reshape(3, 4)
    grad[0, 1] = value
    return grad


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("value, dtype", [(float("nan"), torch.float32), (float("-inf"), torch.float32), (float("inf"), F64)])
@pytest.mark.parametrize("center, one_sided", [(1.0, False), (0.0, False), (0.5, True)])
def test_penalty_of_a_non_finite_sample_is_nan_in_every_order(backend, value, center, one_sided, dtype):
    require_backend(backend)
    grad = _poisoned(value, dtype)
    out, grad_x, grad_grad_out, second = _penalty_derivatives(backend, grad, center, one_sided)
    assert out.isnan(), out
    assert grad_x[0].isnan().all() and grad_x[1:].isfinite().all(), grad_x
    assert grad_grad_out.isnan(), grad_grad_out
    assert second[0].isnan().all() and second[1:].isfinite().all(), second
    finite_rows = _penalty_derivatives("reference", grad[1:], center, one_sided)
    # The other samples' derivatives are those of a batch without the poisoned sample, rescaled from N - 1 to N.
    torch.testing.assert_close(grad_x[1:], finite_rows[1] * 2 / 3)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("magnitude", [1e20, 1e-21])
@pytest.mark.parametrize("center, one_sided", [(1.0, False), (0.0, False), (1.0, True)])
def test_penalty_of_huge_and_tiny_float32_gradients(backend, magnitude, center, one_sided):
    """The scaled norm: no overflow or underflow in the squares; the float64 computation is the truth."""
    require_backend(backend)
    grad = (torch.linspace(0.5, 1.5, 3 * 4).reshape(3, 4) * magnitude).float()
    got = _penalty_derivatives(backend, grad, center, one_sided)
    exact = _penalty_derivatives("reference", grad.double(), center, one_sided)
    for name, actual, truth in zip(("value", "gradient", "grad of grad_out", "double backward"), got, exact):
        expected = truth.float()  # inf where the true value exceeds float32's range
        _assert_same_values(actual, expected, rtol=1e-5)
        if name in ("gradient", "double backward"):
            assert actual.isfinite().all(), (name, actual)
            assert actual.abs().sum() > 0 or (one_sided and magnitude < center), (name, actual)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("center, one_sided", [(1.0, False), (0.0, False), (1.0, True)])
def test_penalty_of_subnormal_float32_gradients(backend, center, one_sided):
    """|g| = 1e-40 (float32 subnormals): the penalty, its gradient (O(1): (2 / N) (g - c g / s)) and the gradient
    of grad_out keep the float64 values; 1 / s overflows float32 there, so no kernel may form k_n = (2 / N)
    (1 - c / s) before multiplying it by g (Triton returned -inf). The double backward's k_n gg is genuinely
    beyond float32 and is not compared."""
    require_backend(backend)
    grad = (torch.linspace(0.5, 1.5, 3 * 4).reshape(3, 4) * 1e-40).float()
    got = _penalty_derivatives(backend, grad, center, one_sided)
    exact = _penalty_derivatives("reference", grad.double(), center, one_sided)
    for name, actual, truth in list(zip(("value", "gradient", "grad of grad_out"), got, exact)):
        _assert_same_values(actual, truth.float(), rtol=1e-4)
        assert actual.isfinite().all(), (name, actual)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ("cpp", "triton"))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e20, 1e-21])
@pytest.mark.parametrize("center, one_sided", [(1.0, False), (0.0, False), (0.5, True)])
def test_penalty_rule_holds_on_the_gpu_kernels(backend, value, center, one_sided):
    """The same rule on CUDA tensors ("cpp": the CUDA C++ kernels; "triton": compiled Triton): NaN or inf in a
    sample makes it NaN in every order, |g| = 1e20 / 1e-21 in float32 keeps the float64 values."""
    require_backend(backend)
    if value in (1e20, 1e-21):
        grad = (torch.linspace(0.5, 1.5, 3 * 4).reshape(3, 4) * value).float()
    else:
        grad = _poisoned(value, torch.float32)
    got = _penalty_derivatives(backend, grad.cuda(), center, one_sided)
    exact = _penalty_derivatives("reference", grad.double(), center, one_sided)
    for actual, truth in zip(got, exact):
        _assert_same_values(actual.cpu(), truth.float(), rtol=1e-5)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ("cpp", "triton"))
@pytest.mark.parametrize("magnitude", [1e20, 1.0, 1e-21])
def test_spectral_norm_scaled_norm_holds_on_the_gpu_kernels(backend, magnitude):
    """The GPU kernels' power iteration with the scaled norm: right at 1e20, and the CPU reference's rounding at
    1e-21 (sigma below float32's range)."""
    require_backend(backend)
    weight = torch.tensor([[1.0, 2.0, 0.5], [3.0, 4.0, -1.0]]) * magnitude
    u = torch.nn.functional.normalize(torch.ones(2), dim=0)
    v = torch.nn.functional.normalize(torch.ones(3), dim=0)
    expected = fused_spectral_norm(weight, u, v, 1, backend="reference")
    got = fused_spectral_norm(weight.cuda(), u.cuda(), v.cuda(), 1, backend=backend)
    for name, reference_value, value in zip(("W_sn", "u", "v", "sigma"), expected, got):
        torch.testing.assert_close(value.cpu(), reference_value, rtol=1e-5, atol=0, msg=name)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_tiny_gradient_gives_plain_torchs_derivative(backend):
    """Plain torch's float32 norm loses digits in the subnormal squares (3e-42); its float64 one is exact."""
    require_backend(backend)

    def plain_torch_gradient(grad):
        grad = grad.detach().requires_grad_()
        return torch.autograd.grad(((torch.linalg.vector_norm(grad, dim=1) - 1.0) ** 2).mean(), grad)[0]

    grad = torch.full((2, 3), 1e-21, requires_grad=True)
    (actual,) = torch.autograd.grad(ganops.gradient_norm_penalty(grad, 1.0, backend=backend), grad)
    assert plain_torch_gradient(grad).abs().min() > 0.5
    torch.testing.assert_close(actual, plain_torch_gradient(grad), rtol=1e-3, atol=0)
    torch.testing.assert_close(actual, plain_torch_gradient(grad.double()).float())


# ------------------------------------------------------------------------------ SpectralNormGroup exceptions


class _TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = ganops.spectral_norm(nn.Linear(3, 3))
        self.second = ganops.spectral_norm(nn.Linear(3, 3))
        self.fail = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.first(x)
        if self.fail:
            raise RuntimeError("the forward failed midway")
        return self.second(x)


@pytest.mark.parametrize("training", [True, False])
def test_spectral_norm_group_never_hands_out_a_weight_of_a_failed_forward(training):
    torch.manual_seed(0)
    model = _TwoLayers().train(training)
    group = ganops.SpectralNormGroup(model, backend="reference")
    x = torch.randn(2, 3)
    model.fail = True
    with pytest.raises(RuntimeError, match="failed midway"):
        model(x)
    with torch.no_grad():
        model.second.parametrizations.weight.original.mul_(-3.0).add_(0.5)
    fresh = copy.deepcopy(model.second)
    torch.testing.assert_close(model.second(x), fresh(x), rtol=0, atol=0)
    assert all(sn._pending is None for _, _, sn in group.layers)
    # The next forward is the group's again, and computes the changed weights.
    model.fail = False
    fresh_first, fresh_second = copy.deepcopy(model.first), copy.deepcopy(model.second)
    torch.testing.assert_close(model(x), fresh_second(fresh_first(x)))
    group.remove()


# ------------------------------------------------------------------------------------------- clear errors


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 1)

    def forward(self, x):
        return self.linear(x)


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_gradient_penalty_says_that_grad_mode_is_off(context):
    real, fake = torch.randn(2, 3), torch.randn(2, 3)
    with context(), pytest.raises(RuntimeError, match=r"gradient mode is off .*outside that block"):
        ganops.gradient_penalty(_Linear(), real, fake)


@pytest.mark.parametrize("eps", [float("inf"), float("nan"), -1.0])
def test_minibatch_stddev_rejects_non_finite_eps(eps):
    with pytest.raises(ValueError, match="eps must be a finite non-negative float"):
        ganops.minibatch_stddev(torch.ones(4, 2, 1, 1), eps=eps)


@pytest.mark.parametrize("weight", [float("inf"), float("-inf"), float("nan")])
def test_gradient_penalty_rejects_non_finite_weight(weight):
    with pytest.raises(ValueError, match="weight must be finite"):
        ganops.gradient_penalty(_Linear(), torch.randn(2, 3), torch.randn(2, 3), weight=weight)


@pytest.mark.parametrize("dim", [1.0, "0", True])
def test_spectral_norm_rejects_a_non_int_dim(dim):
    with pytest.raises(TypeError, match="dim must be an int"):
        ganops.spectral_norm(nn.Linear(3, 2), dim=dim)


@pytest.mark.parametrize("eps", [float("inf"), float("nan")])
def test_spectral_norm_rejects_non_finite_eps(eps):
    with pytest.raises(ValueError, match="eps must be a finite non-negative float"):
        ganops.spectral_norm(nn.Linear(3, 2), eps=eps)


# --------------------------------------------------------------------------------------------- property tests

NON_FINITE_VALUES = [float("nan"), float("inf"), float("-inf"), 0.0]
EXTREME_VALUES = [1e20, -1e20, 1e-21]
MAGNITUDES = [1.0, 1e20, 1e-21]
KERNEL_BACKENDS_HERE = [b for b in ("cpp", "triton") if _backend.unavailable_reason(b, "cpu") is None]


@st.composite
def extreme_tensors(draw, shape, dtype, extreme_magnitudes: bool = True):
    """A tensor of ``shape`` and ``dtype``: random values of one magnitude (1, or also 1e20 and 1e-21), a few special
    values (NaN, +-inf, 0, and 1e20, 1e-21) and an odd layout (contiguous, transposed, or every other element of a
    wider tensor)."""
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    magnitude = draw(st.sampled_from(MAGNITUDES if extreme_magnitudes else [1.0]))
    specials = NON_FINITE_VALUES + (EXTREME_VALUES if extreme_magnitudes else [])
    layout = draw(st.sampled_from(["contiguous", "transposed", "strided"]))
    wide = (*shape[:-1], 2 * shape[-1]) if layout == "strided" else shape
    values = (torch.randn(wide, dtype=F64, generator=generator) * magnitude).to(dtype)
    if values.numel() > 0:
        flat = values.view(-1)
        for _ in range(draw(st.integers(0, 2))):
            flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from(specials))
    if layout == "strided":
        return values[..., ::2]
    if layout == "transposed" and len(shape) >= 2:
        return values.transpose(-1, -2).contiguous().transpose(-1, -2)
    return values


def _outcome(function):
    """The result of ``function()`` (detached), or the type of the error it raised."""
    try:
        result = function()
    except (ValueError, TypeError, RuntimeError) as error:
        return type(error)
    return tuple(t.detach() for t in result) if isinstance(result, tuple) else (result.detach(),)


def _assert_every_backend_agrees(call, dtype):
    """``call(backend)`` on each kernel backend matches the reference: same values (NaN where it is NaN, inf where it
    is inf) or the same error type."""
    expected = _outcome(lambda: call("reference"))
    for backend in KERNEL_BACKENDS_HERE:
        actual = _outcome(lambda: call(backend))
        if isinstance(expected, type):
            assert actual is expected, (backend, actual, expected)
            continue
        assert not isinstance(actual, type), (backend, actual)
        for got, want in zip(actual, expected):
            _assert_same_values(got, want, rtol=1e-9 if dtype == F64 else 2e-4)


DTYPES = st.sampled_from([torch.float32, F64])


@settings(max_examples=10, deadline=None)
@given(data=st.data(), dtype=DTYPES, n=st.sampled_from([0, 1, 2, 4]), c=st.integers(0, 3), hw=st.integers(0, 2))
def test_property_minibatch_stddev(data, dtype, n, c, hw):
    x = data.draw(extreme_tensors((n, c, hw, 2), dtype))
    group_size = data.draw(st.sampled_from([1, 2, 4]))
    _assert_every_backend_agrees(lambda backend: ganops.minibatch_stddev(x, group_size, backend=backend), dtype)


@settings(max_examples=10, deadline=None)
@given(data=st.data(), dtype=DTYPES, n=st.integers(0, 3), d=st.integers(0, 5), center=st.sampled_from([0.0, 1.0]),
       one_sided=st.booleans())
def test_property_gradient_norm_penalty(data, dtype, n, d, center, one_sided):
    grad = data.draw(extreme_tensors((n, d), dtype))

    def value_and_gradient(backend):
        g = grad.detach().requires_grad_()
        value = ganops.gradient_norm_penalty(g, center, one_sided, backend=backend)
        return value, torch.autograd.grad(value, g)[0]

    _assert_every_backend_agrees(value_and_gradient, dtype)


@settings(max_examples=8, deadline=None)
@given(data=st.data(), dtype=DTYPES, n=st.integers(0, 3), d=st.integers(0, 4))
def test_property_interpolate(data, dtype, n, d):
    real, fake = data.draw(extreme_tensors((n, d), dtype)), data.draw(extreme_tensors((n, d), dtype))
    eps = data.draw(extreme_tensors((n,), dtype))
    _assert_every_backend_agrees(lambda backend: interpolate(real, fake, eps, backend=backend), dtype)


@settings(max_examples=8, deadline=None)
@given(data=st.data(), dtype=DTYPES, nq=st.integers(0, 3), nk=st.integers(0, 3), dqk=st.integers(1, 3))
def test_property_attention(data, dtype, nq, nk, dqk):
    q = data.draw(extreme_tensors((1, nq, dqk), dtype))
    k = data.draw(extreme_tensors((1, nk, dqk), dtype))
    v = data.draw(extreme_tensors((1, nk, 2), dtype))
    _assert_every_backend_agrees(lambda backend: ganops.attention(q, k, v, backend=backend), dtype)


@settings(max_examples=8, deadline=None)
@given(data=st.data(), dtype=DTYPES, n=st.integers(0, 3), a=st.integers(0, 3), c=st.integers(1, 3),
       exclude_self=st.booleans())
def test_property_minibatch_discrimination(data, dtype, n, a, c, exclude_self):
    features = data.draw(extreme_tensors((n, a), dtype))
    kernels = data.draw(extreme_tensors((a, 2, c), dtype))

    def value_and_gradient(backend):
        x = features.detach().requires_grad_()
        out = ganops.minibatch_discrimination(x, kernels, exclude_self, backend=backend)
        return out, torch.autograd.grad(out.sum(), x, allow_unused=True)[0]

    _assert_every_backend_agrees(value_and_gradient, dtype)


def _check_spectral_norm(data, dtype, rows, cols, iterations, extreme_magnitudes):
    weight = data.draw(extreme_tensors((rows, cols), dtype, extreme_magnitudes))
    u = torch.nn.functional.normalize(torch.ones(rows, dtype=dtype), dim=0)
    v = torch.nn.functional.normalize(torch.ones(cols, dtype=dtype), dim=0)
    _assert_every_backend_agrees(lambda backend: fused_spectral_norm(weight, u, v, iterations, backend=backend), dtype)


@settings(max_examples=8, deadline=None)
@given(data=st.data(), dtype=DTYPES, rows=st.integers(0, 3), cols=st.integers(1, 3), iterations=st.integers(0, 2))
def test_property_spectral_norm(data, dtype, rows, cols, iterations):
    _check_spectral_norm(data, dtype, rows, cols, iterations, extreme_magnitudes=False)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("magnitude", [1e20, 1e30])
def test_spectral_norm_of_huge_float32_weights(backend, magnitude):
    """Found by the property test: float32 squares of |W v| overflow from |W| ~ 1e19, which made sigma 0 and W_sn
    inf on every backend (F.normalize too). The scaled norm keeps W_sn, u, v and sigma right up to float32's range."""
    require_backend(backend)
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64) * magnitude
    u = v = torch.nn.functional.normalize(torch.ones(2, dtype=F64), dim=0)
    exact = fused_spectral_norm(weight, u, v, 1, backend="reference")
    got = fused_spectral_norm(weight.float(), u.float(), v.float(), 1, backend=backend)
    for name, expected, value in zip(("W_sn", "u", "v", "sigma"), exact, got):
        torch.testing.assert_close(value, expected.float(), rtol=1e-5, atol=0, msg=name)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("magnitude", [1e-21, 1e-30])
def test_spectral_norm_of_tiny_float32_weights_is_the_same_on_every_backend(backend, magnitude):
    """Below eps (torch's clamp of the norms) sigma ~ |W|^3 / eps^2 falls below float32's range (8.7e-46 for
    |W| = 1e-21; 1.4e-45 is the smallest subnormal): every backend rounds it the same way, so W_sn is W over the
    rounded sigma (finite and 38% off at 1e-21, inf at 1e-30) on every backend alike, never a backend's own
    accident of which square underflowed."""
    require_backend(backend)
    weight = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float32) * magnitude
    u = v = torch.nn.functional.normalize(torch.ones(2), dim=0)
    expected = fused_spectral_norm(weight, u, v, 1, backend="reference")
    got = fused_spectral_norm(weight, u, v, 1, backend=backend)
    for name, reference_value, value in zip(("W_sn", "u", "v", "sigma"), expected, got):
        torch.testing.assert_close(value, reference_value, rtol=1e-6, atol=0, msg=name)
