"""The few DistributedDataParallel helpers the engine needs (thesis §3.1 training, run on N GPUs).

``python3 -m replication train ...`` runs in one process; under ``torchrun --nproc_per_node=N`` the
environment carries RANK / WORLD_SIZE / LOCAL_RANK and every process trains one shard of each batch
(NCCL on GPUs, Gloo on CPU). Rank 0 alone writes files. Each helper is a no-op in a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def device_problem(device: str) -> str | None:
    """Why ``--device`` cannot run here (a name torch does not know, CUDA or a GPU this machine lacks), or None:
    the commands check it before any work, as torch would otherwise fail deep inside the first CUDA call."""
    try:
        parsed = torch.device(device)
    except RuntimeError:
        return f"--device {device!r} is not a torch device (e.g. cpu, cuda, cuda:1)"
    if parsed.type == "cuda" and not torch.cuda.is_available():
        return f"--device {device} but CUDA is not available"
    if parsed.type == "cuda" and parsed.index is not None and parsed.index >= torch.cuda.device_count():
        return f"--device {device} but this machine has only {torch.cuda.device_count()} GPU(s), numbered from 0"
    return None


def setup(device: str) -> Dist:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return Dist(device=torch.device(device))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world_size)
    return Dist(rank, world_size, torch.device(f"cuda:{local_rank}") if cuda else torch.device("cpu"))


def teardown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_reduce_mean(d: Dist, values: torch.Tensor) -> torch.Tensor:
    """Element-wise mean of a small tensor over ranks (loss statistics: every rank sees the same)."""
    if not d.enabled:
        return values
    values = values.to(d.device, torch.float64).clone()
    dist.all_reduce(values)
    return (values / d.world_size).cpu()


def all_reduce_sum(d: Dist, values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks, on the tensor's own device (per-task label counts of the global batch)."""
    if not d.enabled:
        return values
    values = values.clone()
    dist.all_reduce(values)
    return values


def all_gather(d: Dist, obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] (picklable objects: predictions, RNG states)."""
    if not d.enabled:
        return [obj]
    out = [None] * d.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_buffers(d: Dist, module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank. DDP does this at the start of
    each forward, which leaves the ranks' own last updates in place; evaluation needs them identical."""
    if d.enabled:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
