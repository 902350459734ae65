"""TU variants on tiny synthetic folders: node labels, attributes, both or neither; edge labels on/off; bad files.

Every malformed file stops the CLI with exit 2 and one line naming the file (and the line),
with no numpy warning before it (warnings are errors here).
"""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip("torch_geometric")
pytest.importorskip("sklearn")

from capsule_kit import run  # noqa: E402
from capsule_kit.config import validate  # noqa: E402
from capsule_kit.errors import ConfigError  # noqa: E402
from capsule_kit_tasks.graphs.data import load_graphs  # noqa: E402
from capsule_kit_tasks.graphs.task import GraphTask  # noqa: E402
from tests.helpers import REPO  # noqa: E402
from tests.test_graphs import write_tu  # noqa: E402

RECIPE = str(REPO / "recipes" / "graph_cls.yaml")
PATH3, EDGE2 = (3, [(0, 1), (1, 2)]), (2, [(0, 1)])
GRAPHS, LABELS = [PATH3, EDGE2] * 6, [0, 1] * 6  # 12 graphs, 30 nodes, 18 undirected edges
NODES, EDGES = 30, 18


def write_variant(root, name, *, labels=True, attributes=False, edge_labels=False):
    return write_tu(
        root, name, GRAPHS, LABELS,
        node_labels=[i % 3 for i in range(NODES)] if labels else None,
        node_attributes=[(i / 10, 1 - i / 100) for i in range(NODES)] if attributes else None,
        edge_labels=[i % 2 for i in range(EDGES)] if edge_labels else None,
    )  # fmt: skip


@pytest.mark.parametrize(
    "labels, attributes, features, width, n_attr",
    [
        (True, False, "labels", 3, 0),  # one-hot node labels 0..2
        (False, True, "degree", 2 + 3, 2),  # two attributes + one-hot degrees 0..2
        (True, True, "labels", 2 + 3, 2),
        (False, False, "degree", 3, 0),
    ],
)
def test_node_labels_attributes_both_or_neither(tmp_path, cache_env, labels, attributes, features, width, n_attr):
    write_variant(tmp_path, "VAR", labels=labels, attributes=attributes)
    gs = load_graphs(tmp_path, "VAR")
    assert (gs.features, gs.num_features, gs.num_attributes, gs.hist_dim) == (features, width, n_attr, 3)
    assert len(gs.graphs) == 12 and gs.labels.tolist() == LABELS
    x = gs.graphs[0].x  # path of 3 nodes: labels 0, 1, 2; degrees 1, 2, 1
    onehot = torch.eye(3) if labels else torch.eye(3)[[1, 2, 1]]
    torch.testing.assert_close(x[:, n_attr:], onehot)
    if attributes:
        torch.testing.assert_close(x[:, :2], torch.tensor([[0.0, 1.0], [0.1, 0.99], [0.2, 0.98]]))
        assert load_graphs(tmp_path, "VAR", node_attributes=False).num_features == 3  # attributes left out


def test_edge_labels_used_or_ignored_by_the_key(tmp_path, cache_env):
    write_variant(tmp_path, "EDGE", edge_labels=True)  # edge i of a path: label i % 2
    assert load_graphs(tmp_path, "EDGE").num_features == 3  # ignored by default
    gs = load_graphs(tmp_path, "EDGE", edge_labels=True)
    assert gs.num_features == 3 + 2 and gs.hist_dim == 3
    # path 0-1-2 with edge labels 0 (0-1) and 1 (1-2): per node, how many of its edges carry each label
    torch.testing.assert_close(gs.graphs[0].x[:, 3:], torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]))
    cfg = {"task": "graphs", "data": {"name": "EDGE", "root": str(tmp_path), "edge_labels": True}}
    task = GraphTask(validate(GraphTask.Config, cfg, "test"))
    task.check_data()
    assert task.graph_set().num_features == 5


def test_edge_labels_key_on_a_set_without_them_is_refused_at_validate(tmp_path, cache_env, capsys):
    write_variant(tmp_path, "NOEDGE")
    argv = [RECIPE, "data.name=NOEDGE", f"data.root={tmp_path}", "data.edge_labels=true", "--validate"]
    assert run.main(argv) == 2
    assert "data.edge_labels: TU data set 'NOEDGE' has no NOEDGE_edge_labels.txt" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="NOEDGE_edge_labels.txt"):
        load_graphs(tmp_path, "NOEDGE", edge_labels=True)


def _replace_line(path, index, text):
    lines = path.read_text().splitlines()
    lines[index] = text
    path.write_text("\n".join(lines) + "\n")


def _nan_attribute(raw):
    _replace_line(raw / "BAD_node_attributes.txt", 4, "nan, 1.0")


def _inf_attribute(raw):
    _replace_line(raw / "BAD_node_attributes.txt", 6, "0.5, -inf")


def _empty_labels(raw):
    (raw / "BAD_graph_labels.txt").write_text("\n")


def _truncated_edges(raw):
    lines = (raw / "BAD_A.txt").read_text().splitlines()
    (raw / "BAD_A.txt").write_text("\n".join(lines[:-3]) + "\n")


def _bad_token(raw):
    _replace_line(raw / "BAD_node_labels.txt", 6, "x")


def _short_row(raw):
    _replace_line(raw / "BAD_A.txt", 3, "4 5")


BAD = {  # how to break the files -> what the one line says (file, line, reason)
    "nan attribute": (_nan_attribute, "BAD_node_attributes.txt: line 5: NaN/inf value"),
    "inf attribute": (_inf_attribute, "BAD_node_attributes.txt: line 7: NaN/inf value"),
    "empty labels file": (_empty_labels, "BAD_graph_labels.txt: file is empty"),
    "truncated A": (_truncated_edges, "BAD_A.txt: 33 lines, but BAD_edge_labels.txt has 36 (one per edge)"),
    "non-integer label": (_bad_token, "BAD_node_labels.txt: line 7: 'x' is not one of the comma-separated integers"),
    "short row": (_short_row, "BAD_A.txt: line 4: 1 values, expected 2 like line 1"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_malformed_files_exit_2_with_one_line_naming_file_and_line(tmp_path, cache_env, capsys, case):
    raw = write_variant(tmp_path, "BAD", attributes=True, edge_labels=True)
    breaks, message = BAD[case]
    breaks(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy warning before the error would fail the run here
        code = run.main([RECIPE, "data.name=BAD", f"data.root={tmp_path}", "--validate"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert message in err and str(raw) in err
