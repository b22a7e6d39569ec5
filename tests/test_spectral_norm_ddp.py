"""ganops spectral norm under DistributedDataParallel: 2 processes, gloo, localhost.

pytorch #22095: with broadcast_buffers=True and two forward passes per GAN step (D(real), D(fake)), DDP's
in-place broadcast of the power-iteration buffers breaks autograd's version counters when those buffers were
saved for backward. ganops never saves them, so the standard GAN step runs and both ranks stay identical.
"""

from __future__ import annotations

import datetime
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ganops.nn.spectral_norm import spectral_norm
from helpers import spawn_workers

STEPS = 3


def _discriminator() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        spectral_norm(nn.Conv2d(3, 4, 3, padding=1), backend="reference"),
        nn.LeakyReLU(0.2),
        nn.Flatten(),
        spectral_norm(nn.Linear(4 * 4 * 4, 1), backend="reference"),
    )


def _train(rank: int, init_file: str, world_size: int, out_dir: str) -> None:
    # A rendezvous file, not a TCP port: no race for a free port with other jobs, and a timeout so a rank that
    # dies cannot leave the other waiting for ever.
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size,
        timeout=datetime.timedelta(seconds=120),
    )
    torch.set_num_threads(1)
    try:
        model = nn.parallel.DistributedDataParallel(_discriminator(), broadcast_buffers=True)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
        generator = torch.Generator().manual_seed(100 + rank)  # each rank sees different data
        for _ in range(STEPS):
            real, fake = torch.randn(2, 3, 4, 4, generator=generator), torch.randn(2, 3, 4, 4, generator=generator)
            optimizer.zero_grad()
            loss = F.softplus(-model(real)).mean() + F.softplus(model(fake)).mean()
            loss.backward()
            optimizer.step()
        torch.save(model.module.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch.distributed with gloo is unavailable")
def test_ddp_broadcast_buffers_two_forwards_per_step_ranks_identical(tmp_path):
    world_size = 2
    spawn_workers(_train, (world_size, str(tmp_path)), nprocs=world_size, rendezvous_dir=tmp_path)
    states = {rank: torch.load(tmp_path / f"rank{rank}.pt") for rank in range(world_size)}
    initial = _discriminator().state_dict()
    for key, value in states[0].items():
        assert torch.equal(value, states[1][key]), key
    # Training happened: weights and power-iteration vectors moved.
    assert not torch.equal(states[0]["0.parametrizations.weight.original"], initial["0.parametrizations.weight.original"])
    assert not torch.equal(states[0]["0.parametrizations.weight.0._u"], initial["0.parametrizations.weight.0._u"])
