"""Peak tensor memory of a piece of code on any device, the CPU included.

``torch.cuda.max_memory_allocated`` answers on a GPU only. :func:`peak_memory_bytes` counts, under a
``TorchDispatchMode``, the bytes of every tensor storage that an operator creates while ``fn`` runs, and
forgets a storage when the last tensor using it dies, so its answer is the peak of the memory held by tensors
created inside ``fn`` (those saved by autograd included), whatever the device and allocator.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class _StorageAccounting(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        # storage key -> [bytes, number of live tensors on it]
        self._storages: dict[tuple[str, int], list[int]] = {}

    def _tensor_died(self, key: tuple[str, int]) -> None:
        entry = self._storages[key]
        entry[1] -= 1
        if entry[1] == 0:
            self.live_bytes -= entry[0]
            del self._storages[key]

    @staticmethod
    def _key(tensor: torch.Tensor) -> tuple[str, int]:
        return str(tensor.device), tensor.untyped_storage().data_ptr()

    def _track(self, tensor: torch.Tensor, input_keys: set[tuple[str, int]]) -> None:
        storage = tensor.untyped_storage()
        key = self._key(tensor)
        entry = self._storages.get(key)
        if entry is None:
            if storage.nbytes() == 0 or key in input_keys:
                return  # empty, or a view of a tensor that existed before the measurement
            entry = self._storages[key] = [storage.nbytes(), 0]
            self.live_bytes += entry[0]
            self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        entry[1] += 1
        weakref.finalize(tensor, self._tensor_died, key)

    @staticmethod
    def _holds_memory(value) -> bool:
        # Autograd's zero tensors (the gradient of sign, abs at 0, ...) have no storage to count or to key on.
        return isinstance(value, torch.Tensor) and not value._is_zerotensor()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        result = func(*args, **(kwargs or {}))
        input_keys = {self._key(value) for value in tree_flatten((args, kwargs))[0] if self._holds_memory(value)}
        for value in tree_flatten(result)[0]:
            if self._holds_memory(value):
                self._track(value, input_keys)
        return result


def peak_memory_bytes(fn: Callable[[], object]) -> int:
    """Run ``fn()`` and return the peak number of bytes held by tensors it created (its result included).

    Tensors that existed before the call are not counted; a storage shared by several views counts once.
    """
    accounting = _StorageAccounting()
    with accounting:
        result = fn()
    peak = accounting.peak_bytes
    del result
    return peak
