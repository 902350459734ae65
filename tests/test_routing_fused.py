"""Fused CPU dynamic routing (``DynamicRouting(fused=True)``) against the eager loop: outputs and gradients."""

from __future__ import annotations

import shutil
import sysconfig
from pathlib import Path

import pytest
import torch

from capsule_kit.layers import DenseCaps
from capsule_kit.routing import DynamicRouting, RoutingConfig
from capsule_kit.routing import fused as fused_routing

CAN_BUILD = shutil.which("c++") is not None and (Path(sysconfig.get_paths()["include"]) / "Python.h").exists()
pytestmark = pytest.mark.skipif(not CAN_BUILD, reason="the fused kernel needs a C++ compiler and Python headers")


def votes_input_major(b, n_in, n_out, d, dtype=torch.float64, seed=0):
    """Votes with DenseCaps' layout: a [B, N_i, N_o, D] view of [N_i, B, N_o, D] memory."""
    gen = torch.Generator().manual_seed(seed)
    return (0.5 * torch.randn(n_in, b, n_out, d, generator=gen, dtype=dtype)).permute(1, 0, 2, 3)


def route_both(votes, grad, **options):
    """(poses, lengths, coupling, dL/dvotes) of the eager and the fused routing for the same votes."""
    results = []
    for is_fused in (False, True):
        v = votes.detach().clone().requires_grad_(True) if votes.is_contiguous() else _same_layout(votes)
        out = DynamicRouting(fused=is_fused, **options)(v)
        out.poses.backward(grad)
        results.append((out.poses.detach(), out.activations.detach(), out.coupling, v.grad))
    return results


def _same_layout(votes):
    v = votes.detach().permute(1, 0, 2, 3).clone().permute(1, 0, 2, 3)
    return v.requires_grad_(True)


def test_kernel_builds_here():
    assert fused_routing.kernel() is not None


@pytest.mark.parametrize("iterations", [1, 2, 3, 5])
@pytest.mark.parametrize("leaky", [False, True])
@pytest.mark.parametrize("squash", ["sabour", "efficient"])
def test_fused_equals_eager_outputs_and_gradients(iterations, leaky, squash):
    votes = votes_input_major(3, 7, 4, 5)
    grad = torch.randn(3, 4, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    eager, fast = route_both(votes, grad, iterations=iterations, leaky=leaky, squash=squash)
    for name, a, b in zip(("poses", "lengths", "coupling", "grad votes"), eager, fast):
        assert a.shape == b.shape, name
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12, msg=name)


def test_fused_gradient_keeps_the_votes_layout_and_handles_contiguous_votes():
    votes = votes_input_major(2, 5, 3, 4)
    grad = torch.randn(2, 3, 4, dtype=torch.float64)
    _, (_, _, _, g) = route_both(votes, grad)
    assert g.stride() == votes.stride()  # written in place of the transposing copy
    contiguous = votes.contiguous()
    eager, fast = route_both(contiguous, grad)
    for a, b in zip(eager, fast):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)


def test_fused_float32_denscaps_matches_eager_layer():
    """The layer as DigitCaps uses it (chunked batch, float32): outputs, input and weight gradients."""
    torch.manual_seed(0)
    eager = DenseCaps(72, 8, 10, 16, max_vote_bytes=72 * 160 * 4 * 3)  # chunks of 3 samples
    fast = DenseCaps(72, 8, 10, 16, max_vote_bytes=72 * 160 * 4 * 3, routing=RoutingConfig(name="dynamic", fused=True))
    fast.load_state_dict(eager.state_dict())
    u, g = torch.randn(7, 72, 8) * 0.5, torch.randn(7, 10, 16)
    results = []
    for layer in (eager, fast):
        x = u.clone().requires_grad_(True)
        out = layer(x)
        out.poses.backward(g)
        results.append((out.poses, out.coupling, x.grad, layer.weight.grad))
    for a, b in zip(*results):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_fused_falls_back_to_eager_where_it_does_not_apply():
    """Activations (coefficient amendment) and bf16 take the eager loop: same numbers, gradients to activations."""
    votes = votes_input_major(2, 5, 3, 4)
    acts = torch.rand(2, 5, dtype=torch.float64, requires_grad=True)
    a = DynamicRouting()(votes, acts).poses
    b = DynamicRouting(fused=True)(votes, acts).poses
    torch.testing.assert_close(b, a, rtol=0, atol=0)
    assert torch.autograd.grad(b.sum(), acts)[0].abs().sum() > 0
    half = votes.to(torch.bfloat16)
    torch.testing.assert_close(DynamicRouting(fused=True)(half).poses, DynamicRouting()(half).poses, rtol=0, atol=0)
    assert "fused=True" in repr(DynamicRouting(fused=True))


def test_without_a_compiler_fused_routing_warns_once_and_routes_eagerly(monkeypatch):
    """Fault injection: the kernel build fails -> one warning, then the eager loop (same numbers)."""
    import torch.utils.cpp_extension as ext

    def broken(**_):
        raise RuntimeError("no C++ compiler\nlong build log")

    votes = votes_input_major(2, 5, 3, 4)
    fused_routing.kernel.cache_clear()
    monkeypatch.setattr(ext, "load_inline", broken)
    try:
        with pytest.warns(UserWarning, match=r"fused routing unavailable \(RuntimeError: no C\+\+ compiler\)"):
            out = DynamicRouting(fused=True)(votes).poses
        torch.testing.assert_close(out, DynamicRouting()(votes).poses, rtol=0, atol=0)
        assert fused_routing.kernel() is None  # cached: no second build attempt, no second warning
    finally:
        fused_routing.kernel.cache_clear()  # the next user loads the built kernel again
