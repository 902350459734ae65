"""Affine robustness (Sabour et al. 2017, Sec. 5.2), offline: an affNIST-style test set from MNIST.

Training digits are placed at random on a 40x40 canvas (translation only); the model is
tested on the MNIST test digits centred on the canvas and on an affine set made from the
same test digits: each is rotated, sheared and scaled about its centre within affNIST's
ranges (rotation +-20 degrees, shear +-0.1, scale 0.8-1.2), then translated anywhere its
ink fits on the canvas. The set is generated on the fly from a seed (about a second for
10,000 digits), so it is the same bytes for the same seed and digits on a given machine,
and nothing is written next to the data.

Shapes (docs/notation.md): N images, B batch, H, W image size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from capsule_kit.data import TensorPairs
from capsule_kit.metrics import classification_metrics
from capsule_kit_tasks.digits.data import place

ROTATION_DEG, SHEAR, SCALE = 20.0, 0.1, (0.8, 1.2)  # affNIST's published ranges
CANVAS = 40
SOURCES = ("mnist", "affine")  # test-set source ids 0 and 1


def affine_params(n: int, seed: int) -> Tensor:
    """Seeded per-image parameters: rotation (degrees), shear, scale, and two translation fractions.

    Shapes:
        returns: [N, 5] float64, columns (rotation, shear, scale, row fraction, column fraction)
    """
    u = torch.rand(n, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    rot = (2 * u[:, 0] - 1) * ROTATION_DEG
    shear = (2 * u[:, 1] - 1) * SHEAR
    scale = SCALE[0] + (SCALE[1] - SCALE[0]) * u[:, 2]
    return torch.stack([rot, shear, scale, u[:, 3], u[:, 4]], dim=1)


def linear_part(params: Tensor) -> Tensor:
    """``scale * R(rotation) @ [[1, shear], [0, 1]]`` in (x, y) image coordinates.

    Shapes:
        params: [N, >=3] -> [N, 2, 2]
    """
    rad = params[:, 0] * math.pi / 180
    cos, sin, shear, scale = torch.cos(rad), torch.sin(rad), params[:, 1], params[:, 2]
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    shear_m = torch.zeros_like(rot)
    shear_m[:, 0, 0], shear_m[:, 0, 1], shear_m[:, 1, 1] = 1.0, shear, 1.0
    return scale[:, None, None] * rot @ shear_m


def ink_box(images: Tensor) -> Tensor:
    """First and last row and column holding ink (value > 0); an empty image gives the whole canvas.

    Shapes:
        images: [N, H, W] -> [N, 4] (top, bottom, left, right), inclusive
    """
    n, h, w = images.shape
    rows, cols = images.flatten(2).amax(-1) > 0, images.amax(1) > 0  # [N, H], [N, W]

    def first_last(mask: Tensor, size: int) -> tuple[Tensor, Tensor]:
        idx = torch.arange(size).expand_as(mask)
        first = torch.where(mask, idx, size).amin(-1)
        last = torch.where(mask, idx, -1).amax(-1)
        empty = ~mask.any(-1)
        return first.masked_fill(empty, 0), last.masked_fill(empty, size - 1)

    top, bottom = first_last(rows, h)
    left, right = first_last(cols, w)
    return torch.stack([top, bottom, left, right], dim=1)


def affine_digits(images: Tensor, seed: int, canvas: int = CANVAS) -> tuple[Tensor, Tensor]:
    """:func:`warp` with the parameters drawn from ``seed``.

    Shapes:
        images: [N, 1, h, w] uint8 (h, w <= canvas) -> [N, 1, canvas, canvas] uint8, params [N, 5]
    """
    params = affine_params(len(images), seed)
    return warp(images, params, canvas), params


def warp(images: Tensor, params: Tensor, canvas: int = CANVAS) -> Tensor:
    """Rotate, shear and scale each digit about its centre, then translate it where its ink fits.

    Shapes:
        images: [N, 1, h, w] uint8 (h, w <= canvas), params: [N, 5] -> [N, 1, canvas, canvas] uint8
    """
    n, _, h, w = images.shape
    top, left = (canvas - h) // 2, (canvas - w) // 2
    x = F.pad(images.to(torch.float32) / 255, (left, canvas - w - left, top, canvas - h - top))
    inverse = torch.linalg.inv(linear_part(params))  # grid_sample maps output -> input coordinates
    theta = torch.cat([inverse, torch.zeros(n, 2, 1, dtype=inverse.dtype)], dim=2).to(torch.float32)
    grid = F.affine_grid(theta, [n, 1, canvas, canvas], align_corners=False)
    warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    warped = (warped[:, 0] * 255).round().clamp(0, 255).to(torch.uint8)  # [N, canvas, canvas]
    box = ink_box(warped)
    # translation: any offset that keeps the ink box on the canvas, from the seeded fractions
    lo = -box[:, [0, 2]]  # [N, 2] smallest (row, col) shift
    room = (canvas - 1 - box[:, [1, 3]]) - lo  # [N, 2] >= 0
    shift = lo + (params[:, 3:5] * (room + 1)).floor().long().clamp(max=room)
    out = torch.zeros_like(warped)
    for i, (dy, dx) in enumerate(shift.tolist()):
        src = warped[i, max(0, -dy) : canvas - max(0, dy), max(0, -dx) : canvas - max(0, dx)]
        out[i, max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out[:, None]


def centred(images: Tensor, canvas: int = CANVAS) -> Tensor:
    """MNIST digits in the middle of the canvas. Shapes: [N, 1, h, w] uint8 -> [N, 1, canvas, canvas]."""
    h, w = images.shape[-2:]
    top, left = (canvas - h) // 2, (canvas - w) // 2
    return F.pad(images, (left, canvas - w - left, top, canvas - h - top))


def affine_test_set(images: Tensor, labels: Tensor, seed: int, canvas: int = CANVAS) -> TensorPairs:
    """The centred MNIST test digits, then their affine copies, with a source id (0 mnist, 1 affine).

    Shapes:
        images: [N, 1, h, w] uint8, labels: [N] -> TensorPairs of [2N, 1, canvas, canvas], [2N], [2N]
    """
    warped, _ = affine_digits(images, seed, canvas)
    x = torch.cat([centred(images, canvas), warped])
    source = torch.cat([torch.zeros(len(images), dtype=torch.long), torch.ones(len(images), dtype=torch.long)])
    return TensorPairs(x, torch.cat([labels, labels]), source)


def random_place(x: Tensor, canvas: int = CANVAS) -> Tensor:
    """Each image at a uniformly random position on the canvas (affNIST training: translated MNIST).

    Shapes:
        x: [B, C, h, w] -> [B, C, canvas, canvas]
    """
    b, _, h, w = x.shape
    corners = torch.stack([torch.randint(0, canvas - h + 1, (b,)), torch.randint(0, canvas - w + 1, (b,))], dim=1)
    return place(x, canvas, corners)


def affine_metrics(scores: Tensor, y: Tensor, source: Tensor) -> dict:
    """Metrics over both test sets, then ``mnist_accuracy`` / ``affine_accuracy`` (and errors) per set.

    Shapes:
        scores: [N, C], y: [N], source: [N] (0 mnist, 1 affine)
    """
    pred = scores.argmax(-1)
    out = classification_metrics(pred, y, scores.shape[-1])
    for sid, name in enumerate(SOURCES):
        keep = source == sid
        if keep.any():
            acc = float((pred[keep] == y[keep]).float().mean())
            out[f"{name}_accuracy"], out[f"{name}_error"] = acc, 1.0 - acc
    return out
