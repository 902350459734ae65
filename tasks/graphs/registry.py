"""The graphs task's models by name (``model.name``): CapsGNN and the structure-agnostic baseline.

Every builder takes the data set's sizes and the recipe's ``model`` section, so
``model.name=baseline`` trains on the same folds, with the same loss and runner,
as CapsGNN. Importing this module imports no PyG: CapsGNN's module is imported
when it is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from capsule_kit.registry import Registry
from capsule_kit_tasks.graphs.baseline import SumMLP

if TYPE_CHECKING:
    from capsule_kit_tasks.graphs.task import ModelConfig

GRAPH_MODELS: Registry = Registry("graph model")


@GRAPH_MODELS.register("capsgnn")
def capsgnn(*, in_features: int, num_classes: int, hist_dim: int, cfg: ModelConfig) -> nn.Module:
    """CapsGNN (tasks/graphs/model.py) with the recipe's sizes; ``hist_dim`` 0: no decoder."""
    from capsule_kit_tasks.graphs.model import CapsGNN  # PyG: only when a CapsGNN is built

    return CapsGNN(
        in_features=in_features, num_classes=num_classes, hist_dim=hist_dim,
        channels=cfg.channels, layers=cfg.layers, graph_caps=cfg.graph_caps, graph_dim=cfg.graph_dim,
        class_dim=cfg.class_dim, attention_hidden=cfg.attention_hidden, routing=cfg.routing,
        decoder_hidden=tuple(cfg.decoder_hidden), dropout=cfg.dropout, graph_init_std=cfg.graph_init_std,
        class_init_std=cfg.class_init_std, normalize=cfg.normalize,
    )  # fmt: skip


@GRAPH_MODELS.register("baseline", aliases=("sum_mlp",))
def baseline(*, in_features: int, num_classes: int, hist_dim: int, cfg: ModelConfig) -> SumMLP:
    """Summed node features -> MLP (tasks/graphs/baseline.py); ignores the edges, routing and ``hist_dim``."""
    return SumMLP(in_features=in_features, num_classes=num_classes, hidden=tuple(cfg.hidden), dropout=cfg.dropout)
