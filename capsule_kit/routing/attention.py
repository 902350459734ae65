"""Non-iterative self-attention routing (Efficient-CapsNet, Mazzia et al. 2021).

For each output j the votes of all inputs attend to each other:
    A_ij = <u_hat_ij, sum_k u_hat_kj> / sqrt(D_o)       (= sum_k of the self-attention matrix)
    c_ij = softmax_j(A_ij) + b_ij,   s_j = sum_i c_ij u_hat_ij,   v_j = squash_eff(s_j)
Summing over k first costs O(N_i D_o) per output instead of O(N_i^2 D_o). Both
contractions are batched matrix products on the votes' [B, N_o, N_i, D_o] view.

Ragged inputs (``index=``): the sum over an example's inputs is an ``index_add``
over ``index``, gathered back to each row; the prior is per input capsule of a
row ([N_i, N_o]), shared by all rows (e.g. per channel of every node of a graph).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from capsule_kit.functional import get_squash, safe_norm
from capsule_kit.registry import ROUTING
from capsule_kit.routing.base import Routed, Routing, require, route_major, scatter_sum


@ROUTING.register("attention", aliases=("self_attention", "efficient"))
class AttentionRouting(Routing):
    """Efficient-CapsNet routing: one pass, learned prior ``b`` [N_i, N_o].

    Args:
        num_in: Number of input capsules N_i (the prior has one entry per (i, j)).
        num_out: Number of output capsules N_o.
        squash: ``"efficient"`` (default, as in the paper) or ``"sabour"``.
        iterations: Accepted for a uniform signature; must be 1.

    """

    def __init__(
        self, *, num_in: int | None = None, num_out: int | None = None, squash: str = "efficient", iterations: int = 1
    ) -> None:
        n_in, n_out = require(num_in, "num_in", "attention"), require(num_out, "num_out", "attention")
        if iterations != 1:
            raise ValueError("attention routing is non-iterative: iterations must be 1")
        super().__init__(num_in=n_in, num_out=n_out, iterations=1)
        self.prior = nn.Parameter(torch.zeros(n_in, n_out))
        self.squash = get_squash(squash)

    def route(self, votes: Tensor, activations: Tensor | None) -> Routed:
        """Shapes: votes [B, N_i, N_o, D_o] -> poses [B, N_o, D_o], coupling [B, N_i, N_o]."""
        u = route_major(votes)  # [B, N_o, N_i, D_o]
        total = u.sum(dim=2, keepdim=True)  # [B, N_o, 1, D_o]
        scores = torch.matmul(total, u.transpose(-1, -2)).squeeze(2) / math.sqrt(u.shape[-1])  # [B, N_o, N_i]
        # Softmax over outputs (dim 1 here), in at least fp32 (bf16 under autocast); fp64 stays fp64.
        coupling = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=1) + self.prior.t()
        if activations is not None:
            coupling = coupling * activations.unsqueeze(1)
        poses = self.squash(torch.matmul(coupling.to(u.dtype).unsqueeze(2), u).squeeze(2))  # [B, N_o, D_o]
        return Routed(poses, safe_norm(poses, dim=-1), coupling.transpose(1, 2))

    def route_ragged(self, votes: Tensor, activations: Tensor | None, index: Tensor, size: int) -> Routed:
        """Shapes: votes [V, N_i, N_o, D_o], index [V] -> poses [B, N_o, D_o], coupling [V, N_i, N_o]."""
        u = route_major(votes)  # [V, N_o, N_i, D_o]
        total = scatter_sum(u.sum(dim=2), index, size)[index]  # [V, N_o, D_o]: the sum over the row's example
        scores = torch.matmul(total.unsqueeze(2), u.transpose(-1, -2)).squeeze(2) / math.sqrt(u.shape[-1])
        coupling = torch.softmax(scores.to(torch.promote_types(scores.dtype, torch.float32)), dim=1) + self.prior.t()
        if activations is not None:
            coupling = coupling * activations.unsqueeze(1)
        per_row = torch.matmul(coupling.to(u.dtype).unsqueeze(2), u).squeeze(2)  # [V, N_o, D_o]
        poses = self.squash(scatter_sum(per_row, index, size))
        return Routed(poses, safe_norm(poses, dim=-1), coupling.transpose(1, 2))
