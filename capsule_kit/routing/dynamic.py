"""Routing-by-agreement (Sabour, Frosst & Hinton 2017, Procedure 1).

c_ij = softmax_j(b_ij)          -- over OUTPUT capsules j (the common bug is the i axis)
s_j  = sum_i c_ij u_hat_j|i,   v_j = squash(s_j)
b_ij += <v_j, u_hat_j|i>

As in the seed (and Sabour's released code), all but the last iteration see
detached votes, so gradients reach the votes only through the final ``s_j``.
Optional leaky softmax (Zhao et al. 2018): an extra orphan logit fixed at 0
absorbs coupling from children that agree with no parent.

Ragged inputs (``index=``, e.g. the node capsules of a batch of graphs): the
coupling softmax is per input capsule, so it never mixes rows; the sums over an
example's inputs are ``index_add`` over ``index``, and each row's agreement is
taken with the poses of its own example, gathered back by ``poses[index]``.

Speed: both contractions are batched matrix-vector products over (B, N_o) on a
[B, N_o, N_i, D_o] view, so each pass reads the votes once and no ``repeat``ed
or broadcast [B, N_i, N_o, D_o] temporaries are created. The gradient of the
votes is written once, straight into the votes' own memory layout.
"""

from __future__ import annotations

import torch
from torch import Tensor

from capsule_kit.functional import get_squash, safe_norm
from capsule_kit.registry import ROUTING
from capsule_kit.routing import fused
from capsule_kit.routing.base import Routed, Routing, route_major, scatter_sum


def leaky_softmax(logits: Tensor, dim: int) -> Tensor:
    """Softmax with an extra zero logit that is dropped from the output.

    ``exp(b_j) / (1 + sum_k exp(b_k))``; outputs sum to less than 1.

    Shapes:
        logits: any, e.g. [B, N_o, N_i] with ``dim=1`` -> the same shape
    """
    lse = torch.logsumexp(logits, dim=dim, keepdim=True)
    return torch.exp(logits - torch.logaddexp(lse, torch.zeros_like(lse)))


def _dense(t: Tensor) -> bool:
    """True when ``t``'s strides are a permutation of a contiguous layout (no gaps, no overlap)."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride()), key=lambda p: p[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


class _WeightedSum(torch.autograd.Function):
    """``s = sum_i c_i u_i`` whose backward writes ``dL/du`` in ``u``'s own memory layout.

    Autograd's matmul backward returns a contiguous [B, N_o, N_i, D] gradient; for
    input-major votes (as :class:`~capsule_kit.layers.DenseCaps` makes them) the
    vote layer then needs a full transposing copy of it. Writing the outer product
    ``c_i g`` directly with the votes' strides saves that copy (~25% of a DigitCaps
    step on CPU). Under ``create_graph`` the plain differentiable product is used.

    Autocast: the sum runs in the votes' dtype with autocast off (on the votes' device, CPU
    included), and so does the backward (``custom_fwd``/``custom_bwd`` keep CUDA's autocast state
    of the forward for the backward; the explicit ``autocast(enabled=False)`` covers every device).
    Under bf16/fp16 autocast fp32 votes thus give an fp32 ``s`` and gradients of the inputs' own
    dtypes, never a mixed-dtype product in backward.

    Shapes:
        coupling: [B, N_o, N_i], u: [B, N_o, N_i, D] -> s: [B, N_o, D]
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, coupling: Tensor, u: Tensor) -> Tensor:
        coupling = coupling.to(u.dtype)
        ctx.save_for_backward(coupling, u if coupling.requires_grad else None)
        ctx.u_layout = (u.shape, u.stride(), u.dtype) if _dense(u) else None  # None: e.g. expanded votes
        with torch.autocast(u.device.type, enabled=False):
            return torch.matmul(coupling.unsqueeze(2), u).squeeze(2)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")
    def backward(ctx, grad_s: Tensor) -> tuple[Tensor | None, Tensor | None]:
        with torch.autocast(grad_s.device.type, enabled=False):
            return _WeightedSum._grads(ctx, grad_s)

    @staticmethod
    def _grads(ctx, grad_s: Tensor) -> tuple[Tensor | None, Tensor | None]:
        coupling, u = ctx.saved_tensors
        grad_s = grad_s.to(coupling.dtype)
        grad_c = grad_u = None
        if ctx.needs_input_grad[1]:
            outer = (coupling.unsqueeze(-1), grad_s.unsqueeze(2))  # [B, N_o, N_i, 1] x [B, N_o, 1, D]
            if torch.is_grad_enabled() or ctx.u_layout is None:  # double backward, or votes with odd strides
                grad_u = outer[0] * outer[1]
            else:
                shape, stride, dtype = ctx.u_layout
                grad_u = torch.mul(*outer, out=grad_s.new_empty_strided(shape, stride, dtype=dtype))
        if ctx.needs_input_grad[0]:
            grad_c = torch.matmul(u, grad_s.unsqueeze(-1)).squeeze(-1)
        return grad_c, grad_u


