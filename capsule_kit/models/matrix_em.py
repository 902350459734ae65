"""Matrix capsules with EM routing (Hinton, Sabour & Frosst 2018), small configuration.

Conv 5x5 (A channels, stride 2) -> primary matrix capsules (B types) -> ConvCaps1
(3x3, stride 2, C types) -> ConvCaps2 (3x3, stride 1, D types) -> class capsules
(shared transforms, coordinate addition). Paper's small model: A=64, B=8, C=D=16.
Outputs class activations in (0, 1), trained with the spread loss.
"""

from __future__ import annotations

from torch import Tensor, nn

from capsule_kit.layers import ConvCaps, PrimaryMatrixCaps
from capsule_kit.models.capsnet import CapsOutput
from capsule_kit.registry import MODELS
from capsule_kit.routing import RoutingConfig


class MatrixCapsNet(nn.Module):
    """Matrix-capsule network.

    Args:
        input_shape: (C, H, W).
        num_classes: Class capsules.
        a: Channels of the first convolution.
        b: Primary capsule types.
        c: ConvCaps1 types.
        d: ConvCaps2 types.
        batch_norm: Batch normalisation after the first convolution (as public ports do; it
            speeds up EM's slow start).
        padding: Zero padding of the first convolution (0: 12x12 primary capsules on 28x28).
        stem: Extra 3x3 convolutions (A channels, stride 1, padded, batch norm when
            ``batch_norm``) after the first; they keep the primary-capsule grid, so they add
            features without adding votes.
        routing: Routing of every capsule layer: a matrix routing (default: EM, 3 iterations).

    """

    routing_kind = "matrix"

    def __init__(
        self,
        *,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        a: int = 64,
        b: int = 8,
        c: int = 16,
        d: int = 16,
        batch_norm: bool = False,
        padding: int = 2,
        stem: int = 0,
        routing: RoutingConfig | str = "em",
    ) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.conv1 = nn.Conv2d(input_shape[0], a, 5, stride=2, padding=padding)
        self.norm = nn.BatchNorm2d(a) if batch_norm else nn.Identity()
        self.stem = nn.Sequential(*(_conv_block(a, batch_norm) for _ in range(stem)))
        self.primary = PrimaryMatrixCaps(a, b)
        self.caps1 = ConvCaps(b, c, kernel_size=3, stride=2, routing=routing)
        self.caps2 = ConvCaps(c, d, kernel_size=3, stride=1, routing=routing)
        self.classes = ConvCaps(d, num_classes, routing=routing, class_caps=True)

    def forward(self, x: Tensor, y: Tensor | None = None) -> CapsOutput:
        """Shapes: x [B, C, H, W] -> activations [B, N_o], poses [B, N_o, 16], no reconstruction."""
        poses, act = self.primary(self.stem(self.norm(self.conv1(x)).relu()))
        poses, act = self.caps1(poses, act)
        poses, act = self.caps2(poses, act)
        poses, act = self.classes(poses, act)
        return CapsOutput(act, poses, None)


def _conv_block(channels: int, batch_norm: bool) -> nn.Sequential:
    """3x3 convolution, stride 1, padded (the grid is kept), optional batch norm, ReLU."""
    norm = nn.BatchNorm2d(channels) if batch_norm else nn.Identity()
    return nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1), norm, nn.ReLU())


@MODELS.register("matrix_capsnet", aliases=("em_capsnet",))
def matrix_capsnet(**kwargs) -> MatrixCapsNet:
    """The small EM model of Hinton 2018 (A=64, B=8, C=D=16)."""
    return MatrixCapsNet(**kwargs)


@MODELS.register("matrix_capsnet_small")
def matrix_capsnet_small(**kwargs) -> MatrixCapsNet:
    """A CPU-sized EM model: A=32, B=8, C=D=8, batch norm, an unpadded first convolution.

    On 28x28 inputs: 12x12 primary capsules, ConvCaps1 on 5x5 and ConvCaps2 on 3x3 positions,
    so 25 x 72 x 8 + 9 x 72 x 8 vote matrices per image, a quarter of the small model's
    36 x 72 x 16 + 16 x 144 x 16 (the cost of EM routing grows with them).
    """
    return MatrixCapsNet(**{"a": 32, "b": 8, "c": 8, "d": 8, "batch_norm": True, "padding": 0, **kwargs})


@MODELS.register("matrix_capsnet_cpu")
def matrix_capsnet_cpu(**kwargs) -> MatrixCapsNet:
    """``matrix_capsnet_small`` with A=64 and two more 3x3 convolutions before the primary capsules.

    The same 12x12 primary grid and the same votes (EM's cost), so nearly the same speed;
    the stem gives the primary capsules richer features, which EM's slow start needs on a short schedule.
    """
    return MatrixCapsNet(**{"a": 64, "b": 8, "c": 8, "d": 8, "batch_norm": True, "padding": 0, "stem": 2, **kwargs})


@MODELS.register("matrix_capsnet_tiny")
def matrix_capsnet_tiny(**kwargs) -> MatrixCapsNet:
    """A tiny EM model for tests (A=8, B=2, C=D=4, 2 iterations)."""
    return MatrixCapsNet(
        **{"a": 8, "b": 2, "c": 4, "d": 4, "routing": RoutingConfig(name="em", iterations=2), **kwargs}
    )
