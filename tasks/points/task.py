"""The points task: the 3D Point Capsule autoencoder with Chamfer loss and SVM transfer.

Shapes: B batch, P points, N_o latent capsules, D_o latent dim.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import torch
from pydantic import Field, PositiveFloat, field_validator, model_validator
from torch import Tensor, nn

from capsule_kit.config import Recipe, Strict
from capsule_kit.data import DataSection, Splits, data_root, require_path
from capsule_kit.errors import DataError, UserError
from capsule_kit.routing import RoutingConfig, VectorRouting
from capsule_kit.routing.config import ROUTING_MOVED
from capsule_kit.splits import SplitConfig
from capsule_kit.task import Task, register_task
from capsule_kit_tasks.points.augment import CloudDataset
from capsule_kit_tasks.points.chamfer import chamfer_distance
from capsule_kit_tasks.points.data import SYNTHETIC, PointSet, load_folder, load_synthetic
from capsule_kit_tasks.points.model import PointCapsNet
from capsule_kit_tasks.points.parts import capsule_centroids, mean_square_radius, part_consistency, part_spread
from capsule_kit_tasks.points.transfer import check_cv_folds, transfer_metrics


class DataConfig(DataSection):
    """Where the shapes come from and how they are sampled."""

    moved: ClassVar[dict[str, str]] = {"test_fraction": "split.test_fraction"}

    path: str = Field("points/ModelNet10_pcd1024", description="Data folder, relative to the data root or absolute.")
    layout: Literal["auto", "modelnet", "modelnet40_txt", "shapenet_part", "folder", "synthetic"] = Field(
        "auto", description="Folder layout (auto detects it); 'synthetic' uses the procedural shape set."
    )
    synthetic_fallback: bool = Field(
        True, description="Use the procedural (synthetic, labelled so) shape set when the folder is missing."
    )
    num_points: int = Field(1024, ge=16, description="Points per cloud (meshes are sampled to this many).")
    input_points: int | None = Field(
        None, ge=16, description="Points fed to the encoder (random subset in training, fixed subset at eval)."
    )
    sampling: Literal["uniform", "poisson"] = Field("uniform", description="Mesh sampling (poisson needs open3d).")
    reader: Literal["auto", "open3d", "numpy"] = Field("auto", description="Reader for binary PLY and compressed PCD.")
    up_axis: Literal["x", "y", "z"] = Field("z", description="Up axis for rotation (z: ModelNet, y: ShapeNet).")
    rotate: bool = Field(False, description="Random rotation about the up axis of training clouds.")
    jitter: float = Field(0.0, ge=0, description="Std of Gaussian jitter added to training clouds (0 = off).")
    jitter_clip: float = Field(0.05, ge=0, description="Jitter is clipped to +-this.")
    scale: tuple[float, float] | None = Field(
        None,
        description="Random per-axis scale of training clouds, uniform in [low, high] (e.g. [0.8, 1.0]; "
        "the decoder's tanh keeps points in [-1, 1]); null = off.",
    )
    classes: list[str] | None = Field(None, description="Keep only these classes.")
    cache: bool = Field(True, description="Cache the stacked clouds in the capsule-kit cache folder.")
    seed: int = Field(0, description="Seed of mesh sampling and the synthetic set (splits, limits: split.seed).")
    synthetic_train: int = Field(40, ge=1, description="Synthetic training shapes per class.")
    synthetic_test: int = Field(10, ge=1, description="Synthetic test shapes per class.")

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not 0 < v[0] <= v[1]:
            raise ValueError(f"need 0 < low <= high, got {list(v)}")
        return v


class ModelConfig(Strict):
    """3D Point Capsule Network sizes (paper: 1024 x 16D primary, 64 x 64D latent, 2048 points)."""

    moved: ClassVar[dict[str, str]] = ROUTING_MOVED

    primary_caps: int = Field(1024, ge=1, description="Primary point capsules N_i (outputs of each parallel conv).")
    primary_dim: int = Field(16, ge=2, description="Primary capsule dim D_i (number of parallel convs).")
    latent_caps: int = Field(64, ge=1, description="Latent capsules N_o.")
    latent_dim: int = Field(64, ge=2, description="Latent capsule dim D_o.")
    out_points: int = Field(2048, ge=1, description="Decoded points (multiple of latent_caps).")
    routing: VectorRouting = Field(
        default_factory=lambda: RoutingConfig(name="dynamic", iterations=3),
        description="Routing of the latent capsules (any vector routing; the paper's: dynamic, 3 iterations).",
    )
    shared: Literal["none", "positions", "inputs"] = Field(
        "none", description="Latent transform: none = full (N_i, N_o) tensor as the paper; positions/inputs = shared."
    )
    share_groups: int = Field(16, ge=1, description="Transform groups for shared=positions (divides primary_caps).")
    feature_channels: list[int] = Field([64, 128], description="Widths of the shared point MLP.")
    decoder: Literal["per_patch", "per_capsule", "shared"] = Field(
        "per_patch", description="Decoder MLPs: one per grid index (reference code), per capsule, or one shared."
    )


FeatureSet = Literal["poses", "lengths", "both"]


class TransferConfig(Strict):
    """Transfer classification: frozen latent capsules -> linear SVM (FoldingNet protocol)."""

    svm: bool = Field(True, description="Train a LinearSVC on the latent capsules after training.")
    C: PositiveFloat | Annotated[list[PositiveFloat], Field(min_length=1)] = Field(
        1.0,
        description="LinearSVC regularisation C; a list: the C with the best cross-validated accuracy "
        "on the training shapes (transfer.cv_folds stratified folds; the test shapes are not used).",
    )
    cv_folds: int = Field(3, ge=2, description="Stratified folds of the training shapes that choose C from a list.")
    standardize: bool = Field(True, description="Standardise features (train statistics) before the SVM.")
    max_iter: int = Field(1000, ge=1, description="LinearSVC iterations (non-convergence is reported in the results).")
    solver: Literal["primal", "dual"] = Field("primal", description="liblinear solver (primal: shapes >~ features).")
    features: FeatureSet | Annotated[list[FeatureSet], Field(min_length=1)] = Field(
        "poses",
        description="SVM features: flattened latent poses (N_o x D_o), capsule lengths (N_o), or both; a list: "
        "chosen with C by the same cross validation on the training shapes.",
    )
    random_init_baseline: bool = Field(
        False,
        description="Also score the untrained model of the same recipe, a control: svm_accuracy_random_init, "
        "svm_gain, chamfer/part_spread/part_consistency/part_drift _random_init.",
    )


class PicturesConfig(Strict):
    """Reconstruction files and figures."""

    shapes: int = Field(4, ge=0, description="Test shapes (one per class first) written as part-coloured PLY + PNG.")


class PointsConfig(Recipe):
    task: str = "points"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    pictures: PicturesConfig = Field(default_factory=PicturesConfig)
    split: SplitConfig = Field(
        default_factory=lambda: SplitConfig(test_fraction=0.2),
        description="Hold-out test share for layouts without a split (no folds, no validation here).",
    )

    @model_validator(mode="after")
    def _one_holdout(self) -> PointsConfig:
        if self.split.folds > 1 or self.split.val:
            raise ValueError("split: the points task takes one hold-out (split.test_fraction), no folds or validation")
        return self


@register_task("points", aliases=("point_caps",))
class PointsTask(Task):
    """3D Point Capsule autoencoder (Zhao et al. 2019): Chamfer loss, SVM transfer accuracy."""

    Config = PointsConfig
    monitor = "chamfer"
    monitor_mode = "min"

    def __init__(self, cfg: PointsConfig) -> None:
        super().__init__(cfg)
        self.point_set: PointSet | None = None

    def folder(self) -> Path:
        p = Path(self.cfg.data.path).expanduser()
        return p if p.is_absolute() else data_root(self.cfg.data.root) / p

    def use_synthetic(self) -> bool:
        d = self.cfg.data
        return d.layout == "synthetic" or (d.synthetic_fallback and not self.folder().exists())

    def check_data(self) -> None:
        if self.cfg.transfer.svm:
            from capsule_kit_tasks.points.transfer import require_sklearn

            require_sklearn()
        if not self.use_synthetic():
            require_path(self.folder(), "point-cloud folder (data.path)")

    def load(self) -> PointSet:
        """The data set (read once per task)."""
        if self.point_set is None:
            self.check_data()
            if self.use_synthetic():
                if self.cfg.data.layout != "synthetic":
                    print(f"points: {self.folder()} not found; using the {SYNTHETIC}", file=sys.stderr)
                self.point_set = load_synthetic(self.cfg.data)
            else:
                self.point_set = load_folder(self.folder(), self.cfg.data, self.cfg.split)
        return self.point_set

    def build_data(self, fold: Any = None) -> Splits:
        ps, d = self.load(), self.cfg.data
        aug = {"up_axis": "xyz".index(d.up_axis), "rotate": d.rotate, "jitter": d.jitter, "jitter_clip": d.jitter_clip,
               "scale": d.scale}  # fmt: skip
        train, test = ps.split == 0, ps.split == 1
        if not train.any() or not test.any():
            got = f"{int(train.sum())} train / {int(test.sum())} test"
            raise DataError(f"{ps.source}: need shapes in both splits, got {got}")
        if self.cfg.transfer.svm:
            t = self.cfg.transfer
            check_cv_folds(ps.labels[train], t.C, t.cv_folds, t.features)
        return Splits(
            train=CloudDataset(ps.points[train], ps.labels[train], augment=True, **aug),
            test=CloudDataset(ps.points[test], ps.labels[test]),
            info={"data": ps.source, "synthetic": ps.synthetic, "classes": ps.classes,
                  "train": int(train.sum()), "test": int(test.sum())},
        )  # fmt: skip

    def model_kwargs(self, **changes: Any) -> dict[str, Any]:
        """Keyword arguments of :class:`PointCapsNet` for this recipe (with ``changes``)."""
        kwargs = {**self.cfg.model.model_dump(), "routing": self.cfg.model.routing, **changes}
        return {**kwargs, "feature_channels": tuple(kwargs["feature_channels"])}

    def build_model(self) -> nn.Module:
        try:
            return PointCapsNet(**self.model_kwargs())
        except ValueError as exc:
            raise UserError(f"model: {exc}") from None

    def encoder_input(self, points: Tensor, train: bool) -> Tensor:
        """The (subset of) points the encoder sees. Shapes: [B, P, 3] -> [B, P_in, 3]."""
        k = self.cfg.data.input_points
        if k is None or k >= points.shape[1]:
            return points
        if train:  # a fresh random subset per cloud
            idx = torch.rand(points.shape[:2], device=points.device).argsort(dim=1)[:, :k]
        else:  # the same subset every evaluation
            g = torch.Generator().manual_seed(self.cfg.data.seed)
            idx = torch.randperm(points.shape[1], generator=g)[:k].to(points.device).expand(points.shape[0], -1)
        return torch.gather(points, 1, idx.unsqueeze(-1).expand(-1, -1, 3))

    def step(self, model: nn.Module, batch: tuple, *, train: bool) -> dict[str, Any]:
        points, labels = batch
        out = model(self.encoder_input(points, train))
        cd = chamfer_distance(out.points.float(), points.float())  # [B]; reconstruction vs the full cloud
        gathered = {"chamfer": cd.detach(), "y": labels}
        if not train:
            decoded, n_o = out.points.detach().float(), out.latent.shape[1]
            gathered.update(part_spread=part_spread(decoded, n_o), centroids=capsule_centroids(decoded, n_o),
                            r2=mean_square_radius(decoded))  # fmt: skip
        return {"loss": cd.mean(), "n": len(points), "log": {"chamfer": cd.detach().mean()}, "out": gathered}

    def metrics(self, outputs: list[dict[str, Tensor]]) -> dict[str, Any]:
        cd = torch.cat([o["chamfer"] for o in outputs])
        kind = SYNTHETIC if self.point_set is not None and self.point_set.synthetic else "real shapes"
        spread = torch.cat([o["part_spread"] for o in outputs])
        parts = part_consistency(*(torch.cat([o[k] for o in outputs]) for k in ("centroids", "r2", "y")))
        return {"chamfer": float(cd.mean()), "chamfer_median": float(cd.median()),
                "part_spread": float(spread.mean()), **parts, "data_kind": kind}  # fmt: skip

    def evaluate_extra(self, model: nn.Module, data: Splits, device: Any) -> dict[str, Any]:
        """SVM transfer accuracy and the untrained control (``transfer.*``; see transfer.py)."""
        return transfer_metrics(self, model, data, device)

    def label_names(self) -> list[str] | None:
        return None if self.point_set is None else list(self.point_set.classes)

    def pictures(
        self, model: nn.Module, data: Splits, run_dir: Path, device: Any, outputs: list[dict[str, Tensor]]
    ) -> dict[str, Any]:
        from capsule_kit_tasks.points.pictures import points_pictures

        return points_pictures(self, model, data, run_dir, device)
