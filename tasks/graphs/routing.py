"""Dynamic routing from the node capsules of variable-size graphs to graph capsules.

``capsule_kit.routing`` expects dense votes ``[B, N_i, N_o, D_o]``, i.e. the same
number of input capsules in every example. A batch of graphs has ``V`` nodes in
all, graph ``g`` owning the nodes with ``batch == g``. Instead of padding every
graph to the largest one (``to_dense_batch``: memory grows with
``B * max(V_g)`` and every padded slot must be masked out of both the softmax
and the sums), the routing here works on the flat node axis:

* the coupling softmax is over the OUTPUT capsules (graph capsules), separately
  for each (node, channel) input capsule: a plain ``softmax(dim=-1)``; it never
  mixes nodes, so it is the same in a batch as for a graph alone;
* the weighted sums over a graph's input capsules are ``index_add_`` over the
  ``batch`` vector into ``[B, N_o, D_o]``;
* the agreement of a node's votes is taken with the poses of its own graph,
  gathered back with ``poses[batch]``.

So routing a batch gives exactly (up to float summation order) the result of
routing each graph alone (tested against the dense
:class:`capsule_kit.routing.DynamicRouting` on single graphs). As in the core
routing, all but the last iteration see detached votes.
"""

from __future__ import annotations

import torch
from torch import Tensor

from capsule_kit.functional import squash as squash_fn


def scatter_route(
    votes: Tensor,
    batch: Tensor,
    num_graphs: int,
    *,
    iterations: int = 3,
    squash=squash_fn,
) -> tuple[Tensor, Tensor]:
    """Route node-capsule votes to the output capsules of each node's graph.

    Args:
        votes: Votes of every input capsule of every node for every output capsule.
        batch: Graph index of each node (PyG's ``Batch.batch``), in ``[0, num_graphs)``.
        num_graphs: Number of graphs B in the batch (graphs without nodes get zero poses).
        iterations: Routing iterations K (>= 1).
        squash: Squash function applied to the summed votes.

    Returns:
        ``(poses, coupling)``: the output capsules of every graph and the final
        coupling coefficients (summing to 1 over output capsules).

    Shapes:
        votes: [V, C, N_o, D_o] (C input capsules per node, e.g. channels)
        batch: [V]
        returns: poses [B, N_o, D_o], coupling [V, C, N_o]

    """
    if votes.dim() != 4:
        raise ValueError(f"votes must be [V, C, N_o, D_o], got shape {tuple(votes.shape)}")
    if batch.shape != votes.shape[:1]:
        raise ValueError(f"batch must be [V] = [{votes.shape[0]}], got {tuple(batch.shape)}")
    if iterations < 1:
        raise ValueError(f"routing iterations must be >= 1, got {iterations}")
    num_out, dim_out = votes.shape[2], votes.shape[3]
    u = votes.permute(0, 2, 1, 3)  # [V, N_o, C, D_o]: both contractions become batched mat-vec products
    if not u.is_contiguous():  # GraphCapsules emits this layout already; others pay one copy, not one per pass
        u = u.contiguous()
    detached = u.detach()
    logits = u.new_zeros(u.shape[:3], dtype=torch.promote_types(u.dtype, torch.float32))  # [V, N_o, C], >= fp32
    for it in range(iterations):
        coupling = torch.softmax(logits, dim=1)  # over output capsules, per input capsule
        last = it == iterations - 1
        src = u if last else detached
        per_node = torch.matmul(coupling.to(src.dtype).unsqueeze(2), src).squeeze(2)  # [V, N_o, D_o]
        s = per_node.new_zeros(num_graphs, num_out, dim_out).index_add_(0, batch, per_node)  # [B, N_o, D_o]
        poses = squash(s)
        if not last:
            agree = torch.matmul(detached, poses.detach()[batch].unsqueeze(-1)).squeeze(-1)  # [V, N_o, C]
            logits = logits + agree.to(logits.dtype)
    return poses, coupling.transpose(1, 2)
