"""The offline affNIST-style set (tasks/digits/affine.py), the CNN baseline, and the 40x40 recipes via the CLI."""

from __future__ import annotations

import math

import pytest
import torch

from capsule_kit_tasks.digits.affine import (
    ROTATION_DEG,
    SCALE,
    SHEAR,
    affine_digits,
    affine_metrics,
    affine_params,
    affine_test_set,
    ink_box,
    linear_part,
    random_place,
    warp,
)
from capsule_kit_tasks.digits.data import load_mnist
from tests.helpers import only_run_dir, results, run_cli


@pytest.fixture(scope="module")
def digits():
    x, y = load_mnist(None, "test")
    return x[:300], y[:300]


def test_same_seed_same_bytes_other_seed_other_set(digits):
    x, _ = digits
    a, pa = affine_digits(x, 7)
    b, pb = affine_digits(x, 7)
    assert a.dtype == torch.uint8 and a.shape == (300, 1, 40, 40)
    assert a.numpy().tobytes() == b.numpy().tobytes() and torch.equal(pa, pb)
    assert not torch.equal(a, affine_digits(x, 8)[0])


def test_parameters_within_affnist_ranges_and_spread_over_them():
    p = affine_params(5000, 0)
    rot, shear, scale, frac = p[:, 0], p[:, 1], p[:, 2], p[:, 3:]
    assert rot.abs().max() <= ROTATION_DEG and rot.max() - rot.min() > 0.95 * 2 * ROTATION_DEG
    assert shear.abs().max() <= SHEAR and shear.max() - shear.min() > 0.95 * 2 * SHEAR
    assert scale.min() >= SCALE[0] and scale.max() <= SCALE[1] and scale.max() - scale.min() > 0.38
    assert frac.min() >= 0 and frac.max() < 1


def test_linear_part_by_hand():
    p = torch.tensor([[90.0, 0.0, 1.0], [0.0, 0.1, 2.0]], dtype=torch.float64)
    m = linear_part(p)
    torch.testing.assert_close(m[0], torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64))
    torch.testing.assert_close(m[1], torch.tensor([[2.0, 0.2], [0.0, 2.0]], dtype=torch.float64))


def test_identity_warp_centres_the_digit_exactly(digits):
    x, _ = digits
    params = torch.tensor([[0.0, 0.0, 1.0, 0.5, 0.5]], dtype=torch.float64).expand(4, 5)
    out = warp(x[:4], params)
    for img, src in zip(out[:, 0], x[:4, 0]):
        top, bottom, left, right = ink_box(img[None])[0].tolist()
        s_top, s_bottom, s_left, s_right = ink_box(src[None])[0].tolist()
        # the same pixels, moved as a block (translation only) inside the canvas
        crop = img[top : bottom + 1, left : right + 1]
        assert torch.equal(crop, src[s_top : s_bottom + 1, s_left : s_right + 1])


def test_digits_stay_inside_the_canvas_and_keep_their_ink(digits):
    x, y = digits
    out, params = affine_digits(x, 3)
    box = ink_box(out[:, 0])
    assert (box >= 0).all() and (box <= 39).all()
    # no ink lost to the border: the ink of a digit scales with the area (scale^2) of the map
    ratio = out.float().sum((1, 2, 3)) / x.float().sum((1, 2, 3)) / params[:, 2].float() ** 2
    assert ratio.min() > 0.9 and ratio.max() < 1.1
    # translations reach all over the canvas, not only the centre
    assert box[:, 0].min() <= 2 and box[:, 1].max() >= 37 and box[:, 2].min() <= 2 and box[:, 3].max() >= 37


def test_test_set_keeps_labels_and_marks_sources(digits):
    x, y = digits
    ds = affine_test_set(x, y, seed=1)
    images, labels, source = ds.tensors
    assert len(ds) == 600 and torch.equal(labels, torch.cat([y, y]))
    assert source.tolist() == [0] * 300 + [1] * 300
    assert torch.equal(images[:300, :, 6:34, 6:34], x)  # the MNIST half: centred, untouched
    assert torch.equal(images[300:], affine_digits(x, 1)[0])


def test_random_place_keeps_every_pixel():
    torch.manual_seed(0)
    x = torch.rand(16, 1, 28, 28)
    out = random_place(x, 40)
    assert out.shape == (16, 1, 40, 40)
    torch.testing.assert_close(out.sum((1, 2, 3)), x.sum((1, 2, 3)))
    assert len({tuple(ink_box((o[0] > 0).to(torch.uint8)[None])[0].tolist()) for o in out}) > 1


def test_affine_metrics_by_hand():
    scores = torch.eye(3)[[0, 1, 2, 0]]  # predictions 0, 1, 2, 0
    y = torch.tensor([0, 1, 1, 1])
    m = affine_metrics(scores, y, torch.tensor([0, 0, 1, 1]))
    assert m["accuracy"] == 0.5 and m["mnist_accuracy"] == 1.0 and m["affine_accuracy"] == 0.0
    assert math.isclose(m["affine_error"], 1.0)


def test_cnn_baseline_size_and_output():
    from capsule_kit.registry import MODELS

    cnn = MODELS.build("cnn_baseline", input_shape=(1, 40, 40), num_classes=10)
    caps = MODELS.build("capsnet", input_shape=(1, 40, 40), num_classes=10, decoder=False)
    n_cnn, n_caps = (sum(p.numel() for p in m.parameters()) for m in (cnn, caps))
    assert n_cnn == 11_746_194 and abs(n_cnn - n_caps) / n_caps < 0.1
    out = cnn.eval()(torch.rand(2, 1, 40, 40))
    assert out.lengths.shape == (2, 10) and ((out.lengths > 0) & (out.lengths < 1)).all()


SMOKE = [
    "trainer.max_steps=2",
    "trainer.eval_max_steps=2",
    "trainer.batch_size=8",
    "trainer.progress=false",
    "data.train_limit=32",
    "data.test_limit=8",
]


@pytest.mark.parametrize("recipe", ["recipes/affine.yaml", "recipes/affine_cnn.yaml"])
def test_affine_recipes_run_two_steps_and_report_both_sets(recipe, tmp_path):
    proc = run_cli(recipe, *SMOKE, f"output_dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = results(only_run_dir(tmp_path))
    assert res["steps"] == 2
    for key in ("mnist_accuracy", "affine_accuracy"):
        assert 0.0 <= res["test"][key] <= 1.0
