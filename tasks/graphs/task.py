"""Graph classification with CapsGNN (or the baseline, ``model.name``) on TU benchmarks (any TU-format set).

Protocol: stratified 10-fold cross validation (``split.folds``); the runner trains
one fresh model per fold and reports mean/std of the test metrics, and draws the
per-fold accuracies and the summed confusion matrix. The recipes hold
out a stratified inner validation split of each training fold
(``split.val_fraction``) and test the weights of the epoch best on it
(``trainer.test_weights: best``): the test fold is evaluated once, at the end.

Imports only the core here; PyG and scikit-learn are imported when data or a
model is built (extra ``graph``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import AfterValidator, Field
from torch import Tensor, nn

from capsule_kit.config import Recipe, Strict
from capsule_kit.data import DataSection, Splits, data_root, limit_indices
from capsule_kit.errors import ConfigError, UserError
from capsule_kit.losses import MarginConfig, reconstruction_loss
from capsule_kit.metrics import classification_metrics
from capsule_kit.routing import RoutingConfig, VectorRouting
from capsule_kit.routing.config import ROUTING_MOVED
from capsule_kit.splits import SplitConfig, split_indices
from capsule_kit.task import Task, register_task
from capsule_kit_tasks.graphs.registry import GRAPH_MODELS


class DataConfig(DataSection):
    """Which TU data set to read: <data.root>/graphs/TU/<name>/raw."""

    name: str = Field("MUTAG", pattern=r"^[A-Za-z0-9_.\-]+$", description="TU data set name (folder under graphs/TU).")
    node_attributes: bool = Field(
        True, description="Prepend continuous node attributes when present (standardised on the training fold)."
    )
    max_degree: int = Field(32, ge=1, description="One-hot degree width for data sets without node labels (clipped).")
    edge_labels: bool = Field(
        False, description="Append per-node counts of each edge label (needs <name>_edge_labels.txt); false: ignored."
    )


class ModelConfig(Strict):
    """Which model (CapsGNN or the baseline) and its sizes (tasks/graphs/model.py, baseline.py)."""

    moved: ClassVar[dict[str, str]] = ROUTING_MOVED

    name: Annotated[str, AfterValidator(GRAPH_MODELS.check)] = Field(
        "capsgnn", description="capsgnn, or baseline: summed node features -> MLP (no edges, no capsules)."
    )
    channels: int = Field(16, ge=1, description="GCN channels C = node capsules per node.")
    layers: int = Field(4, ge=1, description="GCN layers L = node capsule dim.")
    graph_caps: int = Field(8, ge=1, description="Graph capsules P.")
    graph_dim: int = Field(16, ge=1, description="Graph capsule dim.")
    class_dim: int = Field(8, ge=1, description="Class capsule dim.")
    attention_hidden: int = Field(32, ge=1, description="Hidden width of the node attention MLP.")
    routing: VectorRouting = Field(
        default_factory=lambda: RoutingConfig(name="dynamic", iterations=3),
        description="Routing of both capsule layers (any vector routing; the paper's: dynamic, 3 iterations).",
    )
    decoder_hidden: list[int] = Field([32], description="Hidden widths of the histogram decoder.")
    normalize: bool = Field(
        False, description="GCN symmetric degree normalisation (Kipf & Welling); false: sum over neighbours and self."
    )
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on GCN layer inputs (baseline: after each layer).")
    hidden: list[int] = Field([64], description="Hidden widths of the baseline's MLP (model.name=baseline).")
    graph_init_std: float = Field(5.0, gt=0, description="Init std of the node -> graph capsule transforms.")
    class_init_std: float = Field(0.5, gt=0, description="Init std of the class capsule transforms.")


class LossConfig(MarginConfig):
    """Margin loss on class capsule lengths + histogram reconstruction."""

    recon_weight: float = Field(0.1, ge=0, description="Weight of the reconstruction loss (0 disables the decoder).")
    recon: Literal["balanced", "sse"] = Field(
        "balanced",
        description="balanced: mean squared error over non-zero bins + over zero bins (paper); sse: sum of squares.",
    )


class GraphConfig(Recipe):
    """Recipe of the ``graphs`` task."""

    moved: ClassVar[dict[str, str]] = {"cv": "split"}

    task: str = Field("graphs", description="Registered task name.")
    data: DataConfig = Field(default_factory=DataConfig)
    split: SplitConfig = Field(
        default_factory=lambda: SplitConfig(folds=10),
        description="Stratified folds (paper: 10; 1 = one hold-out test split) and validation share.",
    )
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)


def _pyg():
    """Import the data/model modules, naming the extra when PyG or scikit-learn is missing."""
    try:
        import sklearn  # noqa: F401
        import torch_geometric  # noqa: F401

        from capsule_kit_tasks.graphs import data, model
    except ImportError as exc:
        raise UserError(f"the graphs task needs {exc.name}: pip install 'capsule-kit[graph]'") from None
    return data, model


def balanced_recon_loss(recon: Tensor, target: Tensor) -> Tensor:
    """CapsGNN's reconstruction loss: squared error averaged separately over non-zero and zero bins.

    A node-label histogram is mostly zeros; averaging the two parts separately
    keeps the few present labels from being drowned out.

    Shapes:
        recon: [B, H], target: [B, H]
        returns: scalar (mean over the batch)
    """
    pos = (target > 0).to(recon.dtype)
    err = (recon - target.to(recon.dtype)).pow(2)
    on = (err * pos).sum(1) / pos.sum(1).clamp(min=1)
    off = (err * (1 - pos)).sum(1) / (1 - pos).sum(1).clamp(min=1)
    return (on + off).mean()


@register_task("graphs", aliases=("capsgnn",))
class GraphTask(Task):
    """Graph classification (CapsGNN or the summed-features baseline) with K-fold cross validation."""

    Config = GraphConfig
    # The epoch tested is the one of least validation loss: an inner validation split of ~20 MUTAG graphs
    # ties its accuracy over many epochs (the first of them, often epoch 3-10, would win); its loss does not.
    monitor = "loss"
    monitor_mode = "min"

    def __init__(self, cfg: GraphConfig) -> None:
        super().__init__(cfg)
        self._set = None

    def _root(self) -> Path:
        return data_root(self.cfg.data.root)

    def check_data(self) -> None:
        from capsule_kit_tasks.graphs.tu import check_raw  # numpy + core only

        d = self.cfg.data
        folder = check_raw(self._root(), d.name)
        if d.edge_labels and not (folder / f"{d.name}_edge_labels.txt").is_file():  # before any data is read
            raise ConfigError(f"data.edge_labels: TU data set '{d.name}' has no {d.name}_edge_labels.txt in {folder}")

    def graph_set(self):
        """The loaded data set (read once per task)."""
        if self._set is None:
            data, _ = _pyg()
            d = self.cfg.data
            self._set = data.load_graphs(
                self._root(), d.name, node_attributes=d.node_attributes, max_degree=d.max_degree,
                edge_labels=d.edge_labels,
            )  # fmt: skip
        return self._set

    def folds(self) -> list[int]:
        return list(range(self.cfg.split.folds))

    def build_data(self, fold: Any = None) -> Splits:
        data, _ = _pyg()
        gs, s, d = self.graph_set(), self.cfg.split, self.cfg.data
        fold = int(fold or 0)
        train, val, test = split_indices(
            gs.labels, folds=s.folds, fold=fold, seed=s.seed, test_fraction=s.test_fraction, val_fraction=s.val
        )
        train, test = limit_indices(train, d.train_limit, s.seed), limit_indices(test, d.test_limit, s.seed)
        graphs = data.standardize(gs.graphs, gs.num_attributes, train)
        pick = lambda ids: data.GraphList([graphs[i] for i in ids])  # noqa: E731
        info = {
            "dataset": gs.name, "fold": fold, "folds": s.folds, "graphs": len(graphs), "classes": gs.num_classes,
            "features": gs.features, "num_features": gs.num_features, "hist_dim": gs.hist_dim,
            "train": len(train), "val": 0 if val is None else len(val), "test": len(test),
        }  # fmt: skip
        return Splits(pick(train), pick(test), None if val is None else pick(val), collate=data.collate, info=info)

    def build_model(self) -> nn.Module:
        _pyg()
        gs = self.graph_set()
        hist_dim = gs.hist_dim if self.cfg.loss.recon_weight > 0 else 0
        return GRAPH_MODELS.build(
            self.cfg.model.name, in_features=gs.num_features, num_classes=gs.num_classes, hist_dim=hist_dim,
            cfg=self.cfg.model,
        )  # fmt: skip

    def before_training(self, model: nn.Module, data: Splits, device: Any) -> None:
        """The baseline standardises its inputs with the training graphs' sums (never val or test)."""
        if hasattr(model, "fit_input_scale"):
            sums = torch.stack([g.x.sum(0) for g in data.train.graphs])  # [B_train, F]
            model.fit_input_scale(sums.to(device))

    def step(self, model: nn.Module, batch: Any, *, train: bool) -> dict[str, Any]:
        """Shapes: batch.x [V, F], batch.y [B], batch.hist [B, H] -> lengths [B, N_cls]."""
        y, lc = batch.y, self.cfg.loss
        out = model(batch.x, batch.edge_index, batch.batch, batch.num_graphs, y=y if train else None)
        loss = lc.margin(out.lengths, y)
        if out.reconstruction is not None and lc.recon_weight > 0:
            if lc.recon == "balanced":
                rec = balanced_recon_loss(out.reconstruction, batch.hist)
            else:
                rec = reconstruction_loss(out.reconstruction, batch.hist, scale=1.0)
            loss = loss + lc.recon_weight * rec
        pred = out.lengths.detach().argmax(dim=1)
        acc = (pred == y).float().mean()  # a tensor: the engine syncs at log_every
        return {"loss": loss, "n": int(batch.num_graphs), "log": {"acc": acc}, "out": {"pred": pred, "target": y}}

    def metrics(self, outputs: list[dict[str, Tensor]]) -> dict[str, Any]:
        pred = torch.cat([o["pred"] for o in outputs])
        target = torch.cat([o["target"] for o in outputs])
        classes = self._set.num_classes if self._set is not None else int(max(pred.max(), target.max())) + 1
        return classification_metrics(pred, target, classes)

    def label_names(self) -> list[str] | None:
        return None if self._set is None else [str(i) for i in range(self._set.num_classes)]
