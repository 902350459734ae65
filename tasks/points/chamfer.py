"""Exact, memory-safe Chamfer distance in plain torch (no CUDA extension).

``CD(X, Y) = mean_x min_y |x - y|^2 + mean_y min_x |x - y|^2`` per cloud (squared
distances, as the nndistance module of the 3D Point Capsule Networks code).

Nearest neighbours are found without gradients, one pass giving both
directions (row minima for X -> Y, running column minima for Y -> X). On CPU
(float32/64) a small C++ kernel (``nn_kernel.cpp``, compiled on first use like
the fused routing kernel) does it row by row in cache, never storing the
pairwise matrix: about 4x faster than torch for 16 x 1,024 points
(``benchmarks/chamfer.py``). Elsewhere, or where it cannot be built, torch does
it in chunks of X rows (:func:`squared_distances`), so the pairwise blocks
never exceed ``max_bytes``. Both sum squared differences in the same order,
compare squared distances (no square root, which can tie different ones) and
break ties to the first index: the same neighbours. The
distances are then recomputed from the gathered neighbours: the same values,
with the gradient of the min (the sub-gradient picking the first nearest point
on ties), and O(B * P) memory for backward instead of O(B * P * P).

Shapes: B batch, P / Q points in the two clouds.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import torch
from torch import Tensor

from capsule_kit.kernels import build_cpp

DEFAULT_MAX_BYTES = 64 * 2**20
SOURCE = Path(__file__).with_name("nn_kernel.cpp")


@cache
def kernel():
    """The compiled nearest-neighbour extension, or None (with one warning) when it cannot be built here."""
    flags = ["-O3", "-march=native", "-ffp-contract=off"]  # no FMA: torch's rounding
    return build_cpp("capsule_kit_points_nn", SOURCE, ["nearest"], flags, "points nearest-neighbour kernel", "torch")


def squared_distances(x: Tensor, y: Tensor) -> Tensor:
    """All pairwise squared distances, summed as ``(dx^2 + dy^2) + dz^2`` (the kernel's order).

    Not ``cdist``: its square root maps different float squared distances to one value
    (e.g. 0.0086022280 and 0.0086022271 both to 0.0927482), a false tie that argmin breaks
    to the farther point; not ``|x|^2 + |y|^2 - 2 x.y`` either, which loses digits to cancellation.

    Shapes:
        x: [B, P, D], y: [B, Q, D]
        returns: [B, P, Q]
    """
    d = (x[:, :, None, 0] - y[:, None, :, 0]).square_()
    for k in range(1, x.shape[2]):
        d += (x[:, :, None, k] - y[:, None, :, k]).square_()
    return d


@torch.no_grad()
def nearest_indices(
    x: Tensor, y: Tensor, max_bytes: int = DEFAULT_MAX_BYTES, *, use_kernel: bool = True
) -> tuple[Tensor, Tensor]:
    """Index of the nearest point of ``y`` for each point of ``x``, and vice versa.

    Args:
        x: First clouds.
        y: Second clouds.
        max_bytes: Largest block of pairwise distances of the torch path.
        use_kernel: Use the C++ kernel for CPU float tensors when it builds (False: always torch).

    Shapes:
        x: [B, P, 3], y: [B, Q, 3]
        returns: (x_to_y [B, P] indices into y, y_to_x [B, Q] indices into x)
    """
    fits = x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and x.shape[2] == 3
    if use_kernel and fits and y.dtype == x.dtype and kernel() is not None:
        x_to_y, y_to_x = kernel().nearest(x, y)
        return x_to_y, y_to_x
    b, p, q = x.shape[0], x.shape[1], y.shape[1]
    rows = max(1, max_bytes // max(1, 2 * b * q * x.element_size()))  # a block and one temporary
    best = torch.full((b, q), float("inf"), device=x.device, dtype=x.dtype)
    y_to_x = torch.zeros((b, q), device=x.device, dtype=torch.long)
    x_to_y = []
    for s in range(0, p, rows):
        d = squared_distances(x[:, s : s + rows], y)  # [B, rows, Q]
        x_to_y.append(d.argmin(dim=2))
        col_min, col_arg = d.min(dim=1)  # [B, Q]
        closer = col_min < best  # strict: ties keep the earlier (first) index
        best = torch.where(closer, col_min, best)
        y_to_x = torch.where(closer, col_arg + s, y_to_x)
    return torch.cat(x_to_y, dim=1), y_to_x


def _gather(points: Tensor, index: Tensor) -> Tensor:
    """Gather neighbours: points [B, Q, 3], index [B, P] -> [B, P, 3]."""
    return torch.gather(points, 1, index.unsqueeze(-1).expand(-1, -1, points.shape[-1]))


def chamfer_terms(
    x: Tensor, y: Tensor, max_bytes: int = DEFAULT_MAX_BYTES, *, use_kernel: bool = True
) -> tuple[Tensor, Tensor]:
    """Squared distance from each point to its nearest neighbour in the other cloud.

    Shapes:
        x: [B, P, 3], y: [B, Q, 3]
        returns: (dist_x [B, P], dist_y [B, Q])
    """
    if x.dim() != 3 or y.dim() != 3 or x.shape[0] != y.shape[0] or x.shape[2] != y.shape[2]:
        raise ValueError(f"chamfer expects [B, P, D] and [B, Q, D], got {tuple(x.shape)} and {tuple(y.shape)}")
    x_to_y, y_to_x = nearest_indices(x.detach(), y.detach(), max_bytes, use_kernel=use_kernel)
    dist_x = (x - _gather(y, x_to_y)).pow(2).sum(-1)
    dist_y = (y - _gather(x, y_to_x)).pow(2).sum(-1)
    return dist_x, dist_y


def chamfer_distance(x: Tensor, y: Tensor, max_bytes: int = DEFAULT_MAX_BYTES, *, use_kernel: bool = True) -> Tensor:
    """Per-cloud Chamfer distance (mean of both directions' squared NN distances, summed).

    Shapes:
        x: [B, P, 3], y: [B, Q, 3]
        returns: [B]
    """
    dist_x, dist_y = chamfer_terms(x, y, max_bytes, use_kernel=use_kernel)
    return dist_x.mean(dim=1) + dist_y.mean(dim=1)
