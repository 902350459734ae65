"""Margin, spread and reconstruction losses against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

from capsule_kit.losses import as_targets, margin_loss, reconstruction_loss, spread_loss, spread_margin

LENGTHS = torch.tensor([[0.95, 0.3, 0.05], [0.5, 0.2, 0.8]], dtype=torch.float64)
# margin loss, m+ = 0.9, m- = 0.1, lambda = 0.5, by hand:
#   sample 0, target 0: 0 + 0.5 * 0.2^2 + 0 = 0.02
#   sample 1, target 2: 0.5 * 0.4^2 + 0.5 * 0.1^2 + 0.1^2 = 0.08 + 0.005 + 0.01 = 0.095
#   sample 1, targets {0, 2}: 0.4^2 + 0.005 + 0.01 = 0.175


@pytest.mark.parametrize(
    "targets",
    [torch.tensor([0, 2]), torch.tensor([[1, 0, 0], [0, 0, 1]]), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])],
    ids=["indices", "one_hot_long", "one_hot_float"],
)
def test_margin_loss_hand_values(targets):
    loss = margin_loss(LENGTHS, targets)
    torch.testing.assert_close(loss, torch.tensor((0.02 + 0.095) / 2, dtype=torch.float64), rtol=1e-12, atol=0)


def test_margin_loss_multi_hot_and_options():
    multi = torch.tensor([[1, 0, 0], [1, 0, 1]])
    torch.testing.assert_close(margin_loss(LENGTHS, multi), torch.tensor((0.02 + 0.175) / 2, dtype=torch.float64))
    # m+ = 1, m- = 0, lambda = 1 on sample 1, target 2: 0.5^2 + 0.2^2 + 0.2^2 = 0.33
    got = margin_loss(LENGTHS[1:], torch.tensor([2]), m_pos=1.0, m_neg=0.0, lam=1.0)
    torch.testing.assert_close(got, torch.tensor(0.33, dtype=torch.float64))


def test_margin_loss_zero_when_perfect_and_gradient_sign():
    perfect = torch.tensor([[0.95, 0.05, 0.0]], requires_grad=True)
    assert margin_loss(perfect, torch.tensor([0])).item() == 0.0
    wrong = torch.tensor([[0.2, 0.7, 0.0]], requires_grad=True)
    margin_loss(wrong, torch.tensor([0])).backward()
    assert wrong.grad[0, 0] < 0 < wrong.grad[0, 1]  # push the target up, the impostor down


def test_targets_with_wrong_class_count_raise():
    with pytest.raises(ValueError, match="targets have 4 classes, lengths have 3"):
        margin_loss(LENGTHS, torch.zeros(2, 4))
    torch.testing.assert_close(as_targets(torch.tensor([1]), 3, torch.float32), torch.tensor([[0.0, 1.0, 0.0]]))


ACTS = torch.tensor([[0.8, 0.3, 0.6], [0.1, 0.4, 0.2]], dtype=torch.float64)
# spread loss, margin 0.5, by hand:
#   sample 0, target 0: max(0, 0.5 - 0.5)^2 + max(0, 0.5 - 0.2)^2 = 0.09
#   sample 1, target 2: max(0, 0.5 - 0.1)^2 + max(0, 0.5 + 0.2)^2 = 0.16 + 0.49 = 0.65
#   sample 1, targets {1, 2}: only non-target 0: (0.5 - 0.3)^2 + (0.5 - 0.1)^2 = 0.04 + 0.16 = 0.2


@pytest.mark.parametrize(
    "targets", [torch.tensor([0, 2]), torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])], ids=["indices", "one_hot"]
)
def test_spread_loss_hand_values(targets):
    torch.testing.assert_close(
        spread_loss(ACTS, targets, margin=0.5), torch.tensor((0.09 + 0.65) / 2, dtype=torch.float64)
    )


def test_spread_loss_multi_hot():
    multi = torch.tensor([[1, 0, 0], [0, 1, 1]])
    torch.testing.assert_close(
        spread_loss(ACTS, multi, margin=0.5), torch.tensor((0.09 + 0.2) / 2, dtype=torch.float64)
    )


def test_spread_loss_ignores_the_target_itself():
    # with margin 0.2, a_t - a_t = 0 < m would add m^2 = 0.04 if the target were not excluded
    acts = torch.tensor([[0.9, 0.1]])
    assert spread_loss(acts, torch.tensor([0]), margin=0.2).item() == 0.0


def test_spread_margin_schedule():
    assert spread_margin(0, 100) == pytest.approx(0.2)
    assert spread_margin(50, 100) == pytest.approx(0.55)
    assert spread_margin(100, 100) == pytest.approx(0.9)
    assert spread_margin(500, 100) == pytest.approx(0.9)  # clamped after the schedule
    assert spread_margin(3, 0) == 0.9
    assert spread_margin(1, 4, start=0.0, end=1.0) == pytest.approx(0.25)


def test_reconstruction_loss_is_the_seeds_0392_mse_for_28x28():
    gen = torch.Generator().manual_seed(0)
    recon = torch.rand(5, 1, 28, 28, generator=gen, dtype=torch.float64)
    images = torch.rand(5, 1, 28, 28, generator=gen, dtype=torch.float64)
    seed_form = 0.392 * F.mse_loss(recon, images)  # the seed: lamada * nn.MSELoss()(x_reconstruct, x)
    torch.testing.assert_close(reconstruction_loss(recon, images), seed_form, rtol=1e-12, atol=0)
    # and it is Sabour's 0.0005 * sum of squared errors per example, averaged over the batch
    by_hand = 0.0005 * ((recon - images) ** 2).sum() / 5
    torch.testing.assert_close(reconstruction_loss(recon, images), by_hand, rtol=1e-12, atol=0)


def test_reconstruction_loss_flattens_target_and_casts_dtype():
    recon = torch.full((2, 784), 0.5)
    images = torch.zeros(2, 1, 28, 28, dtype=torch.uint8)
    torch.testing.assert_close(reconstruction_loss(recon, images, scale=1.0), torch.tensor(784 * 0.25))
