"""The compile-only GPU check (``python -m ganops check-gpu-code``) and the launch-level fixes it guards.

CI runs the check on ``--subset ci`` for sm_80 and sm_90 (one shape per configuration class; ~2 minutes on 2 cores
without a warm cache); the full matrix (every benchmark shape, every dtype, the CUDA kernels) runs from the command
line and its output is committed under ``benchmarks/results/static-sm90/``.

The launch-level tests run the plan functions on ``meta`` tensors: they need neither a GPU nor a compile.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from filelock import FileLock

from ganops.triton_kernels import _common
from ganops.triton_kernels import gradient_penalty as gradient_penalty_kernels
from ganops.triton_kernels import minibatch_stddev as minibatch_stddev_kernels
from ganops.triton_kernels import spectral_norm as spectral_norm_kernels

ROOT = Path(__file__).resolve().parents[1]
HALF_PRECISION = ("fp16", "bf16")


def _meta(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device="meta")


def _layout_kwargs(dtype: torch.dtype) -> dict:
    return dict(compute_dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                memory_format=torch.contiguous_format)


@pytest.fixture(scope="module")
def ci_check(tmp_path_factory) -> dict:
    """The CI subset of the check, run as CI runs it (a subprocess: the tests run Triton in the interpreter), once
    per test session: under pytest-xdist the first worker to ask runs it and the others read its result (the
    folder above a worker's base temp is the session's, shared by its workers)."""
    session = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        session = session.parent
    result_file = session / "gpu_check_ci_result.json"
    with FileLock(str(result_file) + ".lock"):
        if not result_file.exists():
            result_file.write_text(json.dumps(_run_ci_check(session / "gpu_check_ci.json")))
    result = json.loads(result_file.read_text())
    assert "kernels" in result, result["error"]
    return result


def _run_ci_check(output: Path) -> dict:
    environment = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run(
        [sys.executable, "-m", "ganops", "check-gpu-code", "--arch", "sm_80,sm_90", "--subset", "ci", "--no-cuda",
         "--jobs", "2", "--json", str(output)],
        cwd=ROOT, env=environment, capture_output=True, text=True, timeout=900,
    )
    if not output.exists():
        return {"error": f"the check wrote no JSON (exit {run.returncode}):\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"}
    return {**json.loads(output.read_text()), "returncode": run.returncode, "stdout": run.stdout}


def test_check_passes_on_the_ci_subset(ci_check):
    failing = [row for row in ci_check["kernels"] if row["status"] == "FAIL"]
    assert not failing, "\n".join(f"{r['op']} {r['kernel']} {r['arch']} {r['dtype']}: {r.get('failures')}" for r in failing)
    assert ci_check["returncode"] == 0, ci_check["stdout"][-3000:]


def test_check_compiles_every_kernel_of_every_op(ci_check):
    compiled = {(row["op"], row["kernel"]) for row in ci_check["kernels"] if "error" not in row}
    for op, module in (("spectral_norm", spectral_norm_kernels), ("minibatch_stddev", minibatch_stddev_kernels),
                       ("gradient_penalty", gradient_penalty_kernels)):
        for kernel in module.KERNELS.values():
            name = kernel.fn.__name__.strip("_").removesuffix("_kernel")
            assert (op, name) in compiled, f"{op}: kernel {name} was never compiled by the check"


def test_half_precision_kernels_do_not_spill(ci_check):
    for row in ci_check["kernels"]:
        if "error" not in row and row["dtype"] in HALF_PRECISION and row["status"] != "KNOWN-FAIL":
            assert row["spill_stores"] == 0, f"{row['op']} {row['kernel']} {row['dtype']}: {row['spill_stores']} B"


def test_half_precision_attention_dots_use_each_archs_tensor_cores(ci_check):
    """bf16 attention at every head-dim class: wgmma (HGMMA) on sm_90 in every kernel with a dot, mma.sync (HMMA)
    on sm_80; both archs compiled (each has its own tile configuration)."""
    rows = [r for r in ci_check["kernels"] if r["op"] == "attention" and r["uses_dot"] and "error" not in r]
    expected = {"sm_90": "HGMMA", "sm_80": "HMMA"}
    assert {r["arch"] for r in rows} == set(expected)
    for row in rows:
        assert expected[row["arch"]] in row["tensor_cores"], (row["kernel"], row["arch"], row["config"], row["tensor_cores"])
    head_dims = {r["config"].split(" BLOCK_DQK=")[1].split(" ACC")[0] for r in rows}
    assert head_dims == {"16 BLOCK_DV=64", "32 BLOCK_DV=128", "64 BLOCK_DV=256"}, head_dims


def test_penalty_reduction_of_2048_splits_compiles_without_spills(ci_check):
    rows = [r for r in ci_check["kernels"] if r["op"] == "gradient_penalty"
            and r["kernel"] in ("penalty_value", "double_backward") and "error" not in r]
    assert rows and all(r["spill_stores"] == 0 for r in rows), [(r["kernel"], r["spill_stores"]) for r in rows]


def test_spectral_norm_power_iteration_compiles(ci_check):
    forward = [r for r in ci_check["kernels"] if r["op"] == "spectral_norm" and r["kernel"] in ("rows", "columns")]
    assert {r["kernel"] for r in forward} == {"rows", "columns"}
    assert all("error" not in r for r in forward), forward


def test_occupancy_model():
    from ganops.gpu_code_check import max_blocks_per_sm

    assert max_blocks_per_sm(32, 4, 0, 90) == 16  # warps: 64 / 4
    assert max_blocks_per_sm(255, 4, 0, 90) == 2  # registers: 65536 / (256 * 32 * 4)
    assert max_blocks_per_sm(32, 4, 100 * 1024, 90) == 2  # shared memory: 228 KiB / 101 KiB


# ------------------------------------------------------------------ launch-level fixes (no compile, no GPU)


def _all_launches():
    """Plans of every launcher at sizes whose tile count exceeds grid axis 1's limit (2^27 elements per sample)."""
    big = dict(dtype=torch.float32)
    g = _meta(2, 1, 8192, 16384, **big)
    kwargs = _layout_kwargs(torch.float32)
    scalar = torch.empty((), device="meta")
    yield from gradient_penalty_kernels.forward_plan(g, 1.0, False, **kwargs)[1]
    yield from gradient_penalty_kernels.backward_plan(scalar, g, _meta(2, dtype=torch.float64), 1.0, False, **kwargs)[1]
    yield from gradient_penalty_kernels.double_backward_plan(g, scalar, g, 1.0, False, **kwargs)[1]
    yield from gradient_penalty_kernels.interpolate_plan(g, g, _meta(2), **kwargs)[1]
    x = _meta(4, 2, 8192, 16384)
    grad_out = _meta(4, 3, 8192, 16384)
    yield from minibatch_stddev_kernels.forward_plan(x, 4, 1, 1e-8, **kwargs)[1]
    yield from minibatch_stddev_kernels.backward_plan(grad_out, x, 4, 1, 1e-8, **kwargs)[1]
    yield from minibatch_stddev_kernels.double_backward_plan(x, grad_out, x, 4, 1, 1e-8, **kwargs)[1]


