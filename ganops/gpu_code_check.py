"""``python -m ganops check-gpu-code``: compile every GPU kernel of ganops for sm_80 / sm_90 without a GPU, report
registers, spills, shared memory, occupancy and tensor-core use, check them against budgets, and print the launch
plan of every benchmark case with its roofline time.

**Triton.** Every ``triton_kernels/<op>.py`` plans its launches as data (``<name>_plan(...) -> (outputs,
[Launch])``, see ``triton_kernels/_common.py``); the check calls those same functions with ``meta`` tensors, binds
each launch's arguments with Triton's own binder for a CUDA target (so signature, integer specialisation, 16-byte
divisibility hints, ``num_warps`` and ``num_stages`` are what a launch on a GPU gets) and compiles it with
``triton.compile`` for ``GPUTarget("cuda", 80 | 90, 32)``. Registers and spills come from the bundled ``ptxas -v``
on the PTX, shared memory from the compiled kernel's metadata (what the launch requests), tensor-core use from the
PTX (``wgmma`` / ``mma``) and the SASS (``cuobjdump -sass``: ``HGMMA`` / ``HMMA`` / ``DMMA``). A launch with
fallbacks (smaller blocks tried on ``OutOfResources``) is reported at the first configuration that fits the arch,
as the runtime would run it, with the rejected ones listed.

**CUDA.** Every ``csrc/cuda/*.cu`` is compiled with ``nvcc -cubin -arch=sm_XX -Xptxas -v`` (skipped, with a note,
where nvcc is absent).

**Cases.** The shapes of the benchmark cases (``benchmarks/<op>.py``, GPU lists) and of the test suite's
configurations (group sizes, iteration counts, one-sided penalties, channels_last, N = 1 with large samples), for
fp16, bf16, fp32 (attention: TF32 off and on) and fp64. Each configuration (constexpr parameters, pointer dtypes,
``num_warps``, ``num_stages``, arch) is compiled once, with the integer specialisation of the first case that
chooses it (benchmark shapes come first): Triton's ``== 1`` / multiple-of-16 specialisations follow the shape,
not the launcher.
``--subset ci`` (what ``tests/test_gpu_code_check.py`` runs in CI, for sm_80 and sm_90: one benchmark shape per op
and direction in bf16 and fp64, plus the test-suite configurations that stress a kernel in fp32; attention in bf16
only, at its three head-dim classes: 12/48, 32/128, 64/256) keeps the CI cost near two minutes; the full matrix
runs from the command line.

**Budgets** (a failure makes the command exit 1):

* any compile error (Triton or nvcc);
* shared memory above the arch's per-block limit (sm_80: 163 KiB, sm_90: 227 KiB) for the configuration that
  runs (all fallbacks exhausted);
* spill stores (bytes per thread, from ptxas) above the kernel class's budget:
  fp16 / bf16, every direction: 0; fp32 memory-bound kernels (no ``tl.dot``): 0; fp32 attention (TF32 on or off):
  1024 (the FMA path of an ieee fp32 dot holds more than 255 registers; the issue's "no multi-KB spills");
  fp64, every kernel: 2048 (fp64 exists for gradcheck, not speed);
* an fp16 / bf16 attention kernel that computes a ``tl.dot`` without tensor-core instructions.

``KNOWN_FAILURES`` lists kernels whose budget failure is known and being fixed: they are still reported
(``KNOWN-FAIL``) and counted, but do not fail the command; an entry that passes is reported as ``FIXED``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import hashlib
import importlib
import inspect
import json
import math
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from ganops._dtypes import compute_dtype

ARCHS = {"sm_80": 80, "sm_90": 90}
# Per-block opt-in shared memory, shared memory per SM, and the per-block reservation of the CUDA runtime.
SHARED_PER_BLOCK = {80: 163 * 1024, 90: 227 * 1024}
SHARED_PER_SM = {80: 164 * 1024, 90: 228 * 1024}
SHARED_RESERVED_PER_BLOCK = 1024
REGISTERS_PER_SM = 65536
WARPS_PER_SM = 64
BLOCKS_PER_SM = 32
SMS = 132  # H100 SXM and H200
# A launch of fewer blocks than SMs is flagged when the small grid costs more than this on an H100 (grid-limited
# time minus bandwidth time): below it a launch's own overhead (a few microseconds) dominates, as for the
# one-block-per-pair finishing kernels of the split reductions, which move a few KB.
SMALL_GRID_COST_FLAG_S = 1e-6

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "fp64": torch.float64}
SPILL_BUDGET_HALF = 0
SPILL_BUDGET_FP32_MEMORY = 0
SPILL_BUDGET_FP32_ATTENTION = 1024
SPILL_BUDGET_FP64 = 2048

# Rooflines of the launch plan: (bytes/s, dense bf16 flop/s, fp32 flop/s).
GPUS = {"H100": (3.35e12, 989e12, 67e12), "H200": (4.8e12, 989e12, 67e12)}

# (op, kernel name, dtype name or "*") -> why it is known to fail its budget (see the module docstring).
KNOWN_FAILURES: dict[tuple[str, str, str], str] = {}

ROOT = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------- cases


@dataclasses.dataclass
class Case:
    """One call of a plan function: an op, a direction, a shape and a dtype."""

    op: str
    direction: str
    label: str
    dtype: str
    build: Callable[[int], list]  # arch -> list[Launch], on meta tensors
    source: str  # "bench" (a benchmarks/<op>.py case), "test" (a test-suite configuration)
    ci: bool = False
    minimum_bytes: int = 0
    flops: int = 0
    tf32: bool | None = None


def _meta(*shape: int, dtype: torch.dtype, channels_last: bool = False) -> torch.Tensor:
    t = torch.empty(shape, dtype=dtype, device="meta")
    return t.to(memory_format=torch.channels_last) if channels_last else t


def _layout(x: torch.Tensor) -> torch.memory_format:
    from ganops._layout import memory_format_of

    return memory_format_of(x)


def _kernels(op: str):
    return importlib.import_module(f"ganops.triton_kernels.{op}")


def _benchmarks(op: str):
    import sys

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module(f"benchmarks.{op}")


def _plan_kwargs(
    plan: Callable, dtype: torch.dtype, arch: int, memory_format: torch.memory_format | None = None
) -> dict:
    """The keyword-only arguments a plan function declares, with the values ``ganops/ops`` passes, and the arch
    compiled for where the plan's configuration depends on it."""
    parameters = inspect.signature(plan).parameters
    kwargs = {}
    if "arch" in parameters:
        kwargs["arch"] = arch
    if "compute_dtype" in parameters:
        kwargs["compute_dtype"] = compute_dtype(dtype)
    if "memory_format" in parameters:
        kwargs["memory_format"] = memory_format or torch.contiguous_format
    return kwargs


