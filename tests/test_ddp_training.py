"""The demo's training step under DistributedDataParallel: 2 CPU processes (gloo), a SAGAN with every ganops
op inside (spectral norm, attention, minibatch stddev in D, the WGAN-GP penalty's interpolation and norm, all
on the C++ backend), a few steps on different data per rank; both ranks must end with the same model."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
from torch import nn

from ganops.training import make_trainer
from helpers import require_backend, spawn_workers

WORLD_SIZE = 2
BATCH = 4  # per rank: one minibatch-stddev group
STEPS = 3
IMAGE_SIZE = 8
Z_DIM = 16


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    # A timeout so that a rank that dies cannot leave the other waiting for gloo's default 30 minutes.
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE,
        timeout=datetime.timedelta(seconds=120),
    )
    try:
        torch.manual_seed(0)  # the same initial model on both ranks, as DDP expects
        trainer = make_trainer("sagan", "wgan-gp", IMAGE_SIZE, 8, Z_DIM, minibatch_stddev=True, backend="cpp")
        initial = {k: v.clone() for k, v in trainer.discriminator.state_dict().items()}
        trainer.generator = nn.parallel.DistributedDataParallel(trainer.generator)
        trainer.discriminator = nn.parallel.DistributedDataParallel(trainer.discriminator)
        data = torch.Generator().manual_seed(100 + rank)  # each rank trains on its own data
        torch.manual_seed(200 + rank)  # and draws its own penalty interpolation weights
        losses = []
        for _ in range(STEPS):
            real = torch.rand(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=data) * 2 - 1
            z = torch.randn(2, BATCH, Z_DIM, generator=data)
            losses.append({k: float(v) for k, v in trainer.step(real, z[0], z[1]).items()})
        torch.save(
            {
                "initial_discriminator": initial,
                "generator": trainer.generator.module.state_dict(),
                "discriminator": trainer.discriminator.module.state_dict(),
                "losses": losses,
            },
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_ddp_training_steps_keep_ranks_in_agreement(tmp_path):
    require_backend("cpp")
    spawn_workers(_worker, (str(tmp_path),), nprocs=WORLD_SIZE, rendezvous_dir=tmp_path)
    ranks = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]
    for part in ("generator", "discriminator"):
        for key, value in ranks[0][part].items():
            other = ranks[1][part][key]
            if key.endswith(("running_mean", "running_var")):
                # DDP broadcasts rank 0's buffers at the start of each forward; the statistics of the last
                # forward's local batch stay rank-local until the next one (torch's documented behaviour).
                continue
            if key.endswith("num_batches_tracked"):
                assert torch.equal(value, other), key
            else:
                assert torch.allclose(value, other, rtol=1e-6, atol=1e-7), f"{part}.{key} differs between ranks"
    # Ranks trained on different data, so their losses differ, yet the synchronised models moved together.
    assert ranks[0]["losses"] != ranks[1]["losses"]
    assert all(loss["penalty"] > 0 for rank in ranks for loss in rank["losses"])
    moved = [
        key for key, value in ranks[0]["discriminator"].items()
        if value.dtype.is_floating_point and not torch.equal(value, ranks[0]["initial_discriminator"][key])
    ]
    assert any(key.endswith("attention.gamma") or key.endswith(".gamma") for key in moved)
    assert any(key.endswith("._u") for key in moved)
