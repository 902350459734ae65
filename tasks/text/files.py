"""The user's sentence files (TSV ``label<TAB>text``, CSV, JSON lines): checked, then read with ``datasets``.

Files are checked before loading (present, non-empty, decodable in ``data.encoding``),
so a bad file gives one line naming the file and line instead of a parser traceback.
``datasets`` caches under ``capsule_kit.data.cache_dir("hf")``, never next to
the data (which may be read-only).
"""

from __future__ import annotations

import codecs
import csv
import json
import logging
import re
from pathlib import Path
from typing import Any

from capsule_kit.data import cache_dir, require_path
from capsule_kit.errors import DataError
from capsule_kit_tasks.text.data import Table, table_from_rows
from capsule_kit_tasks.text.frontends import require

FORMATS = {".tsv": "tsv", ".tab": "tsv", ".csv": "csv", ".json": "json", ".jsonl": "json"}


def file_format(path: Path, fmt: str) -> str:
    """``tsv``/``csv``/``json`` from the recipe or the file suffix."""
    if fmt != "auto":
        return fmt
    found = FORMATS.get(path.suffix.lower())
    if found is None:
        raise DataError(f"{path}: unknown file type '{path.suffix}' (use .tsv/.csv/.jsonl or set data.format)")
    return found


def is_utf8(encoding: str) -> bool:
    """Whether ``encoding`` names UTF-8 (``utf8``, ``UTF-8``, ``u8``, ...)."""
    return codecs.lookup(encoding).name == "utf-8"


def check_file(path: Path, fmt: str, encoding: str = "utf-8") -> str:
    """Raise DataError for a missing, empty, header-only or undecodable file (naming the line); returns its text.

    Args:
        path: The file.
        fmt: ``tsv``, ``csv`` or ``json``.
        encoding: The file's text encoding (``data.encoding``).

    """
    require_path(path, "text data file")
    raw = path.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: empty file (expected a header and data rows)")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        name = "UTF-8" if is_utf8(encoding) else encoding
        raise DataError(
            f"{path}: line {line}: not {name} text (byte 0x{raw[exc.start]:02x}); "
            f"set data.encoding (e.g. latin-1) or re-save the file as UTF-8"
        ) from None
    if fmt != "json" and sum(1 for line in text.splitlines() if line.strip()) < 2:
        raise DataError(f"{path}: no data rows (only a header line)")
    return text


def _quiet(datasets: Any) -> None:
    datasets.disable_progress_bars()
    # datasets logs parser failures at ERROR before raising; we turn them into one DataError line instead.
    datasets.utils.logging.set_verbosity(logging.CRITICAL)


def load_rows(path: Path, fmt: str, text: str = "", encoding: str = "utf-8") -> Any:
    """One file as a ``datasets.Dataset`` (cached in the capsule-kit cache); ``text``: the file's content."""
    datasets = require("datasets")
    _quiet(datasets)
    common = {"data_files": str(path), "split": "train", "cache_dir": str(cache_dir("hf")), "encoding": encoding}
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


def read_table(
    path: Path,
    fmt: str,
    text_column: str,
    label_column: str,
    *,
    encoding: str = "utf-8",
    empty_rows: str = "error",
) -> Table:
    """Check and load one file; the text and label columns must exist.

    Args:
        path: The file.
        fmt: ``auto``, ``tsv``, ``csv`` or ``json`` (``data.format``).
        text_column: Column of the texts.
        label_column: Column of the labels.
        encoding: Text encoding of the file (``data.encoding``).
        empty_rows: ``error`` (an empty text stops the run, naming its line) or ``drop``
            (such rows are left out and counted in ``Table.dropped``).

    """
    fmt = file_format(path, fmt)
    text = check_file(path, fmt, encoding)
    rows = load_rows(path, fmt, text, encoding)
    if fmt != "json":
        rows = drop_trailing_blank_rows(rows, text)
    return table_from_rows(rows, str(path), fmt, text_column, label_column, empty_rows=empty_rows)


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
