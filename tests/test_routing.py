"""Dynamic routing against a per-sample loop, gradcheck, base checks, and a smoke test of every registered routing.

EM and attention routing: tests/test_routing_em.py.
"""

from __future__ import annotations

import pytest
import torch

from capsule_kit import routing
from capsule_kit.functional import lengths, squash, squash_efficient
from capsule_kit.routing import AttentionRouting, DynamicRouting

B, N_I, N_O, D = 2, 6, 3, 4


def votes_like(*shape, scale=0.7, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=gen)).to(dtype)


# ---------------------------------------------------------------- dynamic routing


def ref_dynamic(votes, iterations, leaky=False, acts=None, detach=True):
    """Procedure 1 of Sabour et al., one sample and one capsule at a time.

    With ``detach`` only the last iteration's s_j depends on the votes (as the seed does).
    Returns poses [B, N_o, D] and the final coupling [B, N_i, N_o].
    """
    n_b, n_in, n_out, _ = votes.shape
    poses, couplings = [], []
    for b in range(n_b):
        logits = [[0.0] * n_out for _ in range(n_in)]
        for it in range(iterations):
            last = it == iterations - 1
            src = votes[b] if (last or not detach) else votes[b].detach()
            coupling = [[None] * n_out for _ in range(n_in)]
            for i in range(n_in):
                exps = [torch.exp(torch.as_tensor(logits[i][j], dtype=votes.dtype)) for j in range(n_out)]
                total = sum(exps) + (1.0 if leaky else 0.0)  # leaky: an orphan logit fixed at 0
                for j in range(n_out):
                    coupling[i][j] = exps[j] / total * (1.0 if acts is None else acts[b, i])
            v = [squash(sum(coupling[i][j] * src[i, j] for i in range(n_in))) for j in range(n_out)]
            if not last:
                for i in range(n_in):
                    for j in range(n_out):
                        logits[i][j] = logits[i][j] + torch.dot(src[i, j], v[j])
        poses.append(torch.stack(v))
        couplings.append(torch.stack([torch.stack(row) for row in coupling]))
    return torch.stack(poses), torch.stack(couplings)


@pytest.mark.parametrize("iterations", [1, 3])
@pytest.mark.parametrize("leaky", [False, True])
def test_dynamic_matches_per_sample_loop(iterations, leaky):
    votes = votes_like(B, N_I, N_O, D)
    out = DynamicRouting(iterations=iterations, leaky=leaky)(votes)
    want_poses, want_coupling = ref_dynamic(votes, iterations, leaky=leaky)
    assert (out.poses - want_poses).abs().max() < 1e-5
    assert (out.coupling - want_coupling).abs().max() < 1e-5
    assert (out.activations - lengths(want_poses)).abs().max() < 1e-5


def test_dynamic_float32_matches_reference():
    votes = votes_like(B, N_I, N_O, D, dtype=torch.float32)
    out = DynamicRouting(iterations=3)(votes)
    want, _ = ref_dynamic(votes.double(), 3)
    assert out.poses.dtype == torch.float32
    assert (out.poses.double() - want).abs().max() < 1e-5


def test_dynamic_gradient_flows_only_through_last_iteration():
    votes = votes_like(B, N_I, N_O, D, scale=2.0).requires_grad_(True)
    weights = votes_like(B, N_O, D, seed=1)  # a generic linear loss on the poses

    def grad_of(poses):
        (g,) = torch.autograd.grad((poses * weights).sum(), votes)
        return g

    got = grad_of(DynamicRouting(iterations=3)(votes).poses)
    want = grad_of(ref_dynamic(votes, 3, detach=True)[0])
    assert (got - want).abs().max() < 1e-5
    # the test can tell: differentiating through every iteration gives another gradient
    full = grad_of(ref_dynamic(votes, 3, detach=False)[0])
    assert (full - want).abs().max() > 1e-3


