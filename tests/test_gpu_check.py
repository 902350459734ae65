"""scripts/gpu_check.sh --dry-run: the GPU smoke check itself runs (on CPU, tiny settings) and reports every check."""

from __future__ import annotations

import json
import os
import subprocess

from tests.helpers import REPO


def test_gpu_check_dry_run(tmp_path):
    out = tmp_path / "gpu_check.json"
    env = {**os.environ, "DRY": "1", "OMP_NUM_THREADS": "2", "PYTHON": os.environ.get("PYTHON", "python")}
    env["PATH"] = f"{os.path.dirname(os.sys.executable)}:{env['PATH']}"  # this venv's python
    proc = subprocess.run(["scripts/gpu_check.sh", "--out", str(out)], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "all ok" in proc.stdout and "FAIL" not in proc.stdout
    summary = json.loads(out.read_text())
    assert {"mnist/fp32", "mnist/bf16", "mnist/fp16", "graph_cls/fp32", "points_tiny/fp32"} <= set(summary["recipes"])
    assert set(summary["routing"]) == {"dynamic", "em", "attention"}
    assert summary["resume"]["max_abs_weight_diff"] == 0.0
    assert summary["speed"]["steps"] == 3 and summary["speed"]["images_per_s"] > 0
