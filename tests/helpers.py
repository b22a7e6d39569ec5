"""Shared test utilities: tolerances, backend availability, tensor layouts."""

from __future__ import annotations

import os

import pytest
import torch

from ganops import _backend

# Relative-error tolerances per dtype (README, "Testing").
TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 1e-2,
    torch.bfloat16: 1e-2,
}

KERNEL_BACKENDS = ("triton", "cpp")
LAYOUTS = ("contiguous", "channels_last", "transposed", "sliced")


def relative_error(actual: torch.Tensor, expected: torch.Tensor, floor: float = 0.0) -> float:
    """``||actual - expected|| / max(||expected||, floor)`` in float64; the absolute error where both are zero.

    ``floor`` is the natural size of the terms that make up ``expected``: where they cancel (a quantity that is
    zero up to ``eps``), rounding is measured against the terms, not against their tiny difference.
    """
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype, (actual.dtype, expected.dtype)
    actual, expected = actual.double(), expected.double()
    assert not actual.isnan().any(), "NaN in result"
    difference = (actual - expected).norm().item()
    scale = max(expected.norm().item(), floor)
    return difference / scale if scale > 0 else difference


def max_state_difference(a: torch.nn.Module, b: torch.nn.Module) -> float:
    """The largest relative difference between two modules' state dicts, which must have the same keys."""
    state_a, state_b = a.state_dict(), b.state_dict()
    assert state_a.keys() == state_b.keys()
    return max(relative_error(state_b[k].double(), state_a[k].double()) for k in state_a)


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None) -> None:
    tolerance = TOLERANCE[dtype or expected.dtype]
    error = relative_error(actual, expected)
    assert error <= tolerance, f"relative error {error:.3e} > {tolerance:.0e}"


def autograd_derivatives(function, x: torch.Tensor, grad_out: torch.Tensor, grad_grad_x: torch.Tensor):
    """``(out, grad_x, grad_grad_out, grad_grad_x_wrt_x)`` of a one-input ``function`` via autograd: the output, the
    gradient of ``<out, grad_out>`` w.r.t. ``x``, and the gradients of ``<grad_x, grad_grad_x>`` w.r.t. ``grad_out``
    and ``x`` (what an op's double backward must produce)."""
    x = x.detach().requires_grad_()
    grad_out = grad_out.detach().requires_grad_()
    out = function(x)
    (grad_x,) = torch.autograd.grad(out, x, grad_out, create_graph=True)
    grad_grad_out, second = torch.autograd.grad(grad_x, (grad_out, x), grad_grad_x)
    return out, grad_x, grad_grad_out, second


def require_backend(backend: str, device_type: str = "cpu") -> None:
    """Skip if ``backend`` cannot run here, unless ``GANOPS_REQUIRE_BACKENDS`` lists it (then fail)."""
    reason = _backend.unavailable_reason(backend, device_type)
    if reason is None:
        return
    required = {name.strip() for name in os.environ.get("GANOPS_REQUIRE_BACKENDS", "").split(",") if name.strip()}
    if backend in required:
        pytest.fail(f"backend {backend!r} is required by GANOPS_REQUIRE_BACKENDS but unavailable: {reason}")
    pytest.skip(f"backend {backend!r} unavailable on {device_type}: {reason}")


def in_layout(x: torch.Tensor, layout: str) -> torch.Tensor:
    """The same values as ``x`` ([N, C, H, W]) stored in ``layout``."""
    if layout == "contiguous":
        return x.contiguous()
    if layout == "channels_last":
        return x.contiguous(memory_format=torch.channels_last)
    if layout == "transposed":
        return x.transpose(2, 3).contiguous().transpose(2, 3)
    if layout == "sliced":
        padded = torch.zeros(x.shape[0], x.shape[1] + 2, x.shape[2], x.shape[3] * 2, dtype=x.dtype, device=x.device)
        padded[:, 1:-1, :, ::2] = x
        return padded[:, 1:-1, :, ::2]
    raise ValueError(layout)



def _run_then_exit(rank: int, worker, *args) -> None:
    """Run ``worker(rank, *args)`` in a spawned process, then leave with ``os._exit``.

    Skipping interpreter shutdown is deliberate: when a DistributedDataParallel model is freed there, its
    Reducer drops the last reference to the gloo process group, whose destructor joins a gloo thread that waits
    for the GIL the destructor holds (a deadlock seen in CI with torch 2.13).
    """
    import sys
    import traceback

    try:
        worker(rank, *args)
    except BaseException:
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    sys.stdout.flush()
    os._exit(0)


def spawn_workers(worker, args: tuple, nprocs: int, rendezvous_dir, timeout_s: float = 90.0, attempts: int = 3) -> None:
    """Run ``worker(rank, init_file, *args)`` in ``nprocs`` spawned processes, with a deadline per attempt.

    ``init_file`` is a fresh file-rendezvous path in ``rendezvous_dir`` for each attempt. A worker that fails
    fails the caller at once. A run that passes the deadline is killed and started again: with torch 2.13, gloo
    on two busy CPU cores sometimes deadlocks (CI saw it in about one DDP test in ten; a gloo thread waited for
    the GIL held by a thread waiting on that gloo thread), and only ``attempts`` hangs in a row fail the test.
    """
    import time
    from pathlib import Path

    import torch.multiprocessing as mp

    for attempt in range(attempts):
        init_file = str(Path(rendezvous_dir) / f"rendezvous-{attempt}")
        context = mp.start_processes(
            _run_then_exit, args=(worker, init_file, *args), nprocs=nprocs, join=False, start_method="spawn"
        )
        deadline = time.monotonic() + timeout_s
        while not context.join(timeout=1.0):
            if time.monotonic() > deadline:
                for process in context.processes:
                    process.kill()
                break
        else:
            return
    pytest.fail(f"distributed workers did not finish within {timeout_s:.0f} s, {attempts} times in a row")
