"""Test configuration.

* Without a GPU, Triton kernels run on CPU tensors under ``TRITON_INTERPRET=1``; it must be set before
  triton is imported, hence here.
* Hypothesis profiles: ``ci`` (default, few examples) and ``thorough``; choose with
  ``GANOPS_HYPOTHESIS_PROFILE=thorough``.
* Under pytest-xdist each worker runs torch with ``cores / workers`` threads.
* ``GANOPS_REQUIRE_BACKENDS=cpp,triton`` (set by CI) turns "backend unavailable" into a test failure
  instead of a skip, so a broken build cannot hide behind skipped tests.
"""

import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

# Under pytest-xdist (`-n auto`) every worker gets its share of the cores, so the workers do not oversubscribe them.
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci", max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)
settings.register_profile("thorough", max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("GANOPS_HYPOTHESIS_PROFILE", "ci"))


def pytest_configure(config):
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU; skipped without one")
    config.addinivalue_line("markers", "slow: long-running; run in CI but keep the count small")


def pytest_collection_modifyitems(config, items):
    import pytest

    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)
