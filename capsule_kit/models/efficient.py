"""Efficient-CapsNet (Mazzia, Salvetti & Chiaberge 2021): ~161k parameters on MNIST.

Four conv+BN layers -> depthwise-conv primary capsules (16 x 8D, efficient squash)
-> class capsules 10 x 16D by self-attention routing -> optional 512-1024-784 decoder.
"""

from __future__ import annotations

from torch import Tensor, nn

from capsule_kit.layers import CapsuleDecoder, DenseCaps, PrimaryCaps, mask_capsules
from capsule_kit.models.capsnet import CapsOutput, conv_out
from capsule_kit.registry import MODELS
from capsule_kit.routing import RoutingConfig


def _conv_bn(c_in: int, c_out: int, k: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, k, stride=stride), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class EfficientCapsNet(nn.Module):
    """Efficient-CapsNet.

    Args:
        input_shape: (C, H, W).
        num_classes: Class capsules.
        channels: Widths of the four convolutions.
        primary_types: Primary capsules (16).
        primary_dim: Primary capsule dim (8).
        class_dim: Class capsule dim (16).
        decoder: Add the reconstruction decoder (not counted in the paper's 161k).
        mask_k: Capsules kept for reconstruction when no label is given.
        routing: Routing of the class capsules: any vector routing (default: the
            paper's self-attention routing).

    """

    routing_kind = "vector"

    def __init__(
        self,
        *,
        input_shape: tuple[int, int, int] = (1, 28, 28),
        num_classes: int = 10,
        channels: tuple[int, int, int, int] = (32, 64, 64, 128),
        primary_types: int = 16,
        primary_dim: int = 8,
        class_dim: int = 16,
        decoder: bool = True,
        mask_k: int = 1,
        routing: RoutingConfig | str = "attention",
    ) -> None:
        super().__init__()
        c, h, w = input_shape
        c1, c2, c3, c4 = channels
        self.features = nn.Sequential(
            _conv_bn(c, c1, 5), _conv_bn(c1, c2, 3), _conv_bn(c2, c3, 3), _conv_bn(c3, c4, 3, 2)
        )
        size = [conv_out(conv_out(conv_out(conv_out(s, 5), 3), 3), 3, 2) for s in (h, w)]
        if primary_types * primary_dim != c4:
            raise ValueError(f"primary_types * primary_dim must equal channels[3]={c4}")
        self.primary = PrimaryCaps(
            c4, num_types=primary_types, dim=primary_dim, kernel_size=size[0], stride=1, groups=c4, squash="efficient"
        )
        self.classes = DenseCaps(
            primary_types,
            primary_dim,
            num_classes,
            class_dim,
            routing=routing,
            init_std=(2.0 / (primary_dim + class_dim)) ** 0.5,
        )
        self.mask_k, self.input_shape = mask_k, tuple(input_shape)
        self.decoder = CapsuleDecoder(num_classes * class_dim, self.input_shape) if decoder else None

    def forward(self, x: Tensor, y: Tensor | None = None) -> CapsOutput:
        """Shapes: x [B, C, H, W] -> lengths [B, N_o], poses [B, N_o, 16], recon [B, C, H, W] or None."""
        routed = self.classes(self.primary(self.features(x)))
        recon = self.decoder(mask_capsules(routed.poses, y, k=self.mask_k)) if self.decoder is not None else None
        return CapsOutput(routed.activations, routed.poses, recon)


@MODELS.register("efficient_capsnet", aliases=("efficient",))
def efficient_capsnet(**kwargs) -> EfficientCapsNet:
    """Efficient-CapsNet as in the paper (161,824 parameters without decoder)."""
    return EfficientCapsNet(**kwargs)


@MODELS.register("efficient_capsnet_tiny")
def efficient_capsnet_tiny(**kwargs) -> EfficientCapsNet:
    """A small Efficient-CapsNet for tests."""
    return EfficientCapsNet(**{"channels": (8, 8, 16, 32), "primary_types": 8, "primary_dim": 4, **kwargs})
