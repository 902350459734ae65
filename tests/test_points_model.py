"""The 3D Point Capsule autoencoder: sizes, capsule -> part layout, primary capsules, training step."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from capsule_kit.functional import squash
from capsule_kit_tasks.points.model import CapsDecoder, PointCapsNet, PrimaryPointCaps, transform_params
from capsule_kit_tasks.points.parts import part_spread
from capsule_kit_tasks.points.transfer import choose, latent_features, select_c, svm_transfer

TINY = dict(primary_caps=32, primary_dim=4, latent_caps=8, latent_dim=6, out_points=64, feature_channels=(8, 16))


def test_paper_size_transform_is_67m_and_shared_options_are_light():
    with torch.device("meta"):
        full = PointCapsNet(shared="none")
        light = PointCapsNet(shared="inputs")
        groups = PointCapsNet(shared="positions", share_groups=16)
    assert full.latent.weight.numel() == 1024 * 16 * 64 * 64 == 67_108_864
    assert transform_params(1024, 16, 64, 64, "none", 16) == 67_108_864
    assert light.latent.weight.numel() == transform_params(1024, 16, 64, 64, "inputs", 16) == 16 * 64 * 64
    assert groups.latent.weight.numel() == 16 * 16 * 64 * 64
    n_full, n_light = (sum(p.numel() for p in m.parameters()) for m in (full, light))
    assert n_full - n_light == 67_108_864 - 65_536


def test_forward_shapes_and_lengths():
    torch.manual_seed(0)
    model = PointCapsNet(**TINY)
    out = model(torch.rand(3, 50, 3) * 2 - 1)
    assert out.latent.shape == (3, 8, 6) and out.points.shape == (3, 64, 3) and out.coupling.shape == (3, 32, 8)
    assert torch.all(out.latent.norm(dim=-1) < 1) and torch.all(out.points.abs() <= 1)
    assert model.capsule_of_point().tolist() == [k % 8 for k in range(64)]


@pytest.mark.parametrize("mode", ["per_patch", "per_capsule", "shared"])
def test_point_k_is_decoded_from_capsule_k_mod_n(mode):
    torch.manual_seed(0)
    dec = CapsDecoder(num_caps=5, dim=16, points_per_caps=6, mode=mode).eval()
    latent = torch.randn(2, 5, 16)
    base = dec(latent)
    for j in range(5):
        moved = latent.clone()
        moved[:, j] += 1.0
        changed = (dec(moved) - base).abs().sum(-1).gt(0).any(0)  # [N_o * M]
        assert changed.nonzero().flatten().tolist() == [k for k in range(30) if k % 5 == j]


def test_primary_caps_are_parallel_convs_max_pooled_then_squashed():
    torch.manual_seed(0)
    layer = PrimaryPointCaps(7, num_caps=5, dim=3).eval()
    layer.bn.running_mean.normal_()
    layer.bn.running_var.uniform_(0.5, 2)
    feats = torch.randn(2, 7, 11)
    # conv d of the D_i parallel ones owns output channels d*N_i .. (d+1)*N_i - 1
    convs = [
        layer.bn.weight[d * 5 : (d + 1) * 5, None]
        * (F.conv1d(feats, layer.conv.weight[d * 5 : (d + 1) * 5], layer.conv.bias[d * 5 : (d + 1) * 5])
           - layer.bn.running_mean[d * 5 : (d + 1) * 5, None])
        / (layer.bn.running_var[d * 5 : (d + 1) * 5, None] + layer.bn.eps).sqrt()
        + layer.bn.bias[d * 5 : (d + 1) * 5, None]
        for d in range(3)
    ]  # fmt: skip
    expected = squash(torch.stack([c.max(dim=2).values for c in convs], dim=2))  # [B, N_i, D_i]
    torch.testing.assert_close(layer(feats), expected)


def test_train_step_reaches_every_parameter():
    torch.manual_seed(0)
    model = PointCapsNet(**TINY, shared="positions", share_groups=4)
    from capsule_kit_tasks.points.chamfer import chamfer_distance

    x = torch.rand(4, 40, 3) * 2 - 1
    chamfer_distance(model(x).points, x).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_odd_sizes_rejected():
    with pytest.raises(ValueError, match="multiple of latent_caps"):
        PointCapsNet(**{**TINY, "out_points": 65})


def test_svm_transfer_on_separable_features():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 20, generator=g) * 5
    y_tr, y_te = torch.arange(60) % 3, torch.arange(30) % 3
    x_tr = (centres[y_tr] + torch.randn(60, 20, generator=g)).numpy()
    x_te = (centres[y_te] + torch.randn(30, 20, generator=g)).numpy()
    res = svm_transfer((x_tr, y_tr.numpy()), (x_te, y_te.numpy()), 3)
    assert res["svm_accuracy"] == 1.0 and res["svm_test_shapes"] == 30
    assert res["svm_confusion_matrix"] == [[10, 0, 0], [0, 10, 0], [0, 0, 10]]
    shuffled = svm_transfer((x_tr, y_tr.numpy()[torch.randperm(60, generator=g)]), (x_te, y_te.numpy()), 3)
    assert shuffled["svm_accuracy"] < 0.8  # labels unrelated to features: no free accuracy


def blobs(n: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    return (torch.randn(3, 20, generator=g)[y] * 2 + noise * torch.randn(n, 20, generator=g)).numpy(), y.numpy()


def test_select_c_matches_a_per_fold_loop_and_never_sees_test_shapes():
    from sklearn.model_selection import StratifiedKFold

    x, y = blobs(90, noise=3.0)
    cs = [0.001, 0.1, 10.0]
    chosen, means = select_c((x, y), cs, 3, folds=3, seed=5, jobs=2)
    splits = list(StratifiedKFold(3, shuffle=True, random_state=5).split(x, y))
    ref = {c: np.mean([svm_transfer((x[a], y[a]), (x[b], y[b]), 3, c=c, seed=5)["svm_accuracy"] for a, b in splits])
           for c in cs}  # fmt: skip
    assert means == pytest.approx(ref, abs=1e-12) and chosen == max(cs, key=lambda c: (ref[c], -c))
    assert len(set(means.values())) > 1  # the grid is not flat here: the choice means something


def test_select_c_ties_go_to_the_smaller_c():
    x, y = blobs(60, noise=0.1)  # separable: every C scores 1.0
    chosen, means = select_c((x, y), [10.0, 0.5, 2.0], 3)
    assert set(means.values()) == {1.0} and chosen == 0.5


def test_choose_picks_the_best_feature_set_and_c_by_cross_validation():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(90) % 3
    # class lives in the capsule lengths only; the pose directions are noise
    direction = torch.nn.functional.normalize(torch.randn(90, 6, 4, generator=g), dim=-1)
    latent = direction * (1.0 + y.view(-1, 1, 1) + 0.05 * torch.randn(90, 6, 1, generator=g))
    cs = [0.01, 1.0]
    name, c, cv = choose((latent, y.numpy()), ["poses", "lengths"], cs, 3, folds=3, seed=1)
    for feats in ("poses", "lengths"):
        _, means = select_c((latent_features(latent, feats).numpy(), y.numpy()), cs, 3, folds=3, seed=1)
        assert cv[feats] == {str(k): v for k, v in means.items()}
    assert name == "lengths" and cv["lengths"][str(c)] == max(cv["lengths"].values()) > max(cv["poses"].values())
    easy = torch.ones(90, 6, 4) * (1.0 + y.view(-1, 1, 1)) + 0.01 * torch.randn(90, 6, 4, generator=g)
    for order in (["lengths", "both"], ["both", "lengths"]):  # every pair scores 1.0: the first listed wins
        name, c, cv = choose((easy, y.numpy()), order, [0.5, 2.0], 3, folds=3)
        assert {a for grid in cv.values() for a in grid.values()} == {1.0} and (name, c) == (order[0], 0.5)


def test_part_spread_hand_values_follow_the_capsule_layout():
    a, b = [0.0, 0.0, 0.0], [2.0, 0.0, 0.0]
    # point k comes from capsule k % 2: [a, b, a, b] gives each capsule one place, [a, a, b, b] both places
    compact, spread = torch.tensor([[a, b, a, b]]), torch.tensor([[a, a, b, b]])
    assert part_spread(compact, 2).tolist() == [0.0] and part_spread(spread, 2).tolist() == [1.0]
