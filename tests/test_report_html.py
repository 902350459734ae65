"""report.html content from a hand-made run directory: formatted numbers, captions, tables, no URLs."""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser

import pytest

from capsule_kit import plots, report

CM = [[5, 1, 0], [2, 7, 1], [0, 0, 4]]  # rows: true class; 20 test examples


class Page(HTMLParser):
    """Images, their captions, and every URL the page would fetch."""

    def __init__(self):
        super().__init__()
        self.images, self.captions, self.urls, self._in_caption = [], [], [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.images += [a] if tag == "img" else []
        self._in_caption = self._in_caption or tag == "figcaption"
        if tag == "figcaption":
            self.captions.append("")
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith(("data:", "#")):
                self.urls.append(a[key])

    def handle_endtag(self, tag):
        self._in_caption = self._in_caption and tag != "figcaption"

    def handle_data(self, data):
        if self._in_caption:
            self.captions[-1] += data


@pytest.fixture
def run_dir(tmp_path):
    rows = [
        {"kind": "train", "epoch": 1, "step": s, "loss": 1.0 / s, "acc": 0.1 * s, "lr": 1e-3} for s in range(1, 5)
    ] + [{"kind": "epoch", "epoch": 1, "step": 4, "partial": True, "val_loss": 0.3, "val_accuracy": 0.8,
          "val_error": 0.2, "train_time_s": 12.34, "ex_per_s": 1234.5}]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    results = {
        "name": "mnist",
        "params": 8215568,
        "wall_time_s": 98.61,
        "train_time_s": 90.0,
        "steps": 4,
        "train_examples_per_s": 1234.56,
        "test": {"accuracy": 0.8, "error": 0.2, "confusion_matrix": CM, "per_class_accuracy": [0.83, 0.7, 1.0]},
        "data": {"train": 54000, "val": 6000, "sizes": {"test": 10000}},
        "extra": {"labels": ["cat", "dog", "eel"], "captions": {"mine.png": "What my task draws."}},
    }
    (tmp_path / "results.json").write_text(json.dumps(results))
    (tmp_path / "run.json").write_text(json.dumps({"overrides": ["trainer.lr=0.001"], "torch": "2.13.0"}))
    plots.standard_pictures(tmp_path, results)
    plots.plot_confusion(CM, ["a", "b", "c"], tmp_path / "mine.png")
    plots.plot_confusion(CM, ["a", "b", "c"], tmp_path / "other.png")
    return tmp_path


def test_numbers_are_formatted(run_dir):
    text = report.write_report(run_dir).read_text()
    assert "8,215,568" in text and "8215568" not in text
    assert "98.6 s" in text and "98.61" not in text
    assert ">12.3 s<" in text and ">1,234<" in text  # epoch table: train_time_s, ex_per_s
    assert ">0.8000<" in text and "1.00e-03" not in text  # lr is plotted, not tabulated


def test_every_picture_has_a_caption_saying_what_it_shows(run_dir):
    page, text = Page(), report.write_report(run_dir).read_text()
    page.feed(text)
    shown = [img["data-file"] for img in page.images]
    assert shown[0] == "curves.png" and set(shown) == {p.name for p in run_dir.glob("*.png")}
    captions = dict(zip(shown, page.captions))
    assert captions["curves.png"].startswith("curves.png: Learning curves over training steps")
    assert "Confusion matrix on the test split" in captions["confusion.png"]
    assert captions["mine.png"] == "mine.png: What my task draws."
    assert captions["other.png"] == "other.png: picture written by the task"
    assert page.urls == [] and not re.search(r"https?://", text)


def test_per_class_table_data_sizes_and_version(run_dir):
    text = report.write_report(run_dir).read_text()
    table = text.split("<h2>Per class (test)</h2>")[1].split("</table>")[0]
    cells = re.findall(r"<td[^>]*>([^<]*)</td>", table)
    assert cells[:5] == ["0", "cat", "6", f"{5 / 7:.4f}", f"{5 / 6:.4f}"]  # precision 5/(5+2), recall 5/6
    assert cells[5:10] == ["1", "dog", "10", f"{7 / 8:.4f}", f"{7 / 10:.4f}"]
    data = text.split("<h2>Data</h2>")[1].split("</table>")[0]
    assert ">54,000<" in data and ">6,000<" in data and "<th>sizes test</th><td class=n>10,000<" in data
    assert f"capsule-kit {report.version()}" in text and report.version() != "unknown"


def test_pictures_are_bounded_and_enlarge_on_click(run_dir):
    text = report.write_report(run_dir).read_text()
    assert re.search(r"img\{[^}]*max-width:100%;max-height:\d+px", text)
    assert "img.big{max-height:none" in text and "classList.toggle('big')" in text
    assert "<script src" not in text and "<link" not in text


def test_curves_keep_accuracy_loss_and_lr_apart_and_leave_out_error():
    rows = [
        {"kind": "train", "step": 1, "loss": 1.0, "acc": 0.5, "lr": 0.1},
        {"kind": "epoch", "step": 1, "val_loss": 0.9, "val_accuracy": 0.6, "val_error": 0.4, "partial": True},
    ]
    keys = plots.curve_keys(rows)
    assert keys == {
        "loss": [("train", "loss"), ("epoch", "val_loss")],
        "accuracy": [("train", "acc"), ("epoch", "val_accuracy")],
        "lr": [("train", "lr")],
    }


def test_cross_validated_confusion_is_summed_and_folds_drawn(tmp_path, monkeypatch):
    drawn = {}
    monkeypatch.setattr(plots, "plot_confusion", lambda cm, names, out, title: drawn.update(cm=cm, names=names))
    monkeypatch.setattr(plots, "plot_folds", lambda accs, out, title: drawn.update(accs=accs))
    folds = [
        {"accuracy": 0.5, "confusion_matrix": [[1, 1], [0, 2]]},
        {"accuracy": 0.75, "confusion_matrix": [[3, 0], [1, 0]]},
    ]
    results = {"name": "cv", "folds": folds, "test": {"accuracy": 0.625}, "extra": {"labels": ["no", "yes"]}}
    made = plots.standard_pictures(tmp_path, results)
    assert made == ["confusion.png", "cv_accuracy.png"]  # no metrics.jsonl: no curves
    assert drawn == {"cm": [[4, 1], [1, 2]], "names": ["no", "yes"], "accs": [0.5, 0.75]}


def test_matplotlib_backend_is_chosen_in_one_place():
    from tests.helpers import REPO

    files = [p for d in ("capsule_kit", "tasks") for p in (REPO / d).rglob("*.py")]
    users = [p.relative_to(REPO).as_posix() for p in files if "matplotlib.use(" in p.read_text()]
    assert users == ["capsule_kit/plots.py"]
