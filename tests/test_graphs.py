"""Graphs task: scatter routing vs dense routing, batch == each graph alone, TU loading, errors, folds."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

pytest.importorskip("torch_geometric")
pytest.importorskip("sklearn")

from capsule_kit.config import validate  # noqa: E402
from capsule_kit.errors import DataError  # noqa: E402
from capsule_kit_tasks.graphs.data import collate, load_graphs  # noqa: E402
from capsule_kit_tasks.graphs.model import CapsGNN, NodeAttention  # noqa: E402
from capsule_kit_tasks.graphs.task import GraphTask, balanced_recon_loss  # noqa: E402
from tests.conftest import REPO, data_path  # noqa: E402

MUTAG = data_path("graphs", "TU", "MUTAG", "raw")
needs_mutag = pytest.mark.skipif(not MUTAG.is_dir(), reason="MUTAG not under the data root")


def write_tu(root, name, graphs, labels, node_labels=None, node_attributes=None, edge_labels=None):
    """A tiny TU data set: ``graphs`` = list of (num_nodes, edges with 0-based local ids).

    ``node_attributes``: one row of floats per node; ``edge_labels``: one label per undirected
    edge (written for both of its directions, as TU lists them).
    """
    raw = root / "graphs" / "TU" / name / "raw"
    raw.mkdir(parents=True)
    ind, edges, base = [], [], 0
    for g, (n, es) in enumerate(graphs, start=1):
        ind += [g] * n
        for a, b in es:  # TU lists both directions of an undirected edge
            edges += [(base + a + 1, base + b + 1), (base + b + 1, base + a + 1)]
        base += n
    (raw / f"{name}_A.txt").write_text("".join(f"{a}, {b}\n" for a, b in edges))
    (raw / f"{name}_graph_indicator.txt").write_text("".join(f"{i}\n" for i in ind))
    (raw / f"{name}_graph_labels.txt").write_text("".join(f"{y}\n" for y in labels))
    if node_labels is not None:
        (raw / f"{name}_node_labels.txt").write_text("".join(f"{v}\n" for v in node_labels))
    if node_attributes is not None:
        rows = (", ".join(map(str, r)) for r in node_attributes)
        (raw / f"{name}_node_attributes.txt").write_text("".join(f"{r}\n" for r in rows))
    if edge_labels is not None:
        (raw / f"{name}_edge_labels.txt").write_text("".join(f"{v}\n{v}\n" for v in edge_labels))
    return raw


def copy_mutag(tmp_path):
    dst = tmp_path / "data" / "graphs" / "TU" / "MUTAG" / "raw"
    shutil.copytree(MUTAG, dst)
    return tmp_path / "data", dst


# --- model ---------------------------------------------------------------------------------------


def test_node_attention_sums_to_one_over_each_graphs_nodes():
    torch.manual_seed(2)
    caps, batch = torch.randn(9, 3, 2), torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    scaled, attn = NodeAttention(3, 2, 8)(caps, batch, 3)
    sums = torch.zeros(3, 3).index_add_(0, batch, attn)  # [B, C]
    torch.testing.assert_close(sums, torch.ones(3, 3))
    torch.testing.assert_close(scaled, caps * attn.unsqueeze(-1))


def tiny_model(in_features, hist_dim, normalize=True):
    return CapsGNN(in_features=in_features, num_classes=2, hist_dim=hist_dim, channels=3, layers=3, graph_caps=4,
                   graph_dim=4, class_dim=4, attention_hidden=8, decoder_hidden=(8,), normalize=normalize)  # fmt: skip


@needs_mutag
@pytest.mark.parametrize("normalize", [True, False])
def test_model_batch_of_mutag_graphs_equals_each_graph_alone(cache_env, normalize):
    gs = load_graphs(data_path(), "MUTAG")
    graphs = sorted(gs.graphs[:12], key=lambda g: g.num_nodes)[::3]  # different sizes
    assert len({g.num_nodes for g in graphs}) == len(graphs)
    torch.manual_seed(0)
    model = tiny_model(gs.num_features, gs.hist_dim, normalize).double().eval()
    b = collate(graphs)
    out = model(b.x.double(), b.edge_index, b.batch, b.num_graphs)
    for i, g in enumerate(graphs):
        one = model(g.x.double(), g.edge_index, torch.zeros(g.num_nodes, dtype=torch.long), 1)
        torch.testing.assert_close(out.lengths[i], one.lengths[0])
        torch.testing.assert_close(out.reconstruction[i], one.reconstruction[0])
    assert (out.lengths < 1).all() and out.reconstruction.shape == (len(graphs), gs.hist_dim)


@needs_mutag
def test_every_parameter_gets_a_gradient(cache_env):
    cfg = validate(GraphTask.Config, {"task": "graphs", "model": {"channels": 3, "layers": 2}}, "test")
    task = GraphTask(cfg)
    splits = task.build_data(0)
    model = task.build_model()
    res = task.step(model, collate([splits.train[i] for i in range(8)]), train=True)
    res["loss"].backward()
    assert res["n"] == 8 and torch.isfinite(res["loss"])
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_balanced_recon_loss_hand_value():
    target = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    recon = torch.tensor([[0.3, 0.5, 0.2, 0.4]])
    # non-zero bins: (0.2^2 + 0) / 2 = 0.02; zero bins: (0.2^2 + 0.4^2) / 2 = 0.1
    torch.testing.assert_close(balanced_recon_loss(recon, target), torch.tensor(0.12))


# --- data ----------------------------------------------------------------------------------------


@needs_mutag
def test_mutag_loads_with_one_hot_labels_and_histograms(cache_env):
    gs = load_graphs(data_path(), "MUTAG")
    assert len(gs.graphs) == 188 and np.bincount(gs.labels).tolist() == [63, 125]
    assert gs.features == "labels" and gs.num_features == 7 and gs.hist_dim == 7 and gs.num_attributes == 0
    g = gs.graphs[0]
    torch.testing.assert_close(g.x.sum(1), torch.ones(g.num_nodes))  # one label per node
    torch.testing.assert_close(g.hist, g.x.mean(0, keepdim=True))
    assert (cache_env / "graphs" / "TU").is_dir()


@needs_mutag
def test_read_only_data_root(tmp_path, cache_env):
    root, raw = copy_mutag(tmp_path)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    for p in [*raw.iterdir(), raw, raw.parent]:  # (root ignores permissions: the listing check below still holds)
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    try:
        gs = load_graphs(root, "MUTAG")
    finally:
        for p in [raw.parent, raw, *raw.iterdir()]:
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    assert len(gs.graphs) == 188
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before  # nothing written next to raw/


@needs_mutag
def test_missing_raw_file_names_file_and_folder(tmp_path, cache_env):
    root, raw = copy_mutag(tmp_path)
    (raw / "MUTAG_graph_labels.txt").unlink()
    task = GraphTask(validate(GraphTask.Config, {"task": "graphs", "data": {"root": str(root)}}, "test"))
    with pytest.raises(DataError, match=rf"MUTAG_graph_labels.txt in {raw}"):
        task.check_data()
    with pytest.raises(DataError, match="CAPSULE_KIT_DATA"):
        load_graphs(root, "MUTAG")


@needs_mutag
def test_node_labels_inconsistent_with_indicator(tmp_path, cache_env):
    root, raw = copy_mutag(tmp_path)
    path = raw / "MUTAG_node_labels.txt"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-5]))
    with pytest.raises(
        DataError,
        match=r"MUTAG_node_labels.txt: 3366 lines, but MUTAG_graph_indicator.txt has 3371 \(one per node\)",
    ):
        load_graphs(root, "MUTAG")


def test_graph_without_nodes_and_cross_graph_edge(tmp_path, cache_env):
    write_tu(tmp_path, "HOLE", [(2, [(0, 1)]), (0, []), (3, [(0, 2)])], [0, 1, 0])
    with pytest.raises(DataError, match=r"graph 2 has no nodes"):
        load_graphs(tmp_path, "HOLE")
    raw = write_tu(tmp_path, "CROSS", [(2, [(0, 1)]), (2, [(0, 1)])], [0, 1])
    (raw / "CROSS_A.txt").write_text("1, 2\n2, 3\n")
    with pytest.raises(DataError, match=r"CROSS_A.txt: line 2: edge \(2, 3\) joins nodes of two different graphs"):
        load_graphs(tmp_path, "CROSS")


def test_any_tu_dataset_by_name_with_degree_features(tmp_path, cache_env):
    star, path = (4, [(0, 1), (0, 2), (0, 3)]), (3, [(0, 1), (1, 2)])
    write_tu(tmp_path, "TOY", [star, path, star, path], [1, -1, 1, -1])  # no node labels
    gs = load_graphs(tmp_path, "TOY", max_degree=8)
    assert gs.features == "degree" and gs.num_features == 4  # degrees 0..3
    assert gs.labels.tolist() == [1, 0, 1, 0]
    torch.testing.assert_close(gs.graphs[0].hist, torch.tensor([[0.0, 0.75, 0.0, 0.25]]))  # three leaves, one hub
    torch.testing.assert_close(gs.graphs[1].hist, torch.tensor([[0.0, 2 / 3, 1 / 3, 0.0]]))


def test_edited_raw_files_are_processed_again(tmp_path, cache_env):
    raw = write_tu(tmp_path, "EDIT", [(2, [(0, 1)]), (3, [(0, 1), (1, 2)])], [0, 1], node_labels=[0, 1, 0, 0, 1])
    assert load_graphs(tmp_path, "EDIT").labels.tolist() == [0, 1]
    (raw / "EDIT_graph_labels.txt").write_text("7\n3\n")  # new size: a new cache entry, not the stale one
    assert load_graphs(tmp_path, "EDIT").labels.tolist() == [1, 0]


@needs_mutag
def test_metrics(tmp_path, cache_env):
    task = GraphTask(validate(GraphTask.Config, {"task": "graphs"}, "test"))
    splits = task.build_data(3)
    assert splits.info["test"] + splits.info["train"] == 188 and splits.info["test"] in (18, 19)
    outs = [{"pred": torch.tensor([1, 0, 1]), "target": torch.tensor([1, 1, 1])}, {"pred": torch.tensor([0]),
            "target": torch.tensor([0])}]  # fmt: skip
    m = task.metrics(outs)
    assert m["accuracy"] == 0.75 and m["confusion_matrix"] == [[1, 0], [1, 2]]


def test_task_imports_without_pyg_and_names_the_extra():
    code = (
        "import sys; sys.modules['torch_geometric'] = None; sys.modules['sklearn'] = None\n"
        "from capsule_kit.config import validate\n"
        "from capsule_kit.errors import UserError\n"
        "from capsule_kit_tasks.graphs import GraphTask\n"
        "task = GraphTask(validate(GraphTask.Config, {'task': 'graphs'}, 'x'))\n"
        "try:\n    task.build_model()\nexcept UserError as exc:\n    print(exc)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "pip install 'capsule-kit[graph]'" in proc.stdout
