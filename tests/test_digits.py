"""Digits: idx reading, shift augmentation, MultiMNIST, metrics, and every digits recipe via the CLI."""

from __future__ import annotations

import gzip

import pytest
import torch

from capsule_kit.errors import DataError
from capsule_kit_tasks.digits.data import load_mnist, multimnist, multimnist_test_set, place, random_shift, read_idx
from capsule_kit_tasks.digits.task import DigitsTask
from tests.helpers import only_run_dir, results, run_cli


def test_vendored_mnist_has_official_counts():
    x, y = load_mnist(None, "test")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.uint8
    assert torch.bincount(y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    header = bytes([0, 0, 8, 1]) + (5).to_bytes(4, "big")
    (tmp_path / "short.gz").write_bytes(gzip.compress(header + b"abc"))
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "x.idx").write_bytes(b"PK\x03\x04 not an idx file")
    with pytest.raises(DataError, match="magic"):
        read_idx(tmp_path / "x.idx")


def test_random_shift_moves_content_without_wrapping():
    torch.manual_seed(0)
    x = torch.zeros(64, 1, 28, 28)
    x[:, :, 10:18, 10:18] = 1.0
    out = random_shift(x, 2)
    assert out.shape == x.shape
    assert torch.equal(out.sum((1, 2, 3)), x.sum((1, 2, 3)))  # a centred blob never leaves the frame
    rows = out[:, 0].sum(2).nonzero()[:, 1].view(64, -1)[:, 0]
    assert set((rows - 10).tolist()) <= set(range(-2, 3)) and len(set(rows.tolist())) > 1


def test_multimnist_pairs_differ_and_overlay():
    x, y = load_mnist(None, "test")
    xf = x[:200].float() / 255
    torch.manual_seed(0)
    merged, labels, digits = multimnist(xf, y[:200])
    assert merged.shape == (200, 1, 36, 36) and digits.shape == (200, 2, 1, 36, 36)
    assert (labels[:, 0] != labels[:, 1]).all()
    assert torch.allclose(merged, (digits[:, 0] + digits[:, 1]).clamp(max=1))
    assert torch.allclose(digits[:, 0].sum((1, 2, 3)), xf.sum((1, 2, 3)), atol=1e-3)  # shift <= 4 keeps the digit
    a, la, _ = multimnist_test_set(x[:100], y[:100], 50, seed=3)
    b, lb, _ = multimnist_test_set(x[:100], y[:100], 50, seed=3)
    assert torch.equal(a, b) and torch.equal(la, lb)


def test_multimnist_hit_needs_both_digits():
    pred = torch.tensor([[3, 5], [5, 3], [3, 4]])
    y = torch.tensor([[5, 3], [5, 3], [3, 5]])
    assert DigitsTask.hits(pred, y).tolist() == [True, True, False]


SMOKE = [
    "trainer.max_steps=2",
    "trainer.eval_max_steps=2",
    "trainer.batch_size=8",
    "trainer.progress=false",
    "data.train_limit=64",
    "data.test_limit=64",
]


@pytest.mark.parametrize(
    "recipe, extra",
    [
        ("recipes/mnist.yaml", []),
        ("recipes/multimnist.yaml", ["data.test_pairs=32"]),
        ("recipes/mnist_em.yaml", []),
        ("recipes/mnist_em_small.yaml", []),
        ("recipes/mnist_efficient.yaml", []),
    ],
)
def test_digits_recipe_runs_two_steps_then_resumes(recipe, extra, tmp_path):
    out = tmp_path / "runs"
    proc = run_cli(recipe, *SMOKE, *extra, f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = only_run_dir(out)
    assert results(run_dir)["steps"] == 2
    proc = run_cli("--resume", str(run_dir), "trainer.max_steps=3")
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = results(run_dir)
    assert res["steps"] == 3 and 0.0 <= res["test"]["accuracy"] <= 1.0
    if "multimnist" in recipe:
        assert (run_dir / "multimnist_reconstructions.png").exists()


def loop_shift(x, max_shift, offsets):
    """The old per-image loop (reference for the vectorised shift)."""
    h, w = x.shape[-2:]
    padded = torch.nn.functional.pad(x, (max_shift,) * 4)
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(offsets.tolist())])


def loop_place(x, size, offsets):
    """The old per-image loop (reference for the vectorised placement)."""
    canvas = x.new_zeros(x.shape[0], x.shape[1], size, size)
    for i, (r, c) in enumerate(offsets.tolist()):
        canvas[i, :, r : r + x.shape[2], c : c + x.shape[3]] = x[i]
    return canvas


def test_vectorised_shift_and_place_equal_the_loops():
    x = torch.rand(7, 2, 28, 28)
    torch.manual_seed(3)
    out = random_shift(x, 3)
    torch.manual_seed(3)
    offsets = torch.randint(0, 7, (7, 2))  # the same draw random_shift makes
    assert torch.equal(out, loop_shift(x, 3, offsets))
    assert len({tuple(o) for o in offsets.tolist()}) > 1  # the images really move differently
    corners = torch.tensor([[0, 0], [8, 8], [4, 1], [0, 8], [8, 0], [3, 3], [5, 7]])
    assert torch.equal(place(x, 36, corners), loop_place(x, 36, corners))
    assert torch.equal(place(x, 36, corners.tolist()), loop_place(x, 36, corners))  # list offsets still work


def test_cnn_cross_entropy_is_softmax_cross_entropy_on_its_logits():
    from capsule_kit.models import build
    from capsule_kit.run import load_recipe
    from tests.helpers import REPO

    cfg, task_cls = load_recipe(REPO / "recipes" / "affine_cnn.yaml", ["loss.kind=cross_entropy"])
    task = task_cls(cfg)
    torch.manual_seed(0)
    model = build("cnn_baseline_tiny", input_shape=(1, 40, 40))
    x, y = torch.rand(4, 1, 40, 40), torch.tensor([0, 3, 3, 9])
    out = model(x)
    assert torch.allclose(out.lengths, out.poses[..., 0].sigmoid())
    ref = -torch.log_softmax(out.poses[..., 0], -1)[torch.arange(4), y].mean()
    assert torch.allclose(task.class_loss(out, y), ref)


def test_cross_entropy_needs_a_cnn_and_one_label(tmp_path):
    for recipe, why in (("mnist.yaml", "needs class logits"), ("multimnist.yaml", "needs class logits")):
        proc = run_cli(f"recipes/{recipe}", "loss.kind=cross_entropy", "--validate")
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert f"loss.kind: cross_entropy {why}" in proc.stderr
    proc = run_cli("recipes/multimnist.yaml", "loss.kind=cross_entropy", "model.name=cnn_baseline", "--validate")
    assert proc.returncode == 2 and "multimnist has two" in proc.stderr
