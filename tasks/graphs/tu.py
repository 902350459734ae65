"""TU Dortmund graph files: existence and consistency checks, and a writable PyG cache.

The TU format (https://chrsmrrs.github.io/datasets/docs/format/) keeps one
data set in ``<root>/<NAME>/raw/<NAME>_*.txt``: ``A`` (edges, 1-based node ids),
``graph_indicator`` (the graph of every node), ``graph_labels`` and optional
``node_labels``/``node_attributes``/``edge_labels``/``edge_attributes``.

PyG's ``TUDataset`` writes ``processed/`` next to ``raw/``, and tries to
download when a raw file is missing. The data root may be read-only, so the raw
files are copied into ``capsule_kit.data.cache_dir("graphs", "TU", ...)`` (keyed
by the raw folder and its files' names, sizes and times, so edited files are re-processed),
checked here first (one-line :class:`DataError` naming the file), processed in a
temporary folder and renamed into place (concurrent runs never see a half-written cache).
"""

from __future__ import annotations

import hashlib
import io
import shutil
import tempfile
import warnings
from pathlib import Path

import numpy as np

from capsule_kit.data import DATA_ENV, cache_dir
from capsule_kit.errors import DataError

REQUIRED = ("A", "graph_indicator", "graph_labels")
PER_NODE = ("node_labels", "node_attributes")
PER_EDGE = ("edge_labels", "edge_attributes")


def raw_dir(root: Path, name: str) -> Path:
    """Folder holding the raw files of data set ``name`` under the data root."""
    return Path(root) / "graphs" / "TU" / name / "raw"


def check_raw(root: Path, name: str) -> Path:
    """Raise DataError unless the raw files of ``name`` exist and agree; return the raw folder.

    The contents are checked (:func:`validate_raw`) once per version of the files: a processed
    cache of the same files (same names, sizes and times) means they passed before. So
    ``--validate`` runs the same checks as the run.
    """
    folder = raw_dir(root, name)
    for part in REQUIRED:
        path = folder / f"{name}_{part}.txt"
        if not path.is_file():
            raise DataError(
                f"TU data set '{name}': missing raw file {path.name} in {folder} "
                f"(set {DATA_ENV}=/path/to/data or data.root; TU layout: graphs/TU/{name}/raw/{name}_A.txt, ...)"
            )
    key = _fingerprint(folder, sorted(folder.glob(f"{name}_*.txt")))
    done = cache_dir("graphs", "TU") / f"{name}-{key}" / name / "processed" / "data.pt"
    if key not in _CHECKED and not done.is_file():
        validate_raw(folder, name)
    _CHECKED.add(key)
    return folder


_CHECKED: set[str] = set()  # fingerprints of raw folders validated in this process


def _read(path: Path, dtype=np.int64) -> np.ndarray:
    """Comma-separated finite numbers, one row per line -> [rows, cols]; errors name file and line."""
    text = path.read_text(errors="replace")
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    try:
        with warnings.catch_warnings():  # numpy warns before some errors; the DataError says it all
            warnings.simplefilter("ignore")
            arr = np.loadtxt(io.StringIO(text), delimiter=",", dtype=dtype, ndmin=2)
    except ValueError:
        raise DataError(f"{path}: {_first_bad_line(text, dtype)}") from None
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1)) if dtype != np.int64 else []
    if len(bad):
        raise DataError(f"{path}: line {bad[0] + 1}: NaN/inf value ({len(bad)} line{'s' * (len(bad) > 1)} in all)")
    return arr


def _first_bad_line(text: str, dtype) -> str:
    """Where and why ``np.loadtxt`` failed, found line by line (only on the error path)."""
    kind, convert = ("integers", int) if dtype == np.int64 else ("numbers", float)
    lines = text.splitlines()
    width = len(lines[0].split(",")) if lines else 0
    for k, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = [t.strip() for t in line.split(",")]
        if len(fields) != width:
            return f"line {k}: {len(fields)} values, expected {width} like line 1"
        for t in fields:
            try:
                convert(t)
            except ValueError:
                return f"line {k}: {t[:20]!r} is not one of the comma-separated {kind} expected"
    return f"cannot read as comma-separated {kind}"


def _agree(first: Path, rows: int, reference: Path, expected: int, per: str) -> None:
    """``first`` needs one line per ``per`` as ``reference`` has; the shorter file is named (likely cut short)."""
    if rows == expected:
        return
    short, n_short, full, n_full = (
        (first, rows, reference, expected) if rows < expected else (reference, expected, first, rows)
    )
    raise DataError(f"{short}: {n_short} lines, but {full.name} has {n_full} (one per {per}): truncated?")


