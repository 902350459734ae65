"""Graphs task through the runner: recipes validate, real MUTAG runs (1 fold and 2-fold CV), errors exit 2."""

from __future__ import annotations

import json
import shutil

import pytest

pytest.importorskip("torch_geometric")
pytest.importorskip("sklearn")

from capsule_kit import compare, run  # noqa: E402
from tests.conftest import data_path  # noqa: E402
from tests.helpers import REPO, only_run_dir, results, run_cli  # noqa: E402

MUTAG = data_path("graphs", "TU", "MUTAG", "raw")
needs_mutag = pytest.mark.skipif(not MUTAG.is_dir(), reason="MUTAG not under the data root")
RECIPE = str(REPO / "recipes" / "graph_cls.yaml")
QUICK = ["trainer.max_steps=2", "trainer.eval_max_steps=2", "trainer.progress=false", "trainer.batch_size=8"]


@pytest.mark.parametrize("name", ["graph_cls.yaml", "graph_proteins.yaml", "graph_nci109.yaml"])
def test_graph_recipes_validate(name, capsys):
    if not data_path("graphs", "TU").is_dir():
        pytest.skip("no TU data under the data root")
    assert run.main([str(REPO / "recipes" / name), "--validate"]) == 0
    assert "ok:" in capsys.readouterr().out


@needs_mutag
def test_cli_one_fold_two_steps_on_mutag(tmp_path, cache_env):
    proc = run_cli(RECIPE, "split.folds=1", *QUICK, f"output_dir={tmp_path / 'runs'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = only_run_dir(tmp_path / "runs")
    res = results(run_dir)
    assert res["steps"] == 2 and 0.0 <= res["test"]["accuracy"] <= 1.0
    assert len(res["test"]["confusion_matrix"]) == 2
    assert (run_dir / "checkpoints" / "last.pt").is_file() and (run_dir / "confusion.png").is_file()


@needs_mutag
def test_two_fold_cv_writes_fold_results_mean_std_and_plot(tmp_path, cache_env, capsys):
    argv = [RECIPE, "split.folds=2", "trainer.max_steps=1", "trainer.eval_max_steps=1", "trainer.progress=false",
            "trainer.batch_size=4", f"output_dir={tmp_path / 'runs'}"]  # fmt: skip
    assert run.main(argv) == 0
    run_dir = only_run_dir(tmp_path / "runs")
    res = results(run_dir)
    folds = [f["accuracy"] for f in res["folds"]]
    assert len(folds) == 2
    assert res["test"]["accuracy"] == pytest.approx(sum(folds) / 2) and "accuracy" in res["test_std"]
    assert (run_dir / "cv_accuracy.png").stat().st_size > 0 and (run_dir / "confusion.png").is_file()  # the runner's
    assert sum(sum(map(sum, f["confusion_matrix"])) for f in res["folds"]) == 8  # eval_max_steps=1 x batch 4, 2 folds
    page = (run_dir / "report.html").read_text()
    assert all(f'data-file="{p.name}"' in page for p in run_dir.glob("*.png")) and 'data-file="cv_accuracy.png"' in page
    assert compare.main([str(tmp_path / "runs"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["test_accuracy"] == pytest.approx(res["test"]["accuracy"], abs=1e-4)


def one_error_line(capsys, argv) -> str:
    assert run.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_missing_data_exits_2_naming_the_file(tmp_path, capsys, cache_env):
    err = one_error_line(capsys, [RECIPE, f"data.root={tmp_path}", "--validate"])
    assert "MUTAG_A.txt" in err and str(tmp_path / "graphs" / "TU" / "MUTAG" / "raw") in err
    err = one_error_line(capsys, [RECIPE, "data.name=NOPE", f"data.root={tmp_path}", *QUICK, f"output_dir={tmp_path}"])
    assert "NOPE_A.txt" in err


@needs_mutag
def test_inconsistent_data_exits_2(tmp_path, capsys, cache_env):
    raw = tmp_path / "graphs" / "TU" / "MUTAG" / "raw"
    shutil.copytree(MUTAG, raw)
    (raw / "MUTAG_graph_labels.txt").write_text("1\n" * 187)  # one graph too few
    err = one_error_line(capsys, [RECIPE, f"data.root={tmp_path}", "split.folds=1", *QUICK, f"output_dir={tmp_path}"])
    assert "MUTAG_graph_indicator.txt: graph id 188 out of range 1..187" in err
