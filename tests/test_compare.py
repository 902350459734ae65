"""``python -m capsule_kit.compare`` through the CLI: nested runs, bad runs, recipe differences, sorting, plots."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import matplotlib.image
import pytest
import yaml

from tests.helpers import REPO, only_run_dir, run_cli

BAD = {  # results.json contents that must be skipped with one line each
    "corrupt": '{"name": "mnist", "test": {"accuracy": 0.9',
    "empty": "",
    "list": "[1, 2, 3]",
    "test_is_text": '{"name": "x", "test": "high"}',
    "params_is_text": '{"name": "x", "params": "many", "test": {"accuracy": 0.5}}',
}


def compare(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "capsule_kit.compare", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """runs/a/<real run>, runs/b/c/<copy with another lr and accuracy>, and five broken runs."""
    root = tmp_path_factory.mktemp("compare") / "runs"
    proc = run_cli(str(REPO / "recipes" / "mnist.yaml"), "model.name=capsnet_tiny", "data.train_limit=32",
                   "data.test_limit=16", "trainer.batch_size=16", "trainer.max_steps=2", "trainer.log_every=1",
                   "trainer.progress=false", "trainer.threads=1", f"output_dir={root / 'a'}", timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    first = only_run_dir(root / "a")
    second = root / "b" / "c" / "mnist-copy"
    shutil.copytree(first, second)
    recipe = yaml.safe_load((second / "recipe.yaml").read_text())
    recipe["trainer"]["lr"] = 0.5
    (second / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    res = json.loads((first / "results.json").read_text())
    res["test"]["accuracy"] = res["test"]["accuracy"] + 0.25  # a distinct, larger value to sort by
    (second / "results.json").write_text(json.dumps(res))
    for name, text in BAD.items():
        (root / "bad" / name).mkdir(parents=True)
        (root / "bad" / name / "results.json").write_text(text)
    return root, first, second


def test_nested_runs_found_and_bad_runs_skipped_in_one_line_each(tree):
    root, first, second = tree
    proc = compare(root, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert sorted(r["run"] for r in rows) == sorted([first.name, second.name])
    err = proc.stderr.strip().splitlines()
    assert len(err) == len(BAD) and "Traceback" not in proc.stderr
    for name in BAD:
        (line,) = [e for e in err if f"/bad/{name}:" in e]
        assert line.startswith("skipped ")
    assert "not valid JSON" in proc.stderr and "holds a list" in proc.stderr and "'params' is str" in proc.stderr


def test_recipe_keys_that_differ_are_columns_and_equal_ones_are_not(tree):
    root, first, second = tree
    rows = {r["run"]: r for r in json.loads(compare(root, "--format", "json").stdout)}
    lr = yaml.safe_load((first / "recipe.yaml").read_text())["trainer"]["lr"]
    assert rows[first.name]["trainer.lr"] == lr and rows[second.name]["trainer.lr"] == 0.5
    assert not any(k.startswith(("trainer.batch_size", "model.", "data.")) for k in rows[first.name])
    text = compare(root).stdout.splitlines()
    assert text[0].split()[:4] == ["run", "recipe", "task", "trainer.lr"]


def test_sort_by_metric_both_ways_and_unknown_key(tree):
    root, first, second = tree
    down = [r["run"] for r in json.loads(compare(root, "--sort", "test.accuracy", "--format", "json").stdout)]
    assert down == [second.name, first.name]  # the copy's accuracy is 0.25 higher
    up = compare(root, "--sort", "test_accuracy", "--ascending", "--format", "json")
    assert [r["run"] for r in json.loads(up.stdout)] == [first.name, second.name]
    bad = compare(root, "--sort", "test.nope")
    assert bad.returncode == 2 and bad.stderr.count("\n") == len(BAD) + 1
    assert "no column 'test.nope'" in bad.stderr and "test_accuracy" in bad.stderr and "Traceback" not in bad.stderr


def test_plot_overlays_the_runs_curves(tree, tmp_path):
    root, _, _ = tree
    out = tmp_path / "overlay.png"
    proc = compare(root, "--plot", out)
    assert proc.returncode == 0 and out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(out)
    assert image.shape[1] > image.shape[0] > 200 and image[..., :3].std() > 0.05  # two panels with lines
    missing = compare(root, "--plot", tmp_path / "no" / "such" / "x.png")
    assert missing.returncode == 2 and "--plot" in missing.stderr and missing.stdout == ""


def test_only_bad_runs_is_an_error(tree):
    root, _, _ = tree
    proc = compare(root / "bad")
    assert proc.returncode == 2 and "no run directories with a readable results.json" in proc.stderr
    assert proc.stderr.count("skipped ") == len(BAD) and "Traceback" not in proc.stderr
