"""The digits task: MNIST and MultiMNIST with CapsNet, Efficient-CapsNet or matrix capsules.

Shapes: B batch, N_o classes, D_o class capsule dim, H, W image size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import Tensor, nn

from capsule_kit.config import Recipe
from capsule_kit.data import DataSection, Splits, TensorPairs, limit_indices
from capsule_kit.layers import mask_capsules
from capsule_kit.loaders import unwrap
from capsule_kit.losses import MarginConfig, reconstruction_loss, spread_loss, spread_margin
from capsule_kit.metrics import classification_metrics
from capsule_kit.splits import ValSplit, holdout
from capsule_kit.task import Task, register_task
from capsule_kit_tasks.digits.affine import affine_metrics, affine_test_set, centred, random_place
from capsule_kit_tasks.digits.data import load_mnist, mnist_dir, multimnist, multimnist_test_set, random_shift
from capsule_kit_tasks.digits.model import ModelConfig, build_digits_model, model_family
from capsule_kit_tasks.digits.pictures import digits_pictures


class DataConfig(DataSection):
    """MNIST / MultiMNIST data: the idx files in <data root>/mnist (else the vendored copy)."""

    dataset: Literal["mnist", "multimnist", "affine"] = Field(
        "mnist",
        description="mnist, multimnist (two overlaid digits), or affine (trained on digits placed at random on "
        "the canvas, tested on centred MNIST and an affNIST-style affine set: tasks/digits/affine.py).",
    )
    shift: int | None = Field(None, ge=0, description="Max random shift in pixels (default 2 for mnist, 4 multimnist).")
    canvas: int = Field(36, ge=28, description="MultiMNIST / affine image size.")
    test_pairs: int = Field(10000, ge=1, description="MultiMNIST: size of the fixed, seeded test set.")


class LossConfig(MarginConfig):
    """Margin (or spread) loss plus reconstruction."""

    kind: Literal["margin", "spread", "cross_entropy"] = Field(
        "margin",
        description="margin (Sabour), spread (Hinton 2018), or cross_entropy: softmax cross entropy on the class "
        "logits of a plain CNN (cnn_baseline; Sabour's baseline was trained so).",
    )
    recon_weight: float = Field(0.0005, ge=0, description="Scale of the summed squared reconstruction error.")
    spread_start: float = Field(0.2, description="Spread-loss margin at the start of training.")
    spread_end: float = Field(0.9, description="Spread-loss margin at the end of training.")


class DigitsConfig(Recipe):
    task: str = "digits"
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    split: ValSplit = Field(
        default_factory=lambda: ValSplit(val_size=5000),
        description="Validation digits carved from the training set (picks the best checkpoint).",
    )

    @model_validator(mode="after")
    def _logits_for_cross_entropy(self) -> DigitsConfig:
        if self.loss.kind == "cross_entropy" and model_family(self.model.name) != "cnn":
            raise ValueError(f"loss.kind: cross_entropy needs class logits (a cnn_* model), got '{self.model.name}'")
        if self.loss.kind == "cross_entropy" and self.data.dataset == "multimnist":
            raise ValueError("loss.kind: cross_entropy scores one label per image; multimnist has two (use margin)")
        return self


@register_task("digits", aliases=("mnist",))
class DigitsTask(Task):
    """MNIST / MultiMNIST classification (+ reconstruction) with capsule networks."""

    Config = DigitsConfig

    @property
    def multi(self) -> bool:
        return self.cfg.data.dataset == "multimnist"

    @property
    def affine(self) -> bool:
        return self.cfg.data.dataset == "affine"

    @property
    def max_shift(self) -> int:
        return self.cfg.data.shift if self.cfg.data.shift is not None else (4 if self.multi else 2)

    def check_data(self) -> None:
        mnist_dir(self.cfg.data.root)

    def build_data(self, fold: Any = None) -> Splits:
        d, s = self.cfg.data, self.cfg.split
        x_tr, y_tr = load_mnist(d.root, "train")
        x_te, y_te = load_mnist(d.root, "test")
        train, val = np.arange(len(y_tr)), None
        if s.val:
            train, val = holdout(train, y_tr.numpy(), s.val, s.seed)
            val = limit_indices(val, d.test_limit, s.seed)
        train = limit_indices(train, d.train_limit, s.seed)
        test = limit_indices(range(len(y_te)), d.test_limit, s.seed)
        sets = {
            "train": TensorPairs(x_tr[train], y_tr[train]),
            "val": None if val is None else self.eval_set(x_tr[val], y_tr[val], d.test_pairs, 2),
            "test": self.eval_set(x_te[test], y_te[test], d.test_pairs, 1),
        }
        info = {k: 0 if v is None else len(v) for k, v in sets.items()}
        return Splits(**sets, info=info)

    def eval_set(self, x: Tensor, y: Tensor, pairs: int, offset: int) -> TensorPairs:
        """Images to evaluate on, with a seed offset (1 test, 2 validation).

        MNIST: the images. MultiMNIST: a fixed, seeded set of ``pairs`` overlaid pairs of them.
        Affine: the centred digits, then (test only) their affine copies; validation never sees
        the affine set, so nothing is chosen on the distribution the test measures.
        """
        d = self.cfg.data
        if self.multi:
            return TensorPairs(
                *multimnist_test_set(x, y, pairs, self.cfg.trainer.seed + offset, d.canvas, self.max_shift)
            )
        if self.affine:
            if offset == 1:
                return affine_test_set(x, y, self.cfg.trainer.seed + 1, d.canvas)
            return TensorPairs(centred(x, d.canvas), y, torch.zeros(len(y), dtype=torch.long))
        return TensorPairs(x, y)

    def build_model(self) -> nn.Module:
        size = self.cfg.data.canvas if self.multi or self.affine else 28
        model = build_digits_model(self.cfg.model, (1, size, size), 10, mask_k=2 if self.multi else 1)
        # A decoder without reconstruction loss gets no gradient: DDP must look for unused parameters.
        model.find_unused_parameters = self.cfg.loss.recon_weight == 0 and bool(getattr(model, "decoder", None))
        return model

    def prepare(self, batch: tuple, train: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """Float images in [0, 1], labels [B] or [B, 2], and (MultiMNIST) the two digits alone."""
        if self.multi and train:
            x, y = batch
            return multimnist(x.float() / 255, y, self.cfg.data.canvas, self.max_shift)
        if self.multi:
            x, y, digits = batch
            return x.float() / 255, y, digits.float() / 255
        if self.affine:
            x, y = batch[:2]
            return (random_place(x.float() / 255, self.cfg.data.canvas) if train else x.float() / 255), y, None
        x, y = batch
        x = x.float() / 255
        return (random_shift(x, self.max_shift) if train else x), y, None

    def step(self, model: nn.Module, batch: tuple, *, train: bool) -> dict[str, Any]:
        x, y, digits = self.prepare(batch, train)
        first = y[:, 0] if self.multi else y
        out = model(x, first)
        loss = self.class_loss(out, y)
        if out.reconstruction is not None and self.cfg.loss.recon_weight > 0:
            loss = loss + self.recon_loss(model, out, x, y, digits)
        pred = out.lengths.detach().float().topk(2 if self.multi else 1, dim=-1).indices
        hit = self.hits(pred, y)
        outputs = {"lengths": out.lengths.detach(), "y": y}
        if self.affine and not train:
            outputs["source"] = batch[2]
        # log: a tensor, the engine syncs at log_every
        return {"loss": loss, "n": len(x), "log": {"acc": hit.float().mean()}, "out": outputs}

    def class_loss(self, out: Any, y: Tensor) -> Tensor:
        c, lengths = self.cfg.loss, out.lengths
        if c.kind == "cross_entropy":  # a plain CNN's poses are its logits, [B, N_o, 1]
            return nn.functional.cross_entropy(out.poses[..., 0].float(), y)
        if c.kind == "spread":
            margin = spread_margin(int(self.progress * 1000), 1000, c.spread_start, c.spread_end)
            return spread_loss(lengths, y if y.dim() == 1 else y[:, 0], margin)
        target = y if y.dim() == 1 else torch.zeros_like(lengths).scatter_(1, y, 1.0)
        return c.margin(lengths.float(), target)

    def recon_loss(self, model: nn.Module, out: Any, x: Tensor, y: Tensor, digits: Tensor | None) -> Tensor:
        w = self.cfg.loss.recon_weight
        if not self.multi:
            return reconstruction_loss(out.reconstruction, x, w)
        # Sabour: reconstruct each digit from its own capsule, against that digit alone.
        other = unwrap(model).decoder(mask_capsules(out.poses, y[:, 1]))
        return reconstruction_loss(out.reconstruction, digits[:, 0], w) + reconstruction_loss(other, digits[:, 1], w)

    @staticmethod
    def hits(pred: Tensor, y: Tensor) -> Tensor:
        """MNIST: top-1 correct. MultiMNIST: both digits among the two longest capsules."""
        if y.dim() == 1:
            return pred[:, 0] == y
        return ((pred == y[:, :1]).any(1)) & ((pred == y[:, 1:]).any(1))

    def metrics(self, outputs: list[dict[str, Tensor]]) -> dict[str, Any]:
        lengths = torch.cat([o["lengths"] for o in outputs])
        y = torch.cat([o["y"] for o in outputs])
        if self.affine and "source" in outputs[0]:
            return affine_metrics(lengths, y, torch.cat([o["source"] for o in outputs]))
        if self.multi:
            acc = float(self.hits(lengths.topk(2, dim=-1).indices, y).float().mean())
            return {"accuracy": acc, "error": 1.0 - acc}
        return classification_metrics(lengths.argmax(-1), y, lengths.shape[-1])

    def label_names(self) -> list[str]:
        return [str(i) for i in range(10)]

    def pictures(
        self, model: nn.Module, data: Splits, run_dir: Path, device: Any, outputs: list[dict[str, Tensor]]
    ) -> dict[str, Any]:
        return digits_pictures(self, model, data, run_dir, device)  # confusion: the runner's standard pictures
