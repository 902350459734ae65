"""Routing base class: validates once, so each algorithm file only routes.

Every routing module has one signature::

    forward(votes [B, N_i, N_o, D_o], activations [B, N_i] | None) -> Routed

and returns ``Routed(poses [B, N_o, D_o], activations [B, N_o], coupling [B, N_i, N_o])``.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn


class Routed(NamedTuple):
    """Result of routing.

    Attributes:
        poses: [B, N_o, D_o] output capsules (vectors, or flattened pose matrices).
        activations: [B, N_o] output activations (lengths for vector capsules).
        coupling: [B, N_i, N_o] final coupling coefficients / assignment probabilities.

    """

    poses: Tensor
    activations: Tensor
    coupling: Tensor


class Routing(nn.Module):
    """Base class: shape/dtype checks and the common constructor arguments.

    Args:
        num_in: Number of input capsules N_i (needed by routings with per-input parameters).
        num_out: Number of output capsules N_o (needed by routings with per-output parameters).
        iterations: Routing iterations K (ignored by non-iterative routings).

    """

    def __init__(self, *, num_in: int | None = None, num_out: int | None = None, iterations: int = 3) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError(f"routing iterations must be >= 1, got {iterations}")
        self.num_in, self.num_out, self.iterations = num_in, num_out, iterations

    def forward(self, votes: Tensor, activations: Tensor | None = None) -> Routed:
        """Check shapes, then call :meth:`route`.

        Shapes:
            votes: [B, N_i, N_o, D_o]
            activations: [B, N_i] or None
            returns: Routed(poses [B, N_o, D_o], activations [B, N_o], coupling [B, N_i, N_o])
        """
        if votes.dim() != 4:
            raise ValueError(f"votes must be [B, N_i, N_o, D_o], got shape {tuple(votes.shape)}")
        if not votes.is_floating_point():
            raise TypeError(f"votes must be floating point, got {votes.dtype}")
        for name, want, got in (("N_i", self.num_in, votes.shape[1]), ("N_o", self.num_out, votes.shape[2])):
            if want is not None and want != got:
                raise ValueError(f"{type(self).__name__} was built for {name}={want}, votes have {got}")
        if activations is not None and activations.shape != votes.shape[:2]:
            raise ValueError(f"activations must be [B, N_i] = {tuple(votes.shape[:2])}, got {tuple(activations.shape)}")
        return self.route(votes, activations)

    def route(self, votes: Tensor, activations: Tensor | None) -> Routed:  # pragma: no cover - abstract
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}"


def require(value: int | None, name: str, routing: str) -> int:
    """Return ``value`` or raise a clear error naming the missing argument."""
    if value is None:
        raise ValueError(f"{routing} routing needs {name}= (it has per-capsule parameters)")
    return value


def route_major(votes: Tensor) -> Tensor:
    """[B, N_i, N_o, D] -> [B, N_o, N_i, D] that bmm can use without a copy.

    Routing contracts over inputs for each (sample, output) pair: batched
    matrix-vector products over the (B, N_o) batch. The layers in this package
    emit input-major votes, for which this is a view; other producers pay one
    copy here (not one per routing pass).
    """
    v = votes.permute(0, 2, 1, 3)  # [B, N_o, N_i, D]
    if v.stride(0) != v.stride(1) * v.shape[1] and v.shape[0] > 1:
        v = v.contiguous()
    return v
