"""Fast paths: bf16/fp16 autocast and torch.compile agree with fp32 over a few training steps."""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from capsule_kit import run
from tests.helpers import REPO, only_run_dir

TINY = [
    "model.name=capsnet_tiny",
    "data.train_limit=64",
    "data.test_limit=16",
    "trainer.batch_size=16",
    "trainer.progress=false",
    "trainer.log_every=1",
    "trainer.max_steps=4",
    "data.shift=0",
]


def train_losses(tmp_path, *extra) -> list[float]:
    out = tmp_path / "runs"
    assert run.main([str(REPO / "recipes" / "mnist.yaml"), *TINY, f"output_dir={out}", *extra]) == 0
    rows = [json.loads(line) for line in (only_run_dir(out) / "metrics.jsonl").read_text().splitlines()]
    shutil.rmtree(out)
    return [r["loss"] for r in rows if r["kind"] == "train"]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_autocast_losses_track_fp32(tmp_path, precision):
    ref = train_losses(tmp_path, "trainer.precision=fp32")
    low = train_losses(tmp_path, f"trainer.precision={precision}")
    assert len(ref) == len(low) == 4
    assert ref != low  # autocast really changed the arithmetic
    for a, b in zip(ref, low):
        assert b == pytest.approx(a, rel=0.05, abs=5e-3)


@pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None, reason="torch.compile needs a C compiler"
)
def test_compile_matches_eager(tmp_path):
    torch._dynamo.reset()
    eager = train_losses(tmp_path, "trainer.compile=false")
    compiled = train_losses(tmp_path, "trainer.compile=true")
    for a, b in zip(eager, compiled):
        assert b == pytest.approx(a, rel=1e-3, abs=1e-5)