def validate_raw(folder: Path, name: str) -> dict[str, int]:
    """Check that the raw files agree with each other; return counts.

    Raises:
        DataError: naming the file (and line) and what is wrong: an empty file, a
            non-integer label or id, a NaN/inf attribute, line counts that disagree
            (the shorter file is named), node or graph ids out of range, an unsorted
            indicator, a graph with no nodes, an edge joining two graphs.

    """
    f = {part: folder / f"{name}_{part}.txt" for part in (*REQUIRED, *PER_NODE, *PER_EDGE)}
    indicator = _read(f["graph_indicator"])[:, 0]
    num_graphs = len(_read(f["graph_labels"]))
    num_nodes = len(indicator)
    for part in PER_NODE:  # first: a truncated indicator is named before its symptoms
        if f[part].is_file():
            rows = len(_read(f[part], np.int64 if part == "node_labels" else np.float64))
            _agree(f[part], rows, f["graph_indicator"], num_nodes, "node")
    if indicator.min() < 1 or indicator.max() > num_graphs:
        bad = int(indicator.min() if indicator.min() < 1 else indicator.max())
        raise DataError(
            f"{f['graph_indicator']}: graph id {bad} out of range 1..{num_graphs} "
            f"({f['graph_labels'].name} has {num_graphs} lines, one per graph)"
        )
    if np.any(np.diff(indicator) < 0):
        row = int(np.argmax(np.diff(indicator) < 0)) + 2
        raise DataError(
            f"{f['graph_indicator']}: line {row}: graph ids must be non-decreasing (nodes grouped by graph)"
        )
    counts = np.bincount(indicator, minlength=num_graphs + 1)[1:]
    if np.any(counts == 0):
        empty = int(np.argmax(counts == 0)) + 1
        raise DataError(f"{folder}: graph {empty} has no nodes (no line '{empty}' in {f['graph_indicator'].name})")
    edges = _read(f["A"])
    if edges.shape[1] != 2:
        raise DataError(f"{f['A']}: expected 2 node ids per line ('i, j'), got {edges.shape[1]}")
    if edges.min() < 1 or edges.max() > num_nodes:
        raise DataError(f"{f['A']}: node id {int(edges.max() if edges.max() > num_nodes else edges.min())} "
                        f"out of range 1..{num_nodes} (nodes in {f['graph_indicator'].name})")  # fmt: skip
    cross = indicator[edges[:, 0] - 1] != indicator[edges[:, 1] - 1]
    if np.any(cross):
        row = int(np.argmax(cross))
        raise DataError(
            f"{f['A']}: line {row + 1}: edge ({edges[row, 0]}, {edges[row, 1]}) joins nodes of two different graphs"
        )
    for part in PER_EDGE:
        if f[part].is_file():
            rows = len(_read(f[part], np.int64 if part == "edge_labels" else np.float64))
            _agree(f[part], rows, f["A"], len(edges), "edge")
    return {"graphs": num_graphs, "nodes": num_nodes, "edges": len(edges)}


def _fingerprint(folder: Path, files: list[Path]) -> str:
    h = hashlib.sha1(str(folder.resolve()).encode())
    for p in files:
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:12]


def cached_root(root: Path, name: str) -> Path:
    """A writable PyG root holding ``<NAME>/raw`` (copied, checked) and ``<NAME>/processed``.

    Returns:
        The folder to pass as ``TUDataset(root=...)``.

    """
    folder = check_raw(root, name)
    files = sorted(folder.glob(f"{name}_*.txt"))
    final = cache_dir("graphs", "TU") / f"{name}-{_fingerprint(folder, files)}"
    if (final / name / "processed" / "data.pt").is_file():
        return final
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=final.parent))
    try:
        (tmp / name / "raw").mkdir(parents=True)
        for p in files:  # plain copies: the cache must stay writable even when the data root is not
            shutil.copyfile(p, tmp / name / "raw" / p.name)
        _process(tmp, name)
        if not (final / name / "processed" / "data.pt").is_file():  # else another process finished first
            shutil.rmtree(final, ignore_errors=True)  # a broken leftover
            tmp.rename(final)
    except OSError:  # lost a rename race: fine if the winner's copy is complete
        if not (final / name / "processed" / "data.pt").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _process(root: Path, name: str) -> None:
    from torch_geometric.datasets import TUDataset

    TUDataset(root=str(root), name=name)
