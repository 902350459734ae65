"""Masking and the reconstruction decoder of capsule networks (Sabour et al. 2017).

Shapes (docs/notation.md): B batch, N / N_o capsules, D / D_o capsule dims.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from capsule_kit.functional import safe_norm


def mask_capsules(poses: Tensor, y: Tensor | None = None, k: int = 1) -> Tensor:
    """Zero all capsules but the selected ones.

    Args:
        poses: [B, N, D] capsule poses.
        y: [B] class indices or [B, N] one/multi-hot mask; None selects the ``k``
            longest capsules (k = 2 for MultiMNIST).
        k: Number of longest capsules kept when ``y`` is None.

    Returns:
        [B, N, D] masked poses.

    """
    if y is None:
        top = safe_norm(poses.detach(), dim=-1).topk(k, dim=-1).indices
        mask = torch.zeros(poses.shape[:2], device=poses.device, dtype=poses.dtype).scatter_(1, top, 1.0)
    elif y.dim() == 1:
        mask = nn.functional.one_hot(y.long(), poses.shape[1]).to(poses.dtype)
    else:
        mask = y.to(poses.dtype)
    return poses * mask.unsqueeze(-1)


class CapsuleDecoder(nn.Module):
    """Fully connected reconstruction decoder (Sabour: 512-1024-out, sigmoid).

    Args:
        in_features: Flattened masked capsules (N_o * D_o).
        out_shape: Shape of one reconstruction, e.g. ``(1, 28, 28)``.
        hidden: Hidden layer widths.

    """

    def __init__(self, in_features: int, out_shape: tuple[int, ...], hidden: tuple[int, ...] = (512, 1024)) -> None:
        super().__init__()
        self.out_shape = tuple(out_shape)
        dims, layers = (in_features, *hidden), []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.ReLU(inplace=True)]
        layers += [nn.Linear(dims[-1], math.prod(self.out_shape)), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, masked: Tensor) -> Tensor:
        """Shapes: masked [B, N_o, D_o] -> reconstruction [B, *out_shape]."""
        n_in = self.net[0].in_features
        if masked.dim() != 3 or masked.shape[1] * masked.shape[2] != n_in:
            raise ValueError(f"CapsuleDecoder(in_features={n_in}): expected masked of shape [B, N_o, D_o] "
                             f"with N_o*D_o={n_in}, got {list(masked.shape)}")  # fmt: skip
        return self.net(masked.flatten(1)).view(masked.shape[0], *self.out_shape)
