"""Learning-rate schedules: the rate is a pure function of the loop counters.

``lr(step, epoch) = base_lr * warmup(step) * decay(step, epoch)`` with

- ``exponential``: ``lr_decay ** epoch`` (Sabour et al.: 0.96 per epoch);
- ``cosine``: ``0.5 * (1 + cos(pi * step / total))`` over the planned steps, so a one-epoch
  run anneals within its epoch as a fifty-epoch run does over fifty;
- ``warmup_steps``: a linear ramp ``(step + 1) / (warmup_steps + 1)`` in front of either.

Being a function of the counters saved in every checkpoint, a resumed run gets exactly the
rate the uninterrupted run had (no scheduler state to restore, nothing to drift).
"""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["Schedule", "lr_factor"]


def lr_factor(cfg: Any, step: int, epoch: int, total: int) -> float:
    """Multiplier of every group's base rate before optimizer step ``step`` (0-based) in ``epoch``.

    Args:
        cfg: :class:`~capsule_kit.config.TrainerConfig` (``schedule``, ``lr_decay``, ``warmup_steps``).
        step: Optimizer steps done so far.
        epoch: Completed epochs.
        total: Planned optimizer steps of the run (cosine's horizon).
    """
    if cfg.schedule == "cosine":
        decay = 0.5 * (1.0 + math.cos(math.pi * min(step / max(total, 1), 1.0)))
    else:
        decay = cfg.lr_decay**epoch
    warm = min(1.0, (step + 1) / (cfg.warmup_steps + 1)) if cfg.warmup_steps else 1.0
    return decay * warm


class Schedule:
    """Sets each parameter group's rate from its base rate and :func:`lr_factor`.

    Args:
        optimizer: The optimizer; its groups' current ``lr`` are the base rates.
        cfg: Trainer options.
        total: Planned optimizer steps.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: Any, total: int) -> None:
        self.opt, self.cfg, self.total = optimizer, cfg, total
        self.base = [g["lr"] for g in optimizer.param_groups]

    def apply(self, step: int, epoch: int) -> float:
        """Set the rates for the next optimizer step; returns the factor."""
        factor = lr_factor(self.cfg, step, epoch, self.total)
        for group, base in zip(self.opt.param_groups, self.base, strict=True):
            group["lr"] = base * factor
        return factor

    def state_dict(self) -> dict:
        """Kept in checkpoints for inspection; resuming recomputes the rate from the counters."""
        return {"schedule": self.cfg.schedule, "base": list(self.base), "total": self.total}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: the rate follows from (step, epoch)."""
