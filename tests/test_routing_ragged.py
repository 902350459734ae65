"""Ragged routing (``index=``): a batch of variable-size examples against a per-example loop of dense routing.

Example b's input capsules are all N_i capsules of all its rows; routing it alone
with the dense routing (``[1, n_b * N_i, N_o, D_o]``) is the reference. Outputs and
the gradients of votes, activations and parameters agree to 1e-6.
"""

from __future__ import annotations

import pytest
import torch

from capsule_kit.routing import AttentionRouting, DynamicRouting, EMRouting, RoutingConfig

SIZES = [1, 5, 3, 12, 0, 2]  # rows per example; an empty example routes to zero poses
N_I, N_O, D = 3, 4, 5


def ragged_inputs(seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    votes = (0.7 * torch.randn(sum(SIZES), N_I, N_O, D, generator=gen, dtype=torch.float64)).requires_grad_()
    acts = torch.rand(sum(SIZES), N_I, generator=gen, dtype=torch.float64).requires_grad_()
    index = torch.repeat_interleave(torch.arange(len(SIZES)), torch.tensor(SIZES))
    return votes, acts, index


def make(name: str, n_in: int, **options):
    """A fresh routing; attention gets a non-zero prior so that its role shows."""
    if name == "attention":
        routing = AttentionRouting(num_in=n_in, num_out=N_O).double()
        with torch.no_grad():
            routing.prior.copy_(0.1 * torch.arange(n_in * N_O, dtype=torch.float64).view(n_in, N_O).sin())
        return routing
    return DynamicRouting(**options).double()


def per_example_loop(name, votes, acts, index, ragged, **options):
    """Route each example alone with the dense routing; the attention prior is tiled over the example's rows."""
    poses, coupling, prior_grads = [], [], []
    for b, n in enumerate(SIZES):
        rows = index == b
        if n == 0:
            poses.append(votes.new_zeros(N_O, D))
            continue
        dense = make(name, n * N_I, **options)
        if name == "attention":
            dense.prior = torch.nn.Parameter(ragged.prior.detach().repeat(n, 1))  # row-major: (row, capsule)
            prior_grads.append(dense.prior)
        a = None if acts is None else acts[rows].reshape(1, n * N_I)
        out = dense(votes[rows].reshape(1, n * N_I, N_O, D), a)
        poses.append(out.poses[0])
        coupling.append(out.coupling[0].view(n, N_I, N_O))
    return torch.stack(poses), torch.cat(coupling), prior_grads


def grads(outputs, inputs):
    loss = (outputs * torch.linspace(-1, 1, outputs.numel(), dtype=outputs.dtype).view_as(outputs)).sum()
    return torch.autograd.grad(loss, inputs, retain_graph=True)


CASES = [
    ("dynamic", {"iterations": 1}, False),
    ("dynamic", {"iterations": 3}, False),
    ("dynamic", {"iterations": 3}, True),
    ("dynamic", {"iterations": 3, "leaky": True}, True),
    ("attention", {}, False),
    ("attention", {}, True),
]


@pytest.mark.parametrize("name, options, with_acts", CASES)
def test_ragged_routing_equals_per_example_loop(name, options, with_acts):
    votes, acts, index = ragged_inputs()
    a = acts if with_acts else None
    ragged = make(name, N_I, **options)
    out = ragged(votes, a, index=index, size=len(SIZES))
    want_poses, want_coupling, prior_copies = per_example_loop(name, votes, a, index, ragged, **options)
    tol = {"atol": 1e-6, "rtol": 1e-6}
    torch.testing.assert_close(out.poses, want_poses, **tol)
    torch.testing.assert_close(out.coupling, want_coupling, **tol)
    torch.testing.assert_close(out.activations, want_poses.norm(dim=-1), **tol)
    inputs = [votes] + ([acts] if with_acts else [])
    for got, want in zip(grads(out.poses, inputs), grads(want_poses, inputs)):
        torch.testing.assert_close(got, want, **tol)
    if name == "attention":  # the shared prior's gradient is the sum over every row of every example
        got = grads(out.poses, [ragged.prior])[0]
        want = grads(want_poses, prior_copies)
        folded = sum(g.view(-1, N_I, N_O).sum(0) for g in want)
        torch.testing.assert_close(got, folded, **tol)


def test_ragged_routing_is_built_by_name_from_the_routing_config():
    votes, _, index = ragged_inputs(1)
    routing = RoutingConfig(name="attention").build(num_in=N_I, num_out=N_O).double()
    assert routing(votes, index=index).poses.shape == (len(SIZES), N_O, D)  # size: index.max() + 1
    padded = routing(votes, index=index, size=len(SIZES) + 2).poses
    assert padded.shape == (len(SIZES) + 2, N_O, D) and not padded[-2:].any() and not padded[SIZES.index(0)].any()


def test_ragged_routing_checks_its_inputs():
    votes, _, index = ragged_inputs()
    with pytest.raises(ValueError, match="index must be int64"):
        DynamicRouting()(votes, index=index[:-1])
    with pytest.raises(ValueError, match="index must be int64"):
        DynamicRouting()(votes, index=index.int())
    with pytest.raises(ValueError, match="built for N_i=2"):
        AttentionRouting(num_in=2, num_out=N_O)(votes, index=index)
    with pytest.raises(NotImplementedError, match="EMRouting does not route ragged inputs"):
        EMRouting(num_out=N_O)(votes[..., :16], index=index)
