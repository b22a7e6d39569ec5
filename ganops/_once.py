"""``once``: a process-wide cache for argument-free probes (is the extension loaded, does triton import, the
measured rankings). Unlike ``functools.lru_cache`` it is plain Python, so ``torch.compile`` traces through it
without a warning and guards on the cached value."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def once(probe: Callable[[], T]) -> Callable[[], T]:
    results: list[T] = []

    @functools.wraps(probe)
    def cached() -> T:
        if not results:
            results.append(probe())
        return results[0]

    cached.cache_clear = results.clear  # as functools caches have, for tests that change what is probed
    return cached
