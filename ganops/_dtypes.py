"""The dtype rules every ganops op shares, in one place (the C++ twin is ``csrc/common.h``).

Kernels in ``triton_kernels/`` do not import this module: their launchers receive the compute dtype as an
argument from ``ganops/ops/<op>.py``.
"""

from __future__ import annotations

import torch

FLOATING_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype ganops accumulates in for inputs of ``dtype``: float64 stays float64, the rest use float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32
