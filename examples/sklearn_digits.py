"""A new domain in one file: capsules on scikit-learn's 8x8 digits (docs/new_domain.md).

Only public ``capsule_kit`` imports: a recipe section, a data module, a model from
capsule parts, and a Task registered under a name. Train it with the runner:

    python -m capsule_kit.run examples/sklearn_digits.yaml

Shapes: B batch, N_i primary capsules, N_o classes, D_o class capsule dim.
"""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor, nn

import capsule_kit as ck


class TinyCapsModel(ck.Strict):
    """Model options."""

    primary_types: int = Field(8, ge=1, description="Primary capsule types.")
    routing: ck.VectorRouting = Field(
        default_factory=lambda: ck.RoutingConfig(name="dynamic", iterations=3),
        description="Routing by name, as in every recipe: any vector routing (dynamic, attention, ...).",
    )


class SklearnDigitsConfig(ck.Recipe):
    task: str = "sklearn_digits"
    split: ck.SplitConfig = Field(
        default_factory=lambda: ck.SplitConfig(test_fraction=0.2), description="The core's stratified, seeded split."
    )
    model: TinyCapsModel = Field(default_factory=TinyCapsModel)


def load_digits_tensors(split: ck.SplitConfig) -> ck.Splits:
    """scikit-learn's bundled 8x8 digits (no download), split by the core's one split function."""
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0  # pixels 0..16 -> [0, 1]
    y = torch.tensor(y)
    train, _, test = ck.split_indices(y.numpy(), test_fraction=split.test_fraction, seed=split.seed)
    return ck.Splits(train=ck.TensorPairs(x[train], y[train]), test=ck.TensorPairs(x[test], y[test]))


class TinyCapsNet(nn.Module):
    """Conv 3x3 -> primary capsules (types x 4D on a 3x3 grid) -> 10 class capsules x 8D."""

    def __init__(self, primary_types: int, routing: ck.RoutingConfig) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 32, 3, padding=1)
        self.primary = ck.PrimaryCaps(32, num_types=primary_types, dim=4, kernel_size=3, stride=2)
        n_in = primary_types * 9  # a 3x3 grid after the stride-2 3x3 convolution
        self.classes = ck.DenseCaps(n_in, 4, 10, 8, routing=routing)

    def forward(self, x: Tensor) -> Tensor:
        """Shapes: x [B, 1, 8, 8] -> class capsule lengths [B, N_o]."""
        u = self.primary(self.conv(x).relu())  # [B, N_i, 4]
        return self.classes(u).activations


@ck.register_task("sklearn_digits")
class SklearnDigitsTask(ck.Task):
    """Classify 8x8 digits by the length of their class capsules."""

    Config = SklearnDigitsConfig

    def build_data(self, fold: Any = None) -> ck.Splits:
        return load_digits_tensors(self.cfg.split)

    def build_model(self) -> nn.Module:
        return TinyCapsNet(self.cfg.model.primary_types, self.cfg.model.routing)

    def step(self, model: nn.Module, batch: tuple[Tensor, Tensor], *, train: bool) -> dict[str, Any]:
        x, y = batch
        lengths = model(x)
        acc = (lengths.argmax(-1) == y).float().mean()
        return {
            "loss": ck.margin_loss(lengths, y),
            "n": len(y),
            "log": {"acc": acc},
            "out": {"lengths": lengths.detach(), "y": y},
        }

    def metrics(self, outputs: list[dict[str, Tensor]]) -> dict[str, float]:
        lengths = torch.cat([o["lengths"] for o in outputs])
        y = torch.cat([o["y"] for o in outputs])
        return {"accuracy": float((lengths.argmax(-1) == y).float().mean())}
