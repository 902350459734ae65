"""The standard pictures of a run, drawn by the runner for every task (matplotlib, Agg).

``curves.png`` (loss, accuracy and learning rate over steps), ``confusion.png`` (from the
test metrics' confusion matrix; ``<probe>_confusion.png`` from a ``<probe>_confusion_matrix``)
and ``cv_accuracy.png`` (per-fold test accuracy), plus the shared drawing functions tasks use
for their own pictures. This is the only module that selects the matplotlib backend: tasks
import ``plt`` from here.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display: the one place the backend is chosen
import matplotlib.pyplot as plt  # noqa: E402

from capsule_kit.rundir import RunDir  # noqa: E402

__all__ = ["plot_confusion", "plot_curves", "plot_folds", "plot_overlay", "plt", "read_metrics", "standard_pictures"]

EVAL_PREFIXES = ("val_", "test_")
NOT_CURVES = ("epoch", "step", "kind", "partial", "train_time_s", "ex_per_s", "lr")


def read_metrics(path: Path) -> list[dict]:
    """Rows of a ``metrics.jsonl`` file (missing file: no rows; unreadable lines are skipped)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _is_accuracy(key: str) -> bool:
    return key.endswith(("acc", "accuracy"))


def _series(rows: list[dict], key: str) -> tuple[list, list]:
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and "step" in r]
    return [p[0] for p in pts], [p[1] for p in pts]


def curve_keys(rows: list[dict]) -> dict[str, list[tuple[str, str]]]:
    """Which ``(kind, key)`` series go on the loss, accuracy and lr axes of ``curves.png``.

    Train rows give ``loss``, any logged train accuracy (``acc``) and ``lr``; epoch rows give
    the evaluation loss and accuracy (``val_*`` or ``test_*``). Error (1 - accuracy) is left
    out: it repeats the accuracy.
    """
    train = {k for r in rows if r.get("kind") == "train" for k in r if k not in NOT_CURVES}
    evals = {k for r in rows if r.get("kind") == "epoch" for k in r if k.startswith(EVAL_PREFIXES)}
    return {
        "loss": [("train", "loss")] * ("loss" in train) + [("epoch", k) for k in sorted(evals) if k.endswith("loss")],
        "accuracy": [("train", k) for k in sorted(train) if _is_accuracy(k)]
        + [("epoch", k) for k in sorted(evals) if _is_accuracy(k)],
        "lr": [("train", "lr")] * any("lr" in r for r in rows if r.get("kind") == "train"),
    }


def plot_curves(metrics_path: Path, out: Path) -> Path | None:
    """Loss, accuracy and learning rate over steps, train and evaluation on separate axes.

    Returns:
        ``out``, or None when ``metrics.jsonl`` has no rows yet.

    """
    rows = read_metrics(Path(metrics_path))
    panels = {k: v for k, v in curve_keys(rows).items() if v}
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, (title, series) in zip(axes[0], panels.items()):
        for kind, key in series:
            xs, ys = _series([r for r in rows if r.get("kind") == kind], key)
            style = "-" if kind == "train" else "o-"
            ax.plot(xs, ys, style, label=key if kind == "epoch" else f"train {key}", lw=1.2, ms=4)
        ax.set_xlabel("step")
        ax.set_title(title)
        if title == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        else:
            ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


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
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def plot_folds(accuracies: list[float], out: Path, title: str = "cross validation") -> Path:
    """Bars of the per-fold test accuracies (mean +- std as a band) next to a box plot of them.

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
        bars.set_ylim(max(0.0, min(vals) - 10.0), 100.0)
    box.set_xticks([1], ["folds"])
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def plot_overlay(runs: Mapping[str, list[dict]], out: Path) -> Path:
    """Several runs' curves on shared axes (``compare --plot``): train loss and evaluation accuracy.

    Args:
        runs: Run name -> its ``metrics.jsonl`` rows.
        out: PNG path.

    """
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, rows in runs.items():
        keys = curve_keys(rows)
        line = None
        for kind, key in keys["loss"][:1]:
            (line,) = loss_ax.plot(*_series([r for r in rows if r.get("kind") == kind], key), lw=1.2, label=name)
        for kind, key in [k for k in keys["accuracy"] if k[0] == "epoch"][:1]:
            xs, ys = _series([r for r in rows if r.get("kind") == kind], key)
            acc_ax.plot(xs, ys, "o-", ms=4, label=f"{name} ({key})", color=line.get_color() if line else None)
    for ax, title in ((loss_ax, "train loss"), (acc_ax, "evaluation accuracy")):
        ax.set_xlabel("step")
        ax.set_title(title)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return Path(out)


def standard_pictures(run_dir: Path, results: dict, label_names: Sequence[str] | None = None) -> list[str]:
    """Draw the pictures every run gets from its files and results; returns the file names written.

    ``curves.png`` from ``metrics.jsonl``; ``confusion.png`` from the test confusion matrix and
    ``<probe>_confusion.png`` from every ``<probe>_confusion_matrix`` test metric (e.g. an SVM
    probe's, from :meth:`Task.evaluate_extra`), summed over folds (each example is in exactly one
    test fold); ``cv_accuracy.png`` when the run has several folds with an accuracy.
    """
    run, made = RunDir(run_dir), []
    label_names = label_names or results.get("label_names") or (results.get("extra") or {}).get("labels")
    if plot_curves(run.metrics, run.curves):
        made.append(run.curves.name)
    folds = [f for f in results.get("folds") or [results.get("test") or {}] if isinstance(f, dict)]
    keys = [k for k in (folds[0] if folds else {}) if k == "confusion_matrix" or k.endswith("_confusion_matrix")]
    for key in keys:
        cms = [f[key] for f in folds if f.get(key)]
        if not cms or any(len(cm) != len(cms[0]) for cm in cms):
            continue
        total = [[sum(cm[i][j] for cm in cms) for j in range(len(cms[0]))] for i in range(len(cms[0]))]
        names = list(label_names) if label_names and len(label_names) == len(total) else range(len(total))
        probe = key.removesuffix("confusion_matrix")  # "" or e.g. "svm_"
        where = "all test folds" if len(cms) > 1 else "test"
        title = f"{results.get('name')}: {probe.replace('_', ' ')}{where}"
        out = run.path / f"{probe}{run.confusion.name}"  # confusion.png, svm_confusion.png, ...
        plot_confusion(total, [str(n) for n in names], out, title=title)
        made.append(out.name)
    accs = [float(f.get("accuracy", math.nan)) for f in folds]
    if len(folds) > 1 and any(not math.isnan(a) for a in accs):
        plot_folds(accs, run.cv_accuracy, title=str(results.get("name") or "cross validation"))
        made.append(run.cv_accuracy.name)
    return made
