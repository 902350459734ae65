"""What a run tells people while it trains: start banner, progress, end summary, metrics.jsonl.

On a terminal the progress is one tqdm bar over the whole run (its total and ETA
honour ``max_steps`` and ``epochs``); when stderr is a file or a pipe it is plain
lines instead (no carriage-return frames), at most one every :attr:`Progress.interval` seconds.
"""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import torch
from tqdm import tqdm

from capsule_kit.loaders import unwrap


def fmt_count(n: int | None) -> str:
    """``8215568`` -> ``8,215,568``; None (a stream of unknown length) -> ``stream``."""
    return "stream" if n is None else f"{n:,}"


def fmt_time(seconds: float) -> str:
    """Seconds as ``h:mm:ss`` or ``m:ss``."""
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    return f"{h}:{rest // 60:02d}:{rest % 60:02d}" if h else f"{rest // 60}:{rest % 60:02d}"


def size_of(dataset: Any) -> int | None:
    """Examples in a dataset, or None for a stream without ``__len__``."""
    try:
        return len(dataset)
    except TypeError:
        return None


def banner(facts: dict[str, Any]) -> str:
    """The start banner: where, what, how much and where the results go (one fact group a line)."""
    sizes = "  ".join(f"{k} {fmt_count(v)}" for k, v in facts["sizes"].items())
    plan = f"{facts['total']:,} steps"
    if facts.get("per_epoch"):
        plan += f" ({facts['epochs']} epoch(s) x {facts['per_epoch']:,} batches"
        plan += f", capped by max_steps {facts['max_steps']:,})" if facts.get("max_steps") else ")"
    if facts.get("resumed_step"):
        plan += f", resuming at step {facts['resumed_step']:,}"
    return "\n".join(
        [
            f"capsule-kit: {facts['name']} (task {facts['task']})",
            f"device: {facts['device']}  threads {facts['threads']}  precision {facts['precision']}",
            f"model: {fmt_count(facts['params'])} parameters",
            f"data: {sizes}" + ("" if "val" in facts["sizes"] else "  (no validation split)"),
            f"plan: {plan}",
            f"run: {facts['run_dir']}",
            f"report: {Path(facts['run_dir']) / 'report.html'}",
        ]
    )


def plan(per_epoch: int | None, cfg: Any) -> tuple[int, int]:
    """(total steps, epochs touched) of a run: ``max_steps`` may end it inside an earlier epoch."""
    total = per_epoch * cfg.epochs if per_epoch else cfg.max_steps or 0
    total = min(total, cfg.max_steps) if cfg.max_steps else total
    if not per_epoch or not cfg.max_steps:
        return total, cfg.epochs
    return total, min(cfg.epochs, math.ceil(cfg.max_steps / per_epoch))


def run_facts(trainer: Any, total: int) -> dict[str, Any]:
    """What the start banner says about a :class:`~capsule_kit.engine.Trainer` about to train."""
    splits, cfg = trainer.splits, trainer.extra.get("config", {})
    sizes = {"train": size_of(splits.train)}
    if splits.val is not None:
        sizes["val"] = size_of(splits.val)
    sizes["test"] = size_of(splits.test)
    model = unwrap(trainer.model)
    per_epoch = size_of(trainer.train_loader)
    return {
        "name": cfg.get("name", "run"),
        "task": cfg.get("task", type(trainer.task).__name__),
        "device": str(trainer.device),
        "threads": torch.get_num_threads(),
        "precision": trainer.cfg.precision,
        "params": sum(p.numel() for p in model.parameters()),
        "sizes": sizes,
        "total": total,
        "per_epoch": per_epoch,
        "epochs": trainer.planned_epochs(),
        "max_steps": trainer.cfg.max_steps if per_epoch and trainer.cfg.max_steps and
        trainer.cfg.max_steps < per_epoch * trainer.cfg.epochs else None,
        "resumed_step": trainer.state.step,
        "run_dir": str(trainer.run.path),
    }  # fmt: skip


