"""The benchmark harness shared by every op.

Each op module (``benchmarks/<op>.py``) defines ``OP`` and ``cases(device, quick) -> list[Case]``. For every case
the harness times each implementation (CPU: median of ``time.perf_counter`` over repetitions; CUDA: median of
``triton.testing.do_bench``), measures its peak tensor memory, and reports the speedup over ``"eager"`` (the
plain reference, the baseline of every ratio) and the achieved fraction of the memory roofline (``bytes_moved``
over the measured copy bandwidth) and of the compute roofline (``flops`` over the measured matmul rate).
Timings are only comparable within one run on one device.
"""

from __future__ import annotations

import datetime
import json
import math
import platform
import re
import statistics
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ganops import _backend
from ganops.profiling import peak_memory_bytes

BASELINE = "eager"
KERNEL_BACKENDS = ("triton", "cpp")
RESULTS_ROOT = Path(__file__).resolve().parent / "results"


@dataclass
class Case:
    """One shape, dtype and direction of one op, with every implementation to time on it."""

    label: str
    direction: str
    setup: Callable[[], tuple]
    implementations: dict[str, Callable]
    bytes_moved: int = 0
    flops: int = 0

    def __post_init__(self) -> None:
        if BASELINE not in self.implementations:
            raise ValueError(f"case {self.label!r} ({self.direction}) has no {BASELINE!r} implementation")


@dataclass
class DeviceRates:
    """Measured copy bandwidth (bytes/s) and matmul rate per dtype (FLOP/s) of one device."""

    device: torch.device
    quick: bool
    copy_bandwidth: float = 0.0
    matmul_rate: dict[str, float] = field(default_factory=dict)


def ganops_implementations(make_fn: Callable[[str], Callable], device: torch.device) -> dict[str, Callable]:
    """``{"ganops:<backend>": make_fn(backend)}`` for each kernel backend that runs on ``device``.

    Triton is never timed on the CPU: its interpreter checks correctness and says nothing about speed.
    """
    implementations = {}
    for backend in KERNEL_BACKENDS:
        if backend == "triton" and device.type == "cpu":
            continue
        if _backend.unavailable_reason(backend, device.type) is None:
            implementations[f"ganops:{backend}"] = make_fn(backend)
    return implementations


def compiled(fn: Callable) -> Callable:
    """``torch.compile(fn)``; if compiling fails, the harness records the error for this implementation."""
    return torch.compile(fn)


def forward_only(forward: Callable, num_inputs: int) -> Callable:
    """A runner ``(*inputs, grad_out, *cotangents)`` that times ``forward(*inputs)`` alone."""
    return lambda *arguments: forward(*arguments[:num_inputs])


def forward_backward(forward: Callable, num_inputs: int) -> Callable:
    """A runner ``(*inputs, grad_out, *cotangents)`` that times forward and the gradients of the inputs."""

    def run(*arguments):
        inputs, grad_out = arguments[:num_inputs], arguments[num_inputs]
        return torch.autograd.grad(forward(*inputs), inputs, grad_out)

    return run


def double_backward(forward: Callable, num_inputs: int) -> Callable:
    """A runner ``(*inputs, grad_out, *cotangents)`` for the gradient-penalty pattern: first derivatives with
    ``create_graph``, then the gradient of their product with ``cotangents`` w.r.t. the inputs and ``grad_out``."""

    def run(*arguments):
        inputs, grad_out, cotangents = arguments[:num_inputs], arguments[num_inputs], arguments[num_inputs + 1 :]
        grads = torch.autograd.grad(forward(*inputs), inputs, grad_out, create_graph=True)
        return torch.autograd.grad(grads, (*inputs, grad_out), cotangents)

    return run


