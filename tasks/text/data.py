"""Text data: tables of texts and labels, label vocabulary, datasets and the tokenizing collate function.

Files are read in :mod:`capsule_kit_tasks.text.files` (or come from a hub dataset);
both end here as a :class:`Table`.

Shapes: N examples, C classes, V vocabulary, E embedding dim.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from capsule_kit.errors import DataError


@dataclass
class Table:
    """Raw texts and label values of one file, with a way to name a row.

    Attributes:
        path: The file (or hub split) the rows came from.
        texts: One text per row.
        labels: One label value per row, as read.
        fmt: ``tsv``, ``csv``, ``json`` or ``hub`` (how rows are counted in messages).
        rows: The file's data-row index of each entry (None: ``0..N-1``), so messages name
            the right line after rows were dropped or selected.
        dropped: Rows with an empty text left out of this file (``data.empty_rows: drop``).

    """

    path: str
    texts: list[str]
    labels: list[Any]
    fmt: str
    rows: list[int] | None = None
    dropped: int = 0

    def where(self, i: int) -> str:
        """Human location of entry ``i`` (0-based) in the file: TSV lines count the header."""
        row = i if self.rows is None else self.rows[i]
        if self.fmt == "tsv":
            return f"{self.path}: line {row + 2}"
        return f"{self.path}: {'record' if self.fmt == 'json' else 'row'} {row + 1}"

    def take(self, index: list[int]) -> Table:
        """Entries ``index``, in that order (locations still name their file rows)."""
        rows = self.rows if self.rows is not None else range(len(self.texts))
        return Table(
            self.path,
            [self.texts[i] for i in index],
            [self.labels[i] for i in index],
            self.fmt,
            [rows[i] for i in index],
        )


def table_from_rows(
    rows: Any, source: str, fmt: str, text_column: str, label_column: str, *, empty_rows: str = "error"
) -> Table:
    """A :class:`Table` from a ``datasets.Dataset`` (file or hub split).

    Args:
        rows: The loaded rows.
        source: File or hub split, for messages.
        fmt: ``tsv``, ``csv``, ``json`` or ``hub``.
        text_column: Column of the texts.
        label_column: Column of the labels.
        empty_rows: ``error``: an empty (or blank) text raises, naming its row; ``drop``: such rows
            are left out and counted in :attr:`Table.dropped`.

    Raises:
        DataError: no rows, a missing column, an empty text (``error``), or nothing left after dropping.

    """
    if len(rows) == 0:
        raise DataError(f"{source}: no data rows")
    for what, col in (("text", text_column), ("label", label_column)):
        if col not in rows.column_names:
            raise DataError(
                f"{source}: no {what} column '{col}' (columns: {', '.join(map(str, rows.column_names))}; "
                f"set data.{what}_column)"
            )
    table = Table(source, ["" if t is None else str(t) for t in rows[text_column]], list(rows[label_column]), fmt)
    empty = [i for i, text in enumerate(table.texts) if not text.strip()]
    if not empty:
        return table
    if empty_rows != "drop":
        raise DataError(f"{table.where(empty[0])}: empty text (data.empty_rows=drop leaves such rows out)")
    if len(empty) == len(table.texts):
        raise DataError(f"{source}: every text is empty ({len(empty)} rows)")
    gone = set(empty)
    kept = table.take([i for i in range(len(table.texts)) if i not in gone])
    kept.dropped = len(empty)
    return kept


def label_keys(value: Any, multi: bool, sep: str) -> list[str]:
    """The label(s) of one row as strings (ints stay ints: ``1`` and ``1.0`` -> ``"1"``)."""
    values = value if isinstance(value, (list, tuple)) else (str(value).split(sep) if multi else [value])
    keys = []
    for v in values:
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        key = "" if v is None else str(v).strip()
        if key:
            keys.append(key)
    return keys


def label_vocab(table: Table, multi: bool, sep: str) -> list[str]:
    """Sorted label keys of the training rows (numerically when all are integers)."""
    seen: set[str] = set()
    for i, value in enumerate(table.labels):
        keys = label_keys(value, multi, sep)
        if not keys:
            raise DataError(f"{table.where(i)}: empty label")
        if not multi and isinstance(value, (list, tuple)) and len(keys) > 1:
            raise DataError(f"{table.where(i)}: several labels {keys} (set data.multi_label: true)")
        seen.update(keys)
    if all(k.lstrip("-").isdigit() for k in seen):
        return sorted(seen, key=int)
    return sorted(seen)


def encode_labels(table: Table, keys: list[str], multi: bool, sep: str) -> Tensor:
    """Label values -> class indices [N] (or multi-hot [N, C]); unknown labels name their row.

    Raises:
        DataError: a label never seen in the training split, or an empty label.

    """
    index = {k: i for i, k in enumerate(keys)}
    out = torch.zeros(len(table.labels), len(keys)) if multi else torch.zeros(len(table.labels), dtype=torch.long)
    for i, value in enumerate(table.labels):
        row = label_keys(value, multi, sep)
        if not row:
            raise DataError(f"{table.where(i)}: empty label")
        for key in row:
            if key not in index:
                raise DataError(f"{table.where(i)}: label '{key}' never occurs in the training split")
            if multi:
                out[i, index[key]] = 1.0
            else:
                out[i] = index[key]
    return out


class TextExamples(Dataset):
    """Texts with label indices [N] or multi-hot targets [N, C]."""

    def __init__(self, texts: list[str], labels: Tensor) -> None:
        self.texts, self.labels = texts, labels

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> tuple[str, Tensor]:
        return self.texts[i], self.labels[i]


class Tokenize:
    """DataLoader collate function: tokenizes a batch of ``(text, label)`` pairs (in the loader, not the step).

    Args:
        encode: The model's tokenizer (``WordTokenizer`` or ``PretrainedTokenizer``): texts -> (ids, mask).

    Shapes:
        returns: ``{"ids": [B, L] int64, "mask": [B, L] bool, "label": [B] or [B, C]}``
    """

    def __init__(self, encode: Callable[[list[str]], tuple[Tensor, Tensor]]) -> None:
        self.encode = encode

    def __call__(self, batch: list[tuple[str, Tensor]]) -> dict[str, Tensor]:
        texts, labels = zip(*batch)
        ids, mask = self.encode(list(texts))
        return {"ids": ids, "mask": mask, "label": torch.stack(labels)}
