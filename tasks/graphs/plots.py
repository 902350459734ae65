"""Cross-validation figure: per-fold test accuracy bars next to a box plot."""

from __future__ import annotations

import math
from pathlib import Path

from capsule_kit.report import plt


def plot_folds(accuracies: list[float], out: Path, title: str = "cross validation") -> Path:
    """Bars of the per-fold accuracies (mean +- std as lines) and a box plot of them.

    Args:
        accuracies: Test accuracy of each fold, in [0, 1] (NaN for a missing one).
        out: PNG path.
        title: Figure title.

    Returns:
        ``out``.

    """
    vals = [100.0 * a for a in accuracies if not math.isnan(a)]
    mean = sum(vals) / max(len(vals), 1)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / max(len(vals) - 1, 1))
    fig, (bars, box) = plt.subplots(1, 2, figsize=(9, 3.4), gridspec_kw={"width_ratios": [3, 1]}, sharey=True)
    bars.bar(range(1, len(accuracies) + 1), [100.0 * a for a in accuracies], color="#4c72b0")
    bars.axhline(mean, color="black", lw=1)
    bars.axhspan(mean - std, mean + std, color="gray", alpha=0.2)
    bars.set_xticks(range(1, len(accuracies) + 1))
    bars.set_xlabel("fold")
    bars.set_ylabel("test accuracy (%)")
    bars.set_title(f"{title}: {mean:.2f} +- {std:.2f} over {len(vals)} folds")
    if vals:
        box.boxplot(vals, widths=0.6)
        low = min(vals)
        bars.set_ylim(max(0.0, low - 10.0), 100.0)
    box.set_xticks([1], ["folds"])
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