def test_grids_stay_within_cuda_limits_for_huge_samples():
    for launch in _all_launches():
        assert all(size <= limit for size, limit in zip(launch.grid, _common.MAX_GRID)), (launch.name, launch.grid)


def test_check_grid_rejects_axis_one_beyond_65535():
    with pytest.raises(ValueError, match="grid axis 1"):
        _common.check_grid((1, 65536))
    assert _common.check_grid((2**31 - 1, 65535)) == (2**31 - 1, 65535)


def test_penalty_reduction_tiles_are_bounded_for_one_huge_sample():
    g = _meta(1, 1, 8192, 8192)
    kwargs = _layout_kwargs(torch.float32)
    launches = gradient_penalty_kernels.double_backward_plan(g, torch.empty((), device="meta"), g, 1.0, True, **kwargs)[1]
    launches += gradient_penalty_kernels.forward_plan(g, 1.0, True, **kwargs)[1]
    block_s = [launch.kwargs["BLOCK_S"] for launch in launches if "BLOCK_S" in launch.kwargs]
    assert block_s and max(block_s) <= 32


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eps_reaches_kernels_in_the_compute_dtype(dtype):
    """A Python float argument is compiled as fp32: float64 kernels must receive eps as a float64 tensor."""
    kwargs = _layout_kwargs(dtype)
    x = _meta(4, 3, 2, 2, dtype=dtype)
    grad_out = _meta(4, 4, 2, 2, dtype=dtype)
    launches = minibatch_stddev_kernels.forward_plan(x, 2, 1, 1e-8, **kwargs)[1]
    launches += minibatch_stddev_kernels.backward_plan(grad_out, x, 2, 1, 1e-8, **kwargs)[1]
    launches += minibatch_stddev_kernels.double_backward_plan(x, grad_out, x, 2, 1, 1e-8, **kwargs)[1]
    w = _meta(3, 5, dtype=dtype)
    launches += spectral_norm_kernels.forward_plan(
        [w], [_meta(3, dtype=dtype)], [_meta(5, dtype=dtype)], 1, 1e-12, compute_dtype=kwargs["compute_dtype"]
    )[1]
    with_eps = [launch for launch in launches if "eps_ptr" in launch.kernel.arg_names]
    # Every kernel but the split reductions' second phases reads eps.
    without_eps = {launch.name for launch in launches} - {launch.name for launch in with_eps}
    assert without_eps == {"_statistic_kernel", "_grad_stat_kernel"}, without_eps
    for launch in with_eps:
        eps = (dict(zip(launch.kernel.arg_names, launch.args)) | launch.kwargs)["eps_ptr"]
        assert isinstance(eps, torch.Tensor) and eps.dtype == kwargs["compute_dtype"], (launch.name, eps)
    for launch in launches:
        assert not any(isinstance(value, float) for value in [*launch.args, *launch.kwargs.values()]), launch.name


