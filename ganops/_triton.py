"""Finds out whether Triton kernels can run, without importing triton at ``import ganops`` time."""

from __future__ import annotations

import os

from ganops._once import once


def interpreter_enabled() -> bool:
    """``TRITON_INTERPRET=1`` runs Triton kernels on CPU tensors (slow; how CI checks the kernels)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@once
def import_error() -> str | None:
    """``None`` if triton imports, else why not."""
    try:
        import triton  # noqa: F401
    except ImportError as error:
        return f"triton is not importable ({error}); pip install 'ganops[triton]'"
    except Exception as error:  # a broken triton install must not break ganops
        return f"triton failed to import: {error}"
    try:
        import ganops.triton_kernels  # noqa: F401
    except ImportError as error:
        return f"ganops.triton_kernels is missing ({error}); install ganops with `pip install -e .` or `pip install .`"
    return None


def unavailable_reason(device_type: str) -> str | None:
    """``None`` if Triton kernels can run on tensors of ``device_type``, else why not."""
    error = import_error()
    if error is not None:
        return error
    if device_type == "cuda":
        return None
    if device_type == "cpu":
        if interpreter_enabled():
            return None
        return "Triton runs CPU tensors only under TRITON_INTERPRET=1"
    return f"Triton kernels do not support device type {device_type!r}"
