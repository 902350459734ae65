"""The points recipes through the runner: 2 training steps + SVM, part-coloured files, bad input exits 2."""

from __future__ import annotations

import numpy as np

from capsule_kit import run
from capsule_kit_tasks.points.pictures import capsule_colors
from capsule_kit_tasks.points.render import open3d_renderer
from tests.helpers import REPO, only_run_dir, results, run_cli

TINY = str(REPO / "recipes" / "points_tiny.yaml")


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
    assert res["steps"] == 2 and res["test"]["chamfer"] > 0 and 0 < res["test"]["part_spread"] < 2
    extra = res["extra"]
    assert 0.0 <= extra["svm_accuracy"] <= 1.0 and extra["svm_test_shapes"] == extra["svm_train_shapes"] - 10
    assert 0.0 <= extra["svm_accuracy_random_init"] <= 1.0 and extra["svm_converged"] in (True, False)
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
