"""EM and attention routing against straightforward references written here, extremes, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch

from capsule_kit.functional import squash_efficient
from capsule_kit.routing import AttentionRouting, EMRouting

B, N_I, N_O, D = 2, 6, 3, 4


def votes_like(*shape, scale=0.7, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=gen)).to(dtype)


# ---------------------------------------------------------------- EM routing


def ref_em(votes, acts, beta_u, beta_a, iterations, lam_start=1.0, lam_end=2.0, eps=1e-4):
    """EM routing as written in em.py's docstring, one output capsule (and input) at a time.

    Shapes: votes [B, N_i, N_o, H], acts [B, N_i], beta_u [N_o], beta_a [N_o].
    """
    n_b, n_in, n_out, _ = votes.shape
    out_mu, out_a, out_r = [], [], []
    for b in range(n_b):
        r = [[1.0 / n_out] * n_out for _ in range(n_in)]
        for it in range(iterations):
            lam = lam_end if iterations == 1 else lam_start + (lam_end - lam_start) * it / (iterations - 1)
            mus, variances, costs = [], [], []
            for j in range(n_out):  # M-step
                w = [r[i][j] * acts[b, i] for i in range(n_in)]
                mass = sum(w)
                mu = sum(w[i] * votes[b, i, j] for i in range(n_in)) / (mass + eps)
                var = sum(w[i] * (votes[b, i, j] - mu) ** 2 for i in range(n_in)) / (mass + eps) + eps
                costs.append(((beta_u[j] + torch.log(torch.sqrt(var))) * mass / (n_in / n_out)).sum())
                mus.append(mu)
                variances.append(var)
            mean = sum(costs) / n_out
            std = torch.sqrt(sum((c - mean) ** 2 for c in costs) / n_out + eps)
            a = [1.0 / (1.0 + torch.exp(-lam * (beta_a[j] - (costs[j] - mean) / std))) for j in range(n_out)]
            if it == iterations - 1:
                break
            for i in range(n_in):  # E-step
                logp = []
                for j in range(n_out):
                    gauss = -0.5 * (
                        (votes[b, i, j] - mus[j]) ** 2 / variances[j] + torch.log(2 * math.pi * variances[j])
                    )
                    logp.append(torch.log(a[j]) + gauss.sum())
                top = max(logp)
                total = sum(torch.exp(lp - top) for lp in logp)
                r[i] = [torch.exp(lp - top) / total for lp in logp]
        out_mu.append(torch.stack(mus))
        out_a.append(torch.stack(a))
        out_r.append(torch.stack([torch.stack([torch.as_tensor(x, dtype=votes.dtype) for x in row]) for row in r]))
    return torch.stack(out_mu), torch.stack(out_a), torch.stack(out_r)


def em_with_betas(n_out=N_O, iterations=3, dtype=torch.float64):
    em = EMRouting(num_out=n_out, iterations=iterations).to(dtype)
    with torch.no_grad():
        em.beta_u.copy_(torch.linspace(-0.5, 0.5, n_out).view(-1, 1))
        em.beta_a.copy_(torch.linspace(0.3, -0.3, n_out))
    return em


@pytest.mark.parametrize("iterations", [1, 3])
def test_em_matches_reference(iterations):
    votes = votes_like(B, 5, N_O, 16)
    acts = torch.rand(B, 5, dtype=votes.dtype, generator=torch.Generator().manual_seed(1))
    em = em_with_betas(iterations=iterations)
    out = em(votes, acts)
    mu, a, r = ref_em(votes, acts, em.beta_u.detach().view(-1), em.beta_a.detach(), iterations)
    assert (out.poses - mu).abs().max() < 1e-5
    assert (out.activations - a).abs().max() < 1e-5
    assert (out.coupling - r).abs().max() < 1e-5


def test_em_float32_matches_reference():
    votes = votes_like(B, 5, N_O, 16, dtype=torch.float32)
    em = em_with_betas(dtype=torch.float32)
    out = em(votes)
    mu, a, _ = ref_em(
        votes.double(), torch.ones(B, 5, dtype=torch.float64), em.beta_u.double().view(-1), em.beta_a.double(), 3
    )
    assert (out.poses.double() - mu).abs().max() < 1e-5
    assert (out.activations.double() - a).abs().max() < 1e-5


@pytest.mark.parametrize(
    "case",
    [
        "zero_votes",
        "huge_votes",
        "votes_1e30",
        "one_vote_1e30",
        "tiny_votes",
        "zero_activations",
        "one_vote_per_parent_identical",
    ],
)
def test_em_extremes_stay_finite_and_in_unit_interval(case):
    votes = votes_like(B, 8, N_O, 16, scale=1.0, dtype=torch.float32)
    acts = torch.rand(B, 8, generator=torch.Generator().manual_seed(2))
    if case == "zero_votes":
        votes = torch.zeros_like(votes)
    elif case == "huge_votes":
        votes = votes * 1e6
    elif case == "votes_1e30":  # squares overflow fp32 (3.4e38): EM must not form them
        votes = votes * 1e30
    elif case == "one_vote_1e30":  # one outlier among ordinary votes
        votes[0, 3, 1, 5] = 1e30
    elif case == "tiny_votes":
        votes = votes * 1e-8
    elif case == "zero_activations":
        acts = torch.zeros_like(acts)
    else:
        votes = votes[:, :1].expand_as(votes).contiguous()
    votes.requires_grad_(True)
    acts.requires_grad_(True)
    out = em_with_betas(dtype=torch.float32)(votes, acts)
    assert torch.isfinite(out.poses).all() and torch.isfinite(out.activations).all()
    assert ((out.activations > 0) & (out.activations < 1)).all()
    (out.poses.sum() + out.activations.sum()).backward()
    assert torch.isfinite(votes.grad).all() and torch.isfinite(acts.grad).all()


@pytest.mark.parametrize("scale", [30.0, 1e4])
def test_em_matches_reference_for_large_votes(scale):
    """Votes far beyond 1 take the rescaled path; the result is the same EM."""
    votes = votes_like(B, 5, N_O, 16, scale=scale)
    acts = torch.rand(B, 5, dtype=votes.dtype, generator=torch.Generator().manual_seed(3))
    em = em_with_betas(iterations=3)
    out = em(votes, acts)
    mu, a, r = ref_em(votes, acts, em.beta_u.detach().view(-1), em.beta_a.detach(), 3)
    assert ((out.poses - mu).abs() / scale).max() < 1e-9
    assert (out.activations - a).abs().max() < 1e-9
    assert (out.coupling - r).abs().max() < 1e-9


def test_em_gradcheck_float64():
    votes = votes_like(1, 4, 2, 4).requires_grad_(True)  # EM works for any pose size; 4 keeps it quick
    acts = torch.rand(1, 4, dtype=torch.float64).requires_grad_(True)
    em = em_with_betas(n_out=2, iterations=2)
    assert torch.autograd.gradcheck(lambda v, a: tuple(em(v, a)[:2]), (votes, acts))


def test_em_inverse_temperature_schedule():
    em = EMRouting(num_out=2, iterations=3, lambda_start=1.0, lambda_end=3.0)
    assert [em.inverse_temperature(i) for i in range(3)] == [1.0, 2.0, 3.0]
    assert EMRouting(num_out=2, iterations=1, lambda_end=3.0).inverse_temperature(0) == 3.0


# ---------------------------------------------------------------- attention routing


def ref_attention(votes, prior):
    """Efficient-CapsNet routing, one output capsule at a time."""
    n_b, n_in, n_out, d = votes.shape
    poses = []
    for b in range(n_b):
        scores = torch.stack(
            [
                torch.stack([votes[b, i, j] @ votes[b, :, j].sum(0) / math.sqrt(d) for j in range(n_out)])
                for i in range(n_in)
            ]
        )  # [N_i, N_o]
        coupling = torch.softmax(scores, dim=-1) + prior
        poses.append(
            torch.stack(
                [squash_efficient(sum(coupling[i, j] * votes[b, i, j] for i in range(n_in))) for j in range(n_out)]
            )
        )
    return torch.stack(poses)


def test_attention_matches_reference_and_gradcheck():
    votes = votes_like(B, N_I, N_O, D)
    route = AttentionRouting(num_in=N_I, num_out=N_O).double()
    with torch.no_grad():
        route.prior.copy_(votes_like(N_I, N_O, scale=0.1, seed=5))
    out = route(votes)
    assert (out.poses - ref_attention(votes, route.prior.detach())).abs().max() < 1e-5
    tiny = votes[:1, :3, :2, :3].clone().requires_grad_(True)
    small = AttentionRouting(num_in=3, num_out=2).double()
    assert torch.autograd.gradcheck(lambda v: small(v).poses, (tiny,))
    assert torch.autograd.gradcheck(lambda p: ref_attention(votes, p), (route.prior.detach().requires_grad_(True),))


def test_attention_rejects_iterations():
    with pytest.raises(ValueError, match="non-iterative"):
        AttentionRouting(num_in=2, num_out=2, iterations=3)
