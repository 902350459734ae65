"""Data root resolution and small shared loader helpers.

The data root is ``$CAPSULE_KIT_DATA`` when set, else ``<user cache>/capsule_kit/data``.
Processed files go to the cache (``$CAPSULE_KIT_CACHE`` or ``<user cache>/capsule_kit``),
never next to the data, which may be read-only.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch.utils.data import Dataset

from capsule_kit.config import Strict
from capsule_kit.errors import DataError

DATA_ENV, CACHE_ENV = "CAPSULE_KIT_DATA", "CAPSULE_KIT_CACHE"


def _user_cache() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def data_root(override: str | os.PathLike | None = None) -> Path:
    """The data root: ``override`` (a recipe's ``data.root``), ``$CAPSULE_KIT_DATA``, or the user cache."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get(DATA_ENV)
    return Path(env).expanduser() if env else _user_cache() / "capsule_kit" / "data"


def cache_dir(*parts: str) -> Path:
    """A writable cache folder (created), ``$CAPSULE_KIT_CACHE`` or ``<user cache>/capsule_kit``."""
    env = os.environ.get(CACHE_ENV)
    path = (Path(env).expanduser() if env else _user_cache() / "capsule_kit").joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def require_path(path: Path, what: str) -> Path:
    """Return ``path`` if it exists, else raise a DataError saying where we looked and how to fix it."""
    if path.exists():
        return path
    raise DataError(f"{what} not found: looked for {path} (set {DATA_ENV}=/path/to/data or data.root in the recipe)")


class DataSection(Strict):
    """The keys every task's ``data`` section shares (tasks subclass it to add their own)."""

    root: str | None = Field(None, description="Data root (default: $CAPSULE_KIT_DATA, else the user cache).")
    train_limit: int | None = Field(
        None, ge=1, description="Train on a seeded random subset of this many training examples (seed: split.seed)."
    )
    test_limit: int | None = Field(
        None, ge=1, description="Test on a seeded random subset of this many test examples (seed: split.seed)."
    )


def limit_indices(indices: Sequence[int], limit: int | None, seed: int) -> list[int]:
    """A seeded random subset of ``limit`` of ``indices`` in their order (all when ``limit`` is None or larger).

    The meaning of ``data.train_limit`` / ``data.test_limit`` in every task.
    """
    keep = subset_indices(len(indices), None, limit, seed)
    return list(indices) if keep is None else [indices[i] for i in keep]


@dataclass
class Splits:
    """What :meth:`Task.build_data` returns.

    Attributes:
        train: Training dataset (map-style or iterable).
        test: Test dataset.
        val: Optional validation dataset (``best`` checkpoints follow it; else ``test``).
        collate: Optional collate function for all splits.
        info: Plain data describing the data (sizes, label names), saved in results.json.
        lengths: Optional size of each training example (e.g. tokens): training batches are
            then drawn from examples of similar size (length bucketing, less padding).

    """

    train: Dataset
    test: Dataset
    val: Dataset | None = None
    collate: Callable[[list[Any]], Any] | None = None
    info: dict[str, Any] | None = None
    lengths: Sequence[int] | None = None


class TensorPairs(Dataset):
    """A map-style dataset over aligned tensors (``x[i], y[i]``)."""

    def __init__(self, *tensors: torch.Tensor) -> None:
        if len({len(t) for t in tensors}) != 1:
            raise ValueError("all tensors must have the same length")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return tuple(t[index] for t in self.tensors)


def move_to(batch: Any, device: torch.device) -> Any:
    """Move tensors in nested tuples/lists/dicts (or objects with ``.to``) to ``device``."""
    if isinstance(batch, torch.Tensor) or hasattr(batch, "to") and not isinstance(batch, type):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)) and not isinstance(batch, str):
        moved = [move_to(v, device) for v in batch]
        return type(batch)(*moved) if hasattr(batch, "_fields") else type(batch)(moved)
    return batch


def subset_indices(n: int, fraction: float | None, limit: int | None, seed: int) -> Sequence[int] | None:
    """Seeded subset of ``range(n)`` for quick runs (None = all)."""
    k = n
    if fraction is not None:
        k = max(1, int(n * fraction))
    if limit is not None:
        k = min(k, limit)
    if k >= n:
        return None
    g = torch.Generator().manual_seed(seed)
    return torch.randperm(n, generator=g)[:k].sort().values.tolist()