def _spectral_norm_cases() -> Iterator[Case]:
    kernels, bench = _kernels("spectral_norm"), _benchmarks("spectral_norm")

    def group(shapes, dtype_name, iterations, direction):
        dtype = DTYPES[dtype_name]

        def build(arch):
            weights = [_meta(r, c, dtype=dtype) for r, c in shapes]
            us = [_meta(r, dtype=dtype) for r, _ in shapes]
            vs = [_meta(c, dtype=dtype) for _, c in shapes]
            kwargs = _plan_kwargs(kernels.forward_plan, dtype, arch)
            if direction == "forward":
                return kernels.forward_plan(weights, us, vs, iterations, bench.EPS, **kwargs)[1]
            sigmas = [torch.empty((), dtype=compute_dtype(dtype), device="meta") for _ in shapes]
            return kernels.backward_plan(weights, weights, us, vs, sigmas, **kwargs)[1]

        return build

    for model, width in (("BigGAN-128 D", 96), ("SAGAN-128 D", 64)):
        shapes = bench.layer_shapes(model, width)
        parameters = sum(r * c for r, c in shapes)
        for dtype_name in ("bf16", "fp32", "fp16", "fp64"):
            itemsize = DTYPES[dtype_name].itemsize
            for direction in ("forward", "backward"):
                # The benchmark's minimum for forward+backward is 6 |W|: 3 |W| per direction.
                yield Case(
                    "spectral_norm", direction, f"{model} grouped, {len(shapes)} layers, 1 iteration", dtype_name,
                    group(shapes, dtype_name, 1, direction), "bench",
                    ci=model == "SAGAN-128 D" and dtype_name in ("bf16", "fp64"),
                    minimum_bytes=3 * parameters * itemsize,
                )
    for iterations in (0, 2):
        for dtype_name in ("bf16", "fp32", "fp64"):
            yield Case(
                "spectral_norm", "forward", f"one 64x576 layer, {iterations} iterations", dtype_name,
                group([(64, 576)], dtype_name, iterations, "forward"), "test", ci=dtype_name == "fp32",
            )


def _minibatch_stddev_cases() -> Iterator[Case]:
    kernels, bench = _kernels("minibatch_stddev"), _benchmarks("minibatch_stddev")

    def build_for(shape, dtype, groups, stats, direction, channels_last=False):
        def build(arch):
            n, c, h, w = shape
            x = _meta(*shape, dtype=dtype, channels_last=channels_last)
            grad_out = _meta(n, c + stats, h, w, dtype=dtype, channels_last=channels_last)
            kwargs = _plan_kwargs(kernels.forward_plan, dtype, arch, _layout(x))
            if direction == "forward":
                return kernels.forward_plan(x, groups, stats, bench.EPS, **kwargs)[1]
            if direction == "backward":
                return kernels.backward_plan(grad_out, x, groups, stats, bench.EPS, **kwargs)[1]
            return kernels.double_backward_plan(x, grad_out, x, groups, stats, bench.EPS, **kwargs)[1]

        return build

    # Minimum traffic per direction, in (x-sized, statistic-channel-sized) passes: forward reads x and writes out;
    # backward reads grad_out and x and writes grad_x; double backward reads grad_grad_x, x and grad_out's statistic
    # channel and writes grad_grad_out and grad_x.
    passes = {"forward": (2, 1), "backward": (3, 1), "double backward": (4, 2)}
    for shape in bench.SHAPES:
        n, c, h, w = shape
        for dtype_name in ("bf16", "fp32", "fp16", "fp64"):
            dtype = DTYPES[dtype_name]
            for direction in ("forward", "backward", "double backward"):
                x_passes, statistic_passes = passes[direction]
                yield Case(
                    "minibatch_stddev", direction, f"N={n} C={c} {h}x{w} G={bench.GROUP_SIZE}", dtype_name,
                    build_for(shape, dtype, bench.GROUP_SIZE, bench.NUM_CHANNELS, direction), "bench",
                    ci=shape == bench.SHAPES[0] and dtype_name in ("bf16", "fp64"),
                    minimum_bytes=(x_passes * c + statistic_passes * bench.NUM_CHANNELS) * n * h * w * dtype.itemsize,
                )
    # The test suite's group sizes 1..5 (BLOCK_G 1, 2, 4, 8), two statistics, channels_last.
    for groups in (1, 2, 3, 5):
        for dtype_name in ("bf16", "fp32", "fp64"):
            for direction in ("forward", "backward", "double backward"):
                yield Case(
                    "minibatch_stddev", direction, f"N={2 * groups} C=6 5x3 G={groups} F=2 channels_last",
                    dtype_name, build_for((2 * groups, 6, 5, 3), DTYPES[dtype_name], groups, 2, direction, True),
                    "test", ci=groups == 5 and dtype_name == "fp32",
                )


