"""Training-loop bookkeeping without a host sync per step.

:class:`RunningSums` keeps the logged values' sums and the first step whose loss
(or clipped gradient norm) was not finite as tensors on the device; the host reads
them once per ``log_every`` steps and before each checkpoint.
:class:`CheckpointClock` says when ``trainer.checkpoint_every`` (steps or minutes
of training) asks for a mid-epoch checkpoint.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import torch
from torch import Tensor, nn

from capsule_kit.errors import UserError
from capsule_kit.rundir import RunDir

UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
EVERY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*$")


class TrainingDiverged(UserError):
    """The loss or a gradient became NaN/inf: the run stops; the last good checkpoint stays."""


class RunningSums:
    """Device-side sums of per-step values since the last read, and a non-finite watch.

    Args:
        device: Where the sums live (the model's device).
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.sums: dict[str, Tensor | float] = {}
        self.count = 0
        self.step = torch.zeros((), dtype=torch.long, device=device)  # device copy of the step counter
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def add(self, values: dict[str, Tensor | float], watch: list[Tensor]) -> None:
        """Add one step's values; ``watch`` tensors (loss, grad norm) must stay finite. No sync."""
        self.step += 1
        for k, v in values.items():
            v = v.detach().float() if isinstance(v, Tensor) else float(v)
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        bad = torch.zeros((), dtype=torch.bool, device=self.device)
        for t in watch:
            bad = bad | ~torch.isfinite(t.detach()).all()
        self.first_bad = torch.where(bad & (self.first_bad < 0), self.step, self.first_bad)
        self.count += 1

    def read(self) -> dict[str, float]:
        """Means since the last read, as floats (one sync); resets the sums."""
        if not self.count:
            return {}
        keys = list(self.sums)
        on_device = [k for k in keys if isinstance(self.sums[k], Tensor)]
        got = torch.stack([self.sums[k].to(self.device) for k in on_device]).tolist() if on_device else []
        values = dict(zip(on_device, got))
        out = {k: values.get(k, self.sums[k]) / self.count for k in keys}
        self.sums, self.count = {}, 0
        return out

    def bad_step(self, world: int = 1) -> int | None:
        """The first step whose watched values were not finite, or None (one sync).

        Under torchrun (``world > 1``) every rank learns the worst rank's answer (collective),
        so all ranks stop together.
        """
        flag = self.first_bad.clone()
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        bad = int(flag)
        return None if bad < 0 else bad

    def sync_step(self, step: int) -> None:
        """Set the device step counter (after a resume)."""
        self.step.fill_(step)


def check_finite(sums: RunningSums | None, model: nn.Module | None, step: int, run_dir: Path, world: int = 1) -> None:
    """The non-finite guard, run at log steps and before every checkpoint (one sync).

    Raises:
        TrainingDiverged: ``sums`` (collective when ``world > 1``) saw a NaN/inf loss or grad norm, or a
            weight is NaN/inf; the message names the step and the checkpoint that stays.
    """
    bad = sums.bad_step(world) if sums is not None else None
    if bad is None and model is not None:
        params = [p.detach() for p in model.parameters()]
        if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            bad = step
    if bad is None:
        return
    last = RunDir(run_dir).last
    kept = f"the last good checkpoint stays: {last}" if last.exists() else "no checkpoint was written"
    raise TrainingDiverged(
        f"trainer: loss or gradient not finite (nan/inf) at step {bad}; stopped; {kept} "
        "(try a lower trainer.lr, trainer.grad_clip or precision fp32)"
    )


def parse_every(text: str | int | None) -> tuple[int | None, float | None]:
    """``trainer.checkpoint_every`` -> (steps, seconds); ``"500"`` -> (500, None), ``"10m"`` -> (None, 600).

    ``0``/``None``/``"off"`` -> (None, None): checkpoints only at epoch ends and on signals.
    """
    if text is None or str(text).strip().lower() in ("", "0", "off", "none"):
        return None, None
    match = EVERY.match(str(text))
    if not match:
        raise ValueError(f"checkpoint_every: expected steps (500) or a duration (30s, 10m, 1h), got {text!r}")
    number, unit = match.groups()
    if not unit:
        return int(float(number)), None
    return None, float(number) * UNITS[unit]


class CheckpointClock:
    """When to write a mid-epoch checkpoint: every N steps, or every T seconds of training."""

    def __init__(self, every: str | int | None) -> None:
        self.steps, self.seconds = parse_every(every)
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        if self.steps:
            return step % self.steps == 0
        return self.seconds is not None and time.monotonic() - self.last >= self.seconds

    def reset(self) -> None:
        """A checkpoint was just written."""
        self.last = time.monotonic()
