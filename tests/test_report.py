"""report.html is self-contained and embeds every picture; compare tabulates runs."""

from __future__ import annotations

import csv
import io
import json
from html.parser import HTMLParser

import pytest

from capsule_kit import compare, run
from tests.helpers import REPO, only_run_dir

TINY = [
    "model.name=capsnet_tiny",
    "data.train_limit=32",
    "data.test_limit=16",
    "trainer.batch_size=16",
    "trainer.progress=false",
    "trainer.max_steps=2",
]


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.urls = [], []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith(("data:", "#")):
                self.urls.append(a[key])


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    for seed in (0, 1):
        assert run.main([str(REPO / "recipes" / "mnist.yaml"), *TINY, f"trainer.seed={seed}", f"output_dir={out}"]) == 0
    return out


def test_report_embeds_every_picture_and_no_url(two_runs):
    run_dir = sorted(two_runs.iterdir())[0]
    text = (run_dir / "report.html").read_text()
    page = Page()
    page.feed(text)
    pngs = {p.name for p in run_dir.glob("*.png")}
    assert {"curves.png", "reconstructions.png", "perturbations.png"} <= pngs
    assert {img["data-file"] for img in page.images} == pngs
    assert all(img["src"].startswith("data:image/png;base64,") for img in page.images)
    assert page.urls == [] and "http://" not in text and "https://" not in text
    assert "trainer.seed=" in text and "test accuracy" in text


def test_compare_lists_runs_in_every_format(two_runs, capsys):
    assert compare.main([str(two_runs)]) == 0
    text = capsys.readouterr().out
    assert text.count("mnist-") == 2 and "test_accuracy" in text
    assert compare.main([str(two_runs), "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and {r["overrides"].split("trainer.seed=")[1][0] for r in rows} == {"0", "1"}
    assert compare.main([str(two_runs), "--format", "csv"]) == 0
    assert len(list(csv.DictReader(io.StringIO(capsys.readouterr().out)))) == 2
    assert compare.main([str(two_runs), "--format", "md"]) == 0
    assert capsys.readouterr().out.startswith("| run |")


def test_compare_with_nothing_to_compare(tmp_path, capsys):
    assert compare.main([str(tmp_path)]) == 2
    assert "no run directories" in capsys.readouterr().err


def test_report_is_refreshed_at_each_checkpoint(tmp_path, monkeypatch):
    import signal

    from capsule_kit_tasks.digits.task import DigitsTask

    original, calls = DigitsTask.step, {"n": 0}

    def step(self, model, batch, *, train):
        calls["n"] += train
        if train and calls["n"] == 3:  # first batch of epoch 2: epoch 1 has been checkpointed
            signal.raise_signal(signal.SIGINT)
        return original(self, model, batch, train=train)

    monkeypatch.setattr(DigitsTask, "step", step)
    out = tmp_path / "runs"
    args = [str(REPO / "recipes" / "mnist.yaml"), *TINY, "trainer.max_steps=100", "trainer.epochs=2"]
    assert run.main([*args, f"output_dir={out}"]) == 130
    run_dir = only_run_dir(out)
    text = (run_dir / "report.html").read_text()
    assert "in progress" in text and "curves.png" in text
    monkeypatch.setattr(DigitsTask, "step", original)
    assert run.main(["--resume", str(run_dir), "trainer.log_every=7"]) == 0  # overrides: the first ones + this
    recorded = json.loads((run_dir / "run.json").read_text())["overrides"]
    assert recorded == [*TINY, "trainer.max_steps=100", "trainer.epochs=2", f"output_dir={out}", "trainer.log_every=7"]
    text = (run_dir / "report.html").read_text()
    assert "finished" in text and "trainer.log_every=7" in text and "data.train_limit=32" in text

    ckpt = run_dir / "checkpoints" / "last.pt"
    assert run.main([*args, f"output_dir={tmp_path / 'eval'}", "--eval", str(ckpt)]) == 0
    eval_dir = only_run_dir(tmp_path / "eval")
    assert "data.test_limit=16" in (eval_dir / "report.html").read_text()
    assert json.loads((eval_dir / "run.json").read_text())["overrides"][-1] == f"output_dir={tmp_path / 'eval'}"


def test_library_train_records_its_overrides(tmp_path):
    res = run.train_recipe(REPO / "recipes" / "mnist.yaml", *TINY, f"output_dir={tmp_path}")
    env = json.loads((tmp_path / res["run_dir"].split("/")[-1] / "run.json").read_text())
    assert env["overrides"] == [*TINY, f"output_dir={tmp_path}"] and env["argv"] == []
