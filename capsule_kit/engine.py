"""The training loop: epochs, evaluation, progress, metrics.jsonl, checkpoints.

Knows nothing about images, text, graphs or points: it calls the task's
``step``/``metrics`` and moves batches with :func:`capsule_kit.data.move_to`.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset
from tqdm import tqdm

from capsule_kit.checkpoint import rng_state, save_checkpoint
from capsule_kit.config import TrainerConfig
from capsule_kit.data import Splits, move_to
from capsule_kit.distributed import DistInfo, ResumableSampler, shard_iterable
from capsule_kit.html import write_report
from capsule_kit.metrics import scalars
from capsule_kit.report import plot_curves
from capsule_kit.stop import StopFlag
from capsule_kit.task import Task

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class LoopState:
    """Counters saved in checkpoints."""

    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # batches done in the current (unfinished) epoch
    step: int = 0
    best: float | None = None
    best_epoch: int | None = None
    examples: int = 0
    train_time: float = 0.0
    history: list[dict] = field(default_factory=list)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain module under DDP and torch.compile wrappers."""
    model = getattr(model, "module", model)
    return getattr(model, "_orig_mod", model)


def loader_len(loader: DataLoader) -> int | None:
    """Batches per epoch, or None for a stream without ``__len__`` (DataLoader's len() raises then)."""
    try:
        return len(loader)
    except TypeError:
        return None


def make_loader(dataset: Dataset, splits: Splits, cfg: TrainerConfig, *, train: bool, info: DistInfo) -> DataLoader:
    """DataLoader with a seeded, resumable (and DDP-sharded) sampler for training.

    Iterable (streaming) training sets have no sampler: under torchrun each rank
    reads its own part of the stream (:func:`capsule_kit.distributed.shard_iterable`).
    """
    batch = cfg.batch_size if train else (cfg.eval_batch_size or cfg.batch_size)
    sampler = None
    if train and isinstance(dataset, IterableDataset):
        dataset = shard_iterable(dataset, info)
    elif train:
        sampler = ResumableSampler(dataset, info, cfg.seed)
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        collate_fn=splits.collate,
        num_workers=cfg.num_workers,
        drop_last=False,
        generator=torch.Generator().manual_seed(cfg.seed),  # own generator: global RNG untouched
    )


