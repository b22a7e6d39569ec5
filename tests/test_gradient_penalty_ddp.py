"""Under DistributedDataParallel (2 CPU processes, gloo) the gradient penalty's parameter gradients equal the
single-process ones (pytorch issue 47562 reports wrong gradients when DDP meets torch.autograd.grad)."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

from ganops import _backend
from ganops.ops.gradient_penalty import gradient_penalty
from helpers import spawn_workers

WORLD_SIZE = 2
BATCH = 4  # per process


def make_discriminator() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.Tanh(),
        nn.Flatten(), nn.Linear(4 * 2 * 2, 1),
    ).double()


def make_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    real = torch.randn(WORLD_SIZE * BATCH, 3, 4, 4, dtype=torch.float64, generator=generator)
    fake = torch.randn(WORLD_SIZE * BATCH, 3, 4, 4, dtype=torch.float64, generator=generator)
    return real, fake


def discriminator_step_loss(discriminator, real, fake, kind: str, backend: str, seed: int) -> torch.Tensor:
    """A D step's loss: Wasserstein critic loss plus the penalty (the penalty alone leaves the last bias unused)."""
    critic = discriminator(fake).mean() - discriminator(real).mean()
    penalty = gradient_penalty(
        discriminator, real, fake, kind, generator=torch.Generator().manual_seed(seed), backend=backend
    )
    return critic + penalty


def _worker(rank: int, init_file: str, backends: list[str], out_dir: str) -> None:
    # A timeout so that a rank that dies cannot leave the other waiting for gloo's default 30 minutes.
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        real, fake = make_data()
        local = slice(rank * BATCH, (rank + 1) * BATCH)
        results = {}
        for backend in backends:
            for kind in ("r1", "wgan-gp"):
                model = nn.parallel.DistributedDataParallel(make_discriminator())
                # Each rank draws its half's random weights from its own seed (as a real run would).
                loss = discriminator_step_loss(model, real[local], fake[local], kind, backend, seed=rank)
                loss.backward()
                results[(backend, kind)] = [p.grad.clone() for p in model.parameters()]
        torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def single_process_grads(kind: str, backend: str) -> list[torch.Tensor]:
    """The same step without DDP: the mean of the two halves' losses (each half with its rank's seed), which for
    equal halves is exactly the full-batch loss for every term."""
    real, fake = make_data()
    model = make_discriminator()
    halves = [
        discriminator_step_loss(
            model, real[rank * BATCH : (rank + 1) * BATCH], fake[rank * BATCH : (rank + 1) * BATCH], kind, backend, rank
        )
        for rank in range(WORLD_SIZE)
    ]
    torch.stack(halves).mean().backward()
    return [p.grad for p in model.parameters()]


def test_ddp_parameter_gradients_equal_single_process(tmp_path):
    backends = [name for name in _backend.BACKENDS if _backend.unavailable_reason(name, "cpu") is None]
    assert "reference" in backends
    spawn_workers(_worker, (backends, str(tmp_path)), nprocs=WORLD_SIZE, rendezvous_dir=tmp_path)
    per_rank = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    for backend in backends:
        for kind in ("r1", "wgan-gp"):
            expected = single_process_grads(kind, backend)
            for rank_results in per_rank:
                for got, want in zip(rank_results[(backend, kind)], expected):
                    assert torch.allclose(got, want, rtol=1e-10, atol=1e-12), (backend, kind)


def test_r1_full_batch_equals_mean_of_halves():
    """The premise of the comparison above: a batch-mean penalty splits exactly into equal halves."""
    real, _ = make_data()
    model = make_discriminator()
    full = gradient_penalty(model, real, kind="r1")
    halves = [gradient_penalty(model, real[i * BATCH : (i + 1) * BATCH], kind="r1") for i in range(WORLD_SIZE)]
    assert torch.allclose(full, torch.stack(halves).mean(), rtol=1e-12)
