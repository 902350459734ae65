"""Fault suite (issue 15), data files: malformed point clouds, TU graph files, MNIST idx files and label
names are refused in one line naming the file (and line), exit code 2, no run directory.
"""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from capsule_kit.errors import ConfigError, DataError
from capsule_kit_tasks.points import io
from tests.helpers import REPO, run_cli
from tests.test_faults import MNIST, cli_error

# --- 3. Malformed point files: refused in one line naming the file (and line), with both readers ---

CLOUD = np.arange(30, dtype=np.float64).reshape(10, 3) / 7


def ply(rows: list[str], count: int = 10) -> str:
    head = f"ply\nformat ascii 1.0\nelement vertex {count}\nproperty float x\nproperty float y\nproperty float z\n"
    return head + "end_header\n" + "".join(f"{r}\n" for r in rows)


def pcd_ascii(rows: list[str], count: int = 10) -> str:
    head = "VERSION 0.7\nFIELDS x y z\nSIZE 4 4 4\nTYPE F F F\nCOUNT 1 1 1\n"
    return head + f"WIDTH {count}\nHEIGHT 1\nPOINTS {count}\nDATA ascii\n" + "".join(f"{r}\n" for r in rows)


def off(rows: list[str]) -> str:
    return "OFF\n10 2 0\n" + "".join(f"{r}\n" for r in rows) + "3 0 1 2\n3 1 2 3\n"


def write_fault(folder: Path, fmt: str, fault: str) -> tuple[Path, str]:
    """A file of format ``fmt`` with ``fault`` (truncated / inf / nan / garbage) and the message it must give."""
    rows = [" ".join(f"{v:.4f}" for v in p) for p in CLOUD]
    first = {"ply": 8, "pcd": 10, "off": 3, "xyz": 1}.get(fmt, 0)  # line of the first point
    if fault == "truncated":
        rows, want = rows[:6], "truncated: the header declares"
    else:
        rows[3] = {"inf": "0.5 inf 0.1", "nan": "nan 0.5 0.1", "garbage": "0.5 0x1g 0.1"}[fault]
        want = f"line {first + 3}: " + ("'0x1g' is not a number" if fault == "garbage" else "NaN/inf coordinate")
    path = folder / f"{fault}.{fmt}"
    if fmt == "npy":
        arr = CLOUD.copy()
        arr[3, 1] = float(fault) if fault in ("inf", "nan") else 0.0
        np.save(path, arr)
        if fault == "truncated":
            path.write_bytes(path.read_bytes()[:-40])
        return path, "unreadable .npy" if fault == "truncated" else "row 3: NaN/inf coordinate"
    if fmt == "pcd-binary":
        path = folder / f"{fault}-binary.pcd"
        arr = CLOUD.astype(np.float32)
        arr[3, 1] = np.inf
        body = arr[:6] if fault == "truncated" else arr
        head = pcd_ascii([]).replace("DATA ascii", "DATA binary")
        path.write_bytes(head.encode() + body.tobytes())
        return path, "truncated: the header declares 10 points, the file has 6" if fault == "truncated" else "NaN/inf"
    if fault == "truncated" and fmt == "xyz":
        rows.append("0.5 0.25")  # a cut last line: the only truncation a header-less table shows
        want = "line 7: 2 values, expected 3"
    text = {"ply": ply, "pcd": pcd_ascii, "off": off, "xyz": lambda r: "".join(f"{x}\n" for x in r)}[fmt](rows)
    path.write_text(text)
    return path, want


FAULTS = [
    (fmt, fault)
    for fmt in ("ply", "pcd", "pcd-binary", "off", "xyz", "npy")
    for fault in ("truncated", "inf", "nan", "garbage")
    if fmt in ("ply", "pcd", "off", "xyz") or fault in ("truncated", "inf")  # binary files hold no tokens
]