@contextmanager
def tf32_matmuls(allowed: bool) -> Iterator[None]:
    """torch's float32 matmuls on TF32 or not (``torch.backends.cuda.matmul.allow_tf32``) inside, restored after."""
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allowed
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, quick: bool) -> float:
    if device.type == "cuda":
        from triton.testing import do_bench

        return do_bench(fn, warmup=10 if quick else 25, rep=40 if quick else 100, return_mode="median") / 1e3
    fn()
    samples: list[float] = []
    budget = 0.15 if quick else 1.0
    started = time.perf_counter()
    while len(samples) < 3 or (time.perf_counter() - started < budget and len(samples) < 200):
        begin = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - begin)
    return statistics.median(samples)


def peak_bytes(fn: Callable[[], object], device: torch.device, name: str) -> int | None:
    """Peak memory of one call: the CUDA allocator's statistics on a GPU, tensor accounting on the CPU.

    Code compiled by torch.compile allocates outside the dispatcher on the CPU, so there it is not measured.
    """
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if name == "torch.compile":
        return None
    return peak_memory_bytes(fn)


def measure_rates(device: torch.device, quick: bool) -> DeviceRates:
    rates = DeviceRates(device, quick)
    elements = (256 if device.type == "cuda" else 16) * 2**20
    source = torch.empty(elements, dtype=torch.float32, device=device)
    target = torch.empty_like(source)
    seconds = median_seconds(lambda: target.copy_(source), device, quick)
    rates.copy_bandwidth = 2 * source.nbytes / seconds
    return rates


def matmul_rate(rates: DeviceRates, dtype: torch.dtype) -> float:
    key = dtype_name(dtype)
    if key not in rates.matmul_rate:
        size = 4096 if rates.device.type == "cuda" else 512
        a = torch.randn(size, size, device=rates.device).to(dtype)
        b = torch.randn(size, size, device=rates.device).to(dtype)
        rates.matmul_rate[key] = 2 * size**3 / median_seconds(lambda: a @ b, rates.device, rates.quick)
    return rates.matmul_rate[key]


def case_dtype(label: str) -> torch.dtype:
    for name in ("float64", "float32", "float16", "bfloat16"):
        if re.search(rf"\b{name}\b", label):
            return getattr(torch, name)
    return torch.float32


