"""TU graph data sets through PyG, node features, node-label histograms and CV folds.

Node features are the one-hot node labels (PyG's ``TUDataset`` encoding), with
the continuous node attributes in front when present and wanted; attributes are
standardised with the mean/std of the training fold's nodes. Data sets without
node labels get one-hot node degrees (clipped at ``max_degree``), as in the
CapsGNN paper. The reconstruction target of a graph is the histogram of these
one-hot columns (labels or degrees), as fractions of its nodes.

Shapes: V nodes of one graph, F node features, H histogram bins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_geometric.data import Batch, Data
from torch_geometric.datasets import TUDataset
from torch_geometric.utils import degree

from capsule_kit.errors import ConfigError
from capsule_kit_tasks.graphs.tu import cached_root


@dataclass
class GraphSet:
    """All graphs of one data set, with the features already built.

    Attributes:
        name: Data set name.
        graphs: One ``Data(x [V, F], edge_index [2, E], y [1], hist [1, H])`` per graph.
        labels: Graph labels [G] (0..num_classes-1) for stratification.
        num_attributes: Leading continuous columns of ``x`` (standardised per fold).
        num_classes: Number of graph classes.
        features: ``"labels"`` (one-hot node labels) or ``"degree"``.

    """

    name: str
    graphs: list[Data]
    labels: np.ndarray
    num_attributes: int
    num_classes: int
    features: str

    @property
    def num_features(self) -> int:
        return int(self.graphs[0].x.shape[1])

    @property
    def hist_dim(self) -> int:
        return int(self.graphs[0].hist.shape[1])


class GraphList(Dataset):
    """A map-style dataset over a list of PyG ``Data`` objects."""

    def __init__(self, graphs: list[Data]) -> None:
        self.graphs = graphs

    def __len__(self) -> int:
        return len(self.graphs)

    def __getitem__(self, index: int) -> Data:
        return self.graphs[index]


def collate(graphs: list[Data]) -> Batch:
    """PyG mini-batch: nodes of all graphs stacked, ``batch`` maps nodes to graphs."""
    return Batch.from_data_list(graphs)


def _one_hot_degree(edge_index: torch.Tensor, num_nodes: int, width: int) -> torch.Tensor:
    deg = degree(edge_index[0], num_nodes, dtype=torch.long).clamp(max=width - 1)  # TU edges list both directions
    return torch.nn.functional.one_hot(deg, width).float()


def _edge_label_counts(d: Data, n_edge_lab: int) -> torch.Tensor:
    """Per node, how many of its edges carry each edge label. Shapes: -> [V, edge labels]."""
    if n_edge_lab == 0:
        return torch.zeros(d.num_nodes, 0)
    onehot = d.edge_attr[:, -n_edge_lab:].float()  # PyG keeps the edge labels' one-hot columns last
    return torch.zeros(d.num_nodes, n_edge_lab).index_add_(0, d.edge_index[0], onehot)


def load_graphs(
    root: Path, name: str, *, node_attributes: bool = True, max_degree: int = 32, edge_labels: bool = False
) -> GraphSet:
    """Read a TU data set (raw files checked, processed in the writable cache) and build features.

    Node features are ``[attributes (when wanted), one-hot node labels or degrees, edge-label
    counts (with ``edge_labels``)]``: a data set with node labels, attributes, both or neither
    works, and its edge labels are used (counted per node) or ignored.

    Raises:
        DataError: missing or inconsistent raw files (see :mod:`capsule_kit_tasks.graphs.tu`).
        ConfigError: ``edge_labels`` for a data set without an edge-labels file.

    """
    ds = TUDataset(root=str(cached_root(root, name)), name=name, use_node_attr=True)
    n_attr_all, n_lab = ds.num_node_attributes, ds.num_node_labels
    n_attr = n_attr_all if node_attributes else 0
    n_edge_lab = ds.num_edge_labels if edge_labels else 0
    if edge_labels and n_edge_lab == 0:
        raise ConfigError(f"data.edge_labels: TU data set '{name}' has no {name}_edge_labels.txt")
    width = 0
    if n_lab == 0:  # degree features: width from the data (clipped at max_degree) so no bin is always empty
        width = min(max_degree, int(max(degree(d.edge_index[0], d.num_nodes).max().item() for d in ds)) + 1)
    graphs = []
    for d in ds:
        x = d.x if d.x is not None else torch.zeros(d.num_nodes, 0)
        onehot = x[:, n_attr_all:] if n_lab else _one_hot_degree(d.edge_index, d.num_nodes, width)
        feats = torch.cat([x[:, :n_attr], onehot, _edge_label_counts(d, n_edge_lab)], dim=1).float()
        hist = onehot.sum(0, keepdim=True) / max(d.num_nodes, 1)  # [1, H]
        graphs.append(Data(x=feats, edge_index=d.edge_index, y=d.y.view(1).long(), hist=hist))
    labels = np.array([int(g.y) for g in graphs])
    return GraphSet(name, graphs, labels, n_attr, int(labels.max()) + 1, "labels" if n_lab else "degree")


def standardize(graphs: list[Data], num_attributes: int, train: np.ndarray) -> list[Data]:
    """Copies of ``graphs`` with the leading attribute columns standardised by training-node stats."""
    if num_attributes == 0:
        return graphs
    attrs = torch.cat([graphs[i].x[:, :num_attributes] for i in train])  # [V_train, A]
    mean, std = attrs.mean(0), attrs.std(0).clamp(min=1e-6)
    out = []
    for g in graphs:
        x = torch.cat([(g.x[:, :num_attributes] - mean) / std, g.x[:, num_attributes:]], dim=1)
        out.append(Data(x=x, edge_index=g.edge_index, y=g.y, hist=g.hist))
    return out