class _RecordingKernel:
    """Stands in for a JIT kernel: records the CUDA device current at launch time."""

    def __init__(self, current: list) -> None:
        self.current = current
        self.launched_on: list = []
        self.fn = mock.Mock(__name__="_fake_kernel")

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.launched_on.append(self.current[-1])


def test_launches_run_under_a_guard_for_their_tensors_device():
    """Tensors on cuda:1 while the current device is 0: the launch must happen with cuda:1 current."""
    current = [torch.device("cuda", 0)]

    @contextlib.contextmanager
    def fake_device_guard(device):
        current.append(device)
        try:
            yield
        finally:
            current.pop()

    tensor = mock.MagicMock(spec=torch.Tensor)
    tensor.device = torch.device("cuda", 1)
    kernel = _RecordingKernel(current)
    launches = [_common.Launch(kernel, (1,), (tensor, 3), {}), _common.Launch(kernel, (2,), (tensor,), {})]
    with mock.patch.object(torch.cuda, "device", fake_device_guard):
        _common.run_launches(launches)
    assert kernel.launched_on == [torch.device("cuda", 1)] * 2
    assert current == [torch.device("cuda", 0)]


@pytest.mark.parametrize(
    "module, call",
    [
        (minibatch_stddev_kernels, lambda m: m.forward(_meta(4, 3, 2, 2), 2, 1, 1e-8, **_layout_kwargs(torch.float32))),
        (gradient_penalty_kernels, lambda m: m.forward(_meta(4, 3, 2, 2), 1.0, False, **_layout_kwargs(torch.float32))),
        (spectral_norm_kernels, lambda m: m.forward([_meta(3, 5)], [_meta(3)], [_meta(5)], 1, 1e-12,
                                                  compute_dtype=torch.float32)),
    ],
)
def test_launchers_run_their_plans_through_the_guarded_runner(module, call):
    with mock.patch.object(module, "run_launches") as runner:
        call(module)
    (launches,), _ = runner.call_args
    assert launches and all(isinstance(launch, _common.Launch) for launch in launches)


