"""Learning-rate schedules: hand-computed factors, the optimizer's rates, resume equality."""

from __future__ import annotations

import json
import math

import pytest
import torch

from capsule_kit import run
from capsule_kit.config import TrainerConfig
from capsule_kit.schedule import Schedule, lr_factor
from tests.helpers import REPO, TINY_MNIST, only_run_dir
from tests.test_runner import assert_same, sigint_at_train_step, train_tiny, weights


def test_exponential_is_per_epoch_decay():
    cfg = TrainerConfig(lr_decay=0.5)
    assert [lr_factor(cfg, step, epoch, 100) for step, epoch in [(0, 0), (49, 0), (50, 1), (99, 2)]] == [
        1.0, 1.0, 0.5, 0.25,
    ]  # fmt: skip


def test_exponential_matches_torch_exponential_lr():
    model = torch.nn.Linear(2, 2)
    ref_opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ref = torch.optim.lr_scheduler.ExponentialLR(ref_opt, gamma=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = Schedule(opt, TrainerConfig(lr_decay=0.9), total=30)
    for epoch in range(3):
        for step in range(epoch * 10, epoch * 10 + 10):
            sched.apply(step, epoch)
            assert opt.param_groups[0]["lr"] == pytest.approx(ref_opt.param_groups[0]["lr"], rel=1e-12)
        ref_opt.step()  # no gradients: a no-op, in the order torch expects
        ref.step()


def test_cosine_and_warmup_hand_values():
    cfg = TrainerConfig(schedule="cosine")
    assert lr_factor(cfg, 0, 0, 100) == 1.0
    assert lr_factor(cfg, 50, 0, 100) == pytest.approx(0.5)
    assert lr_factor(cfg, 25, 3, 100) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))  # epoch plays no part
    assert lr_factor(cfg, 100, 0, 100) == pytest.approx(0.0) and lr_factor(cfg, 150, 0, 100) == pytest.approx(0.0)
    warm = TrainerConfig(schedule="cosine", warmup_steps=3)
    assert [lr_factor(warm, s, 0, 1000) for s in range(3)] == pytest.approx([0.25, 0.5, 0.75], rel=1e-5)
    assert lr_factor(TrainerConfig(warmup_steps=3, lr_decay=0.5), 10, 1, 100) == 0.5


def test_parameter_groups_keep_their_ratio():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    opt = torch.optim.Adam([{"params": a.parameters(), "lr": 0.02}, {"params": b.parameters(), "lr": 0.002}])
    Schedule(opt, TrainerConfig(schedule="cosine"), total=10).apply(5, 0)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.01, 0.001])


def test_logged_rates_follow_the_cosine(tmp_path):
    out = tmp_path / "runs"
    args = [str(REPO / "recipes" / "mnist.yaml"), *TINY_MNIST, "split.val_size=null", f"output_dir={out}",
            "trainer.schedule=cosine", "trainer.epochs=2", "trainer.log_every=1", "trainer.lr=0.01",
            "trainer.warmup_steps=0"]  # fmt: skip
    assert run.main(args) == 0
    rows = [json.loads(line) for line in (only_run_dir(out) / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in rows if r["kind"] == "train"]
    total = len(lrs)  # 48 images / 16 = 3 steps per epoch, 2 epochs
    assert total == 6
    assert lrs == pytest.approx([0.01 * 0.5 * (1 + math.cos(math.pi * s / total)) for s in range(total)])


def test_cosine_resume_mid_epoch_equals_uninterrupted(tmp_path, monkeypatch):
    """Stopped by a signal in epoch 2 and resumed: the same weights as one uninterrupted run."""
    extra = ("trainer.epochs=2", "trainer.schedule=cosine", "trainer.warmup_steps=2")
    from capsule_kit_tasks.digits.task import DigitsTask

    full = train_tiny(tmp_path / "a", *extra)
    original = sigint_at_train_step(monkeypatch, 5)  # inside epoch 2 (3 steps per epoch)
    out = tmp_path / "b" / "runs"
    assert run.main([str(REPO / "recipes" / "mnist.yaml"), *TINY_MNIST, f"output_dir={out}", *extra]) == 130
    monkeypatch.setattr(DigitsTask, "step", original)
    assert run.main(["--resume", str(only_run_dir(out))]) == 0
    assert_same(weights(full), weights(only_run_dir(out)))
