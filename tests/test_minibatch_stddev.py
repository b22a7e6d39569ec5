"""minibatch_stddev: the reference against independent math, every backend against the reference."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import ganops
from ganops import _triton
from ganops.reference import minibatch_stddev as reference
from helpers import KERNEL_BACKENDS, LAYOUTS, assert_close, autograd_derivatives, in_layout, relative_error, require_backend

ALL_BACKENDS = ("reference",) + KERNEL_BACKENDS
DTYPES = (torch.float64, torch.float32, torch.float16, torch.bfloat16)


@st.composite
def problems(draw, max_batch: int = 8, max_side: int = 5, max_channels: int = 8):
    """Shapes the op accepts: (x shape, group_size, num_channels), with N divisible by min(group_size, N)."""
    group_size = draw(st.integers(1, 5))
    full_groups = st.integers(1, max(1, max_batch // group_size)).map(lambda count: count * group_size)
    batch = draw(st.one_of(full_groups, st.integers(1, group_size)))
    num_channels = draw(st.integers(1, 3))
    channels = num_channels * draw(st.integers(1, max(1, max_channels // num_channels)))
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    return (batch, channels, height, width), group_size, num_channels


def independent_minibatch_stddev(x: torch.Tensor, group_size: int, num_channels: int, eps: float) -> torch.Tensor:
    """The op written sample by sample with torch.var, in float64: no reshape trick shared with the reference."""
    x = x.double()
    n, c, h, w = x.shape
    groups = min(group_size, n)
    slots = n // groups
    per_stat = c // num_channels
    extra = torch.empty(n, num_channels, h, w, dtype=torch.float64)
    for sample in range(n):
        members = x[[other for other in range(n) if other % slots == sample % slots]]
        for stat in range(num_channels):
            part = members[:, stat * per_stat : (stat + 1) * per_stat]
            stddev = (part.var(dim=0, unbiased=False) + eps).sqrt()
            extra[sample, stat] = stddev.mean()
    return torch.cat([x, extra], dim=1)




@given(problem=problems(), eps=st.sampled_from([0.0, 1e-8, 1e-2]), seed=st.integers(0, 2**16))
def test_reference_matches_independent_formulation(problem, eps, seed):
    shape, group_size, num_channels = problem
    x = torch.randn(shape, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    expected = independent_minibatch_stddev(x, group_size, num_channels, eps)
    actual = reference.minibatch_stddev(x, group_size, num_channels, eps)
    assert_close(actual, expected)


def test_reference_matches_torch_std_without_eps():
    x = torch.randn(8, 6, 3, 2, dtype=torch.float64)
    out = reference.minibatch_stddev(x, group_size=4, num_channels=2, eps=0.0)
    members = x.reshape(4, 2, 2, 3, 3, 2)
    expected = members.std(dim=0, unbiased=False).mean(dim=(2, 3, 4))
    assert torch.allclose(out[:2, 6:, 0, 0], expected)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_groups_are_strided_over_the_batch(backend):
    """Sample i belongs to group slot i % (N // G), not to the block of G neighbours (pytorch_GAN_zoo #69)."""
    require_backend(backend)
    x = torch.zeros(4, 2, 3, 3, dtype=torch.float64)
    x[1] = 1.0
    x[3] = -1.0
    out = ganops.minibatch_stddev(x, group_size=2, eps=0.0, backend=backend)
    statistic = out[:, 2, 0, 0]
    assert statistic.tolist() == pytest.approx([0.0, 1.0, 0.0, 1.0])
    assert torch.equal(out[:, :2], x)
    assert torch.equal(out[:, 2], statistic[:, None, None].expand(4, 3, 3))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("batch", [1, 3, 6])
def test_group_size_none_takes_the_whole_batch_as_one_group(backend, batch):
    """StyleGAN2's ``group_size=None``: one group of all N samples, for any N (the op and the module)."""
    require_backend(backend)
    x = torch.randn(batch, 4, 3, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(batch))
    out = ganops.minibatch_stddev(x, group_size=None, num_channels=2, eps=1e-8, backend=backend)
    expected = (x.var(dim=0, unbiased=False) + 1e-8).sqrt().reshape(2, 2, 3, 2).mean(dim=(1, 2, 3))
    assert torch.equal(out[:, :4], x)
    assert_close(out[:, 4:], expected[None, :, None, None].expand(batch, 2, 3, 2))
    assert torch.equal(out, ganops.minibatch_stddev(x, group_size=batch, num_channels=2, backend=backend))
    layer = ganops.nn.MinibatchStdDev(group_size=None, num_channels=2, backend=backend)
    assert torch.equal(layer(x), out) and "group_size=None" in repr(layer)


@given(problem=problems(), seed=st.integers(0, 2**16))
def test_reference_derivative_formulas_match_autograd(problem, seed):
    shape, group_size, num_channels = problem
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=torch.float64, generator=generator)
    n, c, h, w = shape
    grad_out = torch.randn(n, c + num_channels, h, w, dtype=torch.float64, generator=generator)
    grad_grad_x = torch.randn(shape, dtype=torch.float64, generator=generator)
    args = (group_size, num_channels, 1e-8)
    _, grad_x, grad_grad_out, second = autograd_derivatives(
        lambda t: reference.minibatch_stddev(t, *args), x, grad_out, grad_grad_x
    )
    assert_close(reference.minibatch_stddev_backward(grad_out, x, *args), grad_x.detach())
    formula_grad_grad_out, formula_second = reference.minibatch_stddev_double_backward(grad_grad_x, grad_out, x, *args)
    assert_close(formula_grad_grad_out, grad_grad_out)
    assert_close(formula_second, second)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@given(
    problem=problems(),
    dtype=st.sampled_from(DTYPES),
    layout=st.sampled_from(LAYOUTS),
    magnitude=st.sampled_from([1.0, 1e-3, 1e4]),
    offset=st.sampled_from([0.0, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_kernels_match_reference(backend, problem, dtype, layout, magnitude, offset, seed):
    """Forward, backward and double backward of each kernel backend against the float64 reference."""
    require_backend(backend)
    shape, group_size, num_channels = problem
    generator = torch.Generator().manual_seed(seed)
    n, c, h, w = shape
    x = (torch.randn(shape, dtype=torch.float64, generator=generator) * magnitude + offset).to(dtype)
    grad_out = torch.randn(n, c + num_channels, h, w, generator=generator).to(dtype)
    grad_grad_x = torch.randn(shape, generator=generator).to(dtype)
    x = in_layout(x, layout)
    args = (group_size, num_channels, 1e-8)

    actual = autograd_derivatives(
        lambda t: ganops.minibatch_stddev(t, *args, backend=backend), x, grad_out, grad_grad_x
    )
    expected = autograd_derivatives(
        lambda t: reference.minibatch_stddev(t, *args), x.double(), grad_out.double(), grad_grad_x.double()
    )
    # The statistic is 1-homogeneous in the deviations from the group mean, so its second derivative scales as
    # 1 / deviation; for groups of 2 it is zero up to eps and the terms of grad_grad_x cancel exactly.
    deviation_norm = (x.double() - x.double().mean(dim=0)).norm().item()
    second_order_scale = grad_grad_x.double().norm().item() * grad_out.double().norm().item() / deviation_norm if deviation_norm > 0 else 0.0
    floors = {"out": 0.0, "grad_x": 0.0, "grad_grad_out": 0.0, "grad_grad_x": second_order_scale}
    for name, got, want in zip(("out", "grad_x", "grad_grad_out", "grad_grad_x"), actual, expected):
        assert got.dtype == dtype, name
        error = relative_error(got.double(), want, floor=floors[name])
        # The double-backward gradient w.r.t. x divides by the group stddev twice; low precision rounding of
        # x is amplified there, so it gets a wider (still small) bound.
        tolerance = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 6e-2}[dtype]
        assert error <= tolerance, f"{name}: relative error {error:.3e} > {tolerance:.0e}"
    if layout == "channels_last" and min(c, h * w) > 1:
        assert actual[0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_and_gradgradcheck_float64(backend, layout):
    require_backend(backend)
    x = in_layout(torch.randn(6, 4, 3, 2, dtype=torch.float64), layout).requires_grad_()

    def function(t):
        return ganops.minibatch_stddev(t, group_size=3, num_channels=2, backend=backend)

    # Each Triton launch costs ~0.1 s under the CPU interpreter, so the element-by-element Jacobians (hundreds of
    # launches) would take minutes; fast mode compares random projections of the same Jacobians instead.
    fast_mode = backend == "triton" and _triton.interpreter_enabled()
    assert torch.autograd.gradcheck(function, x, fast_mode=fast_mode)
    assert torch.autograd.gradgradcheck(function, x, fast_mode=fast_mode)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_third_order_derivative_matches_reference(backend):
    require_backend(backend)
    x = torch.randn(4, 3, 2, 3, dtype=torch.float64)

    def third_derivative(name):
        t = x.clone().requires_grad_()
        out = ganops.minibatch_stddev(t, group_size=2, backend=name)
        (first,) = torch.autograd.grad(out.square().sum(), t, create_graph=True)
        (second,) = torch.autograd.grad(first.square().sum(), t, create_graph=True)
        (third,) = torch.autograd.grad(second.sum(), t)
        return third

    assert_close(third_derivative(backend), third_derivative("reference"))


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
def test_opcheck(backend, layout):
    require_backend(backend)
    x = in_layout(torch.randn(4, 6, 3, 5, dtype=torch.float32), layout).requires_grad_()
    grad_out = in_layout(torch.randn(4, 8, 3, 5), layout).requires_grad_()
    grad_grad_x = torch.randn(4, 6, 3, 5).requires_grad_()
    ops = torch.ops.ganops
    attributes = (2, 2, 1e-8)
    torch.library.opcheck(getattr(ops, f"minibatch_stddev_{backend}").default, (x, *attributes))
    torch.library.opcheck(getattr(ops, f"minibatch_stddev_backward_{backend}").default, (grad_out, x, *attributes))
    torch.library.opcheck(
        getattr(ops, f"minibatch_stddev_double_backward_{backend}").default, (grad_grad_x, grad_out, x, *attributes)
    )


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_torch_compile_fullgraph_double_backward(backend):
    """A compiled R1-style penalty through the op: traced without graph breaks, same numbers as eager."""
    require_backend(backend)
    torch._dynamo.reset()
    x = torch.randn(4, 3, 4, 4, dtype=torch.float32)

    def penalty(t):
        out = ganops.minibatch_stddev(t, group_size=2, backend=backend)
        (grad,) = torch.autograd.grad(out.square().sum(), t, create_graph=True)
        return grad.square().sum()

    def eager(t):
        t = t.clone().requires_grad_()
        value = penalty(t)
        (grad,) = torch.autograd.grad(value, t)
        return value, grad

    compiled = torch.compile(ganops.minibatch_stddev, fullgraph=True, backend="aot_eager")
    compiled_out = compiled(x.clone().requires_grad_(), group_size=2, backend=backend)
    assert_close(compiled_out.detach(), ganops.minibatch_stddev(x, group_size=2, backend="reference"))
    value, grad = eager(x)
    expected_value, expected_grad = eager(x.double())
    assert relative_error(value.double(), expected_value) < 1e-5
    assert relative_error(grad.double(), expected_grad) < 1e-4


@pytest.mark.parametrize("backend", ["reference", "cpp"])
def test_torch_compile_inductor(backend):
    require_backend(backend)
    torch._dynamo.reset()
    layer = ganops.nn.MinibatchStdDev(group_size=2, backend=backend)
    x = torch.randn(4, 5, 3, 3)
    compiled = torch.compile(torch.nn.Sequential(torch.nn.Conv2d(5, 5, 1), layer), fullgraph=True)
    eager = compiled._orig_mod
    assert_close(compiled(x), eager(x))


def test_module_matches_function_and_reports_its_settings():
    layer = ganops.nn.MinibatchStdDev(group_size=3, num_channels=2, eps=1e-4, backend="reference")
    x = torch.randn(6, 4, 2, 2)
    assert torch.equal(layer(x), ganops.minibatch_stddev(x, 3, 2, 1e-4, backend="reference"))
    assert "group_size=3, num_channels=2" in repr(layer)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        (dict(x=torch.randn(7, 4, 2, 2)), ValueError, r"batch size N=7 .* divisible by the group size min\(group_size=4, N\)=4"),
        (dict(x=torch.randn(4, 5, 2, 2), num_channels=2), ValueError, "channel count C=5 .* num_channels=2"),
        (dict(x=torch.randn(4, 4, 2)), ValueError, r"x must have 4 dimensions \[N, C, H, W\], got shape \(4, 4, 2\)"),
        (dict(x=torch.ones(4, 4, 2, 2, dtype=torch.int64)), TypeError, "x must have a floating dtype .* got torch.int64"),
        (dict(x=torch.randn(4, 4, 2, 2, dtype=torch.complex64)), TypeError, "floating dtype"),
        (dict(x=[[1.0]]), TypeError, "x must be a torch.Tensor, got list"),
        (dict(x=torch.randn(0, 4, 2, 2)), ValueError, "no empty dimension"),
        (dict(x=torch.randn(4, 4, 2, 2), group_size=0), ValueError, "group_size must be a positive int, got 0"),
        (dict(x=torch.randn(4, 4, 2, 2), group_size=2.0), ValueError, "group_size must be a positive int"),
        (dict(x=torch.randn(4, 4, 2, 2), num_channels=-1), ValueError, "num_channels must be a positive int"),
        (dict(x=torch.randn(4, 4, 2, 2), eps=-1.0), ValueError, "eps must be a finite non-negative float"),
        (dict(x=torch.randn(4, 4, 2, 2), backend="cuda"), ValueError, "backend must be one of"),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error, message):
    with pytest.raises(error, match=message):
        ganops.minibatch_stddev(**kwargs)


def test_module_rejects_bad_hyperparameters_at_construction():
    with pytest.raises(ValueError, match="MinibatchStdDev: group_size must be a positive int"):
        ganops.nn.MinibatchStdDev(group_size=0)


def test_cpp_kernels_check_their_inputs_too():
    """The C++ ops are reachable through torch.ops directly; they must not trust their caller."""
    require_backend("cpp")
    with pytest.raises(RuntimeError, match="divisible"):
        torch.ops.ganops.minibatch_stddev_cpp(torch.randn(5, 4, 2, 2), 2, 1, 1e-8)
    with pytest.raises(RuntimeError, match="grad_out"):
        torch.ops.ganops.minibatch_stddev_backward_cpp(torch.randn(4, 4, 2, 2), torch.randn(4, 4, 2, 2), 2, 1, 1e-8)


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "transposed"])
@pytest.mark.parametrize("shape", [(32, 512, 4, 4), (64, 256, 8, 8), (6, 33, 7, 5), (1, 3, 1, 1)])
def test_cuda_matches_reference(backend, dtype, layout, shape):
    require_backend(backend, "cuda")
    generator = torch.Generator().manual_seed(0)
    n, c, h, w = shape
    x = in_layout(torch.randn(shape, generator=generator, dtype=torch.float64), layout)
    grad_out = torch.randn(n, c + 1, h, w, generator=generator, dtype=torch.float64)
    grad_grad_x = torch.randn(shape, generator=generator, dtype=torch.float64)
    group_size = 2 if n % 2 == 0 else 3 if n % 3 == 0 else 1

    def on_cuda(t):
        return t.to("cuda", dtype)

    actual = autograd_derivatives(
        lambda t: ganops.minibatch_stddev(t, group_size, backend=backend),
        on_cuda(x), on_cuda(grad_out), on_cuda(grad_grad_x),
    )
    expected = autograd_derivatives(
        lambda t: reference.minibatch_stddev(t, group_size),
        on_cuda(x).double(), on_cuda(grad_out).double(), on_cuda(grad_grad_x).double(),
    )
    tolerance = {torch.float64: 1e-10, torch.float32: 1e-4, torch.float16: 3e-2, torch.bfloat16: 6e-2}[dtype]
    for got, want in zip(actual, expected):
        assert got.dtype == dtype and got.is_cuda
        assert relative_error(got.double(), want) <= tolerance


