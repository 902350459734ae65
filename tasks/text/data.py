"""Text data: CSV/TSV/JSONL files (or a hub dataset) through Hugging Face ``datasets``, labels, vocabulary.

Files are checked before loading (present, non-empty, UTF-8), so a bad file
gives one line naming the file and line instead of a parser traceback.
``datasets`` caches under ``capsule_kit.data.cache_dir("hf")``, never next to
the data (which may be read-only).

Shapes: N examples, C classes, V vocabulary, E embedding dim.
"""

from __future__ import annotations

import csv
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from capsule_kit.data import cache_dir, require_path
from capsule_kit.errors import DataError
from capsule_kit_tasks.text.frontends import require

FORMATS = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".json": "json", ".jsonl": "json"}


@dataclass
class Table:
    """Raw texts and label values of one file, with a way to name a row."""

    path: str
    texts: list[str]
    labels: list[Any]
    fmt: str

    def where(self, i: int) -> str:
        """Human location of data row ``i`` (0-based): TSV lines count the header."""
        if self.fmt == "tsv":
            return f"{self.path}: line {i + 2}"
        return f"{self.path}: {'record' if self.fmt == 'json' else 'row'} {i + 1}"

    def take(self, index: list[int]) -> Table:
        """Rows ``index`` (locations then refer to the new order)."""
        return Table(self.path, [self.texts[i] for i in index], [self.labels[i] for i in index], self.fmt)


def file_format(path: Path, fmt: str) -> str:
    """``tsv``/``csv``/``json`` from the recipe or the file suffix."""
    if fmt != "auto":
        return fmt
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise DataError(f"{path}: unknown file type '{path.suffix}' (use .tsv/.csv/.jsonl or set data.format)")
    return found


def check_file(path: Path, fmt: str) -> str:
    """Raise DataError for a missing, empty, header-only or non-UTF-8 file (naming the line); returns its text."""
    require_path(path, "text data file")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: empty file (expected a header and data rows)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); re-save it as UTF-8"
        ) from None
    if fmt != "json" and sum(1 for line in text.splitlines() if line.strip()) < 2:
        raise DataError(f"{path}: no data rows (only a header line)")
    return text


def _quiet(datasets: Any) -> None:
    datasets.disable_progress_bars()
    # datasets logs parser failures at ERROR before raising; we turn them into one DataError line instead.
    datasets.utils.logging.set_verbosity(logging.CRITICAL)


def load_rows(path: Path, fmt: str, text: str = "") -> Any:
    """One file as a ``datasets.Dataset`` (cached in the capsule-kit cache); ``text``: the file's content."""
    datasets = require("datasets")
    _quiet(datasets)
    common = {"data_files": str(path), "split": "train", "cache_dir": str(cache_dir("hf"))}
    # Keep texts verbatim: no quote handling in TSV, no "NA"/"null" -> NaN, blank lines kept as empty rows.
    plain = {"keep_default_na": False, "na_filter": False, "skip_blank_lines": False}
    try:
        if fmt == "tsv":
            return datasets.load_dataset("csv", delimiter="\t", quoting=csv.QUOTE_NONE, **plain, **common)
        if fmt == "csv":
            return datasets.load_dataset("csv", **plain, **common)
        return datasets.load_dataset("json", **common)
    except Exception as exc:  # noqa: BLE001 - parser errors come wrapped in many types
        cause = exc.__cause__ or exc
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[-1]
        raise DataError(f"{path}: {parse_problem(first, fmt, text)[:240]}") from None


def parse_problem(message: str, fmt: str, text: str) -> str:
    """A parser's complaint with its location in this project's convention (TSV line / CSV row / JSON line)."""
    fields = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", message)
    if fields:  # pandas counts records from 1 with the header as record 1
        want, record, got = map(int, fields.groups())
        where = f"line {record}" if fmt == "tsv" else f"row {record - 1}"
        return f"{where}: {got} fields, but the header has {want} (a stray {'tab' if fmt == 'tsv' else 'comma'}?)"
    if fmt == "json":
        bad = first_bad_json_line(text)
        if bad:
            return bad
        message = re.sub(r" in row \d+", "", message)  # pyarrow's rows are 0-based and per block: misleading
    return f"cannot read as {fmt}: {message}"


def first_bad_json_line(text: str) -> str | None:
    """``line N: ...`` for the first non-blank line of a JSON-lines text that is not a JSON object."""
    try:
        json.loads(text)
        return None  # one JSON document (not JSON lines): no line to blame
    except ValueError:
        pass
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as exc:
            return f"line {n}: not valid JSON ({str(exc).split(':')[0]})"
        if not isinstance(value, dict):
            return f"line {n}: expected a JSON object per line, got {type(value).__name__}"
    return None


def read_table(path: Path, fmt: str, text_column: str, label_column: str) -> Table:
    """Check and load one file; the text and label columns must exist and texts be non-empty."""
    fmt = file_format(path, fmt)
    text = check_file(path, fmt)
    rows = load_rows(path, fmt, text)
    if fmt != "json":
        rows = drop_trailing_blank_rows(rows, text)
    return table_from_rows(rows, str(path), fmt, text_column, label_column)


def drop_trailing_blank_rows(rows: Any, text: str) -> Any:
    """Without the rows pandas made of blank lines at the end of the file (they are not data rows)."""
    blank = 0
    for line in reversed(text.splitlines()):
        if line.strip():
            break
        blank += 1
    n = len(rows)
    while blank and n and all(v is None or not str(v).strip() for v in rows[n - 1].values()):
        blank, n = blank - 1, n - 1
    return rows.select(range(n)) if n < len(rows) else rows


def table_from_rows(rows: Any, source: str, fmt: str, text_column: str, label_column: str) -> Table:
    """A :class:`Table` from a ``datasets.Dataset`` (file or hub split)."""
    if len(rows) == 0:
        raise DataError(f"{source}: no data rows")
    for what, col in (("text", text_column), ("label", label_column)):
        if col not in rows.column_names:
            raise DataError(
                f"{source}: no {what} column '{col}' (columns: {', '.join(map(str, rows.column_names))}; "
                f"set data.{what}_column)"
            )
    table = Table(source, ["" if t is None else str(t) for t in rows[text_column]], list(rows[label_column]), fmt)
    for i, text in enumerate(table.texts):
        if not text.strip():
            raise DataError(f"{table.where(i)}: empty text")
    return table


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
