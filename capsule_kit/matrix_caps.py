"""Matrix capsule layers (Hinton et al. 2018): primary matrix capsules and ConvCaps with EM routing.

Shapes (docs/notation.md): B batch, H, W image size, T capsule types, K kernel size.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from capsule_kit.routing import RoutingConfig, as_routing
from capsule_kit.shapes import expect_shape


class PrimaryMatrixCaps(nn.Module):
    """Primary matrix capsules (Hinton 2018): 1x1 conv to 4x4 poses and sigmoid activations.

    Shapes:
        x: [B, F, H, W] -> poses [B, H, W, T, 16], activations [B, H, W, T]
    """

    def __init__(self, in_channels: int, num_types: int, pose: int = 4) -> None:
        super().__init__()
        self.num_types, self.pose_dim = num_types, pose * pose
        self.pose = nn.Conv2d(in_channels, num_types * self.pose_dim, 1)
        self.act = nn.Conv2d(in_channels, num_types, 1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Shapes: x [B, F, H, W] -> poses [B, H, W, T, P*P], activations [B, H, W, T] in (0, 1)."""
        expect_shape(f"PrimaryMatrixCaps(in_channels={self.pose.in_channels})", "x", x, "[B, F, H, W]",
                     F=self.pose.in_channels)  # fmt: skip
        b, _, h, w = x.shape
        poses = self.pose(x).view(b, self.num_types, self.pose_dim, h, w).permute(0, 3, 4, 1, 2)
        return poses.contiguous(), torch.sigmoid(self.act(x)).permute(0, 2, 3, 1).contiguous()


class ConvCaps(nn.Module):
    """Convolutional matrix-capsule layer with EM routing (Hinton 2018).

    Each output position routes the K*K*T_in capsules of its receptive field to
    T_out capsules (positions are routed independently, as in the public
    reimplementations). With ``class_caps=True`` the layer is the class capsule
    layer: transforms are shared over all positions, every position votes for
    every class, and the scaled (row, column) of each position is added to the
    first two entries of the right-hand column of the vote (coordinate addition).

    Args:
        in_types: Input capsule types T_in.
        out_types: Output capsule types T_out (classes for ``class_caps``).
        kernel_size: Receptive field K (ignored for ``class_caps``).
        stride: Stride.
        routing: The routing of matrix capsules (``"em"`` or a :class:`RoutingConfig`).
        class_caps: Build the class capsule layer.

    """

    def __init__(
        self,
        in_types: int,
        out_types: int,
        *,
        kernel_size: int = 3,
        stride: int = 1,
        routing: RoutingConfig | str = "em",
        class_caps: bool = False,
    ) -> None:
        super().__init__()
        self.k, self.stride, self.class_caps = (1 if class_caps else kernel_size), stride, class_caps
        self.in_types = in_types
        n_in = in_types * self.k * self.k
        self.weight = nn.Parameter(torch.randn(n_in, out_types, 4, 4) * 0.5)  # [K*K*T_in, T_out, 4, 4]
        self.routing = as_routing(routing).build(num_out=out_types)

    def _patches(self, x: Tensor) -> Tensor:
        """[B, H, W, T, ...] -> [B, H', W', K*K*T, ...] receptive fields."""
        k, s = self.k, self.stride
        x = x.unfold(1, k, s).unfold(2, k, s)  # [B, H', W', T, ..., K, K]
        x = x.movedim(-2, 3).movedim(-1, 4)  # [B, H', W', K, K, T, ...]
        return x.reshape(*x.shape[:3], -1, *x.shape[6:])

    def forward(self, poses: Tensor, activations: Tensor) -> tuple[Tensor, Tensor]:
        """Shapes: poses [B, H, W, T_in, 16], activations [B, H, W, T_in]
        -> poses [B, H', W', T_out, 16] (class caps: [B, T_out, 16]), activations likewise.
        """
        name, t_in = f"ConvCaps(in_types={self.in_types})", self.in_types
        expect_shape(name, "poses", poses, "[B, H, W, T_in, 16]", T_in=t_in)
        expect_shape(name, "activations", activations, "[B, H, W, T_in]", B=poses.shape[0], H=poses.shape[1],
                     W=poses.shape[2], T_in=t_in)  # fmt: skip
        b, h, w = poses.shape[:3]
        if self.class_caps:
            p, a = poses.reshape(b, h * w, -1, 4, 4), activations.reshape(b, h * w, -1)
            votes = torch.einsum("bptxy,toyz->boptxz", p, self.weight)  # output-major for EM
            votes = self._add_coordinates(votes.reshape(*votes.shape[:4], 16), h, w)
            out = self.routing(votes.reshape(b, votes.shape[1], -1, 16).transpose(1, 2), a.reshape(b, -1))
            return out.poses, out.activations
        p, a = self._patches(poses), self._patches(activations)  # [B, H', W', N_i, 16], [B, H', W', N_i]
        ho, wo, n_in = p.shape[1], p.shape[2], p.shape[3]
        # votes output-major [B H' W', T_out, N_i, 16]: one copy out of the product; EM reads them as they are
        votes = torch.einsum("nixy,ioyz->noixz", p.reshape(-1, n_in, 4, 4), self.weight)
        votes = votes.reshape(b * ho * wo, -1, n_in, 16).transpose(1, 2)
        out = self.routing(votes, a.reshape(b * ho * wo, n_in))
        return out.poses.view(b, ho, wo, -1, 16), out.activations.view(b, ho, wo, -1)

    @staticmethod
    def _add_coordinates(votes: Tensor, h: int, w: int) -> Tensor:
        """Coordinate addition. Shapes: votes [B, N_o, H*W, T, 16]."""
        rows = (torch.arange(h, device=votes.device, dtype=votes.dtype) + 0.5) / h
        cols = (torch.arange(w, device=votes.device, dtype=votes.dtype) + 0.5) / w
        coords = torch.zeros(h, w, 16, device=votes.device, dtype=votes.dtype)
        coords[..., 3], coords[..., 7] = rows[:, None].expand(h, w), cols[None, :].expand(h, w)
        return votes + coords.view(1, 1, h * w, 1, 16)
