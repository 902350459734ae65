"""Pictures shared by the tasks: learning curves and confusion matrices (matplotlib, Agg)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(path: Path) -> list[dict]:
    """Rows of a ``metrics.jsonl`` file (missing file: no rows)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_curves(metrics_path: Path, out: Path) -> Path | None:
    """Learning curves (train loss per step; eval metrics per epoch) from ``metrics.jsonl``."""
    rows = read_metrics(metrics_path)
    steps = [r for r in rows if r.get("kind") == "train"]
    epochs = [r for r in rows if r.get("kind") == "epoch"]
    if not steps and not epochs:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if steps:
        axes[0].plot([r["step"] for r in steps], [r["loss"] for r in steps], label="train loss")
    for key in sorted({k for r in epochs for k in r if k.startswith(("val_", "test_", "train_")) and "loss" in k}):
        axes[0].plot([r["step"] for r in epochs if key in r], [r[key] for r in epochs if key in r], "o-", label=key)
    axes[0].set_xlabel("step")
    axes[0].set_title("loss")
    axes[0].legend()
    keys = sorted({k for r in epochs for k in r if k.startswith(("val_", "test_")) and "loss" not in k})
    for key in keys:
        axes[1].plot([r["epoch"] for r in epochs if key in r], [r[key] for r in epochs if key in r], "o-", label=key)
    axes[1].set_xlabel("epoch")
    axes[1].set_title("evaluation")
    if keys:
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_confusion(cm: Sequence[Sequence[int]], labels: Sequence[str], out: Path, title: str = "confusion") -> Path:
    """Confusion matrix heat map with counts (rows: true class, columns: predicted)."""
    n = len(labels)
    side = max(3.2, 1.0 + 0.55 * n)  # a few classes still get cells wide enough for their counts
    fig, ax = plt.subplots(figsize=(side + 0.6, side))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = max(max(row) for row in cm) or 1
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(cm[i][j]), ha="center", va="center", color="white" if cm[i][j] > peak / 2 else "black")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
