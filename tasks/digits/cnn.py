"""A plain CNN baseline for the digits task (Sabour et al. 2017's baseline layout).

Conv 256@5x5 -> max-pool 2 -> conv 256@5x5 -> max-pool 2 -> conv 256@5x5 -> FC 328 -> FC 192
-> 10 class scores, ReLU throughout, dropout before the last layer (Sabour's baseline with 256
channels in the third convolution, to match CapsNet's size). Its poses are the class logits
(``loss.kind: cross_entropy``, Sabour's softmax cross entropy) and its lengths their sigmoids
(so the margin loss and every digits metric apply too). On 40x40 inputs: 11,746,194
parameters, against CapsNet's 11,227,904 without its decoder (13,475,648 with it); ``cnn_baseline_tiny`` is for tests.
"""

from __future__ import annotations

from torch import Tensor, nn

from capsule_kit.models.capsnet import CapsOutput
from capsule_kit.registry import MODELS


class CNNBaseline(nn.Module):
    """Three convolutions and three fully connected layers.

    Args:
        input_shape: (C, H, W).
        num_classes: Classes.
        channels: Channels of the three convolutions.
        hidden: Widths of the two hidden fully connected layers.
        dropout: Dropout before the last layer.

    """

    routing_kind = "none"  # no capsules: model.routing does not apply

    def __init__(
        self,
        *,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        channels: tuple[int, int, int] = (256, 256, 256),
        hidden: tuple[int, int] = (328, 192),
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        a, b, d = channels
        self.features = nn.Sequential(
            nn.Conv2d(c, a, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(a, b, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(b, d, 5, padding=2),
            nn.ReLU(),
        )
        flat = d * (h // 4) * (w // 4)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, hidden[0]),
            nn.ReLU(),
            nn.Linear(hidden[0], hidden[1]),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden[1], num_classes),
        )

    def forward(self, x: Tensor, y: Tensor | None = None) -> CapsOutput:
        """Shapes: x [B, C, H, W] -> scores [B, N_o] in (0, 1), poses [B, N_o, 1] (the logits), no reconstruction."""
        logits = self.classifier(self.features(x))
        return CapsOutput(logits.sigmoid(), logits.unsqueeze(-1), None)


@MODELS.register("cnn_baseline", aliases=("cnn",))
def cnn_baseline(**kwargs) -> CNNBaseline:
    """Sabour's CNN baseline layout (256, 256, 256 channels; FC 328, 192)."""
    return CNNBaseline(**kwargs)


@MODELS.register("cnn_baseline_tiny")
def cnn_baseline_tiny(**kwargs) -> CNNBaseline:
    """A tiny CNN for tests (8, 8, 8 channels; FC 16, 16)."""
    return CNNBaseline(**{"channels": (8, 8, 8), "hidden": (16, 16), **kwargs})
