"""Chamfer distance against a brute-force reference, values and gradients."""

from __future__ import annotations

import pytest
import torch

from capsule_kit_tasks.points.chamfer import chamfer_distance, chamfer_terms, kernel, nearest_indices


def brute_force(x, y):
    d = ((x[:, :, None, :] - y[:, None, :, :]) ** 2).sum(-1)  # [B, P, Q]
    return d.min(2).values.mean(1) + d.min(1).values.mean(1)


def test_hand_value():
    x = torch.tensor([[[0.0, 0.0, 0.0]]])
    y = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]]])
    # x -> y: 1; y -> x: (1 + 4) / 2
    assert chamfer_distance(x, y).item() == pytest.approx(3.5)
    dx, dy = chamfer_terms(x, y)
    assert dx.tolist() == [[1.0]] and dy.tolist() == [[1.0, 4.0]]


PATHS = [(1, False), (4096, False), (2**26, False), (2**26, True)]  # 1 byte: one row per chunk; True: C++ kernel


@pytest.mark.parametrize("max_bytes, use_kernel", PATHS)
def test_matches_brute_force_values_and_gradients(max_bytes, use_kernel):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 37, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 53, 3, generator=g, dtype=torch.float64, requires_grad=True)
    ours = chamfer_distance(x, y, max_bytes=max_bytes, use_kernel=use_kernel)
    ref = brute_force(x, y)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    gx, gy = torch.autograd.grad(ours.sum(), (x, y))
    rx, ry = torch.autograd.grad(ref.sum(), (x, y))
    torch.testing.assert_close(gx, rx)
    torch.testing.assert_close(gy, ry)


@pytest.mark.parametrize("use_kernel", [False, True])
def test_indices_are_true_nearest_neighbours_float32(use_kernel):
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(2, 200, 3, generator=g), torch.rand(2, 150, 3, generator=g)
    x_to_y, y_to_x = nearest_indices(x, y, max_bytes=10_000, use_kernel=use_kernel)
    d = ((x[:, :, None].double() - y[:, None].double()) ** 2).sum(-1)
    assert torch.equal(x_to_y, d.argmin(2)) and torch.equal(y_to_x, d.argmin(1))


@pytest.mark.parametrize("use_kernel", [False, True])
def test_no_false_tie_from_a_square_root(use_kernel):
    # met in training: squared distances 0.0086022280 (index 0) and 0.0086022271 (index 1) in float32,
    # the same after a float32 square root, so cdist + argmin picked index 0, the farther point
    src = [-0.1886826753616333, 0.06836406886577606, 0.06200272962450981]
    far = [-0.19568584859371185, 0.15606535971164703, 0.03264855593442917]
    near = [-0.13750949501991272, 0.1384735107421875, 0.029319414868950844]
    x, y = torch.tensor([[src]]), torch.tensor([[far, near]])
    assert ((y.double() - x.double()) ** 2).sum(-1).argmin().item() == 1
    assert nearest_indices(x, y, use_kernel=use_kernel)[0].item() == 1
    assert nearest_indices(y, x, use_kernel=use_kernel)[1].item() == 1


def test_kernel_and_torch_paths_agree_on_a_training_sized_batch_with_ties():
    if kernel() is None:
        pytest.skip("no C++ compiler here: the torch path is the only one")
    g = torch.Generator().manual_seed(2)
    x, y = torch.rand(16, 1024, 3, generator=g), torch.rand(16, 1024, 3, generator=g)
    x[:, 1::2] = x[:, ::2]  # duplicated points: ties go to the first index on both paths
    y[:, :8] = 0.5
    for a, b in ((x, y), (y, x), (x, x)):
        ours, ref = nearest_indices(a, b), nearest_indices(a, b, use_kernel=False)
        assert torch.equal(ours[0], ref[0]) and torch.equal(ours[1], ref[1])
    torch.testing.assert_close(chamfer_distance(x, y), chamfer_distance(x, y, use_kernel=False), rtol=0, atol=0)


def test_zero_for_same_cloud_and_order_invariant():
    x = torch.rand(2, 64, 3)
    perm = torch.randperm(64)
    assert torch.all(chamfer_distance(x, x) == 0)
    torch.testing.assert_close(chamfer_distance(x, x[:, perm] + 0.01), chamfer_distance(x, x + 0.01))


def test_shape_errors():
    with pytest.raises(ValueError, match="chamfer expects"):
        chamfer_distance(torch.rand(2, 5, 3), torch.rand(3, 5, 3))