def _minibatch_discrimination_cases() -> Iterator[Case]:
    kernels, bench = _kernels("minibatch_discrimination"), _benchmarks("minibatch_discrimination")

    def build_for(n, b, c, dtype, direction, exclude_self=False):
        def build(arch):
            m, grad_o = _meta(n, b, c, dtype=dtype), _meta(n, b, dtype=dtype)
            kwargs = _plan_kwargs(kernels.forward_plan, dtype, arch)
            if direction == "forward":
                return kernels.forward_plan(m, exclude_self, **kwargs)[1]
            if direction == "backward":
                return kernels.backward_plan(grad_o, m, exclude_self, **kwargs)[1]
            return kernels.double_backward_plan(m, grad_o, m, exclude_self, **kwargs)[1]

        return build

    # Minimum traffic per direction, in (M-sized, o-sized) passes: forward reads M and writes o; backward reads
    # grad_o and M and writes grad_M; double backward reads grad_grad_M, grad_o and M and writes grad_grad_o, grad_M.
    passes = {"forward": (1, 1), "backward": (2, 1), "double backward": (3, 2)}
    for n in bench.BATCH_SIZES:
        b, c = bench.NUM_KERNELS, bench.KERNEL_DIM
        for dtype_name in ("bf16", "fp32", "fp16", "fp64"):
            dtype = DTYPES[dtype_name]
            for direction in ("forward", "backward", "double backward"):
                m_passes, o_passes = passes[direction]
                yield Case(
                    "minibatch_discrimination", direction, f"N={n} B={b} C={c}", dtype_name,
                    build_for(n, b, c, dtype, direction), "bench",
                    ci=n == bench.BATCH_SIZES[0] and dtype_name in ("bf16", "fp64"),
                    minimum_bytes=(m_passes * c + o_passes) * n * b * dtype.itemsize,
                )
    # The test suite's kernel dimensions up to 33 (BLOCK_C 64: smaller row tiles), exclude_self, N = 1.
    for n, b, c, exclude_self in ((7, 5, 33, True), (1, 3, 1, False)):
        for dtype_name in ("bf16", "fp32", "fp64"):
            for direction in ("forward", "backward", "double backward"):
                yield Case(
                    "minibatch_discrimination", direction, f"N={n} B={b} C={c} exclude_self={exclude_self}",
                    dtype_name, build_for(n, b, c, DTYPES[dtype_name], direction, exclude_self), "test",
                    ci=n == 7 and dtype_name == "fp32",
                )


def _gradient_penalty_cases() -> Iterator[Case]:
    kernels = _kernels("gradient_penalty")

    def build_for(shape, dtype, direction, one_sided=False, channels_last=False):
        def build(arch):
            g = _meta(*shape, dtype=dtype, channels_last=channels_last)
            kwargs = _plan_kwargs(kernels.forward_plan, dtype, arch, _layout(g))
            grad_out = torch.empty((), dtype=dtype, device="meta")
            if direction == "forward":
                return kernels.forward_plan(g, 1.0, one_sided, **kwargs)[1]
            if direction == "backward":
                norms = torch.empty(shape[0], dtype=torch.float64, device="meta")
                return kernels.backward_plan(grad_out, g, norms, 1.0, one_sided, **kwargs)[1]
            if direction == "double backward":
                return kernels.double_backward_plan(g, grad_out, g, 1.0, one_sided, **kwargs)[1]
            eps = torch.empty(shape[0], dtype=dtype, device="meta")
            return kernels.interpolate_plan(g, g, eps, **kwargs)[1]

        return build

    passes = {"forward": 1, "backward": 2, "double backward": 3, "interpolate": 3}
    shapes = [(64, 3, 64, 64), (256, 3, 64, 64), (64, 3, 128, 128), (64, 3, 256, 256)]
    for shape in shapes:
        for dtype_name in ("bf16", "fp32", "fp16", "fp64"):
            dtype = DTYPES[dtype_name]
            for direction in ("forward", "backward", "double backward", "interpolate"):
                label = f"N={shape[0]} {shape[1]}x{shape[2]}x{shape[3]}"
                if direction == "interpolate":
                    label += " (WGAN-GP D step)"
                yield Case(
                    "gradient_penalty", direction, label, dtype_name, build_for(shape, dtype, direction), "bench",
                    ci=shape == shapes[0] and dtype_name in ("bf16", "fp64"),
                    minimum_bytes=passes[direction] * math.prod(shape) * dtype.itemsize,
                )
    # N = 1 with 2^26 elements (2048 splits: the old [128, 2048] reduction tile), one-sided, channels_last.
    for dtype_name in ("bf16", "fp32", "fp64"):
        for direction in ("forward", "double backward"):
            yield Case(
                "gradient_penalty", direction, "N=1 1x8192x8192 one-sided", dtype_name,
                build_for((1, 1, 8192, 8192), DTYPES[dtype_name], direction, one_sided=True), "test",
                ci=dtype_name == "fp32",
            )
        yield Case(
            "gradient_penalty", "backward", "N=3 4x5x6 channels_last", dtype_name,
            build_for((3, 4, 5, 6), DTYPES[dtype_name], "backward", channels_last=True), "test",
        )


# One benchmark shape per head-dim class (padded 16/64, 32/128, 64/256): each class has its own tile configuration.
CI_ATTENTION_SHAPES = (("BigGAN-128 D 64x64 pooled", 64), ("C=256 32x32 unpooled", 64), ("C=512 32x32 unpooled", 64))


