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

    def m_step(self, votes: Tensor, assign: Tensor, a_in: Tensor, lam: float) -> tuple[Tensor, Tensor, Tensor]:
        """Fit Gaussians and activations.

        Shapes:
            votes: [B, N_i, N_o, D], assign: [B, N_i, N_o], a_in: [B, N_i]
            returns: mu [B, N_o, D], var [B, N_o, D], logit [B, N_o]
        """
        weight = assign * a_in.unsqueeze(-1)  # [B, N_i, N_o]
        mass = weight.sum(dim=1)  # [B, N_o]
        coeff = weight / (mass.unsqueeze(1) + self.eps)  # [B, N_i, N_o]
        mu = torch.einsum("bij,bijd->bjd", coeff, votes)
        var = torch.einsum("bij,bijd->bjd", coeff, (votes - mu.unsqueeze(1)).pow(2)) + self.eps
        share = votes.shape[1] / votes.shape[2]  # uniform assignment mass per parent
        cost = ((self.beta_u + 0.5 * torch.log(var)) * (mass / share).unsqueeze(-1)).sum(-1)  # [B, N_o]
        mean = cost.mean(dim=-1, keepdim=True)
        std = (cost - mean).pow(2).mean(dim=-1, keepdim=True).add(self.eps).sqrt()
        logit = lam * (self.beta_a - (cost - mean) / std)
        return mu, var, logit

    def e_step(self, votes: Tensor, mu: Tensor, var: Tensor, logit: Tensor) -> Tensor:
        """New assignments from log-likelihoods.

        Shapes:
            returns: assign [B, N_i, N_o]
        """
        diff = votes - mu.unsqueeze(1)  # [B, N_i, N_o, D]
        log_p = -0.5 * (diff.pow(2) / var.unsqueeze(1) + torch.log(2 * math.pi * var).unsqueeze(1)).sum(-1)
        log_post = F.logsigmoid(logit).unsqueeze(1) + log_p  # [B, N_i, N_o]
        return torch.softmax(log_post, dim=-1)

    def route(self, votes: Tensor, activations: Tensor | None) -> Routed:
        """Shapes: votes [B, N_i, N_o, 16], activations [B, N_i] -> poses [B, N_o, 16], activations [B, N_o]."""
        v = votes.to(torch.promote_types(votes.dtype, torch.float32))  # EM statistics in >= fp32 even under autocast
        a_in = v.new_ones(v.shape[:2]) if activations is None else activations.to(v.dtype)
        assign = v.new_full(v.shape[:3], 1.0 / v.shape[2])
        for it in range(self.iterations):
            mu, var, logit = self.m_step(v, assign, a_in, self.inverse_temperature(it))
            if it < self.iterations - 1:
                assign = self.e_step(v, mu, var, logit)
        return Routed(mu.to(votes.dtype), torch.sigmoid(logit).to(votes.dtype), assign)
