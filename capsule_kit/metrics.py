"""Classification metrics shared by the tasks (accuracy, macro-F1, confusion matrix).

Shapes: N examples, C classes.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def confusion_matrix(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    """Counts ``cm[t, p]`` of examples of true class t predicted as p.

    Shapes:
        pred: [N] int, target: [N] int
        returns: [C, C] int64
    """
    idx = target.long() * num_classes + pred.long()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def classification_metrics(pred: Tensor, target: Tensor, num_classes: int) -> dict:
    """Accuracy, error, macro-F1, per-class accuracy and the confusion matrix (plain data).

    Shapes:
        pred: [N], target: [N]
    """
    cm = confusion_matrix(pred, target, num_classes).double()
    tp = cm.diag()
    support, predicted = cm.sum(1), cm.sum(0)
    precision = tp / predicted.clamp(min=1)
    recall = tp / support.clamp(min=1)
    f1 = 2 * precision * recall / (precision + recall).clamp(min=1e-12)
    present = support > 0
    accuracy = float(tp.sum() / cm.sum().clamp(min=1))
    return {
        "accuracy": accuracy,
        "error": 1.0 - accuracy,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class_accuracy": [float(r) for r in recall],
        "confusion_matrix": cm.long().tolist(),
    }


def labels(metrics: dict) -> dict[str, str]:
    """The short string entries of a metrics dict, e.g. ``data_kind`` (shown next to the numbers)."""
    return {k: v for k, v in metrics.items() if isinstance(v, str) and len(v) <= 80}


def scalars(metrics: dict) -> dict[str, float]:
    """The float-valued entries of a metrics dict (for logs and tables)."""
    return {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def multilabel_metrics(pred: Tensor, target: Tensor) -> dict[str, Any]:
    """Exact-match accuracy, micro/macro-F1 and Hamming accuracy of multi-hot predictions.

    Shapes:
        pred: [N, C] 0/1, target: [N, C] 0/1
    """
    tp = (pred * target).sum(0)
    fp, fn = (pred * (1 - target)).sum(0), ((1 - pred) * target).sum(0)
    f1 = 2 * tp / (2 * tp + fp + fn).clamp(min=1e-12)
    present = target.sum(0) > 0
    micro = float(2 * tp.sum() / (2 * tp.sum() + fp.sum() + fn.sum()).clamp(min=1e-12))
    exact = float((pred == target).all(-1).float().mean())
    return {
        "accuracy": exact,
        "error": 1.0 - exact,
        "micro_f1": micro,
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "hamming_accuracy": float((pred == target).float().mean()),
    }