def _attention_cases() -> Iterator[Case]:
    kernels, bench = _kernels("attention"), _benchmarks("attention")
    if not hasattr(kernels, "forward_plan"):
        raise RuntimeError("triton_kernels/attention.py has no forward_plan (see triton_kernels/_common.py)")

    def build_for(batch, n_q, n_k, d_qk, d_v, dtype, tf32, direction):
        def build(arch):
            q, k, v = _meta(batch, n_q, d_qk, dtype=dtype), _meta(batch, n_k, d_qk, dtype=dtype), _meta(
                batch, n_k, d_v, dtype=dtype
            )
            out = _meta(batch, n_q, d_v, dtype=dtype)
            lse = torch.empty(batch, n_q, dtype=compute_dtype(dtype), device="meta")
            kwargs = _plan_kwargs(kernels.forward_plan, dtype, arch)
            if direction == "forward":
                return kernels.forward_plan(q, k, v, bench.SCALE, tf32, **kwargs)[1]
            if direction == "backward":
                return kernels.backward_plan(out, q, k, v, out, lse, bench.SCALE, tf32, **kwargs)[1]
            return kernels.double_backward_plan(q, k, v, out, q, k, v, out, lse, bench.SCALE, tf32, **kwargs)[1]

        return build

    plan_direction = {"forward": "forward", "backward": "forward+backward", "double backward": "double backward"}
    previous = {"forward": None, "backward": "forward", "double backward": "forward+backward"}
    for name, batch, n_q, n_k, d_qk, d_v in bench.GPU_SHAPES:
        # The benchmark's dtypes at every shape; fp16 and fp64 (same kernels, other dtypes) at the first.
        variants = [("bf16", False), ("fp32", False), ("fp32", True)]
        if (name, batch) == bench.GPU_SHAPES[0][:2]:
            variants += [("fp16", False), ("fp64", False)]
        for dtype_name, tf32 in variants:
            dtype = DTYPES[dtype_name]
            for direction in ("forward", "backward", "double backward"):
                # The benchmark counts cumulative directions; the kernels of one direction get the difference.
                def cumulative(kind):
                    if kind is None:
                        return 0, 0
                    per_qk, per_v = bench._FLOPS_PER_PAIR[kind]
                    return (
                        bench._bytes_moved(kind, batch, n_q, n_k, d_qk, d_v, dtype.itemsize),
                        batch * n_q * n_k * (per_qk * d_qk + per_v * d_v),
                    )

                now, before = cumulative(plan_direction[direction]), cumulative(previous[direction])
                yield Case(
                    "attention", direction, f"{name} B={batch} Nq={n_q} Nk={n_k} Dqk={d_qk} Dv={d_v}", dtype_name,
                    build_for(batch, n_q, n_k, d_qk, d_v, dtype, tf32, direction), "bench",
                    ci=(name, batch) in CI_ATTENTION_SHAPES and dtype_name == "bf16",
                    minimum_bytes=now[0] - before[0], flops=now[1] - before[1], tf32=tf32 if dtype_name == "fp32" else None,
                )


CASE_SOURCES = {
    "spectral_norm": _spectral_norm_cases,
    "minibatch_stddev": _minibatch_stddev_cases,
    "minibatch_discrimination": _minibatch_discrimination_cases,
    "gradient_penalty": _gradient_penalty_cases,
    "attention": _attention_cases,
}


# ----------------------------------------------------------------------------------------------- compiling


def _tool(name: str) -> str | None:
    import triton

    bundled = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    return str(bundled) if bundled.exists() else shutil.which(name)


