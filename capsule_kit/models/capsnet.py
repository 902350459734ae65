"""Sabour et al. (2017) CapsNet and a tiny variant for tests.

Conv1 256@9x9 ReLU -> PrimaryCaps 32 x 8D (9x9, stride 2) -> DigitCaps C x 16D
(dynamic routing) -> decoder 512-1024-H*W. For 28x28 inputs and 10 classes:
8,215,568 parameters, 6,804,224 without the decoder.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from capsule_kit.layers import CapsuleDecoder, DenseCaps, PrimaryCaps, mask_capsules
from capsule_kit.registry import MODELS
from capsule_kit.routing import RoutingConfig


class CapsOutput(NamedTuple):
    """Output of a capsule classifier.

    Attributes:
        lengths: [B, C] class capsule lengths (or activations).
        poses: [B, C, D] class capsules.
        reconstruction: [B, *input_shape] or None (no decoder).

    """

    lengths: Tensor
    poses: Tensor
    reconstruction: Tensor | None


def conv_out(size: int, kernel: int, stride: int = 1, padding: int = 0) -> int:
    """Spatial size after a convolution."""
    return (size + 2 * padding - kernel) // stride + 1


class CapsNet(nn.Module):
    """The Sabour CapsNet.

    Args:
        input_shape: (C, H, W) of one input.
        num_classes: Class capsules.
        conv_channels: Channels of the first convolution (256).
        primary_types: Primary capsule types (32).
        primary_dim: Primary capsule dim (8).
        class_dim: Class capsule dim (16).
        kernel_size: Kernel of conv1 and PrimaryCaps (9).
        decoder: Add the reconstruction decoder.
        decoder_hidden: Hidden widths of the decoder.
        mask_k: Capsules kept for reconstruction when no label is given (2 for MultiMNIST).
        routing: Routing of the class capsules: any vector routing, by name or as a
            :class:`~capsule_kit.routing.RoutingConfig` (default: dynamic, 3 iterations).
        shared: Transform sharing of the class capsule layer (see :class:`DenseCaps`).

    """

    routing_kind = "vector"

    def __init__(
        self,
        *,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        conv_channels: int = 256,
        primary_types: int = 32,
        primary_dim: int = 8,
        class_dim: int = 16,
        kernel_size: int = 9,
        decoder: bool = True,
        decoder_hidden: tuple[int, ...] = (512, 1024),
        mask_k: int = 1,
        routing: RoutingConfig | str = "dynamic",
        shared: str = "none",
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        self.input_shape, self.mask_k = tuple(input_shape), mask_k
        self.conv1 = nn.Conv2d(c, conv_channels, kernel_size)
        self.primary = PrimaryCaps(conv_channels, num_types=primary_types, dim=primary_dim, kernel_size=kernel_size)
        grid = conv_out(conv_out(h, kernel_size), kernel_size, 2) * conv_out(conv_out(w, kernel_size), kernel_size, 2)
        self.classes = DenseCaps(
            primary_types * grid,
            primary_dim,
            num_classes,
            class_dim,
            routing=routing,
            shared=shared,
            types=primary_types,
        )
        self.decoder = CapsuleDecoder(num_classes * class_dim, self.input_shape, decoder_hidden) if decoder else None

    def forward(self, x: Tensor, y: Tensor | None = None) -> CapsOutput:
        """Shapes: x [B, C, H, W], y [B] or [B, N_o] -> lengths [B, N_o], poses [B, N_o, 16], recon [B, C, H, W]."""
        u = self.primary(self.conv1(x).relu())  # [B, N_i, 8]
        routed = self.classes(u)
        recon = None
        if self.decoder is not None:
            recon = self.decoder(mask_capsules(routed.poses, y, k=self.mask_k))
        return CapsOutput(routed.activations, routed.poses, recon)


@MODELS.register("capsnet", aliases=("capsnet_sabour",))
def capsnet_sabour(**kwargs) -> CapsNet:
    """Sabour CapsNet (defaults: 28x28x1, 10 classes, 3 iterations)."""
    return CapsNet(**kwargs)


@MODELS.register("capsnet_tiny")
def capsnet_tiny(*, input_shape: tuple[int, int, int] = (1, 28, 28), num_classes: int = 10, **kwargs) -> CapsNet:
    """A few-thousand-parameter CapsNet for tests and smoke runs."""
    opts = dict(conv_channels=16, primary_types=4, primary_dim=4, class_dim=8, decoder_hidden=(32, 64))
    opts.update(kwargs)
    return CapsNet(input_shape=input_shape, num_classes=num_classes, **opts)
