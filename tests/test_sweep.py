"""Seed sweeps: one recipe over seeds, mean +- std in summary.json, one-line errors."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys

import pytest

from capsule_kit.errors import ConfigError
from capsule_kit.sweep import parse_keys, parse_seeds, summarize, sweep
from tests.helpers import REPO

SMOKE = ["trainer.max_steps=2", "trainer.eval_max_steps=1", "trainer.batch_size=8", "trainer.progress=false"]


def test_summary_is_mean_and_sample_std_of_common_metrics():
    runs = [{"test": {"accuracy": a, "loss": 1.0, "cm": [[1]]}} for a in (0.5, 0.7, 0.9)]
    runs[1]["test"]["only_here"] = 3.0
    out = summarize(runs)
    assert set(out) == {"accuracy", "loss"}
    assert out["accuracy"]["mean"] == pytest.approx(0.7)
    assert out["accuracy"]["std"] == pytest.approx(statistics.stdev([0.5, 0.7, 0.9]))
    assert out["accuracy"]["values"] == [0.5, 0.7, 0.9]


@pytest.mark.parametrize("bad", ["", "0,x", "1,1"])
def test_bad_seed_lists_are_refused(bad):
    with pytest.raises(ConfigError, match="--seeds"):
        parse_seeds(bad)


def test_cli_sweeps_two_seeds_into_one_folder(tmp_path):
    out = tmp_path / "runs"
    cmd = [sys.executable, "-m", "capsule_kit.sweep", "examples/sklearn_digits.yaml", "--seeds", "3,4"]
    proc = subprocess.run([*cmd, *SMOKE, f"output_dir={out}"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (folder,) = out.iterdir()
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["seeds"] == [3, 4] and len(summary["runs"]) == 2
    seeds = [json.loads((folder / run / "results.json").read_text()) for run in map(str, summary["runs"])]
    accs = [r["test"]["accuracy"] for r in seeds]
    assert summary["test"]["accuracy"]["values"] == accs
    recipes = sorted((folder).glob("*/recipe.yaml"))
    assert [("seed: 3" in r.read_text(), "seed: 4" in r.read_text()) for r in recipes] == [(True, False), (False, True)]
    assert "accuracy:" in proc.stdout and "+-" in proc.stdout


def test_cli_bad_override_is_one_line(tmp_path):
    cmd = [sys.executable, "-m", "capsule_kit.sweep", "examples/sklearn_digits.yaml", "trainer.epoch=1"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and "did you mean 'trainer.epochs'" in proc.stderr


def test_keys_give_each_seed_its_own_folds(tmp_path, monkeypatch):
    """--keys trainer.seed,split.seed: seed S is written to both keys (3 CV seeds), summary says which."""
    from capsule_kit import run

    seen = []

    def fake_train(cfg, task_cls, **kw):
        seen.append((cfg.trainer.seed, cfg.split.seed))
        return {"test": {"accuracy": cfg.split.seed / 10}, "run_dir": f"run{cfg.split.seed}"}

    monkeypatch.setattr(run, "train", fake_train)
    recipe, keys = str(REPO / "recipes" / "graph_cls.yaml"), ("trainer.seed", "split.seed")
    summary = sweep(recipe, [5, 6], [f"output_dir={tmp_path}"], keys)
    assert seen == [(5, 5), (6, 6)] and summary["seed_keys"] == ["trainer.seed", "split.seed"]
    assert summary["test"]["accuracy"]["values"] == [0.5, 0.6]
    with pytest.raises(ConfigError, match="--keys"):
        parse_keys("trainer.seed;rm")
