"""A finished run as something to share and reuse (issue 16 items 3-6, 10; issue 14 items 5-6).

--eval of a run or checkpoint without its recipe, load_run for every domain, weights-only
best.pt/model.pt, file modes from the umask, versions in run.json, dataset sizes in results.json,
the CLI's --version, and user tasks that resume from anywhere.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

import capsule_kit
from capsule_kit.checkpoint import load_checkpoint
from capsule_kit.rundir import RunDir
from capsule_kit.session import git_commit
from conftest import data_path
from tests.helpers import REPO, TINY_MNIST, only_run_dir, results, run_cli

TINY = [*TINY_MNIST, "trainer.threads=1", "trainer.max_steps=2"]


def umask_027():
    os.umask(0o027)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A 2-step tiny MNIST run made under umask 027."""
    out = tmp_path_factory.mktemp("tiny") / "runs"
    cmd = [sys.executable, "-m", "capsule_kit.run", "recipes/mnist.yaml", *TINY, f"output_dir={out}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600, preexec_fn=umask_027)
    assert proc.returncode == 0, proc.stderr
    return only_run_dir(out)


def test_files_follow_the_umask(tiny_run):
    run = RunDir(tiny_run)
    for path in (run.results, run.run_json, run.recipe, run.report, run.last, run.model, run.curves):
        assert path.stat().st_mode & 0o777 == 0o640, path  # 0o666 & ~0o027 (mkstemp alone gives 0o600)


def test_model_holds_weights_only(tiny_run):
    run = RunDir(tiny_run)
    last, model = (load_checkpoint(p) for p in (run.last, run.model))
    assert {"optimizer", "scheduler", "rng"} <= set(last) and not {"optimizer", "scheduler", "rng"} & set(model)
    best = load_checkpoint(run.best)  # MNIST's validation split (split.val_size) chose it
    assert "model" in best and not {"optimizer", "scheduler", "rng"} & set(best)
    for k, v in last["model"].items():
        assert torch.equal(v, model["model"][k]), k  # test_weights=last: model.pt holds the final weights
    assert run.model.stat().st_size < 0.5 * run.last.stat().st_size  # Adam's two moments are gone


def test_run_json_records_version_and_commit_and_results_the_data_sizes(tiny_run, tmp_path):
    env = json.loads((tiny_run / "run.json").read_text())
    assert env["capsule_kit"] == metadata.version("capsule-kit")
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    assert env["git_commit"] == (head or None)
    assert git_commit(tmp_path) is None  # outside a git checkout: no commit, no failure
    assert results(tiny_run)["data"] == {"train": 48, "val": 32, "test": 32}


def test_version_flag_through_both_commands():
    proc = run_cli("--version")  # python -m capsule_kit.run
    assert proc.returncode == 0 and proc.stdout.strip().startswith(f"capsule-kit {metadata.version('capsule-kit')}")
    script = Path(sys.executable).with_name("capsule-kit")  # the console script pip installed
    assert script.is_file()
    proc = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout == run_cli("--version").stdout


def test_eval_a_run_dir_or_checkpoint_without_recipe(tiny_run, tmp_path):
    out = tmp_path / "ev"
    proc = run_cli("--eval", str(tiny_run), f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout)
    assert got["test"]["accuracy"] == pytest.approx(results(tiny_run)["test"]["accuracy"])  # same weights, same data
    eval_dir = Path(got["run_dir"])
    assert not (eval_dir / "checkpoints").exists()  # an evaluation has no checkpoints
    assert results(eval_dir)["checkpoint"] == str(tiny_run / "checkpoints" / "model.pt")
    proc = run_cli("--eval", str(tiny_run / "checkpoints" / "model.pt"), "data.test_limit=16", f"output_dir={out}")
    assert proc.returncode == 0, proc.stderr  # the recipe stored in the checkpoint, with an override
    matrix = results(Path(json.loads(proc.stdout)["run_dir"]))["test"]["confusion_matrix"]
    assert sum(map(sum, matrix)) == 16


def test_load_run_digits_gives_the_tested_model(tiny_run):
    loaded = capsule_kit.load_run(tiny_run)
    assert loaded.cfg.model.name == "capsnet_tiny" and type(loaded.task).__name__ == "DigitsTask"
    assert loaded.evaluate()["accuracy"] == pytest.approx(results(tiny_run)["test"]["accuracy"])
    batch = next(iter(loaded.loader("test")))
    out = loaded.predict(batch)
    assert out["lengths"].shape == (16, 10) and ((out["lengths"] >= 0) & (out["lengths"] < 1)).all()


SST2 = data_path("text", "sst2")
DOMAINS = {
    "text": ("text_cls.yaml", ["trainer.max_steps=2", "trainer.eval_max_steps=2", "trainer.batch_size=8",
                               "model.embed_dim=16", "model.conv_types=4", "model.conv_dim=8"]),
    "graphs": ("graph_cls.yaml", ["split.folds=1", "trainer.max_steps=2", "trainer.eval_max_steps=2",
                                  "trainer.batch_size=8"]),
    "points": ("points_tiny.yaml", ["trainer.max_steps=2", "trainer.eval_max_steps=2"]),
}  # fmt: skip


@pytest.mark.parametrize("domain", sorted(DOMAINS))
def test_load_run_every_domain(domain, tmp_path, cache_env):
    if domain == "text" and not (SST2 / "train.tsv").is_file():
        pytest.skip("SST-2 not under the data root")
    recipe, overrides = DOMAINS[domain]
    res = capsule_kit.train(REPO / "recipes" / recipe, *overrides, "trainer.progress=false",
                            f"output_dir={tmp_path / 'runs'}")  # fmt: skip
    run = Path(res["run_dir"])
    loaded = capsule_kit.load_run(run)
    saved = load_checkpoint(run / "checkpoints" / "model.pt")["model"]
    for k, v in loaded.model.state_dict().items():
        assert torch.equal(v.cpu(), saved[k]), k
    out = loaded.predict(next(iter(loaded.loader("test"))))
    assert out and all(isinstance(v, torch.Tensor) for v in out.values())
    if domain == "text":  # a validation split (dev.tsv): best.pt exists and holds weights only
        best = load_checkpoint(run / "checkpoints" / "best.pt")
        assert "model" in best and not {"optimizer", "scheduler", "rng"} & set(best)


USER_TASK = '''
from capsule_kit import register_task
from capsule_kit_tasks.digits.task import DigitsTask


@register_task("my_digits")
class MyDigits(DigitsTask):
    """A user's task, registered by name in a module of the user's folder."""
'''


def test_registered_user_task_by_name_and_resume_from_anywhere(tmp_path):
    home = tmp_path / "project"
    home.mkdir()
    (home / "mytask.py").write_text(USER_TASK)
    recipe = (REPO / "recipes" / "mnist.yaml").read_text().replace("task: digits", "task: my_digits")
    (home / "mine.yaml").write_text(recipe)
    out = tmp_path / "runs"
    err = run_cli(str(home / "mine.yaml"), *TINY, f"output_dir={out}").stderr.strip()
    assert "unknown task 'my_digits'" in err and "imports: [module]" in err and "module:Class" in err, err
    (home / "mine.yaml").write_text(recipe.replace("task: my_digits", "task: my_digits\nimports: [mytask]"))
    proc = run_cli("mine.yaml", *TINY, "trainer.max_steps=1", f"output_dir={out}", cwd=home)
    assert proc.returncode == 0, proc.stderr
    run = only_run_dir(out)
    assert json.loads((run / "run.json").read_text())["task_paths"] == [str(home)]
    proc = run_cli("--resume", str(run), "trainer.max_steps=2", cwd=tmp_path)  # another folder: module found again
    assert proc.returncode == 0, proc.stderr
    assert results(run)["steps"] == 2


def test_cross_validation_sums_steps_and_time_over_folds(tmp_path, cache_env):
    quick = ["trainer.max_steps=1", "trainer.batch_size=8", "trainer.eval_max_steps=1", "trainer.progress=false"]
    res = capsule_kit.train(
        REPO / "recipes" / "graph_cls.yaml", "split.folds=2", *quick, f"output_dir={tmp_path / 'runs'}"
    )
    assert len(res["folds"]) == 2 and res["steps"] == 2  # 1 step in each fold (was: the last fold's 1)
    assert res["train_examples"] == 16  # one batch of 8 in each fold
    assert res["train_time_s"] >= 0 and res["train_examples_per_s"] > 0
