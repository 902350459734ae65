"""Points levers: augmentation (seeded, bounded), SVM feature shapes, part consistency by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from capsule_kit import run
from capsule_kit.errors import ConfigError
from capsule_kit_tasks.points.augment import CloudDataset, augment
from capsule_kit_tasks.points.parts import capsule_centroids, part_consistency
from capsule_kit_tasks.points.transfer import check_cv_folds, latent_features
from tests.helpers import REPO

OPTIONS = {"rotate": True, "jitter": 0.01, "jitter_clip": 0.02, "scale": (0.8, 1.0)}


def cloud(n: int = 64) -> torch.Tensor:
    return torch.rand(n, 3, generator=torch.Generator().manual_seed(3)) * 2 - 1


def test_augmentation_is_fixed_by_the_seed():
    x = cloud()
    a = augment(x, torch.Generator().manual_seed(5), **OPTIONS)
    b = augment(x, torch.Generator().manual_seed(5), **OPTIONS)
    c = augment(x, torch.Generator().manual_seed(6), **OPTIONS)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    ds = CloudDataset(torch.stack([x, x]), torch.tensor([0, 1]), augment=True, **OPTIONS)
    torch.manual_seed(0)
    first = [ds[i][0] for i in range(2)]
    torch.manual_seed(0)
    again = [ds[i][0] for i in range(2)]
    assert all(torch.equal(p, q) for p, q in zip(first, again))  # the runner seeds the global RNG
    assert torch.equal(CloudDataset(x[None], torch.tensor([0]))[0][0], x)  # no augmentation unless asked


def test_each_augmentation_does_what_it_says():
    x = cloud()
    up = augment(x, torch.Generator().manual_seed(1), rotate=True, up_axis=2)
    torch.testing.assert_close(up[:, 2], x[:, 2])  # rotation about z keeps heights and radii
    torch.testing.assert_close(up[:, :2].norm(dim=1), x[:, :2].norm(dim=1))
    scaled = augment(x, torch.Generator().manual_seed(1), scale=(0.5, 0.9))
    factors = scaled / x
    assert torch.allclose(factors, factors[:1].expand_as(factors), rtol=1e-5)  # one factor per axis
    assert ((factors[0] >= 0.5) & (factors[0] <= 0.9)).all() and factors[0].unique().numel() == 3
    jittered = augment(x, torch.Generator().manual_seed(1), jitter=1.0, jitter_clip=0.05)
    assert (jittered - x).abs().max() <= 0.05 + 1e-6 and not torch.equal(jittered, x)


def test_scale_range_is_validated():
    cfg, _ = run.load_recipe(REPO / "recipes" / "points_ae.yaml", ["data.scale=[0.8, 1.0]"])
    assert cfg.data.scale == (0.8, 1.0)
    with pytest.raises(ConfigError, match="data.scale"):
        run.load_recipe(REPO / "recipes" / "points_ae.yaml", ["data.scale=[1.0, 0.8]"])
    with pytest.raises(ConfigError, match="transfer.features"):
        run.load_recipe(REPO / "recipes" / "points_ae.yaml", ["transfer.features=norms"])


@pytest.mark.parametrize("value", ["[]", "[0.1, -1]", "0", "[0.1, x]"])
def test_svm_c_grid_is_validated(value):
    assert run.load_recipe(REPO / "recipes" / "points_ae.yaml", ["transfer.C=[0.01, 0.1]"])[0].transfer.C == [0.01, 0.1]
    with pytest.raises(ConfigError, match="transfer.C"):
        run.load_recipe(REPO / "recipes" / "points_ae.yaml", [f"transfer.C={value}"])


def test_c_grid_needs_enough_shapes_per_class_before_training():
    labels = np.array([0, 0, 0, 1, 1, 1, 2, 2])
    check_cv_folds(labels, [0.1, 1.0], 2) or check_cv_folds(labels, 1.0, 3)  # enough / one C: no folds
    with pytest.raises(ConfigError, match=r"^transfer.cv_folds: 3 stratified folds .* only 2 training shapes"):
        check_cv_folds(labels, [0.1, 1.0], 3)


@pytest.mark.parametrize("features, width", [("poses", 5 * 4), ("lengths", 5), ("both", 5 * 4 + 5)])
def test_svm_feature_shapes(features, width):
    latent = torch.randn(3, 5, 4)
    f = latent_features(latent, features)
    assert f.shape == (3, width)
    if features != "poses":
        torch.testing.assert_close(f[:, -5:], latent.norm(dim=-1))


def test_part_consistency_hand_values():
    # two capsules, compact parts (shape variance = centroid variance = 1), two shapes of class 0
    a, b, c = torch.tensor([1.0, 0, 0]), torch.tensor([-1.0, 0, 0]), torch.tensor([0, 1.0, 0])
    shapes = lambda *rows: torch.stack([torch.stack(r) for r in rows])  # noqa: E731  [S, N_o, 3]
    ones, zeros = torch.ones(2), torch.tensor([0, 0])
    # capsule 0 always at a, capsule 1 always at b: all the variance is a fixed place per capsule
    assert part_consistency(shapes((a, b), (a, b)), ones, zeros) == {"part_consistency": 1.0, "part_drift": 0.0}
    # the capsules swap places between the shapes: their average places coincide
    swapped = part_consistency(shapes((a, b), (b, a)), ones, zeros)
    assert swapped == {"part_consistency": 0.0, "part_drift": 1.0}
    # every capsule decodes the same region: no parts, nothing to be consistent about
    assert part_consistency(shapes((a, a), (a, a)), ones, zeros)["part_consistency"] == 0.0
    # capsule 0 moves from a to c, capsule 1 stays at b: m_0 = (.5, .5, 0), m_1 = b, their mean (-.25, .25, 0)
    moved = part_consistency(shapes((a, b), (c, b)), ones, zeros)
    assert moved["part_consistency"] == pytest.approx((0.75**2 + 0.25**2) * 2 / 2)
    assert moved["part_drift"] == pytest.approx(((0.5 + 0.5 + 0 + 0) / 4) ** 0.5)
    assert moved == part_consistency(shapes((a, b), (c, b)) * 2, ones * 4, zeros)  # scale-free
    assert part_consistency(shapes((a, b), (a, b)), ones, torch.tensor([0, 1])) == {}  # no class with two shapes
    both = part_consistency(shapes((a, b), (a, b), (a, b), (b, a)), torch.ones(4), torch.tensor([0, 0, 1, 1]))
    assert both["part_consistency"] == pytest.approx(0.5)  # classes scored separately, then averaged


def test_capsule_centroids_follow_the_decoder_layout():
    # point k comes from capsule k % 2: capsule 0 gets rows 0, 2; capsule 1 rows 1, 3
    pts = torch.tensor([[[0.0, 0, 0], [1, 1, 1], [2, 0, 0], [3, 3, 3]]])
    torch.testing.assert_close(capsule_centroids(pts, 2), torch.tensor([[[1.0, 0, 0], [2, 2, 2]]]))
