"""Loads the compiled extension ``ganops._C`` without ever failing ``import ganops``."""

from __future__ import annotations

import torch

from ganops._once import once


@once
def load_error() -> str | None:
    """``None`` if ``ganops._C`` loaded and registered its ops, else why it did not."""
    try:
        from ganops import _C  # noqa: F401  (importing registers the torch.ops.ganops.*_cpp ops)
    except ImportError as error:
        return f"compiled extension ganops._C not importable ({error}); reinstall with `pip install .`"
    return None


def is_loaded() -> bool:
    return load_error() is None


def cuda_kernels_built() -> bool:
    """Whether ``ganops._C`` was compiled with its CUDA kernels (a CUDA toolkit and CUDA torch at build time)."""
    return is_loaded() and bool(torch.ops.ganops.cuda_kernels_built())
