"""What every Triton launcher in ``triton_kernels/`` shares: launches described as plain data, run under a device
guard, on grids that fit CUDA's limits.

A launcher first *plans* its launches (``<name>_plan`` returns ``(outputs, launches)``) and then runs them with
``run_launches``. ``python -m ganops check-gpu-code`` calls the same plan functions with ``meta`` tensors and
compiles every planned launch for sm_80 / sm_90 without a GPU, so the configuration it checks is the one a launch
uses. The interface is described in ``/tmp/ganops/triton_protocol.md`` and ``ganops/gpu_code_check.py``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.runtime.errors import OutOfResources

# CUDA's grid limits: axis 0 up to 2^31 - 1 blocks, axes 1 and 2 up to 65535.
MAX_GRID = (2**31 - 1, 65535, 65535)

TRITON_DTYPES = {
    torch.float16: tl.float16,
    torch.bfloat16: tl.bfloat16,
    torch.float32: tl.float32,
    torch.float64: tl.float64,
}


@dataclass
class Launch:
    """One ``kernel[grid](*args, **kwargs)``, with the model of its memory traffic used by the launch plan."""

    kernel: triton.runtime.JITFunction
    grid: tuple[int, ...]
    args: tuple
    kwargs: dict
    bytes_moved: int = 0
    flops: int = 0
    # Complete alternative launches (smaller blocks, their own grid), tried in order on OutOfResources.
    fallbacks: tuple[Launch, ...] = ()
    label: str = ""

    @property
    def name(self) -> str:
        return self.kernel.fn.__name__


def check_grid(grid: tuple[int, ...]) -> tuple[int, ...]:
    """``grid``, after checking it against CUDA's limits (a larger grid fails to launch, or wraps silently)."""
    for axis, (size, limit) in enumerate(zip(grid, MAX_GRID)):
        if size > limit:
            raise ValueError(f"grid axis {axis} has {size} blocks, above CUDA's limit of {limit}")
    return grid


@triton.jit
def inverse_or_zero(x):
    """``1 / x``, and ``0`` at ``x = 0`` (NaN stays NaN)."""
    return tl.where(x == 0, 0.0, 1.0 / tl.where(x == 0, 1.0, x))


@triton.jit
def scaled_squares_add(scale, squares, x):
    """Adds the 1-D tile ``x`` to a running scaled sum of squares and returns it: ``scale`` (0-d) is the largest
    ``|x|`` so far, ``squares`` (one per lane) the sum of ``(x / scale)^2``, rescaled when a tile raises the scale.
    No square over- or underflows (LAPACK's ``nrm2``); a non-finite ``x`` makes ``squares`` NaN. NaN lanes are
    left out of the maximum (they make ``squares`` NaN anyway), so that no reduction sees only NaN."""
    new_scale = tl.maximum(scale, tl.max(tl.where(x == x, tl.abs(x), 0.0), axis=0))
    # Divided, not multiplied by 1 / new_scale: the inverse of a subnormal scale overflows.
    divisor = tl.where(new_scale == 0, 1.0, new_scale)
    ratio = scale / divisor
    scaled = x / divisor
    return new_scale, squares * (ratio * ratio) + scaled * scaled


@triton.jit
def scaled_norm(scale, squares):
    """The norm of what :func:`scaled_squares_add` accumulated: ``scale * sqrt(sum(squares))``, NaN where an entry
    was NaN, and ``inf`` where one was infinite (as the plain norm; an infinite entry beside a NaN gives inf)."""
    return tl.where(scale == float("inf"), scale, scale * tl.sqrt(tl.sum(squares, axis=0)))


def target_arch(device: torch.device, arch: int | None = None) -> int | None:
    """The compute capability (80 for sm_80, 90 for sm_90) a launch on ``device`` is configured for: ``arch`` where
    the caller names one (the compile-only check, planning on ``meta`` tensors), else the CUDA device's own; ``None``
    for any other device."""
    if arch is not None:
        return arch
    if device.type != "cuda":
        return None
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def triton_compute_dtype(compute_dtype: torch.dtype):
    """The ``tl`` dtype of ``compute_dtype`` (which the caller chose: the rule lives in ``ganops/_dtypes.py``)."""
    return TRITON_DTYPES[compute_dtype]


def scalar_tensor(value: float, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``value`` as a 1-element tensor: a Python float reaches a compiled kernel as fp32, so fp64 kernels read
    their scalars from memory to keep them fp64."""
    return torch.full((1,), value, dtype=dtype, device=device)


def launch_device(launches: list[Launch]) -> torch.device | None:
    """The device of the first tensor argument of the first launch (all tensors of one op share it)."""
    for launch in launches:
        for arg in launch.args:
            if isinstance(arg, torch.Tensor):
                return arg.device
    return None


# Per (kernel, configuration): the index of the first fallback that fitted, once a launch ran out of resources.
_fitting_fallbacks: dict[tuple, int] = {}


def _fallback_key(launch: Launch) -> tuple:
    return (launch.name, tuple(sorted((name, str(value)) for name, value in launch.kwargs.items())))


def _run_one(launch: Launch) -> None:
    key = _fallback_key(launch)
    choice = _fitting_fallbacks.get(key, -1)
    while True:
        chosen = launch if choice < 0 else launch.fallbacks[choice]
        try:
            chosen.kernel[check_grid(chosen.grid)](*chosen.args, **chosen.kwargs)
            return
        except OutOfResources:
            choice += 1
            if choice >= len(launch.fallbacks):
                raise
            _fitting_fallbacks[key] = choice


def run_launches(launches: list[Launch]) -> None:
    """Runs ``launches`` in order on their tensors' device: Triton launches on the *current* CUDA device, so
    tensors on ``cuda:1`` while the current device is 0 would otherwise be read from the wrong GPU."""
    device = launch_device(launches)
    guard = torch.cuda.device(device) if device is not None and device.type == "cuda" else contextlib.nullcontext()
    with guard:
        for launch in launches:
            _run_one(launch)
