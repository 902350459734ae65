"""Routing base class: validates once, so each algorithm file only routes.

Every routing module has one signature::

    forward(votes [B, N_i, N_o, D_o], activations [B, N_i] | None) -> Routed

and returns ``Routed(poses [B, N_o, D_o], activations [B, N_o], coupling [B, N_i, N_o])``.

Ragged inputs (graphs, sets: a different number of input capsules per example)
are routed like PyG's aggregations, with an ``index``: ``votes`` are
``[V, N_i, N_o, D_o]`` for V rows (e.g. nodes) of N_i input capsules each, and
row v belongs to example ``index[v]`` in ``[0, size)``. Example b routes all
``N_i`` capsules of all its rows at once, exactly as the dense routing of those
capsules would (tested against a per-example loop), without padding::

    forward(votes [V, N_i, N_o, D_o], activations [V, N_i] | None, index=[V], size=B) -> Routed
    -> Routed(poses [B, N_o, D_o], activations [B, N_o], coupling [V, N_i, N_o])
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import torch
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

    Subclasses declare ``kind``: ``"vector"`` (votes are capsule vectors, e.g. dynamic
    and attention routing) or ``"matrix"`` (flattened 4x4 pose matrices, EM routing).
    A model supports every registered routing of the kind it declares.

    Args:
        num_in: Number of input capsules N_i (needed by routings with per-input parameters).
        num_out: Number of output capsules N_o (needed by routings with per-output parameters).
        iterations: Routing iterations K (ignored by non-iterative routings).

    """

    kind: ClassVar[str] = "vector"

    def __init__(self, *, num_in: int | None = None, num_out: int | None = None, iterations: int = 3) -> None:
        super().__init__()
        if iterations < 1:
            raise ValueError(f"routing iterations must be >= 1, got {iterations}")
        self.num_in, self.num_out, self.iterations = num_in, num_out, iterations

    def forward(
        self, votes: Tensor, activations: Tensor | None = None, *, index: Tensor | None = None, size: int | None = None
    ) -> Routed:
        """Check shapes, then call :meth:`route` (or :meth:`route_ragged` when ``index`` is given).

        Args:
            votes: Votes of every input capsule for every output capsule.
            activations: Input activations (or None).
            index: Ragged inputs: the example of each row of ``votes``.
            size: Ragged inputs: number of examples B (default ``index.max() + 1``).

        Shapes:
            votes: [B, N_i, N_o, D_o] (ragged: [V, N_i, N_o, D_o])
            activations: [B, N_i] or None (ragged: [V, N_i])
            index: [V] or None
            returns: Routed(poses [B, N_o, D_o], activations [B, N_o], coupling [B, N_i, N_o] (ragged: [V, N_i, N_o]))
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
        if index is None:
            return self.route(votes, activations)
        if index.shape != votes.shape[:1] or index.dtype != torch.long:
            raise ValueError(f"index must be int64 [V] = [{votes.shape[0]}], got {index.dtype} {tuple(index.shape)}")
        if size is None:
            size = int(index.max()) + 1 if index.numel() else 0
        return self.route_ragged(votes, activations, index, size)

    def route(self, votes: Tensor, activations: Tensor | None) -> Routed:  # pragma: no cover - abstract
        raise NotImplementedError

    def route_ragged(self, votes: Tensor, activations: Tensor | None, index: Tensor, size: int) -> Routed:
        """Route ragged inputs (see the module docstring); routings that cannot say so."""
        raise NotImplementedError(f"{type(self).__name__} does not route ragged inputs (index=)")

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}"


def require(value: int | None, name: str, routing: str) -> int:
    """Return ``value`` or raise a clear error naming the missing argument."""
    if value is None:
        raise ValueError(f"{routing} routing needs {name}= (it has per-capsule parameters)")
    return value


def scatter_sum(rows: Tensor, index: Tensor, size: int) -> Tensor:
    """Sum the rows of each example: ``out[b] = sum of rows[v] with index[v] == b``.

    Shapes:
        rows: [V, ...], index: [V] -> [B, ...] with B = size
    """
    return rows.new_zeros(size, *rows.shape[1:]).index_add_(0, index, rows)


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