def autocast(device: torch.device, precision: str):
    """Autocast context for ``bf16``/``fp16``; a no-op for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


@torch.no_grad()
def evaluate(task: Task, model: nn.Module, loader: DataLoader, device: torch.device, cfg: TrainerConfig) -> dict:
    """One pass over ``loader``: mean loss plus ``task.metrics`` of the gathered outputs."""
    model.eval()
    outputs, loss_sum, count = [], 0.0, 0
    for i, batch in enumerate(loader):
        if cfg.eval_max_steps is not None and i >= cfg.eval_max_steps:
            break
        with autocast(device, cfg.precision):
            res = task.step(model, move_to(batch, device), train=False)
        loss_sum += float(res["loss"]) * res["n"]
        count += res["n"]
        outputs.append(
            {k: v.detach().float().cpu() if v.is_floating_point() else v.cpu() for k, v in res["out"].items()}
        )
    metrics = task.metrics(outputs) if outputs else {}
    return {"loss": loss_sum / max(count, 1), **metrics}


class Trainer:
    """Runs epochs of ``task.step`` with an optimizer; checkpoints to ``run_dir/checkpoints``.

    Args:
        task: The task.
        model: The (possibly DDP/compiled) model.
        optimizer: Optimizer.
        scheduler: Per-epoch LR scheduler.
        splits: The data.
        cfg: Trainer options.
        device: Device.
        info: Distributed info (rank 0 writes files).
        run_dir: Run directory.
        extra_state: Plain data stored in every checkpoint (recipe, fold, fold results).
    """

    def __init__(
        self,
        task: Task,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        splits: Splits,
        cfg: TrainerConfig,
        device: torch.device,
        info: DistInfo,
        run_dir: Path,
        extra_state: dict,
    ) -> None:
        self.task, self.model, self.opt, self.sched, self.splits = task, model, optimizer, scheduler, splits
        self.cfg, self.device, self.info, self.run_dir, self.extra = cfg, device, info, run_dir, extra_state
        self.state = LoopState()
        self._refreshed = -1e9  # monotonic time of the last report refresh
        self.last_eval: tuple[int, dict] | None = None  # (step, metrics) of the latest evaluation pass
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16" and device.type == "cuda")
        self.train_loader = make_loader(splits.train, splits, cfg, train=True, info=info)
        self.eval_loader = make_loader(splits.val or splits.test, splits, cfg, train=False, info=info)
        self.metrics_file = run_dir / "metrics.jsonl"
        self.writer = self._tensorboard() if info.main and cfg.tensorboard else None

    # -- state -----------------------------------------------------------------
    def checkpoint_payload(self) -> dict:
        """Everything needed to resume: weights, optimizer, scheduler, scaler, RNG, counters."""
        return {
            **self.extra,
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "loop": self.state.__dict__.copy(),
        }

    def load_state(self, ckpt: dict) -> None:
        """Restore from a checkpoint dict (RNG states are restored by the caller last)."""
        unwrap(self.model).load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.state = LoopState(**ckpt["loop"])

    def save(self, name: str) -> None:
        if self.info.main:
            save_checkpoint(self.run_dir / "checkpoints" / f"{name}.pt", self.checkpoint_payload())
        if self.writer is not None:
            self.writer.flush()

    # -- loop ------------------------------------------------------------------
    def total_steps(self) -> int:
        per_epoch = loader_len(self.train_loader) or 0
        total = per_epoch * self.cfg.epochs if per_epoch else self.cfg.max_steps or 0
        return min(total, self.cfg.max_steps) if self.cfg.max_steps else total

    def fit(self, stop: StopFlag) -> bool:
        """Train until ``epochs``/``max_steps``; return False if stopped by a signal."""
        while self.state.epoch < self.cfg.epochs and not self._max_steps_reached():
            finished = self.train_epoch(stop)
            if stop.signal is not None:
                self.save("last")
                if self.info.main:
                    write_report(self.run_dir)  # the page shows where the interrupted run stands
                return False
            if finished or self._max_steps_reached():
                self.end_epoch(partial=not finished)
        return True

    def _max_steps_reached(self) -> bool:
        return self.cfg.max_steps is not None and self.state.step >= self.cfg.max_steps

    def train_epoch(self, stop: StopFlag) -> bool:
        """Run (the rest of) one epoch; True if it ran to the end of the data."""
        st, cfg = self.state, self.cfg
        sampler = self.train_loader.sampler
        if isinstance(sampler, ResumableSampler):
            sampler.start(st.epoch, st.batch_in_epoch * cfg.batch_size)
        stream = self.train_loader.dataset
        if isinstance(stream, IterableDataset) and hasattr(stream, "set_epoch"):
            stream.set_epoch(st.epoch)  # a shuffled stream reshuffles each epoch (Hugging Face: seed + epoch)
        self.model.train()
        total, t0, seen, avg = self.total_steps(), time.perf_counter(), 0, {}
        bar = tqdm(
            self.train_loader,
            desc=f"epoch {st.epoch + 1}/{cfg.epochs}",
            leave=False,
            file=sys.stderr,
            disable=not (self.info.main and cfg.progress),
            mininterval=1.0,
            dynamic_ncols=True,
        )
        for batch in bar:
            self.task.progress = st.step / max(total, 1)
            res = self.train_step(move_to(batch, self.device))
            st.step, st.batch_in_epoch, seen = st.step + 1, st.batch_in_epoch + 1, seen + res["n"]
            logs = {"loss": float(res["loss"].detach()), **res.get("log", {})}
            avg = {k: 0.9 * avg.get(k, v) + 0.1 * v for k, v in logs.items()} if avg else logs
            rate = seen / max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix({**{k: f"{v:.4f}" for k, v in avg.items()}, "ex/s": f"{rate:.0f}"}, refresh=False)
            if st.step % cfg.log_every == 0:
                self.log(
                    {
                        "kind": "train",
                        "epoch": st.epoch + 1,
                        "step": st.step,
                        **logs,
                        "lr": self.opt.param_groups[0]["lr"],
                        "ex_per_s": rate,
                    }
                )
            if stop.signal is not None or self._max_steps_reached():
                break
        bar.close()
        st.examples, st.train_time = st.examples + seen, st.train_time + time.perf_counter() - t0
        per_epoch = loader_len(self.train_loader)
        done = st.batch_in_epoch >= per_epoch if per_epoch is not None else True
        return done and stop.signal is None

    def train_step(self, batch: Any) -> dict:
        """Forward, backward (scaled for fp16), clip, optimizer step."""
        with autocast(self.device, self.cfg.precision):
            res = self.task.step(self.model, batch, train=True)
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(res["loss"]).backward()
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.opt)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.opt)
        self.scaler.update()
        return res

    def end_epoch(self, partial: bool) -> None:
        """Evaluate, log the epoch line, step the LR schedule, save last/best."""
        st = self.state
        if not partial:
            st.epoch, st.batch_in_epoch = st.epoch + 1, 0
            self.sched.step()
        row = {"kind": "epoch", "epoch": st.epoch + int(partial), "step": st.step}
        if partial:  # stopped by max_steps inside an epoch
            row["partial"] = True
        if self.info.main and (partial or st.epoch % self.cfg.eval_every == 0 or st.epoch == self.cfg.epochs):
            ev = evaluate(self.task, unwrap(self.model), self.eval_loader, self.device, self.cfg)
            self.last_eval = (st.step, ev)
            row.update({f"val_{k}": v for k, v in scalars(ev).items()})
            self._track_best(scalars(ev))
        row.update({"train_time_s": round(st.train_time, 3), "ex_per_s": st.examples / max(st.train_time, 1e-9)})
        st.history.append(row)
        self.log(row)
        self.save("last")
        # Refresh the page so a long run can be watched, at most every 30 s (many short epochs).
        if self.info.main and (time.monotonic() - self._refreshed > 30 or st.epoch == self.cfg.epochs):
            plot_curves(self.metrics_file, self.run_dir / "curves.png")
            write_report(self.run_dir)
            self._refreshed = time.monotonic()
        if self.info.main:
            shown = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith("val_"))
            tqdm.write(
                f"epoch {row['epoch']}/{self.cfg.epochs}  step {st.step}  {shown}  "
                f"{row['ex_per_s']:.0f} ex/s  {st.train_time:.0f}s",
                file=sys.stderr,
            )

    def _track_best(self, metrics: dict[str, float]) -> None:
        value = metrics.get(self.task.monitor)
        if value is None:
            return
        better = self.state.best is None or (
            value > self.state.best if self.task.monitor_mode == "max" else value < self.state.best
        )
        if better:
            self.state.best, self.state.best_epoch = value, self.state.epoch
            self.save("best")

    def log(self, row: dict) -> None:
        """Append one line to metrics.jsonl (rank 0), and to TensorBoard when enabled."""
        if not self.info.main:
            return
        with self.metrics_file.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.writer is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.writer.add_scalar(f"{row['kind']}/{k}", v, row["step"])

    def _tensorboard(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from capsule_kit.errors import ConfigError

            raise ConfigError("trainer.tensorboard: needs tensorboard (pip install 'capsule-kit[tb]')") from None
        fold = int(self.extra.get("fold", 0))  # cross-validation: one TensorBoard run per fold
        return SummaryWriter(str(self.run_dir / "tb" / (f"fold_{fold}" if fold else "")))

    def tensorboard_pictures(self) -> None:
        """Add the run directory's PNG pictures to TensorBoard as images, then close the writer."""
        if self.writer is None:
            return
        from matplotlib.image import imread

        for png in sorted(self.run_dir.glob("*.png")):
            image = imread(png)[..., :3]  # [H, W, 3] floats in [0, 1] (alpha dropped)
            self.writer.add_image(f"pictures/{png.stem}", image, self.state.step, dataformats="HWC")
        self.writer.close()
