"""The training loop: epochs, evaluation, progress, metrics.jsonl, checkpoints.

Knows nothing about images, text, graphs or points: it calls the task's
``step``/``metrics`` and moves batches with :func:`capsule_kit.data.move_to`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import IterableDataset

from capsule_kit.checkpoint import rng_states, save_checkpoint, weights_only
from capsule_kit.config import TrainerConfig
from capsule_kit.data import Splits, move_to
from capsule_kit.distributed import DistInfo, ResumableSampler, broadcast
from capsule_kit.loaders import autocast, evaluate, loader_len, make_loader, unwrap
from capsule_kit.meters import CheckpointClock, RunningSums, check_finite
from capsule_kit.metrics import scalars
from capsule_kit.plots import plot_curves
from capsule_kit.progress import MetricsLog, Progress, banner, plan, run_facts, summary
from capsule_kit.report import write_report
from capsule_kit.rundir import RunDir
from capsule_kit.schedule import Schedule
from capsule_kit.stop import StopFlag
from capsule_kit.task import Task
from capsule_kit.tensorboard import TensorBoardLog

__all__ = ["LoopState", "Trainer", "evaluate", "make_loader", "unwrap"]


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
    metrics_bytes: int = 0  # size of metrics.jsonl when saved: a resume cuts what came after


class Trainer:
    """Runs epochs of ``task.step`` with an optimizer; checkpoints to ``run_dir/checkpoints``.

    Args:
        task: The task.
        model: The (possibly DDP/compiled) model.
        optimizer: Optimizer.
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
        splits: Splits,
        cfg: TrainerConfig,
        device: torch.device,
        info: DistInfo,
        run_dir: Path,
        extra_state: dict,
    ) -> None:
        self.task, self.model, self.opt, self.splits = task, model, optimizer, splits
        self.cfg, self.device, self.info, self.extra = cfg, device, info, extra_state
        self.state = LoopState()
        self._refreshed = -1e9  # monotonic time of the last report refresh
        self.last_eval: tuple[int, dict] | None = None  # (step, metrics) of the latest evaluation pass
        self.scaler = torch.amp.GradScaler("cuda", enabled=cfg.precision == "fp16" and device.type == "cuda")
        self.train_loader = make_loader(splits.train, splits, cfg, train=True, info=info)
        self.eval_split = "val" if splits.val is not None else "test"  # honest names: test_* without a val split
        self.eval_loader = make_loader(splits.val or splits.test, splits, cfg, train=False, info=info)
        self.sched = Schedule(optimizer, cfg, self.total_steps())
        self.run = RunDir(run_dir)
        self.metrics_file = self.run.metrics
        self.metrics = MetricsLog(self.metrics_file, info.main)
        self.sums, self.clock = RunningSums(device), CheckpointClock(cfg.checkpoint_every)
        self.writer = None
        if info.main and cfg.tensorboard:  # cross-validation: one TensorBoard run per fold
            fold, recipe = int(extra_state.get("fold", 0)), extra_state.get("config")
            self.writer = TensorBoardLog(run_dir, fold=fold, recipe=recipe)

    # -- state -----------------------------------------------------------------
    def checkpoint_payload(self, rng: dict) -> dict:
        """Everything needed to resume: weights, optimizer, scheduler, scaler, every rank's RNG, counters."""
        self.state.metrics_bytes = self.metrics.size()
        return {
            **self.extra,
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng,
            "loop": self.state.__dict__.copy(),
        }

    def load_state(self, ckpt: dict) -> None:
        """Restore from a checkpoint dict (RNG states are restored by the caller last).

        An empty GradScaler state (a CPU or fp32 checkpoint resumed with fp16 on CUDA)
        keeps the fresh scaler; lines a killed run logged after the checkpoint are cut.
        """
        unwrap(self.model).load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.sched.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = LoopState(**ckpt["loop"])
        self.sums.sync_step(self.state.step)
        if "metrics_bytes" in ckpt["loop"]:
            self.metrics.truncate(self.state.metrics_bytes)

    def save(self, name: str) -> None:
        """Write ``checkpoints/<name>.pt`` (collective for ``last``: every rank's RNG state goes in).

        Raises:
            TrainingDiverged: a non-finite loss/gradient since the last check, or non-finite
                weights: nothing is written, the previous checkpoint stays.
        """
        last = name == "last"  # every rank saves "last"; only rank 0 (after evaluating) "best"
        check_finite(self.sums if last else None, self.model, self.state.step, self.run.path, self.info.world)
        rng = rng_states(self.info.world if last else 1)
        if self.info.main:
            payload = self.checkpoint_payload(rng)  # best.pt: weights only (the optimizer state is for resuming)
            save_checkpoint(self.run.checkpoint(name), payload if last else weights_only(payload))
        self.clock.reset()
        if self.writer is not None:
            self.writer.flush()

    # -- loop ------------------------------------------------------------------
    def total_steps(self) -> int:
        return plan(loader_len(self.train_loader), self.cfg)[0]

    def planned_epochs(self) -> int:
        return plan(loader_len(self.train_loader), self.cfg)[1]

    def fit(self, stop: StopFlag) -> bool:
        """Train until ``epochs``/``max_steps``; return False if stopped by a signal."""
        st, total = self.state, self.total_steps()
        self.progress = Progress(
            total=total, initial=st.step, epochs=self.planned_epochs(), enabled=self.info.main, live=self.cfg.progress
        )
        self.progress.write(banner(run_facts(self, total)))
        try:
            while st.epoch < self.cfg.epochs and not self._max_steps_reached():
                finished = self.train_epoch(stop)
                if stop.signal is not None:
                    self.save("last")
                    if self.info.main:
                        write_report(self.run.path)  # the page shows where the interrupted run stands
                    return False
                if finished or self._max_steps_reached():
                    self.end_epoch(partial=not finished)
        finally:
            self.progress.close()
        self.progress.write(summary(self.state, self.task.monitor))
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
        total, t0, seen = self.total_steps(), time.perf_counter(), 0
        for batch in self.train_loader:
            self.task.progress = st.step / max(total, 1)
            self.sched.apply(st.step, st.epoch)
            res = self.train_step(move_to(batch, self.device))
            st.step, st.batch_in_epoch, seen = st.step + 1, st.batch_in_epoch + 1, seen + res["n"]
            self.progress.step(st.epoch + 1)
            if st.step % cfg.log_every == 0:
                self.log_train(seen / max(time.perf_counter() - t0, 1e-9))
            if self._checkpoint_due():
                now = time.perf_counter()
                st.train_time, st.examples, t0, seen = st.train_time + now - t0, st.examples + seen, now, 0
                self.save("last")
            if stop.signal is not None or self._max_steps_reached():
                break
        st.examples, st.train_time = st.examples + seen, st.train_time + time.perf_counter() - t0
        check_finite(self.sums, None, st.step, self.run.path, self.info.world)
        per_epoch = loader_len(self.train_loader)
        done = st.batch_in_epoch >= per_epoch if per_epoch is not None else True
        return done and stop.signal is None

    def _checkpoint_due(self) -> bool:
        """Mid-epoch checkpoint now? Not at an epoch's end or max_steps (the epoch end saves anyway).

        Under torchrun rank 0 decides a time-based one (at log steps) for every rank.
        """
        if self.state.batch_in_epoch == loader_len(self.train_loader) or self._max_steps_reached():
            return False
        if self.info.world == 1 or self.clock.steps:
            return self.clock.due(self.state.step)
        return self.state.step % self.cfg.log_every == 0 and bool(broadcast(self.clock.due(0), self.info))

    def log_train(self, rate: float) -> None:
        """The log_every line: means since the last one (the one host sync of these steps)."""
        st, values = self.state, self.sums.read()
        check_finite(self.sums, None, st.step, self.run.path, self.info.world)
        row = {"kind": "train", "epoch": st.epoch + 1, "step": st.step, **values}
        self.log({**row, "lr": self.opt.param_groups[0]["lr"], "ex_per_s": rate})
        self.progress.show(st.step, st.epoch + 1, values, rate)

    def train_step(self, batch: Any) -> dict:
        """Forward, backward (scaled for fp16), clip, optimizer step; values summed on the device."""
        with autocast(self.device, self.cfg.precision):
            res = self.task.step(self.model, batch, train=True)
        loss = res["loss"]
        self.opt.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        watch = [loss]
        if self.cfg.grad_clip:
            self.scaler.unscale_(self.opt)
            norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            if not self.scaler.is_enabled():  # fp16: an inf norm is a skipped step, the scaler's business
                watch.append(norm)
        self.scaler.step(self.opt)
        self.scaler.update()
        self.sums.add({"loss": loss, **res.get("log", {})}, watch)
        return res

    def end_epoch(self, partial: bool) -> None:
        """Evaluate, log the epoch line, save last/best."""
        st = self.state
        if not partial:
            st.epoch, st.batch_in_epoch = st.epoch + 1, 0
        row = {"kind": "epoch", "epoch": st.epoch + int(partial), "step": st.step}
        if partial:  # stopped by max_steps inside an epoch
            row["partial"] = True
        if self.info.main and (partial or st.epoch % self.cfg.eval_every == 0 or st.epoch == self.cfg.epochs):
            ev = evaluate(self.task, unwrap(self.model), self.eval_loader, self.device, self.cfg)
            self.last_eval = (st.step, ev)
            row.update({f"{self.eval_split}_{k}": v for k, v in scalars(ev).items()})
            if self.eval_split == "val":  # "best" is chosen on a validation split only
                self._track_best(scalars(ev))
        row.update({"train_time_s": round(st.train_time, 3), "ex_per_s": st.examples / max(st.train_time, 1e-9)})
        st.history.append(row)
        self.log(row)
        self.save("last")
        # Refresh the page so a long run can be watched, at most every 30 s (many short epochs).
        if self.info.main and (time.monotonic() - self._refreshed > 30 or st.epoch == self.cfg.epochs):
            plot_curves(self.metrics_file, self.run.curves)
            write_report(self.run.path)
            self._refreshed = time.monotonic()
        prefix = f"{self.eval_split}_"
        shown = "  ".join(f"{k} {v:.4f}" for k, v in row.items() if k.startswith(prefix))
        self.progress.write(
            f"epoch {row['epoch']}/{self.planned_epochs()}{' (partial)' if partial else ''}  step {st.step}  {shown}  "
            f"{row['ex_per_s']:.0f} ex/s  {st.train_time:.0f}s"
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
        self.metrics.write(row)
        if self.writer is not None:
            self.writer.log(row)

    def tensorboard_pictures(self) -> None:
        """Finish TensorBoard: hparams with the final metrics, the PNG pictures; close the writer."""
        if self.writer is not None:
            self.writer.finish(self.state.step)
