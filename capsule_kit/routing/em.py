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


class _Moments(torch.autograd.Function):
    """``[vc, vc^2]`` side by side, the backward fused into one ``addcmul``.

    Shapes:
        vc: [B, N_o, N_i, D] -> m: [B, N_o, N_i, 2D]
    """

    @staticmethod
    def forward(ctx, vc: Tensor) -> Tensor:
        ctx.save_for_backward(vc)
        return torch.cat([vc, vc * vc], dim=-1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        (vc,) = ctx.saved_tensors
        g1, g2 = grad.chunk(2, dim=-1)
        return torch.addcmul(g1, vc, g2, value=2.0)


class _Contract(torch.autograd.Function):
    """``s = sum_i c_i m_i`` (the M-step's moments) with an elementwise outer-product backward.

    Autograd's matmul backward forms ``dL/dm`` as a batch of [N_i, 1] x [1, 2D]
    products, which CPU BLAS runs at a fraction of the speed of one broadcast
    multiply (the largest cost of an EM training step before this).

    Shapes:
        coeff: [B, N_o, N_i], m: [B, N_o, N_i, E] -> s: [B, N_o, E]
    """

    @staticmethod
    def forward(ctx, coeff: Tensor, m: Tensor) -> Tensor:
        ctx.save_for_backward(coeff, m)
        return torch.matmul(coeff.unsqueeze(2), m).squeeze(2)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        coeff, m = ctx.saved_tensors
        return _Project.apply(m, grad), coeff.unsqueeze(-1) * grad.unsqueeze(2)


class _Project(torch.autograd.Function):
    """``p_i = <m_i, w>`` (the E-step's distances), backward as in :class:`_Contract`.

    Shapes:
        m: [B, N_o, N_i, E], w: [B, N_o, E] -> p: [B, N_o, N_i]
    """

    @staticmethod
    def forward(ctx, m: Tensor, w: Tensor) -> Tensor:
        ctx.save_for_backward(m, w)
        return torch.matmul(m, w.unsqueeze(-1)).squeeze(-1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, Tensor]:
        m, w = ctx.saved_tensors
        return grad.unsqueeze(-1) * w.unsqueeze(2), _Contract.apply(grad, m)


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

    def m_step(self, moments: tuple[Tensor, ...], assign: Tensor, a_in: Tensor, lam: float) -> tuple[Tensor, ...]:
        """Fit Gaussians and activations.

        ``moments`` are ``(m, center, scale)``: ``m`` holds the votes minus their mean
        over inputs, divided by ``scale`` (their largest absolute value, at least 1),
        and its square side by side (last dim 2D), laid out output-major; ``center`` is
        that mean. The mean and variance come from one batched product of the coupling
        with ``m`` (first and second moments together), so each pass reads the votes
        once and no difference tensor is made; centring keeps the ``E[v^2] - mu^2`` form
        free of cancellation for votes far from 0, and the scale keeps squares of votes
        up to ~1e30 finite (the variance is carried in scaled units, its log in true ones).

        Shapes:
            m: [B, N_o, N_i, 2D], center: [B, N_o, D], scale: [B, N_o, 1], assign: [B, N_i, N_o],
            a_in: [B, N_i]
            returns: mu [B, N_o, D], var / scale^2 [B, N_o, D], log var [B, N_o, D], logit [B, N_o],
                (mu - center) / scale [B, N_o, D]
        """
        m, center, scale = moments
        weight = assign.transpose(1, 2) * a_in.unsqueeze(1)  # [B, N_o, N_i]
        mass = weight.sum(dim=-1)  # [B, N_o]
        coeff = weight / (mass.unsqueeze(-1) + self.eps)  # [B, N_o, N_i]
        total = (mass / (mass + self.eps)).unsqueeze(-1)  # sum_i coeff: 1 up to eps, [B, N_o, 1]
        # contiguous halves: elementwise kernels then vectorise alike for any batch size
        first, second = (x.contiguous() for x in _Contract.apply(coeff, m).chunk(2, dim=-1))
        mu = scale * first + total * center  # sum_i coeff_ij V_ij
        shift = first + (total - 1) * center / scale
        # sum_i coeff (V - mu)^2 / scale^2 = sum_i coeff (m1 - shift)^2, expanded; the floor eps (true
        # units) is kept above the resolution of m (machine epsilon squared), so huge votes never give
        # a zero or subnormal variance
        floor = (self.eps / scale.pow(2)).clamp_min(torch.finfo(m.dtype).eps ** 2)
        var = (second - 2 * shift * first + shift.pow(2) * total).clamp_min(0) + floor
        log_var = torch.log(var) + 2 * torch.log(scale)
        share = m.shape[2] / m.shape[1]  # uniform assignment mass per parent
        cost = ((self.beta_u + 0.5 * log_var) * (mass / share).unsqueeze(-1)).sum(-1)  # [B, N_o]
        mean = cost.mean(dim=-1, keepdim=True)
        std = (cost - mean).pow(2).mean(dim=-1, keepdim=True).add(self.eps).sqrt()
        logit = lam * (self.beta_a - (cost - mean) / std)
        return mu, var, log_var, logit, shift

    def e_step(self, moments: tuple[Tensor, ...], shift: Tensor, var: Tensor, log_var: Tensor, logit: Tensor) -> Tensor:
        """New assignments from log-likelihoods (the squared distance expanded into one product).

        Shapes:
            shift, var (scaled units, as :meth:`m_step` returns them), log_var: [B, N_o, D], logit: [B, N_o]
            returns: assign [B, N_i, N_o]
        """
        m = moments[0]
        inv = var.reciprocal()
        weights = torch.cat([-2 * shift * inv, inv], dim=-1)  # [B, N_o, 2D]
        # sum_d (m1 - shift)^2 / var = sum_d m1^2 / var - 2 m1 shift / var + shift^2 / var
        dist = (_Project.apply(m, weights) + (shift.pow(2) * inv).sum(-1, keepdim=True)).clamp_min(0)
        log_p = -0.5 * (dist + (log_var + math.log(2 * math.pi)).sum(-1, keepdim=True))  # [B, N_o, N_i]
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
        # output-major [B, N_o, N_i, D]: the products read it in order. Votes given as a transposed view
        # of an output-major tensor (ConvCaps) are not copied; one layout, so a sample's result never
        # depends on its batch.
        v_out = v.transpose(1, 2).contiguous()
        center = v_out.mean(dim=2)  # [B, N_o, D]
        vc = v_out - center.unsqueeze(2)
        # a constant of the computation (the result does not depend on it), so no gradient
        scale = vc.detach().abs().amax(dim=(2, 3)).clamp_min(1.0).unsqueeze(-1)  # [B, N_o, 1]
        moments = (_Moments.apply(vc / scale.unsqueeze(-1)), center, scale)  # m: [B, N_o, N_i, 2D]
        assign = v.new_full((batch, n_in, n_out), 1.0 / n_out)
        for it in range(self.iterations):
            mu, var, log_var, logit, shift = self.m_step(moments, assign, a_in, self.inverse_temperature(it))
            if it < self.iterations - 1:
                assign = self.e_step(moments, shift, var, log_var, logit)
        # sigmoid as a softmax against 0 over a last dim of 2: one kernel path per sample, so a sample's
        # activation never depends on how many share its batch (sigmoid vectorises over the whole tensor)
        act = torch.softmax(torch.stack([logit, torch.zeros_like(logit)], dim=-1), dim=-1)[..., 0]
        return Routed(mu.to(votes.dtype), act.to(votes.dtype), assign)
