"""Reference DigitCaps implementations that benchmarks/routing.py times against capsule-kit.

* seed style: votes by ``repeat`` + broadcast, routing with broadcasts (the seed's code,
  device-agnostic), plus plain-broadcast EM and self-attention routing.
* einsum style: the fastest public CapsNet style (arogozhnikov/readable_capsnet): votes by one
  ``einsum``, coupling / weighted sum / agreement by ``softmax`` and ``einsum``, written here
  with capsule-kit's semantics (all but the last iteration see detached votes, no agreement
  after the last one, Sabour's squash), so its results equal ours to rounding.

Shapes (docs/notation.md): u [B, N_i, D_i] -> poses [B, N_o, D_o]; votes [B, N_i, N_o, D_o].
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from capsule_kit.functional import squash
from capsule_kit.layers import DenseCaps

N_I, D_I, N_O, D_O = 1152, 8, 10, 16


def seed_squash(inputs: Tensor, axis: int = -1) -> Tensor:
    norm = torch.norm(inputs, dim=axis, keepdim=True)
    scale = norm**2 / (1 + norm**2) / (norm + 1e-8)
    return scale * inputs


def seed_dynamic(u_hat: Tensor, iterations: int) -> Tensor:
    """The seed's routing loop, with ``.cuda()`` replaced by the votes' device."""
    u_hat_for_route = u_hat.detach()
    b = torch.zeros(u_hat.size(0), N_I, N_O, device=u_hat.device, dtype=u_hat.dtype)
    for i in range(iterations):
        c = F.softmax(b, dim=2)
        if i < iterations - 1:
            outputs = seed_squash(torch.sum(torch.unsqueeze(c, 3) * u_hat_for_route, dim=1, keepdims=True))
            b = b + torch.sum(outputs * u_hat_for_route, dim=-1)
        else:
            outputs = seed_squash(torch.sum(torch.unsqueeze(c, 3) * u_hat, dim=1, keepdims=True))
    return torch.squeeze(outputs, dim=1)


def naive_em(v: Tensor, beta_u: Tensor, beta_a: Tensor, iterations: int, eps: float = 1e-4) -> Tensor:
    """EM routing (em.py's docstring) with plain broadcasts; returns poses."""
    v = v.float()
    r = torch.full(v.shape[:3], 1.0 / N_O, dtype=v.dtype)
    for it in range(iterations):
        lam = 1.0 + (2.0 - 1.0) * it / max(iterations - 1, 1) if iterations > 1 else 2.0
        mass = r.sum(1)  # input activations are 1
        coeff = (r / (mass.unsqueeze(1) + eps)).unsqueeze(-1)
        mu = (coeff * v).sum(1)
        var = (coeff * (v - mu.unsqueeze(1)) ** 2).sum(1) + eps
        cost = ((beta_u.view(1, N_O, 1) + 0.5 * torch.log(var)) * (mass / (N_I / N_O)).unsqueeze(-1)).sum(-1)
        z = (cost - cost.mean(-1, keepdim=True)) / ((cost - cost.mean(-1, keepdim=True)) ** 2).mean(
            -1, keepdim=True
        ).add(eps).sqrt()
        logit = lam * (beta_a - z)
        if it < iterations - 1:
            log_p = -0.5 * (((v - mu.unsqueeze(1)) ** 2) / var.unsqueeze(1) + torch.log(2 * math.pi * var).unsqueeze(1))
            r = torch.softmax(F.logsigmoid(logit).unsqueeze(1) + log_p.sum(-1), dim=-1)
    return mu


def naive_attention(v: Tensor, prior: Tensor) -> Tensor:
    """Efficient-CapsNet routing (attention.py's docstring) with plain broadcasts."""
    scores = (v * v.sum(1, keepdim=True)).sum(-1) / math.sqrt(D_O)
    c = torch.softmax(scores.float(), dim=-1) + prior
    s = (c.unsqueeze(-1).to(v.dtype) * v).sum(1)
    r = s.norm(dim=-1, keepdim=True)
    return (1 - torch.exp(-r)) * s / (r + 1e-8)


class SeedDenseCaps(nn.Module):
    """The seed's DenseCaps (votes by repeat + broadcast), fed our layer's weights."""

    def __init__(self, ours: DenseCaps, routing: str, iterations: int) -> None:
        super().__init__()
        # ours: [N_i, D_i, N_o*D_o] -> seed: [1, N_i, N_o*D_o, D_i, 1]
        self.weight = nn.Parameter(ours.weight.detach().permute(0, 2, 1)[None, ..., None].clone())
        self.routing, self.iterations, self.ours = routing, iterations, ours

    def forward(self, u: Tensor) -> Tensor:
        u_hat = u[:, :, None, :, None]
        u_hat = self.weight * u_hat.repeat(1, 1, N_O * D_O, 1, 1)
        u_hat = torch.sum(u_hat, dim=3)
        u_hat = u_hat.view(-1, N_I, N_O, D_O, 1).squeeze(-1)
        if self.routing == "dynamic":
            return seed_dynamic(u_hat, self.iterations)
        if self.routing == "em":
            r = self.ours.routing
            return naive_em(u_hat, r.beta_u.detach(), r.beta_a.detach(), self.iterations).to(u.dtype)
        return naive_attention(u_hat, self.ours.routing.prior.detach()).to(u.dtype)


class EinsumDenseCaps(nn.Module):
    """readable_capsnet-style DenseCaps with dynamic routing, fed our layer's weights.

    Shapes:
        u: [B, N_i, D_i] -> poses [B, N_o, D_o]
    """

    def __init__(self, ours: DenseCaps, iterations: int) -> None:
        super().__init__()
        n_i, d_i = ours.weight.shape[:2]
        # ours: [N_i, D_i, N_o*D_o] -> [N_i, D_i, N_o, D_o]
        self.weight = nn.Parameter(ours.weight.detach().view(n_i, d_i, ours.num_out, ours.dim_out).clone())
        self.iterations = iterations

    def forward(self, u: Tensor) -> Tensor:
        u_hat = torch.einsum("bik,ikoh->bioh", u, self.weight)  # [B, N_i, N_o, D_o]
        u_detached = u_hat.detach()
        logits = torch.zeros(u_hat.shape[:3], dtype=u_hat.dtype, device=u_hat.device)  # [B, N_i, N_o]
        for it in range(self.iterations):
            c = torch.softmax(logits, dim=-1)  # over output capsules
            votes = u_hat if it == self.iterations - 1 else u_detached
            v = squash(torch.einsum("bio,bioh->boh", c, votes), dim=-1)  # [B, N_o, D_o]
            if it < self.iterations - 1:
                logits = logits + torch.einsum("bioh,boh->bio", u_detached, v)
        return v
