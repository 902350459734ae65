"""A structure-agnostic baseline for graph classification: summed node features -> MLP.

A graph becomes the sum of its node features (with one-hot node labels: how many
nodes carry each label; with degree features: the degree histogram times the node
count), so the edges are never looked at beyond what the node features already
hold. Such bag-of-nodes baselines are strong on TU benchmarks (Errica et al.,
*A Fair Comparison of Graph Neural Networks for Graph Classification*, ICLR 2020,
https://openreview.net/forum?id=HygDF6NFPB): a graph model should be reported next
to one, on the same folds.

The sums are standardised with the mean/std over the training graphs of the fold
(:meth:`SumMLP.fit_input_scale`, kept as buffers so checkpoints carry them); the
scores pass through a sigmoid and train with the task's margin loss, like the
digits CNN baseline, so the two models differ only in their layers.

Shapes (docs/notation.md): B graphs in a batch, V nodes of the whole batch, F node features.
Pure torch: no PyG needed.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from capsule_kit.models import CapsOutput


def sum_nodes(x: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
    """Sum the node features of every graph. Shapes: x [V, F], batch [V] -> [B, F]."""
    return x.new_zeros(num_graphs, x.shape[1]).index_add_(0, batch, x)


class SumMLP(nn.Module):
    """Summed node features -> standardise -> MLP -> class scores.

    Args:
        in_features: Node feature width F.
        num_classes: Graph classes.
        hidden: Hidden widths of the MLP (ReLU, dropout after each).
        dropout: Dropout after each hidden layer during training.

    """

    routing_kind = "none"  # no capsules: model.routing does not apply

    def __init__(self, *, in_features: int, num_classes: int, hidden: tuple[int, ...] = (64,), dropout: float = 0.0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_features))
        self.register_buffer("std", torch.ones(in_features))
        layers: list[nn.Module] = []
        for a, b in zip((in_features, *hidden[:-1]), hidden):
            layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(dropout)]
        layers.append(nn.Linear(hidden[-1] if hidden else in_features, num_classes))
        self.mlp = nn.Sequential(*layers)

    @torch.no_grad()
    def fit_input_scale(self, sums: Tensor) -> None:
        """Standardise inputs with the mean/std of the training graphs' sums. Shapes: sums [B, F]."""
        self.mean.copy_(sums.mean(0))
        self.std.copy_(sums.std(0).nan_to_num(1.0).clamp(min=1e-3))  # constant columns (and one graph) stay as they are

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor, num_graphs: int, y: Tensor | None = None):
        """Classify a batch of graphs from their summed node features (``edge_index`` and ``y`` unused).

        Shapes:
            x: [V, F], batch: [V]
            returns: CapsOutput(scores [B, N_cls] in (0, 1), logits [B, N_cls, 1], no reconstruction)
        """
        h = (sum_nodes(x, batch, num_graphs) - self.mean) / self.std  # [B, F]
        logits = self.mlp(h)  # [B, N_cls]
        return CapsOutput(logits.sigmoid(), logits.unsqueeze(-1), None)
