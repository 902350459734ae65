"""Loaders, autocast, the evaluation pass and model unwrapping, shared by the training loop and the runner."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset

from capsule_kit.config import TrainerConfig
from capsule_kit.data import Splits, move_to
from capsule_kit.distributed import DistInfo, ResumableSampler, shard_iterable
from capsule_kit.task import Task

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers (in either order)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def loader_len(loader: DataLoader) -> int | None:
    """Batches per epoch, or None for a stream without ``__len__`` (DataLoader's len() raises then)."""
    try:
        return len(loader)
    except TypeError:
        return None


def make_loader(dataset: Dataset, splits: Splits, cfg: TrainerConfig, *, train: bool, info: DistInfo) -> DataLoader:
    """DataLoader with a seeded, resumable (and DDP-sharded) sampler for training.

    With ``splits.lengths`` the training batches are length-bucketed (:class:`ResumableSampler`).
    Iterable (streaming) training sets have no sampler: under torchrun each rank
    reads its own part of the stream (:func:`capsule_kit.distributed.shard_iterable`).
    """
    batch = cfg.batch_size if train else (cfg.eval_batch_size or cfg.batch_size)
    sampler = None
    if train and isinstance(dataset, IterableDataset):
        dataset = shard_iterable(dataset, info)
    elif train:
        sampler = ResumableSampler(dataset, info, cfg.seed, lengths=splits.lengths, batch_size=batch)
    cuda = cfg.device != "cpu" and torch.cuda.is_available()
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        collate_fn=splits.collate,
        num_workers=cfg.num_workers,
        pin_memory=cuda,  # page-locked batches: the non_blocking copies to the GPU overlap compute
        persistent_workers=cuda and cfg.num_workers > 0,  # workers survive between epochs
        drop_last=False,
        generator=torch.Generator().manual_seed(cfg.seed),  # own generator: global RNG untouched
    )


def autocast(device: torch.device, precision: str):
    """Autocast context for ``bf16``/``fp16``; a no-op for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


class Evaluation(dict):
    """What :func:`evaluate` returns: the metrics (a plain dict) and the gathered ``out`` dicts as ``.outputs``."""

    outputs: list[dict[str, torch.Tensor]]


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, loader: DataLoader, device: torch.device, cfg: TrainerConfig) -> Evaluation:
    """One pass over ``loader``: mean loss plus ``task.metrics`` of the gathered outputs (kept in ``.outputs``).

    The loss sum stays on the device and outputs are copied to the host without
    waiting; the one sync is at the end of the pass.
    """
    model.eval()
    outputs, loss_sum, count = [], torch.zeros((), device=device), 0
    for i, batch in enumerate(loader):
        if cfg.eval_max_steps is not None and i >= cfg.eval_max_steps:
            break
        with autocast(device, cfg.precision):
            res = task.step(model, move_to(batch, device), train=False)
        loss_sum += res["loss"].detach().float() * res["n"]
        count += res["n"]
        outputs.append({k: _to_host(v) for k, v in res["out"].items()})
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the non_blocking copies above have landed
    metrics = task.metrics(outputs) if outputs else {}
    result = Evaluation({"loss": float(loss_sum) / max(count, 1), **metrics})
    result.outputs = outputs  # for Task.pictures: the outputs behind these metrics
    return result


def _to_host(t: torch.Tensor) -> torch.Tensor:
    """Detached CPU copy (floats as fp32) without waiting for the device."""
    t = t.detach()
    return (t.float() if t.is_floating_point() else t).to("cpu", non_blocking=True)
