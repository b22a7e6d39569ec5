"""helpers.spawn_workers: a failing worker fails the test, a hanging one is killed at each attempt's deadline."""

import time

import pytest
import torch.multiprocessing as mp

from helpers import spawn_workers


def _fail_on_rank_one(rank: int, init_file: str) -> None:
    if rank == 1:
        raise RuntimeError("rank 1 failed on purpose")


def _sleep(rank: int, init_file: str) -> None:
    time.sleep(60)


def test_a_failing_worker_fails_the_caller(tmp_path):
    with pytest.raises(mp.ProcessExitedException, match="exit code 1"):
        spawn_workers(_fail_on_rank_one, (), nprocs=2, rendezvous_dir=tmp_path)


def test_a_hanging_worker_is_killed_at_the_deadline_after_each_attempt(tmp_path):
    started = time.monotonic()
    with pytest.raises(pytest.fail.Exception, match="did not finish within 3 s, 2 times in a row"):
        spawn_workers(_sleep, (), nprocs=2, rendezvous_dir=tmp_path, timeout_s=3, attempts=2)
    assert time.monotonic() - started < 40
