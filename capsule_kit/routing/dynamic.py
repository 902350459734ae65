"""Routing-by-agreement (Sabour, Frosst & Hinton 2017, Procedure 1).

c_ij = softmax_j(b_ij)          -- over OUTPUT capsules j (the common bug is the i axis)
s_j  = sum_i c_ij u_hat_j|i,   v_j = squash(s_j)
b_ij += <v_j, u_hat_j|i>

As in the seed (and Sabour's released code), all but the last iteration see
detached votes, so gradients reach the votes only through the final ``s_j``.
Optional leaky softmax (Zhao et al. 2018): an extra orphan logit fixed at 0
absorbs coupling from children that agree with no parent.

Speed: both contractions are batched matrix-vector products over (B, N_o) on a
[B, N_o, N_i, D_o] view, so each pass reads the votes once and no ``repeat``ed
or broadcast [B, N_i, N_o, D_o] temporaries are created.
"""

from __future__ import annotations

import torch
from torch import Tensor

from capsule_kit.functional import get_squash, safe_norm
from capsule_kit.registry import ROUTING
from capsule_kit.routing.base import Routed, Routing


def leaky_softmax(logits: Tensor, dim: int) -> Tensor:
    """Softmax with an extra zero logit that is dropped from the output.

    ``exp(b_j) / (1 + sum_k exp(b_k))``; outputs sum to less than 1.
    """
    lse = torch.logsumexp(logits, dim=dim, keepdim=True)
    return torch.exp(logits - torch.logaddexp(lse, torch.zeros_like(lse)))


def _route_major(votes: Tensor) -> Tensor:
    """[B, N_i, N_o, D] -> [B, N_o, N_i, D] that bmm can use without a copy.

    The layers in this package emit votes whose memory is already laid out so
    this is a view; other producers pay one copy here (not one per iteration).
    """
    v = votes.permute(0, 2, 1, 3)  # [B, N_o, N_i, D]
    b_stride, o_stride = v.stride(0), v.stride(1)
    if b_stride != o_stride * v.shape[1] and v.shape[0] > 1:
        v = v.contiguous()
    return v


@ROUTING.register("dynamic", aliases=("sabour",))
class DynamicRouting(Routing):
    """Sabour dynamic routing.

    Args:
        iterations: Number of routing iterations K (default 3).
        leaky: Use the leaky softmax with an orphan category (Zhao et al. 2018).
        squash: ``"sabour"`` or ``"efficient"``.
        num_in: Optional N_i check.
        num_out: Optional N_o check.

    """

    def __init__(
        self,
        *,
        iterations: int = 3,
        leaky: bool = False,
        squash: str = "sabour",
        num_in: int | None = None,
        num_out: int | None = None,
    ) -> None:
        super().__init__(num_in=num_in, num_out=num_out, iterations=iterations)
        self.leaky = leaky
        self.squash = get_squash(squash)

    def route(self, votes: Tensor, activations: Tensor | None) -> Routed:
        """Shapes: votes [B, N_i, N_o, D_o] -> poses [B, N_o, D_o], coupling [B, N_i, N_o]."""
        u = _route_major(votes)  # [B, N_o, N_i, D_o]
        u_detached = u.detach()
        batch, n_out, n_in, _ = u.shape
        # Logits in at least fp32 (bf16 votes under autocast), fp64 stays fp64 (gradcheck).
        logits = u.new_zeros(batch, n_out, n_in, dtype=torch.promote_types(u.dtype, torch.float32))  # [B, N_o, N_i]
        for it in range(self.iterations):
            coupling = leaky_softmax(logits, 1) if self.leaky else torch.softmax(logits, dim=1)
            if activations is not None:  # coefficient amendment: scale by child activation
                coupling = coupling * activations.unsqueeze(1).to(coupling.dtype)
            last = it == self.iterations - 1
            src = u if last else u_detached
            s = torch.matmul(coupling.to(src.dtype).unsqueeze(2), src).squeeze(2)  # [B, N_o, D_o]
            poses = self.squash(s)
            if not last:
                # v^T u^T rather than u v: the same numbers, ~2x faster on CPU for input-major votes
                agree = torch.matmul(poses.unsqueeze(2), u_detached.transpose(-1, -2)).squeeze(2)  # [B, N_o, N_i]
                logits = logits + agree.to(logits.dtype)
        return Routed(poses, safe_norm(poses, dim=-1), coupling.transpose(1, 2))

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}, leaky={self.leaky}"
