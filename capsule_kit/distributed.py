"""Device choice and torchrun/DistributedDataParallel setup (gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, DistributedSampler, IterableDataset

from capsule_kit.allocator import tune_cpu_allocator
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


def pick_device(name: str, info: DistInfo, key: str = "trainer.device") -> torch.device:
    """``name`` as a device this machine has (``auto``: this process's GPU when present, else CPU).

    A CUDA device always comes back with an index (``cuda`` -> ``cuda:<local rank>`` under
    torchrun, else the current device), because ``torch.cuda.set_device`` and DDP's
    ``device_ids`` need one.

    Raises:
        ConfigError: one line naming ``key`` for a name torch does not know, ``meta``, or a device
            this machine lacks (``cuda`` without CUDA, ``cuda:9`` with one GPU, ``mps`` off a Mac).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"{key} '{name}': not a torch device (cpu, cuda, cuda:N, mps, auto)") from None
    if device.type == "meta":
        raise ConfigError(f"{key} 'meta': holds no data; use cpu, cuda or mps")
    missing = _missing(device)
    if missing:
        raise ConfigError(f"{key} '{name}': not available here ({missing[:120]}); use auto or cpu")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", info.local_rank if info.world > 1 else torch.cuda.current_device())
        torch.cuda.set_device(device)
    return device


def _missing(device: torch.device) -> str:
    """Why this machine lacks ``device`` ('' when it has it)."""
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            return "torch finds no CUDA device"
        if device.index is not None and device.index >= count:
            return f"this machine has {count} CUDA device(s)"
        return ""
    try:
        torch.zeros(1, device=device)  # other kinds (mps, xpu, ...): a device torch knows but this machine lacks
    except (RuntimeError, AssertionError) as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return ""


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


def setup_device(device: str, threads: int | None = None) -> tuple[DistInfo, torch.device]:
    """The runner's device set-up: join torchrun's group (if any), pick the device, set CPU threads."""
    info = init_distributed(device)
    picked = pick_device(device, info)
    if threads:
        torch.set_num_threads(threads)
    if picked.type == "cpu":
        tune_cpu_allocator()
    return info, picked


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
    exactly the batches it had left. Given per-example ``lengths`` and the
    ``batch_size``, batches are length-bucketed: each run of ``BUCKET_POOL`` batches
    of the shuffled order is sorted by length and cut into batches, and the full
    batches are shuffled (the short last batch stays last, so the loader's batches
    are exactly these). Batches then carry little padding; the order is still seeded.
    """

    BUCKET_POOL = 50

    def __init__(
        self,
        dataset: Dataset,
        info: DistInfo,
        seed: int,
        shuffle: bool = True,
        *,
        lengths: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> None:
        super().__init__(dataset, num_replicas=info.world, rank=info.rank, shuffle=shuffle, seed=seed)
        if lengths is not None and (batch_size is None or len(lengths) != len(dataset)):
            raise ValueError("length bucketing needs one length per example and the batch size")
        self.lengths, self.batch_size, self.skip = lengths, batch_size, 0

    def start(self, epoch: int, skip_examples: int = 0) -> None:
        """Select the epoch's order and how many leading examples to skip."""
        self.set_epoch(epoch)
        self.skip = skip_examples

    def __iter__(self):
        order = list(super().__iter__())
        if self.lengths is not None:
            order = self._bucketed(order)
        return iter(order[self.skip :])

    def _bucketed(self, order: list[int]) -> list[int]:
        """``order`` regrouped into batches of similar length (full batches shuffled, seeded by seed and epoch)."""
        size, pool = self.batch_size, self.batch_size * self.BUCKET_POOL
        batches = []
        for s in range(0, len(order), pool):
            chunk = sorted(order[s : s + pool], key=lambda i: self.lengths[i])
            batches += [chunk[b : b + size] for b in range(0, len(chunk), size)]
        short = [batches.pop()] if batches and len(batches[-1]) < size else []
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch + 1)
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()] + short
        return [i for batch in batches for i in batch]

    def __len__(self) -> int:
        return max(0, super().__len__() - self.skip)


class RankShard(IterableDataset):
    """Rank ``r`` of ``W`` takes items ``r, r + W, r + 2W, ...`` of an iterable dataset.

    A last incomplete round (fewer than ``W`` items) is dropped, so every rank
    yields the same number of items and runs the same number of DDP steps (a rank
    with one batch more would wait forever in its gradient all-reduce). Splitting
    among DataLoader workers stays the dataset's own job (``get_worker_info``), as
    PyTorch documents for iterable datasets.
    """

    def __init__(self, dataset: IterableDataset, rank: int, world: int) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank must be in [0, {world}), got {rank}")
        self.dataset, self.rank, self.world = dataset, rank, world

    def __iter__(self):
        round_ = []
        for item in self.dataset:
            round_.append(item)
            if len(round_) == self.world:
                yield round_[self.rank]
                round_ = []

    def set_epoch(self, epoch: int) -> None:
        """Forward to the wrapped dataset (reshuffling streams use it)."""
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)


def shard_iterable(dataset: IterableDataset, info: DistInfo) -> IterableDataset:
    """The part of an iterable (streaming) training set that this rank reads; unchanged outside torchrun.

    A Hugging Face ``datasets.IterableDataset`` is split with
    ``datasets.distributed.split_dataset_by_node`` (whole shards per rank when
    ``n_shards`` is a multiple of the world size, else every ``world``-th example);
    any other iterable dataset is wrapped in :class:`RankShard`. Rank parts of a
    Hugging Face stream can differ in length: set ``trainer.max_steps`` so that all
    ranks stop at the same step.
    """
    if info.world == 1:
        return dataset
    if type(dataset).__module__.split(".")[0] == "datasets" and hasattr(dataset, "n_shards"):
        from datasets.distributed import split_dataset_by_node

        return split_dataset_by_node(dataset, rank=info.rank, world_size=info.world)
    return RankShard(dataset, info.rank, info.world)
