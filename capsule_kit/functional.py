"""Pure capsule functions: safe norms, squash variants, lengths.

Shapes (project legend, see docs/notation.md):
    B batch, N_i / N_o input / output capsules, D_i / D_o capsule dims.

All functions are exact at zero: ``squash(0) == 0`` with finite gradients. The
seed (and many public ports) divide by ``norm + 1e-8``, which biases small
capsules, or take ``sqrt`` of zero, whose gradient is NaN. Here the norm uses
the "double where" trick so the zero branch never differentiates through sqrt.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Squash in at least fp32: |s|^2 in bf16 loses most of its mantissa.
    return torch.promote_types(dtype, torch.float32)


def safe_norm(s: Tensor, dim: int = -1, keepdim: bool = False) -> Tensor:
    """Euclidean norm with a zero (not NaN) gradient at ``s = 0``.

    Args:
        s: Any tensor.
        dim: Dimension to reduce.
        keepdim: Keep the reduced dimension.

    Returns:
        ``|s|`` along ``dim``.

    Shapes:
        s: [..., D] (``dim=-1``) -> [...] (or [..., 1] with ``keepdim``)

    """
    sq = s.pow(2).sum(dim=dim, keepdim=keepdim)
    positive = sq > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, sq, torch.ones_like(sq))), 0.0)


def squash(s: Tensor, dim: int = -1) -> Tensor:
    """Sabour et al. (2017) squash: ``|s|^2 / (1 + |s|^2) * s / |s|``.

    Rewritten as ``s * |s| / (1 + |s|^2)``: no division by ``|s|``, so it is exact
    at zero (output 0, gradient 0, the true derivative).

    Shapes:
        s: [..., D] with the capsule dimension at ``dim``
        returns: same shape and dtype, lengths in [0, 1)
    """
    x = s.to(_compute_dtype(s.dtype))
    sq = x.pow(2).sum(dim=dim, keepdim=True)
    norm = safe_norm(x, dim=dim, keepdim=True)
    return (x * (norm / (1.0 + sq))).to(s.dtype)


def squash_efficient(s: Tensor, dim: int = -1) -> Tensor:
    """Efficient-CapsNet squash (Mazzia et al. 2021): ``(1 - e^-|s|) * s / |s|``.

    The scale ``(1 - e^-r) / r`` tends to 1 at ``r = 0``; it is evaluated with
    ``expm1`` and replaced by its limit at zero, so output and gradient are exact.

    Shapes:
        s: [..., D]
        returns: same shape and dtype, lengths in [0, 1)
    """
    x = s.to(_compute_dtype(s.dtype))
    norm = safe_norm(x, dim=dim, keepdim=True)
    positive = norm > 0
    safe = torch.where(positive, norm, torch.ones_like(norm))
    scale = torch.where(positive, -torch.expm1(-safe) / safe, 1.0)
    return (x * scale).to(s.dtype)


SQUASHES = {"sabour": squash, "efficient": squash_efficient}


def get_squash(name: str):
    """Return a squash function by name (``sabour`` or ``efficient``)."""
    if name not in SQUASHES:
        raise ValueError(f"unknown squash '{name}'; known: {', '.join(SQUASHES)}")
    return SQUASHES[name]


def lengths(poses: Tensor) -> Tensor:
    """Capsule lengths (existence probabilities).

    Shapes:
        poses: [B, N, D]
        returns: [B, N]
    """
    return safe_norm(poses, dim=-1)