def _bind(launch, arch: int) -> tuple[dict, dict, dict, dict]:
    """``(signature, constexprs, attrs, options)`` exactly as ``kernel[grid](...)`` would compile them on ``arch``."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = launch.kernel
    backend = make_backend(GPUTarget("cuda", arch, 32))
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    kwargs = {**launch.kwargs, "debug": False}
    bound, specialization, options = binder(*launch.args, **kwargs)
    options, signature, constexprs, attrs = kernel._pack_args(backend, kwargs, bound, specialization, options)
    return signature, constexprs, attrs, dict(options.__dict__)


def _compile_job(job: tuple) -> dict:
    """Compile one bound kernel for one arch and read its resources (runs in a worker process)."""
    module_name, kernel_name, signature, constexprs, attrs, options, arch = job
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    kernel = getattr(importlib.import_module(module_name), kernel_name)
    try:
        compiled = triton.compile(
            ASTSource(kernel, signature, constexprs, attrs), target=GPUTarget("cuda", arch, 32), options=options
        )
    except Exception as error:  # a compile error is a result of the check, reported per row
        return {"error": f"{type(error).__name__}: {str(error).strip().splitlines()[-1][:300]}"}
    ptx = compiled.asm["ptx"]
    result = {
        "shared": int(compiled.metadata.shared),
        "num_warps": int(compiled.metadata.num_warps),
        "num_stages": int(options.get("num_stages", 0)),
        "ptx_tensor_cores": sorted({m for m in ("wgmma", "mma") if re.search(rf"\b{m}\.", ptx)}),
    }
    result.update(_ptxas_resources(ptx, arch))
    result["sass_tensor_cores"] = _sass_tensor_cores(compiled.asm["cubin"])
    return result


def _ptxas_resources(ptx: str, arch: int) -> dict:
    ptxas = _tool("ptxas")
    gpu = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "kernel.ptx"
        source.write_text(ptx)
        run = subprocess.run(
            [ptxas, "-lineinfo", "-v", f"--gpu-name={gpu}", str(source), "-o", str(Path(folder) / "kernel.cubin")],
            capture_output=True, text=True,
        )
    return _parse_ptxas(run.stderr) if run.returncode == 0 else {"error": f"ptxas: {run.stderr.strip()[-300:]}"}


def _parse_ptxas(log: str) -> dict:
    def number(pattern: str) -> int:
        found = re.search(pattern, log)
        return int(found.group(1)) if found else 0

    return {
        "registers": number(r"Used (\d+) registers"),
        "stack": number(r"(\d+) bytes stack frame"),
        "spill_stores": number(r"(\d+) bytes spill stores"),
        "spill_loads": number(r"(\d+) bytes spill loads"),
    }


def _sass_tensor_cores(cubin: bytes) -> list[str] | None:
    """Tensor-core SASS opcodes in ``cubin``; ``None`` when cuobjdump is missing."""
    cuobjdump = _tool("cuobjdump")
    if cuobjdump is None:
        return None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        run = subprocess.run([cuobjdump, "-sass", file.name], capture_output=True, text=True)
    if run.returncode != 0:
        return None
    return sorted(set(re.findall(r"\b(HGMMA|HMMA|DMMA|IMMA)\b", run.stdout)))


def max_blocks_per_sm(registers: int, num_warps: int, shared: int, arch: int) -> int:
    """Resident blocks per SM allowed by registers (256-register allocation units per warp), warps and shared
    memory (plus the runtime's 1 KiB per block): the occupancy calculator's rule."""
    registers_per_warp = math.ceil(max(registers, 1) * 32 / 256) * 256
    by_registers = (REGISTERS_PER_SM // registers_per_warp) // num_warps
    by_warps = WARPS_PER_SM // num_warps
    by_shared = SHARED_PER_SM[arch] // (shared + SHARED_RESERVED_PER_BLOCK)
    return min(BLOCKS_PER_SM, by_registers, by_warps, by_shared)


# ----------------------------------------------------------------------------------------------- rows


def _spill_budget(op: str, dtype: str, uses_dot: bool) -> int:
    if dtype in ("fp16", "bf16"):
        return SPILL_BUDGET_HALF
    if dtype == "fp64":
        return SPILL_BUDGET_FP64
    return SPILL_BUDGET_FP32_ATTENTION if uses_dot else SPILL_BUDGET_FP32_MEMORY


def _uses_dot(kernel) -> bool:
    return "tl.dot" in kernel.src or "_dot(" in kernel.src


def _config_text(launch, signature: dict, constexprs: dict) -> str:
    names = launch.kernel.arg_names
    shown = []
    for index, value in sorted(constexprs.items()):
        name = names[index[0]]
        if name.isupper():
            shown.append(f"{name}={getattr(value, 'name', value)}")
    shown.append(f"warps={launch.kwargs.get('num_warps', 4)}")
    if "num_stages" in launch.kwargs:
        shown.append(f"stages={launch.kwargs['num_stages']}")
    return " ".join(shown)


def _failures(row: dict) -> list[str]:
    if "error" in row:
        return [f"compile error: {row['error']}"]
    failures = []
    if row["shared"] > SHARED_PER_BLOCK[ARCHS[row["arch"]]]:
        failures.append(f"shared memory {row['shared']} B > {SHARED_PER_BLOCK[ARCHS[row['arch']]]} B")
    if row["spill_stores"] > row["spill_budget"]:
        failures.append(f"spills {row['spill_stores']} B > budget {row['spill_budget']} B")
    if row["op"] == "attention" and row["dtype"] in ("fp16", "bf16") and row["uses_dot"] and not row["tensor_cores"]:
        failures.append("bf16/fp16 attention without tensor-core instructions")
    return failures


def _known(row: dict) -> str | None:
    for key in ((row["op"], row["kernel"], row["dtype"]), (row["op"], row["kernel"], "*")):
        if key in KNOWN_FAILURES:
            return KNOWN_FAILURES[key]
    return None


def _configuration(launch, job: tuple) -> tuple:
    """What a launcher chooses (constexpr parameters, pointer dtypes, warps, stages, arch), without Triton's integer
    specialisations (== 1, multiple of 16), which follow the shape: one compile per configuration."""
    module_name, kernel_name, signature, constexprs, attrs, options, arch = job
    params = launch.kernel.params
    chosen = sorted((index, str(value)) for index, value in constexprs.items() if params[index[0]].is_constexpr)
    pointers = sorted((name, kind) for name, kind in signature.items() if kind.startswith("*"))
    return (module_name, kernel_name, tuple(chosen), tuple(pointers), options.get("num_warps"),
            options.get("num_stages"), arch)


def _digest(job: tuple) -> str:
    module_name, kernel_name, signature, constexprs, attrs, options, arch = job
    source = getattr(importlib.import_module(module_name), kernel_name).cache_key
    text = repr((module_name, kernel_name, source, sorted(signature.items()), sorted(constexprs.items(), key=str),
                 sorted(attrs.items(), key=str), sorted(options.items(), key=str), arch))
    return hashlib.sha256(text.encode()).hexdigest()


def _cache_folder() -> Path:
    return Path(os.environ.get("GANOPS_GPU_CHECK_CACHE", Path.home() / ".cache" / "ganops-gpu-code-check"))


def _compile_all(jobs: dict[str, tuple], workers: int) -> dict[str, dict]:
    """Results per job digest, from the cache where this exact compile was checked before."""
    cache = _cache_folder()
    cache.mkdir(parents=True, exist_ok=True)
    results, todo = {}, {}
    for digest, job in jobs.items():
        cached = cache / f"{digest}.json"
        if cached.exists():
            results[digest] = json.loads(cached.read_text())
        else:
            todo[digest] = job
    if todo:
        try:
            with concurrent.futures.ProcessPoolExecutor(max_workers=workers) as pool:
                futures = {pool.submit(_compile_job, job): digest for digest, job in todo.items()}
                for future in concurrent.futures.as_completed(futures):
                    results[futures[future]] = future.result()
        except concurrent.futures.process.BrokenProcessPool:
            # A compiler crash (an abort in MLIR or ptxas) kills its worker: find it by compiling the rest alone.
            for digest, job in todo.items():
                if digest in results:
                    continue
                try:
                    with concurrent.futures.ProcessPoolExecutor(max_workers=1) as pool:
                        results[digest] = pool.submit(_compile_job, job).result()
                except concurrent.futures.process.BrokenProcessPool:
                    results[digest] = {"error": "the compiler crashed (the worker process died)"}
        for digest in todo:
            if "error" not in results[digest]:
                # Written whole then renamed: another check running at the same time never reads half a file.
                partial = cache / f"{digest}.{os.getpid()}.partial"
                partial.write_text(json.dumps(results[digest]))
                partial.replace(cache / f"{digest}.json")
    return results


def _compile_in_rounds(jobs: dict[str, tuple], launch_jobs: list, workers: int) -> dict[str, dict]:
    """Compile the first-choice configuration of every launch, then each launch's next fallback only where the
    previous one does not fit the arch's shared memory (as the runtime tries them), until all are settled."""
    results: dict[str, dict] = {}
    longest = max((len(digests) for *_, digests in launch_jobs), default=0)
    for depth in range(longest):
        wanted = {}
        for _, _, arch_name, digests in launch_jobs:
            earlier = [results.get(digest) for digest, _ in digests[:depth]]
            too_big = all(r is not None and "error" not in r and r["shared"] > SHARED_PER_BLOCK[ARCHS[arch_name]]
                          for r in earlier)
            if depth < len(digests) and too_big and digests[depth][0] not in results:
                wanted[digests[depth][0]] = jobs[digests[depth][0]]
        results.update(_compile_all(wanted, workers))
    return results


def triton_rows(archs: list[str], ops: list[str], subset: str, workers: int) -> tuple[list[dict], list[dict]]:
    """``(kernel rows, launch-plan rows)``. Every planned launch is compiled for every arch (deduplicated)."""
    cases: list[Case] = []
    problems: list[dict] = []
    for op in ops:
        try:
            cases += [case for case in CASE_SOURCES[op]() if subset == "full" or case.ci]
        except Exception as error:
            problems.append({"op": op, "kernel": "*", "arch": "*", "dtype": "*", "error": f"cases: {error}"})
    planned = []  # (case, arch, launches planned for that arch)
    for case in cases:
        for arch_name in archs:
            try:
                planned.append((case, arch_name, case.build(ARCHS[arch_name])))
            except Exception as error:
                problems.append({"op": case.op, "kernel": "*", "arch": arch_name, "dtype": case.dtype,
                                 "error": f"plan {case.direction} {case.label}: {type(error).__name__}: {error}"})
    jobs: dict[str, tuple] = {}
    representative: dict[tuple, str] = {}
    launch_jobs = []  # (case, launch, arch, [(digest, config text) per candidate])
    for case, arch_name, launches in planned:
        for launch in launches:
            digests = []
            for candidate in (launch, *launch.fallbacks):
                signature, constexprs, attrs, options = _bind(candidate, ARCHS[arch_name])
                job = (candidate.kernel.fn.__module__, candidate.kernel.fn.__name__, signature, constexprs, attrs,
                       options, ARCHS[arch_name])
                configuration = _configuration(candidate, job)
                if configuration not in representative:
                    representative[configuration] = _digest(job)
                    jobs[representative[configuration]] = job
                digest = representative[configuration]
                digests.append((digest, _config_text(candidate, signature, constexprs)))
            launch_jobs.append((case, launch, arch_name, digests))
    results = _compile_in_rounds(jobs, launch_jobs, workers)

    kernel_rows: dict[tuple, dict] = {}
    plan_rows = []
    for case, launch, arch_name, digests in launch_jobs:
        # The runtime runs the first candidate that fits the arch's shared memory.
        chosen, rejected = None, []
        for digest, config in digests:
            result = results[digest]
            chosen = (digest, config)
            if "error" in result or result["shared"] <= SHARED_PER_BLOCK[ARCHS[arch_name]]:
                break
            rejected.append(config)
        digest, config = chosen
        key = (case.op, launch.name, arch_name, case.dtype, case.tf32, digest)
        if key not in kernel_rows:
            result = results[digest]
            row = {
                "op": case.op, "kernel": launch.name.strip("_").removesuffix("_kernel"), "arch": arch_name,
                "dtype": case.dtype + ("+tf32" if case.tf32 else ""), "config": config,
                "rejected_configs": rejected, "direction": case.direction,
                "uses_dot": _uses_dot(launch.kernel), "cases": [],
                **result,
            }
            if "error" not in result:
                row["tensor_cores"] = sorted(set(result["ptx_tensor_cores"]) | set(result["sass_tensor_cores"] or []))
                row["max_blocks_per_sm"] = max_blocks_per_sm(
                    result["registers"], result["num_warps"], result["shared"], ARCHS[arch_name]
                )
            row["spill_budget"] = _spill_budget(case.op, case.dtype, row["uses_dot"])
            row["dtype_name"] = case.dtype
            kernel_rows[key] = row
        kernel_rows[key]["cases"].append(f"{case.source}: {case.direction} {case.label}")
        if arch_name == archs[-1] and case.source == "bench":
            plan_rows.append(_plan_row(case, launch, kernel_rows[key]))
    rows = list(kernel_rows.values())
    for row in rows:
        failures = _failures({**row, "dtype": row["dtype_name"]})
        known = _known({**row, "dtype": row["dtype_name"]})
        row["failures"] = failures
        row["status"] = ("KNOWN-FAIL" if known else "FAIL") if failures else ("FIXED" if known else "ok")
    return problems + rows, plan_rows


def _plan_row(case: Case, launch, kernel_row: dict) -> dict:
    blocks = math.prod(launch.grid)
    row = {
        "op": case.op, "direction": case.direction, "case": case.label, "dtype": kernel_row["dtype"],
        "kernel": kernel_row["kernel"], "grid": list(launch.grid), "blocks": blocks,
        "num_warps": kernel_row.get("num_warps"), "config": kernel_row["config"],
        "bytes_moved": launch.bytes_moved, "flops": launch.flops, "case_minimum_bytes": case.minimum_bytes,
        "case_flops": case.flops,
    }
    resident = kernel_row.get("max_blocks_per_sm")
    row["waves"] = blocks / (SMS * resident) if resident else None
    row["under_one_wave"] = blocks < SMS
    return row


def _small_grid_cost(row: dict, dtype: str) -> float:
    """Seconds an H100 loses on ``row``'s launch because its grid has fewer blocks than SMs (roofline model)."""
    bandwidth, half_flops, single_flops = GPUS["H100"]
    compute_rate = half_flops if dtype in ("bf16", "fp16", "fp32+tf32") else single_flops
    full = max(row["bytes_moved"] / bandwidth, row["flops"] / compute_rate)
    return full / min(1.0, row["blocks"] / SMS) - full


def _summarise_plans(plan_rows: list[dict]) -> list[dict]:
    """One row per (op, direction, case, dtype): the launches, bytes vs minimum and the roofline times."""
    grouped: dict[tuple, list[dict]] = {}
    for row in plan_rows:
        grouped.setdefault((row["op"], row["direction"], row["case"], row["dtype"]), []).append(row)
    summary = []
    for (op, direction, case, dtype), rows in grouped.items():
        moved = sum(r["bytes_moved"] for r in rows)
        flops = sum(r["flops"] for r in rows)
        minimum = rows[0]["case_minimum_bytes"]
        times = {}
        for gpu, (bandwidth, half_flops, single_flops) in GPUS.items():
            compute_rate = half_flops if dtype in ("bf16", "fp16", "fp32+tf32") else single_flops
            if dtype == "fp32+tf32":
                compute_rate = half_flops / 2
            times[gpu] = max(moved / bandwidth, flops / compute_rate if flops else 0.0)
            times[f"{gpu} minimum"] = max(minimum / bandwidth, rows[0]["case_flops"] / compute_rate if flops else 0.0)
            # A grid of fewer blocks than SMs can use at most that share of the bandwidth (and of the compute).
            times[f"{gpu} grid-limited"] = sum(
                max(r["bytes_moved"] / bandwidth, r["flops"] / compute_rate) / min(1.0, r["blocks"] / SMS) for r in rows
            )
        summary.append({
            "op": op, "direction": direction, "case": case, "dtype": dtype,
            "launches": [f"{r['kernel']} grid={tuple(r['grid'])} warps={r['num_warps']}"
                         + (" <1 wave" if r["under_one_wave"] else "") for r in rows],
            "bytes_moved": moved, "minimum_bytes": minimum, "flops": flops,
            "roofline_us": {gpu: t * 1e6 for gpu, t in times.items()},
            "flagged": [r["kernel"] for r in rows if r["under_one_wave"] and _small_grid_cost(r, dtype) > SMALL_GRID_COST_FLAG_S],
        })
    return summary


# ----------------------------------------------------------------------------------------------- CUDA


def cuda_rows(archs: list[str]) -> tuple[list[dict], str | None]:
    """One row per (CUDA kernel, arch) from ``nvcc -cubin -Xptxas -v``; ``(rows, note)``."""
    nvcc = shutil.which("nvcc") or (Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc")
    if not Path(nvcc).exists():
        return [], "nvcc not found: CUDA kernels not compiled (set CUDA_HOME or put nvcc on PATH)"
    sources = sorted((ROOT / "csrc" / "cuda").glob("*.cu"))
    jobs = [(str(nvcc), str(source), ARCHS[arch]) for source in sources for arch in archs]
    rows = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        for rows_of_job in pool.map(_nvcc_job, jobs):
            rows += rows_of_job
    return rows, None


def _nvcc_job(job: tuple) -> list[dict]:
    nvcc, source, arch = job
    op = Path(source).stem
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        run = subprocess.run(
            [nvcc, "-cubin", f"-arch=sm_{arch}", "-std=c++17", "-O3", "-Xptxas", "-v", "-I", str(ROOT / "csrc"),
             "-I", str(ROOT / "csrc" / "cuda"), source, "-o", str(cubin)],
            capture_output=True, text=True,
        )
        if run.returncode != 0:
            return [{"op": op, "kernel": Path(source).name, "arch": f"sm_{arch}", "dtype": "*",
                     "error": run.stderr.strip()[-400:], "status": "FAIL", "failures": ["nvcc error"]}]
        sass = _sass_by_function(cubin)
    rows = []
    for function, log in re.findall(r"Compiling entry function '(\w+)' for 'sm_\d+a?'\n(.*?)(?=ptxas info\s+: Compiling|\Z)",
                                     run.stderr, re.S):
        resources = _parse_ptxas(log)
        shared = int(m.group(1)) if (m := re.search(r"(\d+) bytes smem", log)) else 0
        name = _demangle(function)
        row = {"op": op, "kernel": name, "arch": f"sm_{arch}", "dtype": _dtype_of(name), "config": "",
               "shared": shared, **resources, "tensor_cores": sass.get(function, [])}
        row["max_blocks_per_sm"] = None
        row["failures"] = []
        if resources["spill_stores"] > _spill_budget(op, row["dtype"], False) and row["dtype"] in ("fp16", "bf16"):
            row["failures"].append(f"spills {resources['spill_stores']} B")
        # The attention's tensor-core family (fp16, bf16, and fp32 as TF32) must compile to MMA instructions.
        if sass and name.startswith("tc::") and "HMMA" not in row["tensor_cores"]:
            row["failures"].append("tensor-core kernel without HMMA in its SASS")
        row["status"] = "FAIL" if row["failures"] else "ok"
        rows.append(row)
    return rows


def _sass_by_function(cubin: Path) -> dict[str, list[str]]:
    cuobjdump = _tool("cuobjdump")
    if cuobjdump is None:
        return {}
    run = subprocess.run([cuobjdump, "-sass", str(cubin)], capture_output=True, text=True)
    found = {}
    for function, body in re.findall(r"Function : (\w+)\n(.*?)(?=\n\s*Function : |\Z)", run.stdout, re.S):
        found[function] = sorted(set(re.findall(r"\b(HGMMA|HMMA|DMMA|IMMA)\b", body)))
    return found


def _demangle(name: str) -> str:
    filt = shutil.which("c++filt")
    if filt is None:
        return name
    text = subprocess.run([filt, name], capture_output=True, text=True).stdout.strip() or name
    text = text.removeprefix("void ").replace("(anonymous namespace)::", "").replace("ganops::cuda_kernels::", "")
    if text.endswith(")"):  # drop the parameter list: the balanced group that ends the name
        depth = 0
        for index in range(len(text) - 1, -1, -1):
            depth += {")": 1, "(": -1}.get(text[index], 0)
            if depth == 0:
                return text[:index]
    return text


def _dtype_of(name: str) -> str:
    """The element type among a CUDA kernel's template arguments (``*`` where it has none)."""
    arguments = name[name.find("<"):] if "<" in name else ""
    for pattern, dtype in (("bfloat16", "bf16"), ("half", "fp16"), ("double", "fp64"), ("float", "fp32")):
        if pattern in arguments.lower():
            return dtype
    return "*"


# ----------------------------------------------------------------------------------------------- report


def _kernel_table(rows: list[dict]) -> list[str]:
    header = "| kernel | arch | dtype | config | regs | spill B (budget) | stack B | smem B | CTAs/SM | tensor cores | status |"
    lines = [header, "|" + "---|" * 11]
    for row in sorted(rows, key=lambda r: (r["kernel"], r["arch"], r["dtype"], r.get("config", ""))):
        if "error" in row:
            lines.append(f"| {row['kernel']} | {row['arch']} | {row['dtype']} | {row.get('config', '')} | "
                         f"| | | | | | FAIL: {row['error'][:200]} |")
            continue
        status = row["status"] + (": " + "; ".join(row["failures"]) if row["failures"] else "")
        if row.get("rejected_configs"):
            status += f" (fallback; did not fit: {', '.join(row['rejected_configs'])})"
        budget = row.get("spill_budget", "")
        tensor = "+".join(row["tensor_cores"]) or "-"
        lines.append(
            f"| {row['kernel']} | {row['arch']} | {row['dtype']} | {row.get('config', '')} | {row['registers']} | "
            f"{row['spill_stores']} ({budget}) | {row['stack']} | {row['shared']} | {row['max_blocks_per_sm'] or ''} | "
            f"{tensor} | {status} |"
        )
    return lines


def _plan_table(summary: list[dict]) -> list[str]:
    lines = [
        "| direction | case | dtype | launches (grid, warps; <1 wave = fewer than 132 blocks) | MB moved | MB minimum "
        "| H100 us | H100 us at minimum | H100 us grid-limited | H200 us | H200 us grid-limited |",
        "|" + "---|" * 11,
    ]
    for row in summary:
        times = row["roofline_us"]
        lines.append(
            f"| {row['direction']} | {row['case']} | {row['dtype']} | {'; '.join(row['launches'])} | "
            f"{row['bytes_moved'] / 1e6:.2f} | {row['minimum_bytes'] / 1e6:.2f} | {times['H100']:.1f} | "
            f"{times['H100 minimum']:.1f} | {times['H100 grid-limited']:.1f} | {times['H200']:.1f} | "
            f"{times['H200 grid-limited']:.1f} |"
        )
    return lines


def report(result: dict) -> str:
    """The markdown report: a summary, then per op the kernel table and the launch plan."""
    rows = result["kernels"]
    lines = ["# Compile-only GPU check", "", f"Archs: {', '.join(result['archs'])}; subset: {result['subset']}; "
             f"triton {result['triton']}; generated by `python -m ganops check-gpu-code`.", ""]
    lines += ["## Summary", "", "| op | kernel rows | compile errors | spilling rows (max B) | over budget | "
              "with tensor cores | launches slowed by a grid under one wave (> 1 us on H100) |", "|" + "---|" * 7]
    for op in sorted({r["op"] for r in rows}):
        mine = [r for r in rows if r["op"] == op]
        compiled = [r for r in mine if "error" not in r]
        spilling = [r for r in compiled if r["spill_stores"]]
        flagged = sorted({kernel for p in result["plans"] if p["op"] == op for kernel in p["flagged"]})
        lines.append(
            f"| {op} | {len(mine)} | {len(mine) - len(compiled)} | {len(spilling)} "
            f"({max((r['spill_stores'] for r in spilling), default=0)}) | "
            f"{sum(1 for r in mine if r.get('status') in ('FAIL', 'KNOWN-FAIL'))} | "
            f"{sum(1 for r in compiled if r['tensor_cores'])} | {', '.join(flagged) or '-'} |"
        )
    lines += ["", f"Result: {'PASS' if result['passed'] else 'FAIL'}.", ""]
    for note in result["notes"]:
        lines.append(f"Note: {note}")
    for op in sorted({r["op"] for r in rows}):
        lines += ["", f"## {op}", "", "### Kernels", ""]
        lines += _kernel_table([r for r in rows if r["op"] == op])
        plans = [p for p in result["plans"] if p["op"] == op]
        if plans:
            lines += ["", "### Launch plan", "",
                      "Roofline: max(bytes / bandwidth, flops / peak) summed over the launches; 'at minimum' uses the "
                      "op's minimum bytes (inputs read once, outputs written once) and useful flops; 'grid-limited' "
                      "divides each launch's time by min(1, blocks / 132): a grid smaller than the GPU uses at most "
                      "that share of it. Predictions for a GPU run to check, not measurements.", ""]
            lines += _plan_table(plans)
    return "\n".join(lines) + "\n"


def run_check(archs: list[str], ops: list[str], subset: str = "full", workers: int | None = None,
              cuda: bool = True) -> dict:
    """Compile everything and return the JSON-ready result (``result["passed"]`` is the verdict)."""
    import triton

    workers = workers or max(1, min(os.cpu_count() or 1, 16))
    kernel_rows, plan_rows = triton_rows(archs, ops, subset, workers)
    notes = []
    if _tool("cuobjdump") is None:
        notes.append("cuobjdump not found: tensor-core use read from the PTX only (no SASS)")
    if cuda:
        nvcc_rows, note = cuda_rows(archs)
        kernel_rows += nvcc_rows
        if note:
            notes.append(note)
    for row in kernel_rows:
        row.setdefault("status", "FAIL")
        row.setdefault("failures", [row.get("error", "")])
    passed = not any(row["status"] == "FAIL" for row in kernel_rows)
    return {
        "archs": archs, "subset": subset, "triton": triton.__version__, "passed": passed, "notes": notes,
        "kernels": kernel_rows, "plans": _summarise_plans(plan_rows),
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--arch", default="sm_80,sm_90", help="comma-separated archs among sm_80, sm_90")
    parser.add_argument("--op", action="append", choices=sorted(CASE_SOURCES), help="only this op (repeatable)")
    parser.add_argument("--subset", choices=("full", "ci"), default="full",
                        help="full: every case; ci: one shape per configuration class (what CI runs)")
    parser.add_argument("--json", default=None, help="write the result as JSON here")
    parser.add_argument("--markdown", default=None, help="write the markdown report here")
    parser.add_argument("--jobs", type=int, default=None, help="compile processes (default: CPU count, max 16)")
    parser.add_argument("--no-cuda", action="store_true", help="skip the nvcc compiles of csrc/cuda")


def main(args: argparse.Namespace) -> int:
    archs = [a.strip() for a in args.arch.split(",") if a.strip()]
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        raise SystemExit(f"check-gpu-code: --arch must be among {sorted(ARCHS)}, got {unknown}")
    result = run_check(archs, args.op or list(CASE_SOURCES), args.subset, args.jobs, cuda=not args.no_cuda)
    text = report(result)
    print(text)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=1, default=str))
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text)
    return 0 if result["passed"] else 1