def test_dynamic_softmax_is_over_output_capsules():
    votes = votes_like(B, N_I, N_O, D, scale=3.0)
    coupling = DynamicRouting(iterations=3)(votes).coupling  # [B, N_i, N_o]
    torch.testing.assert_close(coupling.sum(dim=-1), torch.ones(B, N_I, dtype=votes.dtype))
    assert (coupling.sum(dim=1) - 1).abs().max() > 1e-2  # not normalised over inputs
    leaky = DynamicRouting(iterations=3, leaky=True)(votes).coupling
    assert (leaky.sum(dim=-1) < 1).all() and (leaky > 0).all()


def test_dynamic_first_iteration_coupling_is_uniform():
    votes = votes_like(B, N_I, N_O, D)
    c = DynamicRouting(iterations=1)(votes).coupling
    torch.testing.assert_close(c, torch.full_like(c, 1.0 / N_O))
    c_leaky = DynamicRouting(iterations=1, leaky=True)(votes).coupling
    torch.testing.assert_close(c_leaky, torch.full_like(c, 1.0 / (N_O + 1)))


@pytest.mark.parametrize("leaky", [False, True])
def test_dynamic_coefficient_amendment_matches_reference(leaky):
    votes = votes_like(B, N_I, N_O, D)
    acts = torch.rand(B, N_I, dtype=votes.dtype, generator=torch.Generator().manual_seed(3))
    out = DynamicRouting(iterations=3, leaky=leaky)(votes, acts)
    want_poses, want_coupling = ref_dynamic(votes, 3, leaky=leaky, acts=acts)
    assert (out.poses - want_poses).abs().max() < 1e-5
    assert (out.coupling - want_coupling).abs().max() < 1e-5
    plain = DynamicRouting(iterations=3, leaky=leaky)(votes).poses
    assert (plain - out.poses).abs().max() > 1e-3


def test_dynamic_gradcheck_float64():
    votes = votes_like(1, 4, 2, 3).requires_grad_(True)
    # one iteration: the votes reach the output only through s_j (no detached path)
    assert torch.autograd.gradcheck(lambda v: DynamicRouting(iterations=1)(v).poses, (votes,))
    # three iterations: the activations reach every iteration, the (constant) votes none
    acts = torch.rand(1, 4, dtype=torch.float64).requires_grad_(True)
    fixed = votes.detach()
    for leaky in (False, True):
        route = DynamicRouting(iterations=3, leaky=leaky)
        assert torch.autograd.gradcheck(lambda a, r=route: r(fixed, a).poses, (acts,))


def test_dynamic_double_backward_and_input_major_gradient_layout():
    votes = votes_like(1, 4, 2, 3).requires_grad_(True)
    # one iteration: the detached earlier passes would make finite differences disagree by design
    assert torch.autograd.gradgradcheck(lambda v: DynamicRouting(iterations=1)(v).poses, (votes,))
    acts = torch.rand(1, 4, dtype=torch.float64).requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda a: DynamicRouting(iterations=3)(votes.detach(), a).poses, (acts,))
    # votes laid out input-major (as DenseCaps makes them) get their gradient in that layout, same values
    base = votes_like(4, 2, 3, 5).requires_grad_(True)  # [N_i, B, N_o, D] in memory
    (grad,) = torch.autograd.grad(DynamicRouting()(base.permute(1, 0, 2, 3)).poses.sum(), base)
    dense = base.detach().permute(1, 0, 2, 3).contiguous().requires_grad_(True)
    (want,) = torch.autograd.grad(DynamicRouting()(dense).poses.sum(), dense)
    torch.testing.assert_close(grad.permute(1, 0, 2, 3), want, rtol=1e-12, atol=1e-14)


