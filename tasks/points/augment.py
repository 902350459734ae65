"""Point-cloud datasets with training augmentation: rotation about the up axis, per-axis scale, clipped jitter.

Shapes: S shapes, P points.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.utils.data import Dataset


def rotate_up(points: Tensor, axis: int, angle: float) -> Tensor:
    """Rotate a cloud about the coordinate axis ``axis`` (0/1/2 = x/y/z) by ``angle`` radians.

    Shapes:
        points: [P, 3] -> [P, 3]
    """
    c, s = math.cos(angle), math.sin(angle)
    i, j = [k for k in range(3) if k != axis]
    rot = torch.eye(3, dtype=points.dtype)
    rot[i, i], rot[i, j], rot[j, i], rot[j, j] = c, -s, s, c
    return points @ rot.T


def augment(
    points: Tensor, generator: torch.Generator | None = None, *, up_axis: int = 2, rotate: bool = False,
    jitter: float = 0.0, jitter_clip: float = 0.05, scale: tuple[float, float] | None = None,
) -> Tensor:  # fmt: skip
    """A randomly rotated (about the up axis), scaled (per axis) and jittered copy of a cloud.

    Draws from ``generator`` (the global torch RNG when None), in a fixed order, so the same
    seed gives the same copy.

    Shapes:
        points: [P, 3] -> [P, 3]
    """
    if rotate:
        points = rotate_up(points, up_axis, float(torch.rand((), generator=generator)) * 2 * math.pi)
    if scale is not None:
        low, high = scale
        points = points * (low + (high - low) * torch.rand(3, generator=generator, dtype=points.dtype))
    if jitter > 0:
        noise = torch.randn(points.shape, generator=generator, dtype=points.dtype) * jitter
        points = points + noise.clamp(-jitter_clip, jitter_clip)
    return points


class CloudDataset(Dataset):
    """Clouds and labels; training copies get optional up-axis rotation, per-axis scale and clipped jitter.

    The random draws come from the global torch RNG (seeded by ``trainer.seed``; worker
    processes get seeds derived from it), so a run's augmentation is fixed by its seed.

    Args:
        points: [S, P, 3] clouds.
        labels: [S] class indices.
        augment: Apply ``rotate``/``scale``/``jitter`` (training split only).
        up_axis: Axis index of "up" for the rotation.
        rotate: Random rotation about the up axis.
        jitter: Gaussian jitter std (0 = off), clipped to ``jitter_clip``.
        jitter_clip: Jitter clip.
        scale: Per-axis scale factors drawn uniformly from ``[low, high]`` (None = off).

    """

    def __init__(self, points, labels, *, augment=False, up_axis=2, rotate=False, jitter=0.0, jitter_clip=0.05,
                 scale=None):  # fmt: skip
        self.points, self.labels = torch.as_tensor(points), torch.as_tensor(labels)
        self.augment = augment
        self.options = {"up_axis": up_axis, "rotate": rotate, "jitter": jitter, "jitter_clip": jitter_clip,
                        "scale": tuple(scale) if scale is not None else None}  # fmt: skip

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        pts = self.points[i]
        if self.augment:
            pts = augment(pts, **self.options)
        return pts, self.labels[i]
