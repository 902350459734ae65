"""Capsule losses: margin (Sabour 2017), spread (Hinton 2018), reconstruction.

Shapes: B batch, C classes (output capsules).
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor
from torch.nn import functional as F

from capsule_kit.config import Strict


def as_targets(targets: Tensor, num_classes: int, dtype: torch.dtype) -> Tensor:
    """Class indices [B] -> one-hot [B, C]; one/multi-hot [B, C] passes through."""
    if targets.dim() == 1:
        return F.one_hot(targets.long(), num_classes).to(dtype)
    if targets.shape[-1] != num_classes:
        raise ValueError(f"targets have {targets.shape[-1]} classes, lengths have {num_classes}")
    return targets.to(dtype)


def margin_loss(lengths: Tensor, targets: Tensor, m_pos: float = 0.9, m_neg: float = 0.1, lam: float = 0.5) -> Tensor:
    """Margin loss ``T_k max(0, m+ - |v_k|)^2 + lam (1 - T_k) max(0, |v_k| - m-)^2``.

    Summed over classes, averaged over the batch (as in Sabour and the seed).
    Multi-hot targets (several classes present) are supported.

    Shapes:
        lengths: [B, C] capsule lengths
        targets: [B] indices or [B, C] one/multi-hot
        returns: scalar
    """
    t = as_targets(targets, lengths.shape[-1], lengths.dtype)
    pos = t * F.relu(m_pos - lengths).pow(2)
    neg = lam * (1.0 - t) * F.relu(lengths - m_neg).pow(2)
    return (pos + neg).sum(dim=-1).mean()


class MarginConfig(Strict):
    """The margin loss of a recipe's ``loss`` section (tasks subclass it to add their own keys)."""

    m_pos: float = Field(0.9, gt=0, le=1, description="Margin loss m+: present classes are pushed above it.")
    m_neg: float = Field(0.1, ge=0, lt=1, description="Margin loss m-: absent classes are pushed below it.")
    lam: float = Field(0.5, ge=0, description="Margin loss down-weighting of absent classes.")

    def margin(self, lengths: Tensor, targets: Tensor) -> Tensor:
        """:func:`margin_loss` with this section's margins. Shapes: lengths [B, C], targets [B] or [B, C]."""
        return margin_loss(lengths, targets, self.m_pos, self.m_neg, self.lam)


def spread_margin(step: int, total_steps: int, start: float = 0.2, end: float = 0.9) -> float:
    """Spread-loss margin schedule: linear from ``start`` to ``end`` over ``total_steps``."""
    if total_steps <= 0:
        return end
    return start + (end - start) * min(1.0, step / total_steps)


def spread_loss(activations: Tensor, targets: Tensor, margin: float = 0.9) -> Tensor:
    """Spread loss ``sum_{i != t} max(0, m - (a_t - a_i))^2`` (Hinton et al. 2018), mean over batch.

    With one-hot targets this is the paper's loss; with multi-hot targets every
    (target t, non-target i) pair contributes, so each present class must beat
    every absent one by the margin.

    Shapes:
        activations: [B, C]
        targets: [B] class indices or [B, C] one/multi-hot
        returns: scalar
    """
    t = as_targets(targets, activations.shape[-1], activations.dtype)  # [B, C]
    gaps = F.relu(margin - (activations.unsqueeze(-1) - activations.unsqueeze(-2))).pow(2)  # [B, C_t, C_i]
    pairs = t.unsqueeze(-1) * (1.0 - t).unsqueeze(-2)  # target t, non-target i
    return (gaps * pairs).sum(dim=(-2, -1)).mean()


def reconstruction_loss(reconstruction: Tensor, target: Tensor, scale: float = 0.0005) -> Tensor:
    """Sum of squared errors per example, times ``scale``, averaged over the batch.

    Sabour uses ``scale = 0.0005``. The seed's ``0.392 * MSELoss`` is the same for
    28x28 images: the mean over 784 pixels times 0.392 = the sum times 0.392/784 = 0.0005.

    Shapes:
        reconstruction: [B, ...], target: [B, ...] (same number of elements per example)
        returns: scalar
    """
    diff = reconstruction.flatten(1) - target.flatten(1).to(reconstruction.dtype)
    return scale * diff.pow(2).sum(dim=-1).mean()
