"""squash / squash_efficient / safe_norm / lengths: hand values, zero, dtypes, autocast, gradcheck."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from capsule_kit.functional import get_squash, lengths, safe_norm, squash, squash_efficient

SQUASHES = [squash, squash_efficient]


def test_squash_hand_values():
    s = torch.tensor([[3.0, 4.0], [0.0, 0.5]])
    # |s|^2 / (1 + |s|^2) * s / |s|: |(3, 4)| = 5 -> 25/26 * (0.6, 0.8); |(0, 0.5)| = 0.5 -> 0.2 * (0, 1)
    want = torch.tensor([[15.0 / 26.0, 20.0 / 26.0], [0.0, 0.2]])
    torch.testing.assert_close(squash(s), want, rtol=1e-6, atol=0)


def test_squash_efficient_hand_values():
    s = torch.tensor([[3.0, 4.0], [0.0, 0.5]])
    # (1 - e^-|s|) * s / |s|
    want = torch.tensor([[(1 - math.exp(-5)) * 0.6, (1 - math.exp(-5)) * 0.8], [0.0, 1 - math.exp(-0.5)]])
    torch.testing.assert_close(squash_efficient(s), want, rtol=1e-6, atol=0)


def test_squash_along_other_dim():
    s = torch.tensor([[3.0, 0.0], [4.0, 0.5]])  # capsules are columns
    torch.testing.assert_close(squash(s, dim=0), squash(s.t()).t())
    torch.testing.assert_close(squash_efficient(s, dim=0), squash_efficient(s.t()).t())


@pytest.mark.parametrize("fn, want_jacobian", [(squash, 0.0), (squash_efficient, 1.0)])
def test_squash_at_zero_exact_output_and_true_gradient(fn, want_jacobian):
    # Sabour: v = s |s| / (1 + |s|^2) is O(|s|^2) at 0, so dv/ds = 0. Efficient: v ~ s, so dv/ds = I.
    zero = torch.zeros(4, dtype=torch.float64)
    assert torch.equal(fn(zero), zero)
    jac = jacobian(fn, zero)
    assert torch.isfinite(jac).all()
    torch.testing.assert_close(jac, want_jacobian * torch.eye(4, dtype=torch.float64), rtol=0, atol=0)


@pytest.mark.parametrize("fn", SQUASHES)
def test_squash_backward_at_zero_is_finite_in_a_batch(fn):
    s = torch.zeros(3, 5, 8)
    s[0, 1] = torch.randn(8)
    s.requires_grad_(True)
    fn(s).pow(2).sum().backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("fn", SQUASHES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_squash_preserves_dtype(fn, dtype):
    s = torch.randn(4, 6, 8).to(dtype)
    out = fn(s)
    assert out.dtype == dtype and out.shape == s.shape
    torch.testing.assert_close(out.double(), fn(s.double()), rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("fn", SQUASHES)
def test_squash_under_cpu_autocast_bf16(fn):
    torch.manual_seed(0)
    linear = torch.nn.Linear(8, 16)
    x = torch.randn(4, 10, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = linear(x)  # autocast gives bf16 here
        out = fn(s)
    assert s.dtype == torch.bfloat16 and out.dtype == torch.bfloat16
    want = fn(linear(x))
    # bf16 keeps 8 bits of mantissa: compare at that precision
    torch.testing.assert_close(out.float(), want, rtol=2e-2, atol=2e-2)
    assert torch.isfinite(out.float()).all()


@pytest.mark.parametrize("fn", SQUASHES)
def test_squash_lengths_in_unit_interval_and_monotone(fn):
    direction = torch.nn.functional.normalize(torch.randn(64, 16), dim=-1)
    s = direction * torch.logspace(-4, 1, 64).unsqueeze(-1)  # |s| from 1e-4 to 10
    ln = lengths(fn(s))
    assert (ln < 1).all() and (ln > 0).all()
    assert torch.all(ln[1:] > ln[:-1])  # strictly increasing in |s|
    # fp32 rounds 1 - e^-r to 1 for r > ~17 (efficient) and r^2 / (1 + r^2) for r > ~4e3: 1 up to rounding
    torch.testing.assert_close(lengths(fn(direction * 1e6)), torch.ones(64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("fn", SQUASHES)
def test_squash_gradcheck_float64(fn):
    s = torch.randn(3, 4, dtype=torch.float64)
    s[1] = 0.0  # include a zero capsule
    assert torch.autograd.gradcheck(fn, (s.requires_grad_(True),))


def test_safe_norm_value_and_zero_gradient():
    s = torch.tensor([[3.0, 4.0], [0.0, 0.0]], requires_grad=True)
    n = safe_norm(s, dim=-1)
    torch.testing.assert_close(n, torch.tensor([5.0, 0.0]))
    n.sum().backward()
    torch.testing.assert_close(s.grad, torch.tensor([[0.6, 0.8], [0.0, 0.0]]))


def test_lengths_and_get_squash():
    poses = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])
    torch.testing.assert_close(lengths(poses), torch.tensor([[5.0, 1.0]]))
    assert get_squash("sabour") is squash and get_squash("efficient") is squash_efficient
    with pytest.raises(ValueError, match="unknown squash 'sabur'; known: sabour, efficient"):
        get_squash("sabur")
