"""helpers.spawn_workers: a failing worker fails the test, a hanging one is killed at the deadline."""

import time

import pytest
import torch.multiprocessing as mp

from helpers import spawn_workers


def _fail_on_rank_one(rank: int) -> None:
    if rank == 1:
        raise RuntimeError("rank 1 failed on purpose")


def _sleep(rank: int) -> None:
    time.sleep(60)


def test_a_failing_worker_fails_the_caller():
    with pytest.raises(mp.ProcessExitedException, match="exit code 1"):
        spawn_workers(_fail_on_rank_one, (), nprocs=2)


def test_a_hanging_worker_is_killed_at_the_deadline():
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="did not finish within 3 s"):
        spawn_workers(_sleep, (), nprocs=2, timeout_s=3)
    assert time.monotonic() - started < 30