@pytest.mark.gpu
@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
def test_cuda_opcheck_and_compile(backend):
    require_backend(backend, "cuda")
    x = torch.randn(8, 16, 4, 4, device="cuda", requires_grad=True)
    torch.library.opcheck(getattr(torch.ops.ganops, f"minibatch_stddev_{backend}").default, (x, 4, 1, 1e-8))
    torch._dynamo.reset()
    compiled = torch.compile(ganops.minibatch_stddev, fullgraph=True)
    assert_close(compiled(x, backend=backend), ganops.minibatch_stddev(x, backend="reference"), torch.float32)


# ------------------------------------------------------------------------------ positions split over programs


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize(
    "shape, group_size, num_channels", [((8, 40, 5, 7), 4, 2), ((6, 40, 5, 7), 3, 1), ((4, 2, 17, 19), 4, 1)]
)
def test_kernels_split_a_pairs_positions_over_programs(backend, shape, group_size, num_channels):
    """Shapes whose pairs span several tiles: the Triton forward and double backward cut a pair's positions into
    spans (the last one partial) and add the spans' partial sums in a second launch, which writes the statistic
    channels in chunks of pixels (two chunks for the 17x19 map)."""
    require_backend(backend)
    from ganops.triton_kernels import minibatch_stddev as kernels

    n, c, h, w = shape
    params = kernels._launch_parameters(torch.empty(shape, device="meta"), group_size, num_channels, torch.float64)
    splits, span = kernels.position_split(n // group_size * num_channels, c // num_channels * h * w, params["BLOCK_K"])
    assert splits > 1 and (c // num_channels * h * w) % span != 0
    generator = torch.Generator().manual_seed(5)
    x = torch.randn(shape, dtype=torch.float64, generator=generator) * 3 + 1
    grad_out = torch.randn(n, c + num_channels, h, w, dtype=torch.float64, generator=generator)
    grad_grad_x = torch.randn(shape, dtype=torch.float64, generator=generator)
    args = (group_size, num_channels, 1e-8)
    actual = autograd_derivatives(lambda t: ganops.minibatch_stddev(t, *args, backend=backend), x, grad_out, grad_grad_x)
    expected = autograd_derivatives(lambda t: reference.minibatch_stddev(t, *args), x, grad_out, grad_grad_x)
    for name, got, want in zip(("out", "grad_x", "grad_grad_out", "grad_grad_x"), actual, expected):
        assert relative_error(got, want) <= 1e-12, name


@pytest.mark.parametrize(
    "shape, group_size", [((32, 512, 4, 4), 4), ((64, 512, 4, 4), 4), ((64, 256, 8, 8), 4), ((4, 8, 2, 2), 4)]
)
def test_triton_plans_fill_the_gpu_where_the_shape_allows(shape, group_size):
    """The launches that move the data have at least one program per SM of an H100 (132) wherever a pair has
    that many tiles; the split is a function of the shape alone."""
    from ganops.triton_kernels import minibatch_stddev as kernels

    x = torch.empty(shape, device="meta")
    grad_out = torch.empty(shape[0], shape[1] + 1, *shape[2:], device="meta")
    options = dict(compute_dtype=torch.float32, memory_format=torch.contiguous_format)
    plans = {
        "forward": kernels.forward_plan(x, group_size, 1, 1e-8, **options)[1],
        "backward": kernels.backward_plan(grad_out, x, group_size, 1, 1e-8, **options)[1],
        "double_backward": kernels.double_backward_plan(x, grad_out, x, group_size, 1, 1e-8, **options)[1],
    }
    block_k = kernels._launch_parameters(x, group_size, 1, torch.float32)["BLOCK_K"]
    tiles = -(-(shape[1] * shape[2] * shape[3]) // block_k)
    pairs = shape[0] // group_size
    for direction, launches in plans.items():
        programs = launches[1 if direction == "backward" else 0].grid[0]
        assert programs >= min(132, pairs * tiles), (direction, programs)
        assert len(launches) == 2
    assert plans["forward"][0].grid == kernels.forward_plan(x, group_size, 1, 1e-8, **options)[1][0].grid
