"""3D Point Capsule Network autoencoder (Zhao, Birdal, Deng & Tombari, CVPR 2019).

https://arxiv.org/abs/1812.10775. Encoder: a shared point MLP (1x1 Conv1d
3 -> 64 -> 128), then D_i parallel 1x1 Conv1d 128 -> N_i, each max-pooled over
the points; the D_i pooled maps stacked give N_i primary capsules of D_i dims
(1024 x 16 in the paper), squashed. Dynamic routing (``DenseCaps``) gives N_o
latent capsules of D_o dims (64 x 64). Decoder: every latent capsule is copied
M times, each copy concatenated with a 2D grid point in [0, 1]^2, and mapped to
one 3D point by an MLP (D_o+2 -> D_o+2 -> (D_o+2)/2 -> (D_o+2)/4 -> 3, tanh), so
capsule j produces M points: a local part of the shape.

The reference code holds one MLP per grid index m shared by all capsules
(``decoder="per_patch"``); ``"per_capsule"`` gives every capsule its own MLP
(AtlasNet style), ``"shared"`` one MLP for all. All three are one grouped
Conv1d stack.

Shapes: B batch, P points, N_i / N_o primary / latent capsules, D_i / D_o dims,
M points decoded per latent capsule.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from capsule_kit.functional import squash
from capsule_kit.layers import DenseCaps
from capsule_kit.routing import RoutingConfig


class PointCapsOutput(NamedTuple):
    """Output of :class:`PointCapsNet`.

    Attributes:
        latent: [B, N_o, D_o] latent capsules.
        points: [B, N_o * M, 3] reconstruction; point k comes from capsule ``k % N_o``.
        coupling: [B, N_i, N_o] final routing coefficients.

    """

    latent: Tensor
    points: Tensor
    coupling: Tensor


def mlp1d(widths: tuple[int, ...], groups: int = 1) -> nn.Sequential:
    """1x1 Conv1d + BatchNorm + ReLU stack (``groups`` independent MLPs side by side)."""
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Conv1d(a * groups, b * groups, 1, groups=groups), nn.BatchNorm1d(b * groups), nn.ReLU(True)]
    return nn.Sequential(*layers)


class PrimaryPointCaps(nn.Module):
    """D_i parallel Conv1d(C -> N_i) + BatchNorm, max-pooled over points, stacked and squashed.

    The D_i convolutions are one Conv1d with D_i * N_i outputs (same weights and
    BN statistics as separate ones, one kernel call).
    """

    def __init__(self, in_channels: int, *, num_caps: int, dim: int) -> None:
        super().__init__()
        self.num_caps, self.dim = num_caps, dim
        self.conv = nn.Conv1d(in_channels, dim * num_caps, 1)
        self.bn = nn.BatchNorm1d(dim * num_caps)

    def forward(self, feats: Tensor) -> Tensor:
        """Shapes: feats [B, C, P] -> capsules [B, N_i, D_i]."""
        pooled = self.bn(self.conv(feats)).max(dim=2).values  # [B, D_i * N_i]; max, not amax: cheaper backward
        return squash(pooled.view(-1, self.dim, self.num_caps).transpose(1, 2))


def grid_points(m: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """``m`` fixed points spread over [0, 1]^2 (cell centres of the smallest covering square grid).

    Shapes:
        returns: [M, 2]
    """
    side = math.ceil(math.sqrt(m))
    idx = torch.arange(m, device=device)
    return torch.stack([(idx // side + 0.5) / side, (idx % side + 0.5) / side], dim=1).to(dtype)


class CapsDecoder(nn.Module):
    """Decode N_o latent capsules into N_o * M points with grid-conditioned MLPs.

    Args:
        num_caps: Latent capsules N_o.
        dim: Latent capsule dim D_o.
        points_per_caps: Points M decoded from each capsule.
        mode: ``per_patch`` (reference code), ``per_capsule`` or ``shared`` (see module doc).
        hidden: Hidden widths (default ``(D_o+2, (D_o+2)//2, (D_o+2)//4)`` as the reference).

    """

    def __init__(
        self, *, num_caps: int, dim: int, points_per_caps: int, mode: str = "per_patch", hidden: tuple | None = None
    ) -> None:
        super().__init__()
        if mode not in ("per_patch", "per_capsule", "shared"):
            raise ValueError(f"decoder mode must be per_patch|per_capsule|shared, got '{mode}'")
        self.num_caps, self.m, self.mode = num_caps, points_per_caps, mode
        c = dim + 2
        widths = (c, *(hidden or (c, c // 2, c // 4)))
        self.groups = {"per_patch": points_per_caps, "per_capsule": num_caps, "shared": 1}[mode]
        self.body = mlp1d(widths, self.groups)
        self.head = nn.Conv1d(widths[-1] * self.groups, 3 * self.groups, 1, groups=self.groups)

    def grid(self, b: int, ref: Tensor) -> Tensor:
        """Random grid points while training (as the paper), fixed ones at eval. Shapes: [B, N_o, M, 2]."""
        if self.training:
            return torch.rand(b, self.num_caps, self.m, 2, device=ref.device, dtype=ref.dtype)
        return grid_points(self.m, ref.device, ref.dtype).expand(b, self.num_caps, -1, -1)

    def forward(self, latent: Tensor) -> Tensor:
        """Shapes: latent [B, N_o, D_o] -> points [B, N_o * M, 3] (point k from capsule k % N_o)."""
        b, n, d = latent.shape
        x = torch.cat([self.grid(b, latent), latent.unsqueeze(2).expand(-1, -1, self.m, -1)], dim=3)  # [B,N_o,M,C]
        if self.mode == "per_patch":  # groups over m, positions over capsules
            x = x.permute(0, 2, 3, 1).reshape(b, self.m * (d + 2), n)
        elif self.mode == "per_capsule":  # groups over capsules, positions over m
            x = x.permute(0, 1, 3, 2).reshape(b, n * (d + 2), self.m)
        else:
            x = x.permute(0, 3, 2, 1).reshape(b, d + 2, self.m * n)
        out = torch.tanh(self.head(self.body(x)))  # [B, G*3, L]
        if self.mode == "per_patch":
            pts = out.view(b, self.m, 3, n).permute(0, 1, 3, 2)  # [B, M, N_o, 3]
        elif self.mode == "per_capsule":
            pts = out.view(b, n, 3, self.m).permute(0, 3, 1, 2)
        else:
            pts = out.view(b, 3, self.m, n).permute(0, 2, 3, 1)
        return pts.reshape(b, self.m * n, 3)


class PointCapsNet(nn.Module):
    """The 3D Point Capsule autoencoder.

    Args:
        primary_caps: Primary capsules N_i (1024 in the paper).
        primary_dim: Primary capsule dim D_i = number of parallel convolutions (16).
        latent_caps: Latent capsules N_o (64).
        latent_dim: Latent capsule dim D_o (64).
        out_points: Decoded points (a multiple of ``latent_caps``; 2048 in the paper).
        routing: Routing of the latent capsules: any vector routing (default: dynamic, 3 iterations).
        shared: Transform sharing of the latent layer: ``none`` (one W per (i, j),
            the reference's 67.1M-parameter tensor), ``positions`` (one W per group
            of ``share_groups`` consecutive primary capsules) or ``inputs`` (one W
            per latent capsule).
        share_groups: Groups for ``shared="positions"``.
        feature_channels: Widths of the shared point MLP after the 3 inputs.
        decoder: ``per_patch`` | ``per_capsule`` | ``shared`` (see :class:`CapsDecoder`).

    """

    def __init__(
        self,
        *,
        primary_caps: int = 1024,
        primary_dim: int = 16,
        latent_caps: int = 64,
        latent_dim: int = 64,
        out_points: int = 2048,
        routing: RoutingConfig | str = "dynamic",
        shared: str = "none",
        share_groups: int = 16,
        feature_channels: tuple[int, ...] = (64, 128),
        decoder: str = "per_patch",
    ) -> None:
        super().__init__()
        if out_points % latent_caps:
            raise ValueError(f"out_points={out_points} must be a multiple of latent_caps={latent_caps}")
        self.features = mlp1d((3, *feature_channels))
        self.primary = PrimaryPointCaps(feature_channels[-1], num_caps=primary_caps, dim=primary_dim)
        self.latent = DenseCaps(
            primary_caps, primary_dim, latent_caps, latent_dim, routing=routing, shared=shared,
            types=share_groups if shared == "positions" else None,
        )  # fmt: skip
        self.decoder = CapsDecoder(
            num_caps=latent_caps, dim=latent_dim, points_per_caps=out_points // latent_caps, mode=decoder
        )

    def encode(self, points: Tensor) -> tuple[Tensor, Tensor]:
        """Shapes: points [B, P, 3] -> latent [B, N_o, D_o], coupling [B, N_i, N_o]."""
        routed = self.latent(self.primary(self.features(points.transpose(1, 2))))
        return routed.poses, routed.coupling

    def forward(self, points: Tensor) -> PointCapsOutput:
        """Shapes: points [B, P, 3] -> PointCapsOutput(latent [B, N_o, D_o], points [B, N_o*M, 3], ...)."""
        latent, coupling = self.encode(points)
        return PointCapsOutput(latent, self.decoder(latent), coupling)

    def capsule_of_point(self) -> Tensor:
        """Latent capsule index of each decoded point. Shapes: [N_o * M]."""
        return torch.arange(self.decoder.num_caps * self.decoder.m) % self.decoder.num_caps


def transform_params(primary_caps: int, primary_dim: int, latent_caps: int, latent_dim: int, shared: str, groups: int):
    """Parameters of the primary -> latent transform for a sharing option (no model built)."""
    n_w = {"none": primary_caps, "positions": groups, "inputs": 1}[shared]
    return n_w * primary_dim * latent_caps * latent_dim
