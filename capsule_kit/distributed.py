"""Device choice and torchrun/DistributedDataParallel setup (gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler

from capsule_kit.errors import ConfigError


@dataclass(frozen=True)
class DistInfo:
    """Process group facts; ``world == 1`` outside torchrun."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes logs, checkpoints and results."""
        return self.rank == 0


def pick_device(name: str, info: DistInfo) -> torch.device:
    """``auto`` -> CUDA (this process's local GPU) when present, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"trainer.device: '{name}' requested but no CUDA device is available (use auto or cpu)")
        if info.world > 1 and name == "cuda":
            name = f"cuda:{info.local_rank}"
        torch.cuda.set_device(torch.device(name))
    return torch.device(name)


def init_distributed(device_name: str) -> DistInfo:
    """Join the torchrun process group when ``WORLD_SIZE > 1``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    info = DistInfo(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return info


def broadcast(obj: Any, info: DistInfo) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if info.world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    """Wait for all ranks (no-op outside torchrun)."""
    if info.world > 1:
        dist.barrier()


def shutdown(info: DistInfo) -> None:
    """Leave the process group."""
    if info.world > 1 and dist.is_initialized():
        dist.destroy_process_group()


class ResumableSampler(DistributedSampler):
    """Seeded per-epoch shuffling (sharded across ranks) that can skip a done prefix.

    The order depends only on (seed, epoch), so an interrupted epoch resumes with
    exactly the batches it had left.
    """

    def __init__(self, dataset: Dataset, info: DistInfo, seed: int, shuffle: bool = True) -> None:
        super().__init__(dataset, num_replicas=info.world, rank=info.rank, shuffle=shuffle, seed=seed)
        self.skip = 0

    def start(self, epoch: int, skip_examples: int = 0) -> None:
        """Select the epoch's order and how many leading examples to skip."""
        self.set_epoch(epoch)
        self.skip = skip_examples

    def __iter__(self):
        return iter(list(super().__iter__())[self.skip :])

    def __len__(self) -> int:
        return max(0, super().__len__() - self.skip)
