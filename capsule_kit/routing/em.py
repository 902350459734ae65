"""EM routing for matrix capsules (Hinton, Sabour & Frosst, ICLR 2018).

Votes are flattened 4x4 pose matrices (D_o = 16). Each output capsule j is a
diagonal Gaussian fitted to the votes it is assigned (M-step); assignments are
recomputed from the Gaussians' likelihoods and the parents' activations
(E-step). Everything runs in log space (``logsigmoid``, ``logsumexp``), so zero,
tiny or huge votes never give NaN.

M-step:   R'_ij = R_ij a_i,   mu_j = sum_i R'_ij V_ij / (sum_i R'_ij + eps),
          sigma_j^2 = sum_i R'_ij (V_ij - mu_j)^2 / (sum_i R'_ij + eps) + eps,
          cost_j = sum_h (beta_u + log sigma_jh) * r_j,   r_j = sum_i R'_ij / (N_i / N_o)
          a_j = sigmoid(lambda (beta_a - norm(cost_j)))
E-step:   log R_ij = log a_j + log N(V_ij; mu_j, sigma_j) - logsumexp_j(...)

``r_j`` is the assigned mass relative to a uniform share, and ``norm`` standardises
the costs over output capsules (as the public reimplementations do): the paper's
raw cost scales with N_i and saturates the logistic. ``lambda`` (inverse
temperature) follows a linear schedule over iterations.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from capsule_kit.registry import ROUTING
from capsule_kit.routing.base import Routed, Routing, require


@ROUTING.register("em")
class EMRouting(Routing):
    """EM routing with learned ``beta_u``/``beta_a`` per output capsule type.

    Args:
        num_out: Number of output capsules N_o (one beta_u, beta_a each); or the
            number of output types when ``num_out`` is a multiple handled by the layer.
        iterations: EM iterations K (default 3).
        lambda_start: Inverse temperature at the first iteration.
        lambda_end: Inverse temperature at the last iteration.
        eps: Variance floor.
        num_in: Optional N_i check.

    """

    kind = "matrix"

    def __init__(
        self,
        *,
        num_out: int | None = None,
        iterations: int = 3,
        lambda_start: float = 1.0,
        lambda_end: float = 2.0,
        eps: float = 1e-4,
        num_in: int | None = None,
    ) -> None:
        n_out = require(num_out, "num_out", "em")
        super().__init__(num_in=num_in, num_out=n_out, iterations=iterations)
        self.beta_u = nn.Parameter(torch.zeros(n_out, 1))
        self.beta_a = nn.Parameter(torch.zeros(n_out))
        self.lambda_start, self.lambda_end, self.eps = lambda_start, lambda_end, eps

    def inverse_temperature(self, it: int) -> float:
        """Linear schedule from ``lambda_start`` to ``lambda_end``."""
        if self.iterations == 1:
            return self.lambda_end
        return self.lambda_start + (self.lambda_end - self.lambda_start) * it / (self.iterations - 1)

    def m_step(
        self, moments: tuple[Tensor, Tensor, Tensor], assign: Tensor, a_in: Tensor, lam: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Fit Gaussians and activations.

        ``moments`` are ``(vc, vc2, center)``: the votes minus their mean over inputs,
        its square, and that mean, laid out output-major. The mean and variance come
        from two batched products with the coupling (first and second moments), so each
        pass reads the votes once and no difference tensor is made; centring keeps the
        ``E[v^2] - mu^2`` form free of cancellation for votes far from 0.

        Shapes:
            vc, vc2: [B, N_o, N_i, D], center: [B, N_o, D], assign: [B, N_i, N_o], a_in: [B, N_i]
            returns: mu [B, N_o, D], var [B, N_o, D], logit [B, N_o], shift [B, N_o, D] (= mu - center)
        """
        vc, vc2, center = moments
        weight = assign.transpose(1, 2) * a_in.unsqueeze(1)  # [B, N_o, N_i]
        mass = weight.sum(dim=-1)  # [B, N_o]
        coeff = (weight / (mass.unsqueeze(-1) + self.eps)).unsqueeze(2)  # [B, N_o, 1, N_i]
        total = (mass / (mass + self.eps)).unsqueeze(-1)  # sum_i coeff: 1 up to eps, [B, N_o, 1]
        first = torch.matmul(coeff, vc).squeeze(2)  # [B, N_o, D]
        second = torch.matmul(coeff, vc2).squeeze(2)
        mu = first + total * center  # sum_i coeff_ij V_ij
        shift = mu - center
        # sum_i coeff (V - mu)^2 = sum_i coeff (vc - shift)^2, expanded
        var = (second - 2 * shift * first + shift.pow(2) * total).clamp_min(0) + self.eps
        share = vc.shape[2] / vc.shape[1]  # uniform assignment mass per parent
        cost = ((self.beta_u + 0.5 * torch.log(var)) * (mass / share).unsqueeze(-1)).sum(-1)  # [B, N_o]
        mean = cost.mean(dim=-1, keepdim=True)
        std = (cost - mean).pow(2).mean(dim=-1, keepdim=True).add(self.eps).sqrt()
        logit = lam * (self.beta_a - (cost - mean) / std)
        return mu, var, logit, shift

    def e_step(self, moments: tuple[Tensor, Tensor, Tensor], shift: Tensor, var: Tensor, logit: Tensor) -> Tensor:
        """New assignments from log-likelihoods (the squared distance expanded into products).

        Shapes:
            shift, var: [B, N_o, D], logit: [B, N_o]
            returns: assign [B, N_i, N_o]
        """
        vc, vc2, _ = moments
        inv = var.reciprocal()
        dist = (  # sum_d (vc - shift)^2 / var
            torch.matmul(vc2, inv.unsqueeze(-1)).squeeze(-1)
            - 2 * torch.matmul(vc, (shift * inv).unsqueeze(-1)).squeeze(-1)
            + (shift.pow(2) * inv).sum(-1, keepdim=True)
        ).clamp_min(0)
        log_p = -0.5 * (dist + torch.log(2 * math.pi * var).sum(-1, keepdim=True))  # [B, N_o, N_i]
        log_post = (F.logsigmoid(logit).unsqueeze(-1) + log_p).transpose(1, 2)  # [B, N_i, N_o]
        # softmax over the last dim: for an inner dim CPU kernels vectorise by batch size (last-bit changes)
        return torch.softmax(log_post, dim=-1)

    def route(self, votes: Tensor, activations: Tensor | None) -> Routed:
        """EM in at least fp32 with autocast off: under fp16/bf16 autocast the e-step products would
        run in half precision while deviations are scaled by up to ``1/eps`` (inf - inf -> NaN).

        Shapes: votes [B, N_i, N_o, 16], activations [B, N_i] -> poses [B, N_o, 16], activations [B, N_o].
        """
        with torch.autocast(votes.device.type, enabled=False):
            return self._route(votes, activations)

    def _route(self, votes: Tensor, activations: Tensor | None) -> Routed:
        """Shapes: as :meth:`route`."""
        v = votes.to(torch.promote_types(votes.dtype, torch.float32))  # EM statistics in >= fp32
        a_in = v.new_ones(v.shape[:2]) if activations is None else activations.to(v.dtype)
        batch, n_in, n_out, _ = v.shape
        v_out = v.transpose(1, 2).contiguous()  # output-major [B, N_o, N_i, D]: the products read it in order
        center = v_out.mean(dim=2)  # [B, N_o, D]; one layout, so a sample's result never depends on its batch
        vc = v_out - center.unsqueeze(2)
        moments = (vc, vc.pow(2), center)
        assign = v.new_full((batch, n_in, n_out), 1.0 / n_out)
        for it in range(self.iterations):
            mu, var, logit, shift = self.m_step(moments, assign, a_in, self.inverse_temperature(it))
            if it < self.iterations - 1:
                assign = self.e_step(moments, shift, var, logit)
        return Routed(mu.to(votes.dtype), torch.sigmoid(logit).to(votes.dtype), assign)
