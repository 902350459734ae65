"""Pure capsule functions: safe norms, squash variants, lengths.

Shapes (project legend, see docs/notation.md):
    B batch, N_i / N_o input / output capsules, D_i / D_o capsule dims.

All functions are exact at zero: ``squash(0) == 0`` with finite gradients. The
seed (and many public ports) divide by ``norm + 1e-8``, which biases small
capsules, or take ``sqrt`` of zero, whose gradient is NaN. Here the squared norm
is clamped to the smallest normal float before ``sqrt``, so no gradient passes ``sqrt(0)``.

They are also scale-invariant over the whole float range: ``|s|^2`` overflows
float32 for ``|s| > ~1.8e19`` (and underflows below ~1e-19), so ``s`` is divided
by its largest entry before squaring (as LAPACK's ``nrm2`` does). NaN in a capsule
gives NaN out (its length is NaN, never 0); an infinite entry gives length inf
(and a NaN squash: its direction is undefined).
"""

from __future__ import annotations

import torch
from torch import Tensor

# r^2 / (1 + r^2) rounds to 1 in float32 and float64 beyond this length: clamping there keeps
# r^2 (and the gradient's (1 + r^2)^2) finite without changing any result.
_SATURATED = 1e9


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    # Squash in at least fp32: |s|^2 in bf16 loses most of its mantissa.
    return torch.promote_types(dtype, torch.float32)


def _scaled(s: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``s = m * y`` with ``m = max_i |s_i|``, so that ``|y|^2`` lies in [1, D] (0 at ``s = 0``).

    ``m`` is detached: the identity holds for every ``m``, so gradients flow through ``y``
    alone. Squaring ``y`` neither overflows nor underflows, and ``|s| = m |y|``. At ``s = 0``
    (``m`` clamped to the smallest normal float) ``y = 0``, and ``|y|^2`` is clamped there too
    so that no gradient passes a ``sqrt(0)``.

    Returns:
        ``y``, ``|y|^2`` (unclamped), ``|y|`` (clamped) and ``m``; NaN wherever ``s`` holds a NaN.

    Shapes:
        s: [..., D] (capsule dimension at ``dim``)
        returns: y [..., D]; the others [..., 1] (kept dimension)
    """
    tiny = torch.finfo(s.dtype).tiny
    m = s.detach().abs().amax(dim=dim, keepdim=True).clamp_min(tiny)  # NaN stays NaN
    y = s / m
    sq = (y * y).sum(dim=dim, keepdim=True)
    return y, sq, sq.clamp_min(tiny).sqrt(), m


def safe_norm(s: Tensor, dim: int = -1, keepdim: bool = False) -> Tensor:
    """Euclidean norm, finite over the float range, with a zero (not NaN) gradient at ``s = 0``.

    Args:
        s: Any tensor.
        dim: Dimension to reduce.
        keepdim: Keep the reduced dimension.

    Returns:
        ``|s|`` along ``dim``; NaN where ``s`` holds a NaN, inf where it holds an inf.

    Shapes:
        s: [..., D] (``dim=-1``) -> [...] (or [..., 1] with ``keepdim``)

    """
    _, sq, root, m = _scaled(s, dim)
    length = torch.where(m.isinf(), m, torch.where(sq == 0, 0.0, m * root))
    return length if keepdim else length.squeeze(dim)


def squash(s: Tensor, dim: int = -1) -> Tensor:
    """Sabour et al. (2017) squash: ``|s|^2 / (1 + |s|^2) * s / |s|``.

    Computed as ``y * r^2 / ((1 + r^2) |y|)`` from :func:`_scaled`, with ``r`` clamped
    where ``r^2 / (1 + r^2)`` is 1 to the last bit: exact at zero (output 0, gradient 0,
    the true derivative) and finite up to the largest float.

    Shapes:
        s: [..., D] with the capsule dimension at ``dim``
        returns: same shape and dtype, lengths in [0, 1)
    """
    x = s.to(_compute_dtype(s.dtype))
    y, _, root, m = _scaled(x, dim)
    r2 = (m * root).clamp(max=_SATURATED).square()  # 0 at s = 0 (underflow of tiny * sqrt(tiny))
    return (y * (r2 / ((1.0 + r2) * root))).to(s.dtype)


def squash_efficient(s: Tensor, dim: int = -1) -> Tensor:
    """Efficient-CapsNet squash (Mazzia et al. 2021): ``(1 - e^-|s|) * s / |s|``.

    Computed as ``y * -expm1(-r) / |y|`` from :func:`_scaled`; at ``s = 0`` the output is ``s``
    itself, the limit (the Jacobian there is the identity: ``(1 - e^-r) / r`` tends to 1).

    Shapes:
        s: [..., D]
        returns: same shape and dtype, lengths in [0, 1)
    """
    x = s.to(_compute_dtype(s.dtype))
    y, sq, root, m = _scaled(x, dim)
    scaled = y * (-torch.expm1(-m * root) / root)
    return torch.where(sq == 0, x, scaled).to(s.dtype)  # NaN sq: NaN out


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