def summary(state: Any, monitor: str) -> str:
    """The end-of-training line: steps, epochs, time, speed and the checkpoints written."""
    best = f", best.pt (epoch {state.best_epoch}, val_{monitor} {state.best:.4f})" if state.best_epoch else ""
    return (
        f"trained: {state.step:,} steps, {state.epoch} full epoch(s) in {state.train_time:.1f} s "
        f"({state.examples / max(state.train_time, 1e-9):.0f} ex/s); checkpoints: last.pt{best}"
    )


class Progress:
    """One progress display for the whole run.

    Args:
        total: Steps the run will take (``max_steps`` and ``epochs`` applied).
        initial: Steps already done (resume).
        epochs: Epochs the run will take (the last one may be partial under ``max_steps``).
        enabled: Print anything at all (rank 0): banner, epoch lines, summary.
        live: Show progress between epochs (``trainer.progress``).
        stream: Where to write (stderr); a terminal gets a bar, anything else plain lines.
    """

    interval = 10.0  # seconds between plain lines

    def __init__(
        self, *, total: int, initial: int, epochs: int, enabled: bool, live: bool, stream: TextIO | None = None
    ) -> None:
        self.stream = stream or sys.stderr
        self.total, self.epochs, self.enabled, self.live = total, epochs, enabled, enabled and live
        self.tty = self.live and self.stream.isatty()
        self.start_step, self.t0, self._last_line = initial, time.perf_counter(), -math.inf
        self.bar = None
        if self.tty:
            self.bar = tqdm(total=total or None, initial=initial, file=self.stream, mininterval=1.0,
                            dynamic_ncols=True, leave=False)  # fmt: skip

    def step(self, epoch: int) -> None:
        """One optimizer step done (no device sync: only counters)."""
        if self.bar is not None:
            self.bar.set_description_str(f"epoch {epoch}/{self.epochs}", refresh=False)
            self.bar.update(1)

    def show(self, step: int, epoch: int, values: dict[str, float], rate: float) -> None:
        """Latest logged values: the bar's postfix, or (not a terminal) a plain line every ``interval`` s."""
        if not self.live:
            return
        shown = {k: f"{v:.4g}" for k, v in values.items()}
        if self.bar is not None:
            self.bar.set_postfix({**shown, "ex/s": f"{rate:.0f}"}, refresh=False)
            return
        now = time.perf_counter()
        if now - self._last_line < self.interval:
            return
        self._last_line = now
        done = step - self.start_step
        eta = (self.total - step) * (now - self.t0) / done if done > 0 and self.total else 0.0
        parts = [f"step {step}/{self.total}", f"epoch {epoch}/{self.epochs}"]
        parts += [f"{k} {v}" for k, v in shown.items()] + [f"{rate:.0f} ex/s", f"eta {fmt_time(eta)}"]
        print("  ".join(parts), file=self.stream, flush=True)

    def write(self, line: str) -> None:
        """A line that stays (epoch results, banner), printed above the bar."""
        if self.enabled:
            tqdm.write(line, file=self.stream) if self.bar is not None else print(line, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class MetricsLog:
    """``metrics.jsonl``: one JSON object a line, appended and closed per line.

    Its size is stored in every checkpoint, so a resumed run first cuts the lines a
    killed run wrote after its last checkpoint (no duplicate steps).
    """

    def __init__(self, path: Path, enabled: bool) -> None:
        self.path, self.enabled = path, enabled

    def write(self, row: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(row) + "\n")

    def size(self) -> int:
        """Bytes written so far (0 before the first line)."""
        return self.path.stat().st_size if self.path.exists() else 0

    def truncate(self, size: int) -> None:
        """Drop what was written after a checkpoint that recorded ``size``."""
        if self.enabled and self.path.exists() and self.path.stat().st_size > size:
            with self.path.open("r+b") as f:
                f.truncate(size)
