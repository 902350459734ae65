"""The points recipes through the runner: 2 training steps + SVM, part-coloured files, bad input exits 2."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from capsule_kit import run
from capsule_kit_tasks.points.pictures import capsule_colors
from capsule_kit_tasks.points.render import open3d_renderer
from tests.conftest import data_path
from tests.helpers import REPO, only_run_dir, results, run_cli

TINY = str(REPO / "recipes" / "points_tiny.yaml")
PAPER = REPO / "recipes" / "points_ae_paper.yaml"


def read_ply_colors(path):
    lines = path.read_text().splitlines()
    body = lines[lines.index("end_header") + 1 :]
    assert "property uchar red" in lines
    return np.array([[int(v) for v in ln.split()[3:6]] for ln in body])


def test_tiny_recipe_trains_two_steps_and_reports_svm(tmp_path):
    proc = run_cli(
        TINY, "trainer.max_steps=2", "trainer.eval_max_steps=2", f"output_dir={tmp_path / 'runs'}",
        "transfer.random_init_baseline=true",
        env={"CAPSULE_KIT_CACHE": str(tmp_path / "cache")},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    run_dir = only_run_dir(tmp_path / "runs")
    res = results(run_dir)
    test, extra = res["test"], res["extra"]
    assert res["steps"] == 2 and test["chamfer"] > 0 and 0 < test["part_spread"] < 2
    assert 0.0 <= test["svm_accuracy"] <= 1.0 and test["svm_test_shapes"] == test["svm_train_shapes"] - 10
    assert 0.0 <= test["svm_accuracy_random_init"] <= 1.0 and test["svm_converged"] in (True, False)
    assert test["svm_gain"] == test["svm_accuracy"] - test["svm_accuracy_random_init"]
    assert test["svm_C"] == test["svm_C_random_init"] == 1.0 and "svm_cv" not in test  # one C: no cross validation
    for key in ("part_consistency", "part_drift", "chamfer", "part_spread"):  # trained and untrained
        assert isinstance(test[key], float) and isinstance(test[f"{key}_random_init"], float), key
    assert extra["latent_transform_params"] == 8 * 16 * 16  # shared=inputs: one 8x(16*16) transform
    assert extra["latent_transform_params_full"] == 64 * 8 * 16 * 16
    assert extra["model_params_full_transform"] - res["params"] == 64 * 8 * 16 * 16 - 8 * 16 * 16
    for name in ("reconstructions.png", "svm_confusion.png", "checkpoints/last.pt"):
        assert (run_dir / name).exists(), name
    assert extra["render"] == ("open3d" if open3d_renderer()[0] else "matplotlib")
    assert (run_dir / "report.html").exists()
    page = (run_dir / "report.html").read_text()
    assert 'data-file="reconstructions.png" src="data:image/png;base64,' in page  # embedded, not linked
    recon = sorted(run_dir.glob("recon_*.ply"))
    assert len(recon) == 2 and len(list(run_dir.glob("input_*.ply"))) == 2
    rgb = read_ply_colors(recon[0])
    palette = np.round(capsule_colors(16) * 255).astype(int)
    assert rgb.shape == (256, 3) and (rgb == palette[np.arange(256) % 16]).all()  # colour = latent capsule


def test_c_grid_is_chosen_by_cross_validation_and_refused_before_training_when_it_cannot_be(tmp_path):
    common = (TINY, "trainer.max_steps=1", "trainer.eval_max_steps=1", "transfer.C=[0.1,1.0]")
    proc = run_cli(*common, "data.layout=synthetic", "transfer.cv_folds=2", "transfer.random_init_baseline=true",
                   "transfer.features=[poses,lengths]", f"output_dir={tmp_path / 'runs'}")  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    test = results(only_run_dir(tmp_path / "runs"))["test"]
    assert set(test["svm_cv"]) == {"poses", "lengths"} and set(test["svm_cv"]["lengths"]) == {"0.1", "1.0"}
    assert test["svm_cv_accuracy"] == test["svm_cv"][test["svm_features"]][str(test["svm_C"])]
    assert test["svm_cv_accuracy"] == max(a for grid in test["svm_cv"].values() for a in grid.values())
    assert test["svm_feature_dim"] == {"poses": 16 * 16, "lengths": 16}[test["svm_features"]]
    assert test["svm_C_random_init"] in (0.1, 1.0)  # the control's pair is chosen the same way
    assert test["svm_features_random_init"] in ("poses", "lengths")
    proc = run_cli(*common, f"output_dir={tmp_path / 'refused'}")  # ModelNet10's 30 shapes: a class has < 3
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("error: transfer.cv_folds: 3")
    assert not list((tmp_path / "refused").rglob("*.pt"))  # refused before the first step


def test_paper_recipe_trains_two_steps_at_the_papers_sizes(tmp_path, cache_env):
    if not data_path("points", "ModelNet10_pcd1024").is_dir():
        pytest.skip("no ModelNet10 under the data root")
    res = run.train_recipe(
        PAPER, "trainer.max_steps=2", "trainer.eval_max_steps=1", "trainer.batch_size=2", "trainer.eval_batch_size=4",
        "trainer.device=cpu", "trainer.progress=false", "data.train_limit=10", "data.test_limit=10",
        "pictures.shapes=1", "transfer.C=1.0", f"output_dir={tmp_path}",
    )  # fmt: skip
    cfg = yaml.safe_load((Path(res["run_dir"]) / "recipe.yaml").read_text())
    assert cfg["data"]["num_points"] == 1024 and cfg["data"]["input_points"] is None  # all 1,024 points in
    m = cfg["model"]
    assert (m["primary_caps"], m["primary_dim"], m["latent_caps"], m["latent_dim"], m["out_points"]) == (
        1024,
        16,
        64,
        64,
        2048,
    )
    assert res["extra"]["latent_transform_params"] == 67_108_864  # the full (unshared) transform
    assert res["steps"] == 2 and 0.0 <= res["test"]["svm_accuracy"] <= 1.0 and "svm_gain" in res["test"]
    assert "part_consistency_random_init" in res["test"]


def test_bad_point_file_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CAPSULE_KIT_CACHE", str(tmp_path / "cache"))
    for cls in ("a", "b"):
        (tmp_path / "bad" / cls).mkdir(parents=True)
        for i in range(3):
            (tmp_path / "bad" / cls / f"{i}.xyz").write_text("".join(f"{k} 0 {k % 3}\n" for k in range(16)))
    (tmp_path / "bad" / "b" / "2.xyz").write_text("0 0 0\nnan 0 1\n")
    code = run.main([TINY, f"data.path={tmp_path / 'bad'}", "data.num_points=16", f"output_dir={tmp_path / 'r'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1].startswith("error: ") and "2.xyz: line 2: NaN/inf coordinate (1 row in all)" in err[-1]
    assert not any("Traceback" in line for line in err)
