"""Shared helpers of the benchmarks: ratio medians with their spread, per-op profiles."""

from __future__ import annotations

import statistics

from torch import Tensor
from torch.profiler import ProfilerActivity, profile


def spread(pairs: list[tuple[float, float]]) -> str:
    """``2.61x [2.40-2.85]``: median and range of per-round ratios a / b."""
    r = [a / b for a, b in pairs]
    return f"{statistics.median(r):.2f}x [{min(r):.2f}-{max(r):.2f}]"


def pair_ratios(times: dict[str, list], num: str, den: str) -> tuple[float, float, float]:
    """Median, min and max over repeats of ``times[num][k] / times[den][k]`` (same round k)."""
    ratios = [a / b for a, b in zip(times[num], times[den])]
    return statistics.median(ratios), min(ratios), max(ratios)


def fmt(ratio: tuple[float, float, float]) -> str:
    """``12.3x [11.0-13.1]``: median and spread of per-round ratios."""
    return f"{ratio[0]:.1f}x [{ratio[1]:.1f}-{ratio[2]:.1f}]"


def profile_step(step, x: Tensor, y: Tensor, top: int = 12) -> list[str]:
    """Self CPU time per op of two training steps: where the step goes beyond the convolutions."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step(x, y), step(x, y)
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
    total = sum(e.self_cpu_time_total for e in rows)
    lines = [
        f"  {e.key[:40]:40s} {e.self_cpu_time_total / 2e3:7.1f} ms  {100 * e.self_cpu_time_total / total:5.1f} %"
        for e in rows[:top]
    ]
    return [*lines, f"  total {total / 2e3:.1f} ms/step (under the profiler)"]
