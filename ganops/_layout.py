"""Output allocation shared by every backend and by the fake kernels, so that their strides agree."""

from __future__ import annotations

import torch
from torch import Tensor


def memory_format_of(x: Tensor) -> torch.memory_format:
    """channels_last for an input that is channels_last (and not also plain contiguous), else contiguous."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def empty_in_layout_of(x: Tensor, shape: tuple[int, ...] | list[int], dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised tensor of ``shape`` on ``x``'s device, in ``x``'s memory format (the C++ rule too)."""
    return torch.empty(
        shape, dtype=dtype or x.dtype, device=x.device, memory_format=memory_format_of(x)
    )
