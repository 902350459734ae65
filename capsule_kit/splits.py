"""Train/validation/test splits: one seeded, stratified implementation for every task.

A recipe's ``split`` section (:class:`SplitConfig`) means the same in every task:
``folds > 1`` is stratified k-fold cross validation (run k tests on fold k),
``folds == 1`` one stratified hold-out of ``test_fraction`` (both only for data
without a test split of its own), and ``val_fraction`` / ``val_size`` a
stratified validation share carved from the training part (it picks the
``best`` checkpoint). Stratification and folds are scikit-learn's
(``StratifiedKFold``, ``train_test_split``), seeded by ``split.seed``.

Example:
    >>> import numpy as np
    >>> parts = split_indices(np.array([0, 1] * 10), folds=1, test_fraction=0.2, val_fraction=0.25)
    >>> [len(p) for p in parts]
    [12, 4, 4]
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from pydantic import Field

from capsule_kit.config import Strict
from capsule_kit.errors import ConfigError


class ValSplit(Strict):
    """A stratified, seeded validation split carved from the training data."""

    val_fraction: float = Field(
        0.0, ge=0, lt=1, description="Share of the training data held out for validation (best checkpoint); 0: none."
    )
    val_size: int | None = Field(
        None, ge=1, description="Validation examples held out of the training data (instead of val_fraction)."
    )
    seed: int = Field(0, description="Seed of the folds, hold-outs and data limits (independent of trainer.seed).")

    @property
    def val(self) -> float | int:
        """The validation share (fraction) or count; 0: none."""
        return self.val_size if self.val_size is not None else self.val_fraction


class SplitConfig(ValSplit):
    """Cross validation or a hold-out test split (for data without a test split), plus validation."""

    folds: int = Field(1, ge=1, description="Stratified k-fold cross validation when > 1; 1: one hold-out test split.")
    test_fraction: float = Field(0.1, gt=0, lt=1, description="Hold-out test share when folds = 1.")


class Split(NamedTuple):
    """Sorted row indices of one split; ``val`` is None without validation."""

    train: np.ndarray
    val: np.ndarray | None
    test: np.ndarray | None


def _strata(labels, stratify: bool = True) -> np.ndarray | None:
    """Labels usable for stratification (None: not stratified, e.g. multi-label rows)."""
    arr = np.asarray(labels if isinstance(labels, np.ndarray) else [str(v) for v in labels])
    return arr if stratify and arr.ndim == 1 else None


def holdout(
    indices: np.ndarray, labels, size: float | int, seed: int, what: str = "split.val", *, stratify: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Seeded hold-out of ``size`` (a fraction < 1, or a count) from ``indices``, stratified by ``labels``.

    Returns:
        ``(kept, held)``: sorted indices.

    """
    from sklearn.model_selection import train_test_split

    indices = np.asarray(indices)
    strata = _strata(labels, stratify)
    try:
        keep, held = train_test_split(
            indices, test_size=size, random_state=seed, stratify=None if strata is None else strata[indices]
        )
    except ValueError as exc:
        counts = _counts(strata, indices)
        raise ConfigError(
            f"{what}: cannot hold out {size} of {len(indices)} examples{counts} ({_first(exc)})"
        ) from None
    return np.sort(keep), np.sort(held)


def split_indices(
    labels,
    *,
    folds: int = 1,
    fold: int = 0,
    test_fraction: float | None = 0.1,
    val_fraction: float | int = 0.0,
    seed: int = 0,
    stratify: bool = True,
) -> Split:
    """Train/val/test indices of fold ``fold``: stratified and seeded.

    Args:
        labels: One label per example (any hashable values; rows of several labels are not stratified).
        folds: > 1: ``StratifiedKFold(folds, shuffle=True, random_state=seed)``, test = fold ``fold``.
        fold: The fold whose test part is returned.
        test_fraction: folds == 1: stratified hold-out test share; None: no test split (the data has one).
        val_fraction: Validation share (< 1) or count carved from the training part; 0: none.
        seed: Seed of folds and hold-outs.
        stratify: False: plain seeded shuffles (multi-label data).

    Raises:
        ConfigError: a class has too few examples for the folds or hold-outs.

    """
    from sklearn.model_selection import StratifiedKFold

    idx = np.arange(len(labels))
    strata = _strata(labels, stratify)
    test = None
    if folds > 1:
        try:
            splitter = StratifiedKFold(folds, shuffle=True, random_state=seed)
            train, test = list(splitter.split(idx, strata if strata is not None else np.zeros(len(idx))))[fold]
        except ValueError as exc:
            raise ConfigError(f"split.folds: cannot cut {folds} folds{_counts(strata, idx)} ({_first(exc)})") from None
    elif test_fraction is not None:
        train, test = holdout(idx, labels, test_fraction, seed, "split.test_fraction", stratify=stratify)
    else:
        train = idx
    val = None
    if val_fraction:
        train, val = holdout(train, labels, val_fraction, seed + fold, "split.val", stratify=stratify)
    return Split(np.sort(train), val, None if test is None else np.sort(test))


def _counts(strata: np.ndarray | None, indices: np.ndarray) -> str:
    """`` with class counts [...]`` for error messages ('' when not stratified)."""
    if strata is None:
        return ""
    return f" with class counts {np.unique(strata[indices], return_counts=True)[1].tolist()}"


def _first(exc: Exception) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0]
