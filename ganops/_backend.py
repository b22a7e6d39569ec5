"""Backend selection: ``backend=`` argument > ``ganops.use_backend`` > ``GANOPS_BACKEND`` > ``"auto"``.

``"auto"`` picks, per op and device type, the first available backend of the ranking measured by the
benchmarks (``ganops/measured_rankings.json``, written by ``python -m ganops bench --write-rankings``).
Without a measurement for that op and device it picks the reference: ganops never guesses that a
kernel is faster.

The kernels' derivatives are registered for reverse-mode autograd only (``torch.library.register_autograd``
has no forward-mode rule, and torch.func cannot run the autograd.Function it generates). So whenever a call
needs another kind of derivative -- a forward-mode dual tensor (``torch.autograd.forward_ad``), or a
``torch.func`` transform that differentiates (``grad``, ``jacrev``, ``jvp``, ``jacfwd``, ``hessian``) -- every
backend runs the reference, which torch differentiates in every mode. ``vmap`` alone keeps the kernels.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import os
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import Tensor
from torch.autograd import forward_ad

from ganops import _extension, _triton
from ganops._once import once

BACKENDS = ("reference", "triton", "cpp")
CHOICES = BACKENDS + ("auto",)
RANKINGS_PATH = Path(__file__).with_name("measured_rankings.json")

_context_backend: contextvars.ContextVar[str | None] = contextvars.ContextVar("ganops_backend", default=None)


def _check_name(name: str, source: str) -> str:
    if name not in CHOICES:
        raise ValueError(f"{source} must be one of {CHOICES}, got {name!r}")
    return name


@contextlib.contextmanager
def use_backend(name: str) -> Iterator[None]:
    """Run every ganops op inside the ``with`` block on backend ``name`` (unless a call passes ``backend=``).

    >>> with ganops.use_backend("reference"):
    ...     y = ganops.minibatch_stddev(x)
    """
    token = _context_backend.set(_check_name(name, "use_backend(name)"))
    try:
        yield
    finally:
        _context_backend.reset(token)


def requested_backend(backend: str | None) -> str:
    """The backend name in force for one call, before ``"auto"`` is resolved."""
    if backend is not None:
        return _check_name(backend, "backend")
    if (from_context := _context_backend.get()) is not None:
        return from_context
    if from_env := os.environ.get("GANOPS_BACKEND"):
        return _check_name(from_env, "environment variable GANOPS_BACKEND")
    return "auto"


def _cpp_unavailable_reason(device_type: str) -> str | None:
    if (error := _extension.load_error()) is not None:
        return error
    if device_type == "cpu":
        return None
    if device_type == "cuda":
        if _extension.cuda_kernels_built():
            return None
        return "ganops._C was built without CUDA kernels (build with a CUDA torch and nvcc, GANOPS_BUILD_CUDA=1)"
    return f"the compiled extension has no kernels for device type {device_type!r}"


def unavailable_reason(backend: str, device_type: str) -> str | None:
    """``None`` if ``backend`` can run ops on ``device_type`` here, else a sentence saying why not."""
    if backend == "reference":
        return None
    if backend == "triton":
        return _triton.unavailable_reason(device_type)
    if backend == "cpp":
        return _cpp_unavailable_reason(device_type)
    raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")


@once
def measured_rankings() -> dict:
    """``{op: {device_type: {"ranking": [fastest, ...], "source": results file}}}``."""
    if not RANKINGS_PATH.exists():
        return {}
    return json.loads(RANKINGS_PATH.read_text())


def auto_backend(op: str, device_type: str) -> str:
    ranking = measured_rankings().get(op, {}).get(device_type, {}).get("ranking", [])
    for backend in ranking:
        if backend in BACKENDS and unavailable_reason(backend, device_type) is None:
            return backend
    return "reference"


@torch.compiler.assume_constant_result
def _resolve(op: str, device_type: str, backend: str | None) -> str:
    name = requested_backend(backend)
    if name == "auto":
        return auto_backend(op, device_type)
    if (reason := unavailable_reason(name, device_type)) is not None:
        raise RuntimeError(f"ganops.{op}: backend {name!r} is unavailable for {device_type} tensors: {reason}")
    return name


_DIFFERENTIATING_TRANSFORMS = (torch._C._functorch.TransformType.Grad, torch._C._functorch.TransformType.Jvp)


def _has_tangent(value) -> bool:
    if isinstance(value, (list, tuple)):
        return any(_has_tangent(item) for item in value)
    return isinstance(value, Tensor) and forward_ad.unpack_dual(value).tangent is not None


def kernels_cannot_differentiate(inputs: tuple) -> bool:
    """Whether a call on ``inputs`` (tensors or lists of tensors) needs a derivative the kernels do not have:
    an input is a forward-mode dual tensor, or a differentiating ``torch.func`` transform is active."""
    if torch.compiler.is_compiling():
        # Dynamo traces transforms itself and decides the backend once, at trace time (module docstring).
        return False
    transforms = torch._C._functorch.get_interpreter_stack() or ()
    if any(transform.key() in _DIFFERENTIATING_TRANSFORMS for transform in transforms):
        return True
    return _has_tangent(inputs)


def vmap_active() -> bool:
    """Whether a ``torch.func.vmap`` transform is active (outside ``torch.compile``'s tracing)."""
    if torch.compiler.is_compiling():
        return False
    transforms = torch._C._functorch.get_interpreter_stack() or ()
    return any(transform.key() == torch._C._functorch.TransformType.Vmap for transform in transforms)


def select(op: str, device_type: str, backend: str | None, *inputs) -> str:
    """Resolve the backend for one call of ``op`` on ``device_type`` with tensor arguments ``inputs``; raise if
    an explicit choice cannot run. The reference whenever the call needs forward-mode or torch.func derivatives
    (module docstring).

    Under ``torch.compile`` the choice is made once, when the function is traced.
    """
    name = _resolve(op, device_type, backend)
    if name != "reference" and kernels_cannot_differentiate(inputs):
        return "reference"
    return name