def test_fallbacks_are_tried_in_order_and_remembered():
    from triton.runtime.errors import OutOfResources

    attempts = []

    class Kernel:
        def __init__(self, name, fits):
            self.fn = mock.Mock(__name__=name)
            self.fits = fits

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                attempts.append((self.fn.__name__, grid))
                if not self.fits:
                    raise OutOfResources(1, 0, "shared memory")
            return launch

    small = _common.Launch(Kernel("k", True), (8,), (), {"BLOCK": 16})
    big = _common.Launch(Kernel("k", False), (4,), (), {"BLOCK": 32}, fallbacks=(small,))
    _common.run_launches([big])
    _common.run_launches([big])
    assert attempts == [("k", (4,)), ("k", (8,)), ("k", (8,))]


@pytest.mark.skipif(shutil.which("c++filt") is None, reason="needs c++filt")
def test_cuda_kernel_rows_name_the_kernel_and_its_dtype():
    """nvcc's mangled names of kernels in an anonymous namespace demangle to "void ganops::cuda_kernels::(anonymous
    namespace)::finish_kernel<...>(...)": the report shows the kernel and template arguments, and their dtype."""
    from ganops.gpu_code_check import _demangle, _dtype_of

    names = {
        "_ZN6ganops12cuda_kernels55_GLOBAL__N__82d6ce81_16_spectral_norm_cu_c3044ed7_1754413finish_kernelI13__nv_bfloat16"
        "EEvPKNS0_24SpectralNormForwardLayerIT_EEllNS_14AccumulateTypeIS5_E4typeE": ("finish_kernel<__nv_bfloat16>", "bf16"),
        "_ZN6ganops12cuda_kernels55_GLOBAL__N__82d6ce81_16_spectral_norm_cu_c3044ed7_1754418grad_weight_kernelIdEEvPKNS0"
        "_25SpectralNormBackwardLayerIT_EElPKNS_14AccumulateTypeIS4_E4typeE": ("grad_weight_kernel<double>", "fp64"),
    }
    for mangled, (kernel, dtype) in names.items():
        assert _demangle(mangled) == kernel
        assert _dtype_of(kernel) == dtype
    assert _dtype_of("rows_kernel<__half>") == "fp16" and _dtype_of("reduce_kernel") == "*"


def test_small_grids_are_flagged_only_where_they_cost_time():
    """A grid under one wave is flagged when it moves enough data for the idle SMs to matter (1 MB on 8 of 132
    SMs: ~4.5 us lost on an H100), not for a finishing kernel that writes a few KB."""
    from ganops import gpu_code_check

    row = dict(op="minibatch_stddev", direction="forward", case="c", dtype="fp32", grid=[8], blocks=8, num_warps=4,
               config="", flops=0, case_minimum_bytes=1 << 20, case_flops=0, waves=None, under_one_wave=True)
    heavy = {**row, "kernel": "forward", "bytes_moved": 1 << 20}
    light = {**row, "kernel": "statistic", "bytes_moved": 3000}
    wide = {**row, "kernel": "backward", "grid": [256], "blocks": 256, "under_one_wave": False, "bytes_moved": 1 << 24}
    (summary,) = gpu_code_check._summarise_plans([heavy, light, wide])
    assert summary["flagged"] == ["forward"]
    assert [launch.endswith("<1 wave") for launch in summary["launches"]] == [True, True, False]
