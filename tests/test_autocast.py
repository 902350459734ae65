"""Precision-sensitive routing under CPU bf16 autocast: EM in fp32 with autocast off, _WeightedSum's dtypes."""

from __future__ import annotations

import torch

from capsule_kit.routing.dynamic import DynamicRouting, _WeightedSum
from capsule_kit.routing.em import EMRouting


def test_em_routes_in_fp32_under_bf16_autocast():
    torch.manual_seed(0)
    em = EMRouting(num_out=5, iterations=3)
    votes = torch.randn(4, 12, 5, 16) * 30  # large deviations: half-precision e-steps lose them
    acts = torch.rand(4, 12)
    plain = em(votes, acts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = em(votes, acts)
    assert mixed.poses.dtype == torch.float32 and mixed.activations.dtype == torch.float32
    assert torch.equal(mixed.poses, plain.poses)  # autocast off inside: bit for bit the fp32 result
    assert torch.equal(mixed.activations, plain.activations)


def test_weighted_sum_keeps_fp32_votes_fp32_under_autocast_and_backward_works():
    torch.manual_seed(1)
    coupling = torch.softmax(torch.randn(2, 3, 6), dim=1).requires_grad_()
    u = torch.randn(2, 3, 6, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = _WeightedSum.apply(coupling, u)
    assert s.dtype == torch.float32
    s.pow(2).sum().backward()  # mixed bf16/fp32 products here raised before
    ref_c, ref_u = coupling.detach().clone().requires_grad_(), u.detach().clone().requires_grad_()
    torch.matmul(ref_c.unsqueeze(2), ref_u).squeeze(2).pow(2).sum().backward()
    assert torch.allclose(coupling.grad, ref_c.grad, atol=1e-6) and torch.allclose(u.grad, ref_u.grad, atol=1e-6)


def test_dynamic_routing_trains_under_bf16_autocast():
    torch.manual_seed(2)
    votes = torch.randn(3, 10, 4, 8, requires_grad=True)
    acts = torch.rand(3, 10, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = DynamicRouting(iterations=3)(votes, acts)
    out.poses.float().sum().backward()
    assert torch.isfinite(votes.grad).all() and torch.isfinite(acts.grad).all()