@ROUTING.register("dynamic", aliases=("sabour",))
class DynamicRouting(Routing):
    """Sabour dynamic routing.

    Args:
        iterations: Number of routing iterations K (default 3).
        leaky: Use the leaky softmax with an orphan category (Zhao et al. 2018).
        squash: ``"sabour"`` or ``"efficient"``.
        num_in: Optional N_i check.
        num_out: Optional N_o check.
        fused: Route with the fused CPU kernel (:mod:`capsule_kit.routing.fused`); same
            results, the eager loop where it does not apply.

    """

    def __init__(
        self,
        *,
        iterations: int = 3,
        leaky: bool = False,
        squash: str = "sabour",
        num_in: int | None = None,
        num_out: int | None = None,
        fused: bool = False,
    ) -> None:
        super().__init__(num_in=num_in, num_out=num_out, iterations=iterations)
        self.leaky, self.fused, self.efficient = leaky, fused, squash == "efficient"
        self.squash = get_squash(squash)

    def route(self, votes: Tensor, activations: Tensor | None) -> Routed:
        """Shapes: votes [B, N_i, N_o, D_o] -> poses [B, N_o, D_o], coupling [B, N_i, N_o]."""
        if self.fused and fused.applies(votes, activations):
            s, coupling = fused.fused_route(votes, self.iterations, leaky=self.leaky, efficient=self.efficient)
            poses = self.squash(s)  # [B, N_o, D_o]
            return Routed(poses, safe_norm(poses, dim=-1), coupling)
        u = route_major(votes)  # [B, N_o, N_i, D_o]
        u_detached = u.detach()
        batch, n_out, n_in, _ = u.shape
        # Logits in at least fp32 (bf16 votes under autocast), fp64 stays fp64 (gradcheck).
        logits = u.new_zeros(batch, n_out, n_in, dtype=torch.promote_types(u.dtype, torch.float32))  # [B, N_o, N_i]
        for it in range(self.iterations):
            coupling = self.couple(logits, activations)
            if it == self.iterations - 1:  # only this pass is differentiated wrt the votes
                poses = self.squash(_WeightedSum.apply(coupling.to(u.dtype), u))  # [B, N_o, D_o]
            else:
                poses = self.squash(torch.matmul(coupling.to(u.dtype).unsqueeze(2), u_detached).squeeze(2))
                # v^T u^T rather than u v: the same numbers, ~2x faster on CPU for input-major votes
                agree = torch.matmul(poses.unsqueeze(2), u_detached.transpose(-1, -2)).squeeze(2)  # [B, N_o, N_i]
                logits = logits + agree.to(logits.dtype)
        return Routed(poses, safe_norm(poses, dim=-1), coupling.transpose(1, 2))

    def couple(self, logits: Tensor, activations: Tensor | None) -> Tensor:
        """Coupling coefficients: softmax over outputs (dim 1), amended by the inputs' activations.

        Shapes:
            logits: [R, N_o, N_i] (R = B, or V rows when ragged), activations: [R, N_i] or None
            returns: [R, N_o, N_i]
        """
        coupling = leaky_softmax(logits, 1) if self.leaky else torch.softmax(logits, dim=1)
        if activations is not None:  # coefficient amendment: scale by child activation
            coupling = coupling * activations.unsqueeze(1).to(coupling.dtype)
        return coupling

    def route_ragged(self, votes: Tensor, activations: Tensor | None, index: Tensor, size: int) -> Routed:
        """Shapes: votes [V, N_i, N_o, D_o], index [V] -> poses [B, N_o, D_o], coupling [V, N_i, N_o]."""
        u = route_major(votes)  # [V, N_o, N_i, D_o]
        u_detached = u.detach()
        logits = u.new_zeros(u.shape[:3], dtype=torch.promote_types(u.dtype, torch.float32))  # [V, N_o, N_i]
        for it in range(self.iterations):
            coupling = self.couple(logits, activations)
            last = it == self.iterations - 1
            per_row = torch.matmul(coupling.to(u.dtype).unsqueeze(2), u if last else u_detached).squeeze(2)
            poses = self.squash(scatter_sum(per_row, index, size))  # [B, N_o, D_o]
            if not last:
                agree = torch.matmul(u_detached, poses[index].unsqueeze(-1)).squeeze(-1)  # [V, N_o, N_i]
                logits = logits + agree.to(logits.dtype)
        return Routed(poses, safe_norm(poses, dim=-1), coupling.transpose(1, 2))

    def extra_repr(self) -> str:
        return f"iterations={self.iterations}, leaky={self.leaky}" + (", fused=True" if self.fused else "")
