"""The runner: validation, one-line errors, overrides, atomic checkpoints, safe loading, resume, DDP."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from capsule_kit import run
from capsule_kit.checkpoint import atomic_write, load_checkpoint, save_checkpoint
from capsule_kit.errors import CheckpointError
from tests.helpers import REPO, TINY_MNIST, free_port, only_run_dir, results, run_cli

TINY = [*TINY_MNIST, "trainer.log_every=1"]
RECIPES = sorted(p.relative_to(REPO) for p in (REPO / "recipes").rglob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=str)
def test_every_recipe_validates(recipe, capsys):
    assert run.main([str(REPO / recipe), "--validate"]) == 0
    assert "ok:" in capsys.readouterr().out


def error_line(capsys, argv) -> str:
    assert run.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in err
    return err


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return str(path)


def test_errors_are_one_line_with_exit_2(tmp_path, capsys):
    mnist = str(REPO / "recipes" / "mnist.yaml")
    assert "recipe not found" in error_line(capsys, [str(tmp_path / "nope.yaml")])
    assert "line 2" in error_line(capsys, [write(tmp_path, "task: digits\ntrainer: a: b\n")])
    err = error_line(capsys, [mnist, "trainer.epoch=3", "--validate"])
    assert "unknown key 'trainer.epoch'" in err and "did you mean 'trainer.epochs'" in err
    err = error_line(capsys, [mnist, "trainer.batch_size=many", "--validate"])
    assert "trainer.batch_size" in err and "integer" in err
    err = error_line(capsys, [mnist, "task=digitz", "--validate"])
    assert "unknown task 'digitz'" in err and "did you mean 'digits'" in err and "known:" in err
    assert "unknown model 'capsnett'" in error_line(capsys, [mnist, "model.name=capsnett", "--validate"])
    assert "unknown routing 'dynamc'" in error_line(capsys, [mnist, "model.routing.name=dynamc", "--validate"])
    err = error_line(capsys, [mnist, f"data.root={tmp_path / 'missing'}", "--validate"])
    assert "MNIST idx files not found" in err and str(tmp_path / "missing") in err
    out = tmp_path / "runs"  # without its validation digits 'best' would be picked on the test split
    err = error_line(capsys, [mnist, *TINY, "split.val_size=null", "trainer.test_weights=best", f"output_dir={out}"])
    assert "trainer.test_weights: 'best' needs a validation split" in err


def test_overrides_are_typed():
    cfg, _ = run.load_recipe(
        REPO / "recipes" / "mnist.yaml", ["trainer.epochs=1", "trainer.lr=2e-3", "model.decoder=false"]
    )
    assert cfg.trainer.epochs == 1 and isinstance(cfg.trainer.epochs, int)
    assert cfg.trainer.lr == pytest.approx(2e-3) and cfg.model.decoder is False
    args = run.parse_args(["r.yaml", "a=1", "--eval", "c.pt", "b=2"])  # overrides on both sides of an option
    assert (args.recipe, args.overrides, args.eval) == ("r.yaml", ["a=1", "b=2"], "c.pt")


def test_atomic_write_keeps_old_file_on_crash(tmp_path):
    target = tmp_path / "ck.pt"
    save_checkpoint(target, {"step": 1})

    def crash(f):
        f.write(b"half a checkpoint")
        raise RuntimeError("disk gone")

    with pytest.raises(RuntimeError):
        atomic_write(target, crash)
    assert load_checkpoint(target)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/capsule_kit_pwned",))


def test_checkpoint_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": "capsule-kit/1", "model": Evil()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps(Evil()))
    with pytest.raises(CheckpointError):
        load_checkpoint(raw)
    assert not Path("/tmp/capsule_kit_pwned").exists()


def test_truncated_and_foreign_checkpoints(tmp_path, capsys):
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {"w": torch.ones(1000)}})
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:300])
    torch.save({"weights": torch.ones(2)}, tmp_path / "foreign.pt")
    mnist = str(REPO / "recipes" / "mnist.yaml")
    assert "truncated" in error_line(capsys, [mnist, *TINY, "--eval", str(tmp_path / "cut.pt")])
    assert "not a capsule-kit checkpoint" in error_line(capsys, [mnist, *TINY, "--eval", str(tmp_path / "foreign.pt")])


def train_tiny(tmp_path: Path, *extra: str) -> Path:
    out = tmp_path / "runs"
    assert run.main([str(REPO / "recipes" / "mnist.yaml"), *TINY, f"output_dir={out}", *extra]) == 0
    return only_run_dir(out)


def weights(run_dir: Path) -> dict:
    return load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"]


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_after_epoch_equals_uninterrupted(tmp_path):
    """More epochs on resume: exact under a per-epoch schedule (a cosine's horizon is the planned steps)."""
    full = train_tiny(tmp_path / "a", "trainer.epochs=2", "trainer.schedule=exponential")
    part = train_tiny(tmp_path / "b", "trainer.epochs=1", "trainer.schedule=exponential")
    assert run.main(["--resume", str(part), "trainer.epochs=2"]) == 0
    assert_same(weights(full), weights(part))
    assert results(part)["steps"] == results(full)["steps"] == 6


def sigint_at_train_step(monkeypatch, n: int):
    """Fault injection: SIGINT during the ``n``-th training step of the digits task; returns the real ``step``."""
    from capsule_kit_tasks.digits.task import DigitsTask

    original, calls = DigitsTask.step, {"n": 0}

    def step(self, model, batch, *, train):
        if train:
            calls["n"] += 1
            if calls["n"] == n:
                signal.raise_signal(signal.SIGINT)
        return original(self, model, batch, train=train)

    monkeypatch.setattr(DigitsTask, "step", step)
    return original


def test_signal_mid_epoch_saves_and_resumes_exactly(tmp_path, monkeypatch):
    from capsule_kit_tasks.digits.task import DigitsTask

    full = train_tiny(tmp_path / "a", "trainer.epochs=2")
    original = sigint_at_train_step(monkeypatch, 4)  # second batch of epoch 2
    out = tmp_path / "b" / "runs"
    assert run.main([str(REPO / "recipes" / "mnist.yaml"), *TINY, f"output_dir={out}", "trainer.epochs=2"]) == 130
    part = only_run_dir(out)
    assert load_checkpoint(part / "checkpoints" / "last.pt")["loop"]["step"] == 4
    monkeypatch.setattr(DigitsTask, "step", original)
    assert run.main(["--resume", str(part)]) == 0
    assert_same(weights(full), weights(part))


def test_cli_writes_run_directory_and_eval(tmp_path):
    out = tmp_path / "runs"
    proc = run_cli("recipes/mnist.yaml", *TINY, "split.val_size=null", "trainer.max_steps=2", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr
    run_dir = only_run_dir(out)
    for name in (
        "recipe.yaml",
        "metrics.jsonl",
        "results.json",
        "curves.png",
        "reconstructions.png",
        "perturbations.png",
        "checkpoints/last.pt",
    ):
        assert (run_dir / name).exists(), name
    assert not (run_dir / "checkpoints" / "best.pt").exists()  # no validation split: no "best" is claimed
    res = results(run_dir)
    assert res["steps"] == 2 and res["params"] > 0 and 0 <= res["test"]["accuracy"] <= 1
    proc = run_cli("recipes/mnist.yaml", *TINY, f"output_dir={out}", "--eval", str(run_dir / "checkpoints" / "last.pt"))
    assert proc.returncode == 0, proc.stderr
    assert '"accuracy"' in proc.stdout


@pytest.mark.skipif(
    shutil.which("torchrun") is None and not (Path(sys.executable).parent / "torchrun").exists(),
    reason="torchrun not installed",
)
def test_torchrun_two_cpu_processes(tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
    out = tmp_path / "runs"
    cmd = [
        torchrun,
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        "-m",
        "capsule_kit.run",
        "recipes/mnist.yaml",
        *TINY,
        "trainer.max_steps=2",
        "trainer.device=cpu",
        f"output_dir={out}",
    ]
    proc = subprocess.run(
        cmd, cwd=REPO, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"}
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = only_run_dir(out)
    assert results(run_dir)["steps"] == 2
    assert (run_dir / "checkpoints" / "last.pt").exists()


def test_tensorboard_scalars_and_pictures(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "runs"
    assert (
        run.main(
            [
                str(REPO / "recipes" / "mnist.yaml"),
                *TINY,
                "trainer.max_steps=2",
                "trainer.tensorboard=true",
                "split.val_size=null",
                f"output_dir={out}",
            ]
        )
        == 0
    )  # fmt: skip  (no val: epochs evaluate test)
    run_dir = only_run_dir(out)
    events = EventAccumulator(str(run_dir / "tb"), size_guidance={"images": 0, "scalars": 0}).Reload()
    losses = [e.value for e in events.Scalars("train/loss")]
    logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert losses == pytest.approx([r["loss"] for r in logged if r["kind"] == "train"])
    assert events.Scalars("epoch/test_accuracy")[0].value == pytest.approx(results(run_dir)["test"]["accuracy"])
    pictures = {f"pictures/{p.stem}" for p in run_dir.glob("*.png")}
    assert {"pictures/curves", "pictures/reconstructions"} <= pictures == set(events.Tags()["images"])