@pytest.mark.parametrize("reader", ["numpy", "open3d"])
@pytest.mark.parametrize("fmt, fault", FAULTS)
def test_malformed_point_file_is_refused_naming_file_and_line(tmp_path, fmt, fault, reader):
    if reader == "open3d" and io.open3d_or_reason()[0] is None:
        pytest.skip(io.open3d_or_reason()[1])
    path, want = write_fault(tmp_path, fmt, fault)
    with pytest.raises(DataError) as err:
        io.load_points(path, 8, reader=reader)
    msg = str(err.value)
    assert msg.startswith(f"{path}: ") and want in msg and "\n" not in msg, msg


def test_truncated_binary_ply_is_refused_before_open3d_reads_it(tmp_path):
    head = "ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nproperty float y\n"
    path = tmp_path / "cut.ply"
    path.write_bytes(f"{head}property float z\nend_header\n".encode() + CLOUD.astype(np.float32)[:6].tobytes())
    with pytest.raises(DataError, match="cut.ply: truncated binary PLY: the header declares 120"):
        io.load_points(path, 8)


def test_truncated_ply_through_the_cli_is_one_line(tmp_path):
    good = ply([f"{k} {k % 3} {k % 5}" for k in range(20)], count=20)
    for cls in ("a", "b"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "data" / cls / f"{i}.ply").write_text(good)
    bad = tmp_path / "data" / "b" / "2.ply"
    bad.write_text(good[: good.index("15 0 0")])  # cut after 15 of 20 vertices
    proc = run_cli(
        str(REPO / "recipes" / "points_tiny.yaml"), f"data.path={tmp_path / 'data'}", "data.num_points=16",
        "data.cache=false", f"output_dir={tmp_path / 'runs'}", timeout=300,
    )  # fmt: skip
    err = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("points: reading")]
    assert proc.returncode == 2 and len(err) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert err[0] == f"error: {bad}: truncated: the header declares 20 'vertex' rows, the file has 15 (to line 22)"


# --- 4. --validate runs the run's content checks (MNIST idx, label names, TU files) ----------------

MUTAG = REPO.parent / "shared" / "data" / "graphs" / "TU" / "MUTAG" / "raw"
GRAPHS = str(REPO / "recipes" / "graph_cls.yaml")


def mutag_copy(tmp_path: Path) -> tuple[Path, Path]:
    """A writable copy of MUTAG's raw files: (data root, raw folder)."""
    if not MUTAG.is_dir():
        pytest.skip("MUTAG not under the shared data root")
    raw = tmp_path / "data" / "graphs" / "TU" / "MUTAG" / "raw"
    shutil.copytree(MUTAG, raw)
    return tmp_path / "data", raw


def cut_lines(path: Path, keep: int) -> None:
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:keep]))


def edit_line(path: Path, index: int, text: str) -> None:
    lines = path.read_text().splitlines()
    lines[index] = text
    path.write_text("\n".join(lines) + "\n")


def add_attributes(raw: Path, bad_row: int) -> None:
    rows = [f"{k * 0.5:.1f}, 1.0" for k in range(3371)]
    rows[bad_row] = "0.5, nan"
    (raw / "MUTAG_node_attributes.txt").write_text("\n".join(rows) + "\n")


TU_FAULTS = {
    "garbage-node-label": (
        lambda raw: edit_line(raw / "MUTAG_node_labels.txt", 10, "C"),
        "MUTAG_node_labels.txt: line 11: 'C' is not one of the comma-separated integers expected",
    ),
    "truncated-A": (
        lambda raw: cut_lines(raw / "MUTAG_A.txt", 7432),
        "MUTAG_A.txt: 7432 lines, but MUTAG_edge_labels.txt has 7442 (one per edge): truncated?",
    ),
    "empty-labels": (
        lambda raw: (raw / "MUTAG_graph_labels.txt").write_text(""),
        "MUTAG_graph_labels.txt: file is empty",
    ),
    "nan-attribute": (
        lambda raw: add_attributes(raw, 4),
        "MUTAG_node_attributes.txt: line 5: NaN/inf value (1 line in all)",
    ),
}


