"""Implementation of ``python -m ganops`` commands."""

from __future__ import annotations

import argparse
import importlib.util
import platform
import sys
from pathlib import Path

import torch

from ganops import _backend, _extension, _triton

OPS = ("minibatch_stddev", "spectral_norm", "attention", "gradient_penalty")


def _version(module: str) -> str:
    if importlib.util.find_spec(module) is None:
        return "not installed"
    try:
        return __import__(module).__version__
    except Exception as error:  # a broken optional dependency is reported, not raised
        return f"broken ({error})"


def info_text() -> str:
    import ganops

    devices = ["cpu"]
    lines = [
        f"ganops {ganops.__version__}",
        f"python {platform.python_version()} ({sys.executable})",
        f"torch {torch.__version__} (CUDA {torch.version.cuda or 'none'})",
        f"triton {_version('triton')}" + (" [TRITON_INTERPRET=1]" if _triton.interpreter_enabled() else ""),
        f"compiled extension: {'loaded' if _extension.is_loaded() else _extension.load_error()}",
    ]
    if _extension.is_loaded():
        lines.append(f"  CUDA kernels built: {_extension.cuda_kernels_built()}")
    if torch.cuda.is_available():
        devices.append("cuda")
        lines.append(f"GPU: {torch.cuda.get_device_name()} (capability {torch.cuda.get_device_capability()})")
    else:
        lines.append("GPU: none")
    lines.append("")
    lines.append("backends per op and device (auto = the measured fastest available; see README):")
    for op in OPS:
        for device in devices:
            lines.append(f"  {op} on {device}: auto -> {_backend.auto_backend(op, device)}")
            for backend in _backend.BACKENDS:
                reason = _backend.unavailable_reason(backend, device)
                lines.append(f"    {backend:<10} {'available' if reason is None else 'unavailable: ' + reason}")
    return "\n".join(lines)


def benchmarks_folder() -> Path:
    """The repository's ``benchmarks/`` (the harness is not part of the installed package)."""
    for candidate in (Path(__file__).resolve().parents[1] / "benchmarks", Path.cwd() / "benchmarks"):
        if (candidate / "harness.py").exists():
            return candidate
    raise SystemExit(
        "python -m ganops bench needs the benchmarks/ folder of a ganops source checkout: "
        "run it from the repository root (or install with `pip install -e .`)"
    )


def run_benchmarks(args: argparse.Namespace) -> int:
    folder = benchmarks_folder()
    sys.path.insert(0, str(folder.parent))
    if getattr(args, "e2e", False):
        from benchmarks import e2e

        return e2e.main(args)
    from benchmarks import run

    return run.main(args)


def add_check_gpu_code_arguments(parser: argparse.ArgumentParser) -> None:
    from ganops import gpu_code_check

    gpu_code_check.add_arguments(parser)


def check_gpu_code(args: argparse.Namespace) -> int:
    """``python -m ganops check-gpu-code``: see ``ganops/gpu_code_check.py``."""
    if _triton.interpreter_enabled():
        raise SystemExit("check-gpu-code compiles real GPU kernels: run it with TRITON_INTERPRET unset or 0")
    from ganops import gpu_code_check

    return gpu_code_check.main(args)
