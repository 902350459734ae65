"""Run the real CLI in a subprocess (as a user would)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None, timeout: int = 600):
    """``python -m capsule_kit.run ARGS``; returns the CompletedProcess (text)."""
    full_env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "OMP_NUM_THREADS": "2",
        "OMP_WAIT_POLICY": "PASSIVE",
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "capsule_kit.run", *args],
        cwd=cwd or REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def only_run_dir(output_dir: Path) -> Path:
    """The single run directory created under ``output_dir``."""
    dirs = [p for p in Path(output_dir).iterdir() if p.is_dir()]
    assert len(dirs) == 1, dirs
    return dirs[0]


def results(run_dir: Path) -> dict:
    """Parsed ``results.json`` of a run."""
    return json.loads((run_dir / "results.json").read_text())


def free_port() -> int:
    """A TCP port free on this machine now (torchrun rendezvous: no clash with another test run)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# A 2-step-sized MNIST run through the CLI: the tiny CapsNet on a few images (tests extend it).
TINY_MNIST = [
    "model.name=capsnet_tiny",
    "data.train_limit=48",
    "data.test_limit=32",
    "trainer.batch_size=16",
    "trainer.progress=false",
]