@pytest.mark.parametrize("fault", TU_FAULTS)
def test_malformed_tu_files_fail_validate_in_one_line(tmp_path, fault):
    root, raw = mutag_copy(tmp_path)
    corrupt, want = TU_FAULTS[fault]
    corrupt(raw)
    mode = [] if fault == "nan-attribute" else ["--validate"]  # the run itself stops before a run directory
    err = cli_error(tmp_path, GRAPHS, f"data.root={root}", *mode)
    assert err.startswith(f"error: {raw}/") and err.endswith(want), err


def test_tu_data_sets_with_labels_attributes_both_neither_and_edge_labels(tmp_path, cache_env):
    from capsule_kit_tasks.graphs.data import load_graphs

    root, raw = mutag_copy(tmp_path)
    plain = load_graphs(root, "MUTAG")
    assert (plain.features, plain.num_features, plain.num_attributes) == ("labels", 7, 0)
    with_edges = load_graphs(root, "MUTAG", edge_labels=True)  # + counts of the 4 bond types per atom
    x0, n_edges = with_edges.graphs[0].x, with_edges.graphs[0].edge_index.shape[1]
    assert x0.shape[1] == 11 and float(x0[:, 7:].sum()) == n_edges  # each directed edge counted at its source
    add_attributes(raw, 0)
    edit_line(raw / "MUTAG_node_attributes.txt", 0, "0.0, 1.0")
    both = load_graphs(root, "MUTAG")  # edited files: checked and processed again
    assert (both.num_attributes, both.num_features) == (2, 9)
    assert load_graphs(root, "MUTAG", node_attributes=False).num_features == 7
    (raw / "MUTAG_node_labels.txt").unlink()
    neither = load_graphs(root, "MUTAG", node_attributes=False)
    assert neither.features == "degree" and neither.num_features == 5  # atoms have 0..4 bonds
    with pytest.raises(ConfigError, match="data.edge_labels: TU data set 'M' has no M_edge_labels.txt"):
        shutil.copytree(raw, tmp_path / "m" / "graphs" / "TU" / "M" / "raw")
        for p in (tmp_path / "m" / "graphs" / "TU" / "M" / "raw").iterdir():
            p.rename(p.with_name(p.name.replace("MUTAG", "M")))
        (tmp_path / "m" / "graphs" / "TU" / "M" / "raw" / "M_edge_labels.txt").unlink()
        load_graphs(tmp_path / "m", "M", edge_labels=True)


def mnist_copy(tmp_path: Path) -> Path:
    folder = tmp_path / "mnist"
    shutil.copytree(REPO / "tasks" / "digits" / "mnist", folder)
    return folder


def rewrite_gz(path: Path, edit) -> None:
    path.write_bytes(gzip.compress(edit(gzip.decompress(path.read_bytes())), mtime=0))


def test_truncated_mnist_idx_fails_validate_and_run_without_a_run_directory(tmp_path):
    folder = mnist_copy(tmp_path)
    rewrite_gz(folder / "t10k-images-idx3-ubyte.gz", lambda raw: raw[:-784])  # one image short
    want = f"error: {folder / 't10k-images-idx3-ubyte.gz'}: truncated idx file (header says [10000, 28, 28]"
    assert cli_error(tmp_path, MNIST, f"data.root={folder.parent}", "--validate").startswith(want)
    assert cli_error(tmp_path, MNIST, f"data.root={folder.parent}", "trainer.max_steps=1").startswith(want)


def test_mnist_label_out_of_range_is_named(tmp_path):
    folder = mnist_copy(tmp_path)
    rewrite_gz(folder / "train-labels-idx1-ubyte.gz", lambda raw: raw[: 8 + 5] + bytes([12]) + raw[8 + 6 :])
    err = cli_error(tmp_path, MNIST, f"data.root={folder.parent}", "--validate")
    assert err == f"error: {folder / 'train-labels-idx1-ubyte.gz'}: label 12 at item 5 is not a digit 0-9"


def test_label_names_of_the_wrong_length_fail_validate(tmp_path):
    err = cli_error(tmp_path, str(REPO / "recipes" / "text_trec.yaml"), "data.label_names=[A, B]", "--validate")
    assert err == "error: data.label_names: 2 names for 6 labels ['0', '1', '2', '3', '4', '5']"