def test_dynamic_gradient_of_expanded_votes():
    base = votes_like(B, 1, N_O, D).requires_grad_(True)  # one input capsule's votes shared by N_i (stride 0)
    (grad,) = torch.autograd.grad(DynamicRouting()(base.expand(B, N_I, N_O, D)).poses.sum(), base)
    dense = base.detach().expand(B, N_I, N_O, D).contiguous().requires_grad_(True)
    (want,) = torch.autograd.grad(DynamicRouting()(dense).poses.sum(), dense)
    torch.testing.assert_close(grad, want.sum(dim=1, keepdim=True))


def test_dynamic_efficient_squash_option():
    votes = votes_like(B, N_I, N_O, D)
    out = DynamicRouting(iterations=1, squash="efficient")(votes)
    torch.testing.assert_close(out.poses, squash_efficient(votes.sum(dim=1) / N_O))  # uniform coupling 1 / N_o


def test_dynamic_accepts_non_contiguous_votes_and_bf16():
    votes = votes_like(B, N_O, N_I, D, dtype=torch.float32).transpose(1, 2)  # [B, N_i, N_o, D], not contiguous
    want = DynamicRouting()(votes.contiguous()).poses
    torch.testing.assert_close(DynamicRouting()(votes).poses, want)
    out = DynamicRouting()(votes.bfloat16())
    assert out.poses.dtype == torch.bfloat16
    torch.testing.assert_close(out.poses.float(), want, rtol=3e-2, atol=3e-2)


# ---------------------------------------------------------------- base checks and registry smoke


def test_base_checks_shapes_with_clear_errors():
    route = DynamicRouting(num_in=N_I, num_out=N_O)
    with pytest.raises(ValueError, match=r"votes must be \[B, N_i, N_o, D_o\]"):
        route(torch.zeros(N_I, N_O, D))
    with pytest.raises(ValueError, match="built for N_i=6, votes have 5"):
        route(torch.zeros(B, 5, N_O, D))
    with pytest.raises(ValueError, match=r"activations must be \[B, N_i\]"):
        route(torch.zeros(B, N_I, N_O, D), torch.ones(B, N_O))
    with pytest.raises(TypeError, match="floating point"):
        route(torch.zeros(B, N_I, N_O, D, dtype=torch.long))
    with pytest.raises(ValueError, match="iterations must be >= 1"):
        DynamicRouting(iterations=0)
    with pytest.raises(ValueError, match="em routing needs num_out="):
        routing.build("em")


@pytest.mark.parametrize("name", routing.names())
@pytest.mark.parametrize("with_activations", [False, True])
def test_every_routing_forward_backward(name, with_activations):
    torch.manual_seed(0)
    n_in, n_out, dim = 12, 4, 16
    route = routing.build(name, num_in=n_in, num_out=n_out)
    votes = torch.randn(3, n_in, n_out, dim, requires_grad=True)
    acts = torch.rand(3, n_in, requires_grad=True) if with_activations else None
    out = route(votes, acts)
    assert out.poses.shape == (3, n_out, dim) and out.activations.shape == (3, n_out)
    assert out.coupling.shape == (3, n_in, n_out)
    assert all(torch.isfinite(t).all() for t in out)
    assert ((out.activations >= 0) & (out.activations <= 1)).all()
    if name != "em":  # vector capsules: activations are the lengths, below 1
        torch.testing.assert_close(out.activations, lengths(out.poses))
        assert (lengths(out.poses) < 1).all()
    (out.poses.pow(2).sum() + out.activations.sum()).backward()
    assert votes.grad is not None and torch.isfinite(votes.grad).all() and votes.grad.abs().sum() > 0
    if acts is not None:
        assert acts.grad is not None and torch.isfinite(acts.grad).all()
    for pname, p in route.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname


def test_routing_aliases_build_the_same_class():
    assert isinstance(routing.build("sabour"), DynamicRouting)
    assert isinstance(routing.build("self_attention", num_in=2, num_out=2), AttentionRouting)
    assert {"dynamic", "em", "attention"} <= set(routing.names())