def run_case(case: Case, device: torch.device, rates: DeviceRates, quick: bool, progress) -> dict:
    inputs = case.setup()
    results: dict[str, dict] = {}
    for name, fn in case.implementations.items():
        progress.set_postfix_str(f"{case.label} {case.direction} {name}"[:70])
        call = lambda fn=fn: fn(*inputs)  # noqa: E731
        try:
            seconds = median_seconds(call, device, quick)
            memory = peak_bytes(call, device, name)
        except Exception as error:  # one implementation failing (unsupported shape, compile error) is a result
            results[name] = {"error": f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"[:200]}
        else:
            entry = {"median_ms": seconds * 1e3, "peak_memory_bytes": memory}
            if case.bytes_moved:
                entry["memory_roofline_fraction"] = case.bytes_moved / seconds / rates.copy_bandwidth
            if case.flops:
                entry["achieved_tflops"] = case.flops / seconds / 1e12
                entry["compute_roofline_fraction"] = case.flops / seconds / matmul_rate(rates, case_dtype(case.label))
            results[name] = entry
        progress.update(1)
    baseline = results[BASELINE].get("median_ms")
    for entry in results.values():
        if baseline and "median_ms" in entry:
            entry["speedup_vs_eager"] = baseline / entry["median_ms"]
    return {
        "label": case.label,
        "direction": case.direction,
        "bytes_moved": case.bytes_moved,
        "flops": case.flops,
        "implementations": results,
    }


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "cpu"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        match = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        if match:
            model = match.group(1).strip()
    return f"{model}, {torch.get_num_threads()} threads"


def device_slug(device: torch.device) -> str:
    name = device_description(device).split(",")[0]
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return slug if device.type == "cuda" else f"cpu-{slug}"


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True,
            cwd=Path(__file__).parent,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def environment(device: torch.device, rates: DeviceRates, quick: bool) -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # triton is optional
        triton_version = "unavailable"
    return {
        "device": device_description(device),
        "device_type": device.type,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "triton": triton_version,
        "python": platform.python_version(),
        "commit": git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick,
        "copy_bandwidth_gb_per_s": rates.copy_bandwidth / 1e9,
        "matmul_tflops": {dtype: rate / 1e12 for dtype, rate in rates.matmul_rate.items()},
    }


def _format_bytes(value: int | None) -> str:
    if value is None:
        return "n/a"
    if value >= 2**20:
        return f"{value / 2**20:.1f} MiB"
    return f"{value / 2**10:.1f} KiB" if value >= 2**10 else f"{value} B"


def markdown_table(op: str, report: dict) -> str:
    env = report["environment"]
    lines = [
        f"# {op} on {env['device']}",
        "",
        f"torch {env['torch']} (CUDA {env['cuda']}), triton {env['triton']}, python {env['python']}, "
        f"commit {env['commit']}, {env['date']}{', quick mode' if env['quick'] else ''}. "
        f"Medians of one run on one device; speedup is eager time / implementation time. Copy bandwidth "
        f"{env['copy_bandwidth_gb_per_s']:.1f} GB/s"
        + "".join(f", {dtype} matmul {rate:.2f} TFLOP/s" for dtype, rate in env["matmul_tflops"].items())
        + ".",
        "",
        "| case | direction | implementation | median | speedup vs eager | peak memory | memory roofline | TFLOP/s (roofline) |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for case in report["cases"]:
        for name, entry in case["implementations"].items():
            if "error" in entry:
                lines.append(f"| {case['label']} | {case['direction']} | {name} | failed: {entry['error']} | | | | |")
                continue
            memory_roofline = entry.get("memory_roofline_fraction")
            roofline = "" if memory_roofline is None else f"{memory_roofline:.1%}"
            tflops = entry.get("achieved_tflops")
            compute = "" if tflops is None else f"{tflops:.3f} ({entry['compute_roofline_fraction']:.1%})"
            speedup = entry.get("speedup_vs_eager", float("nan"))
            lines.append(
                f"| {case['label']} | {case['direction']} | {name} | {entry['median_ms']:.3f} ms | "
                f"{speedup:.2f}x | {_format_bytes(entry['peak_memory_bytes'])} | {roofline} | {compute} |"
            )
    return "\n".join(lines) + "\n"


def run_op(module, device: torch.device, quick: bool, output: Path, rates: DeviceRates) -> dict:
    from tqdm import tqdm

    cases = module.cases(device, quick)
    total = sum(len(case.implementations) for case in cases)
    results = []
    with tqdm(total=total, desc=module.OP, unit="run") as progress:
        for case in cases:
            results.append(run_case(case, device, rates, quick, progress))
    report = {"op": module.OP, "environment": environment(device, rates, quick), "cases": results}
    output.mkdir(parents=True, exist_ok=True)
    (output / f"{module.OP}.json").write_text(json.dumps(report, indent=2) + "\n")
    (output / f"{module.OP}.md").write_text(markdown_table(module.OP, report))
    return report


def ranking(report: dict) -> tuple[list[str], dict[str, float]]:
    """Backends of one op ordered by the geometric mean of their speedup over eager across all cases.

    ``reference`` (the eager baseline, speedup 1) is ranked like the others, so a kernel slower than eager
    never becomes the ``auto`` choice. A backend missing from some cases is ranked on the cases it ran.
    """
    logs: dict[str, list[float]] = {"reference": [0.0]}
    for case in report["cases"]:
        for name, entry in case["implementations"].items():
            if name.startswith("ganops:") and "speedup_vs_eager" in entry:
                logs.setdefault(name.removeprefix("ganops:"), []).append(math.log(entry["speedup_vs_eager"]))
    geomean = {backend: math.exp(statistics.fmean(values)) for backend, values in logs.items()}
    return sorted(geomean, key=geomean.get, reverse=True), geomean

