"""Scale: vote budgets (automatic batch chunking) and streaming data sharded across torchrun ranks."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

import pytest
import torch
from pydantic import Field
from torch import nn
from torch.utils.data import IterableDataset

from capsule_kit import run
from capsule_kit.config import Recipe, Strict
from capsule_kit.data import Splits, TensorPairs
from capsule_kit.distributed import DistInfo, RankShard, shard_iterable
from capsule_kit.errors import ConfigError
from capsule_kit.functional import squash
from capsule_kit.layers import DEFAULT_VOTE_BUDGET, VOTE_BUDGET_ENV, DenseCaps, parse_bytes, vote_budget
from capsule_kit.losses import margin_loss
from capsule_kit.task import Task
from tests.helpers import REPO, free_port, only_run_dir, results

TASK = "tests.test_scale:StreamTask"


# -- vote budget ------------------------------------------------------------------------------------
def test_parse_bytes():
    assert parse_bytes("2GiB") == parse_bytes("2G") == parse_bytes(" 2 gib ") == 2 << 30
    assert parse_bytes("512MiB") == 512 << 20 and parse_bytes("1.5K") == 1536
    assert parse_bytes("10MB") == 10_000_000 and parse_bytes("3e9") == 3_000_000_000
    assert parse_bytes(4096) == 4096 and parse_bytes("100B") == 100
    for bad in ("", "lots", "2X", "1iB", "-1", "0"):
        with pytest.raises(ValueError):
            parse_bytes(bad)


def test_vote_budget_from_env(monkeypatch):
    monkeypatch.delenv(VOTE_BUDGET_ENV, raising=False)
    assert vote_budget() == DEFAULT_VOTE_BUDGET == 2 << 30
    monkeypatch.setenv(VOTE_BUDGET_ENV, "64KiB")
    assert vote_budget() == 65536
    monkeypatch.setenv(VOTE_BUDGET_ENV, "two gigs")
    with pytest.raises(ConfigError, match=f"\\${VOTE_BUDGET_ENV}: not a byte size: 'two gigs'"):
        vote_budget()


def _count_votes(layer: DenseCaps, monkeypatch) -> list[int]:
    calls, votes = [], layer.votes

    def counted(u):
        calls.append(u.shape[0])
        return votes(u)

    monkeypatch.setattr(layer, "votes", counted)
    return calls


def test_budget_selects_chunks_automatically(monkeypatch):
    layer = DenseCaps(1152, 8, 10, 16)  # DigitCaps: 737,280 vote bytes per fp32 sample
    monkeypatch.setenv(VOTE_BUDGET_ENV, str(3 * 737_280))
    assert layer._chunk(torch.zeros(64, 1152, 8)) == 3
    assert layer._chunk(torch.zeros(64, 1152, 8, device="meta")) == 3  # the budget holds on every device
    monkeypatch.setenv(VOTE_BUDGET_ENV, "2GiB")
    assert layer._chunk(torch.zeros(64, 1152, 8, device="meta")) == 64  # 47 MB fits: one call
    assert layer._chunk(torch.zeros(64, 1152, 8)) == 22  # CPU still caps chunks at 16 MiB for speed
    layer.max_vote_bytes = 10 * 737_280  # an explicit limit wins over the budget
    assert layer._chunk(torch.zeros(64, 1152, 8, device="meta")) == 10

    small = DenseCaps(12, 4, 3, 8, routing="attention")  # 1,152 vote bytes per sample
    calls = _count_votes(small, monkeypatch)
    small(torch.randn(10, 12, 4))
    assert calls == [10]
    monkeypatch.setenv(VOTE_BUDGET_ENV, str(4 * 1152))
    calls.clear()
    out = small(torch.randn(10, 12, 4))
    assert calls == [4, 3, 3] and out.poses.shape == (10, 3, 8)


@pytest.mark.parametrize("route", ["dynamic", "attention", "em"])
def test_budget_chunked_equals_unchunked(route, monkeypatch):
    torch.manual_seed(0)
    whole = DenseCaps(24, 4, 5, 16, routing=route, max_vote_bytes=1 << 40).double()
    auto = DenseCaps(24, 4, 5, 16, routing=route).double()
    auto.load_state_dict(whole.state_dict())
    calls = _count_votes(auto, monkeypatch)
    monkeypatch.setenv(VOTE_BUDGET_ENV, str(2 * 24 * 5 * 16 * 8))  # two fp64 samples per chunk
    u, acts = torch.randn(9, 24, 4, dtype=torch.float64), torch.rand(9, 24, dtype=torch.float64)
    outs = []
    for layer in (whole, auto):
        x, a = u.clone().requires_grad_(True), acts.clone().requires_grad_(True)
        out = layer(x, a)
        (out.poses.pow(2).sum() + out.activations.sum() + out.coupling.pow(2).sum()).backward()
        outs.append((*out, x.grad, a.grad, layer.weight.grad))
    assert calls == [2, 2, 2, 2, 1]
    for got, want in zip(outs[1], outs[0]):  # per-sample routing: equal up to BLAS rounding of the votes
        assert (got - want).abs().max() < 1e-9


def test_sample_over_budget_routes_alone_with_a_warning(monkeypatch):
    torch.manual_seed(1)
    layer = DenseCaps(12, 4, 3, 8)
    u = torch.randn(3, 12, 4)
    want = layer(u).poses
    monkeypatch.setenv(VOTE_BUDGET_ENV, "100")  # one sample needs 1,152 bytes
    calls = _count_votes(layer, monkeypatch)
    with pytest.warns(UserWarning, match="exceed the vote budget"):
        got = layer(u).poses
    assert calls == [1, 1, 1]
    assert (got - want).abs().max() < 1e-6


# -- streaming data under torchrun ------------------------------------------------------------------
class Stream(IterableDataset):
    """Items ``(id, features, label)`` generated on the fly, no length."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __iter__(self):
        for i in range(self.n):
            yield torch.tensor(i), _features(i), torch.tensor(i % 3)


def _features(i: int) -> torch.Tensor:
    return torch.randn(6, generator=torch.Generator().manual_seed(i)) + (i % 3)


def _hf_stream(n: int, shards: int, shuffle: bool = False):
    datasets = pytest.importorskip("datasets")
    table = {"id": list(range(n)), "x": [_features(i).tolist() for i in range(n)], "y": [i % 3 for i in range(n)]}
    stream = datasets.Dataset.from_dict(table).to_iterable_dataset(num_shards=shards)
    return (stream.shuffle(seed=0, buffer_size=n) if shuffle else stream).with_format("torch")


class StreamData(Strict):
    """A generated stream."""

    items: int = Field(48, ge=1, description="Training items in the stream.")
    source: Literal["torch", "hf"] = Field("torch", description="torch IterableDataset or Hugging Face stream.")
    shards: int = Field(2, ge=1, description="Shards of the Hugging Face stream.")
    shuffle: bool = Field(False, description="Shuffle the Hugging Face stream (buffer of the whole stream).")
    record: str | None = Field(None, description="Folder where each rank appends the ids it trained on.")


class StreamConfig(Recipe):
    task: str = TASK
    data: StreamData = Field(default_factory=StreamData)


class StreamTask(Task):
    """A user task whose training split is an iterable dataset."""

    Config = StreamConfig

    def build_data(self, fold: Any = None) -> Splits:
        d = self.cfg.data
        train = Stream(d.items) if d.source == "torch" else _hf_stream(d.items, d.shards, d.shuffle)
        ids = torch.arange(12)
        test = TensorPairs(ids, torch.stack([_features(int(i)) for i in ids]), ids % 3)
        return Splits(train=train, test=test)

    def build_model(self) -> nn.Module:
        return TinyCaps()

    def step(self, model: nn.Module, batch: Any, *, train: bool) -> dict[str, Any]:
        ids, x, y = (batch["id"], batch["x"], batch["y"]) if isinstance(batch, dict) else batch
        if train and self.cfg.data.record:
            with (Path(self.cfg.data.record) / f"rank{os.environ.get('RANK', '0')}.txt").open("a") as f:
                f.write("".join(f"{int(i)}\n" for i in ids))
        lengths = model(x.float())
        loss = margin_loss(lengths, y)
        return {"loss": loss, "n": len(ids), "log": {}, "out": {"lengths": lengths.detach(), "y": y}}

    def metrics(self, outputs: list[dict]) -> dict[str, float]:
        pred = torch.cat([o["lengths"] for o in outputs]).argmax(-1)
        return {"accuracy": float((pred == torch.cat([o["y"] for o in outputs])).float().mean())}


class TinyCaps(nn.Module):
    """6 features -> 4 capsules of 4D -> 3 class capsules (dynamic routing)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(6, 16)
        self.caps = DenseCaps(4, 4, 3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.caps(squash(self.inp(x).view(-1, 4, 4))).activations


def _seen(folder: Path) -> dict[int, list[int]]:
    return {int(p.stem[4:]): [int(v) for v in p.read_text().split()] for p in sorted(folder.glob("rank*.txt"))}


@pytest.mark.parametrize("source", ["torch", "hf"])
def test_iterable_train_split_in_process(source, tmp_path):
    (tmp_path / "seen").mkdir()
    raw = {
        "task": TASK,
        "output_dir": str(tmp_path / "runs"),
        "trainer": {"epochs": 1, "batch_size": 8, "device": "cpu", "progress": False, "log_every": 1},
        "data": {"items": 44, "source": source, "shards": 1, "record": str(tmp_path / "seen")},
    }
    res = run.train_recipe(raw)
    assert res["steps"] == 6 and res["epochs"] == 1  # ceil(44 / 8) batches, whole stream, no sampler
    assert _seen(tmp_path / "seen") == {0: list(range(44))}
    assert 0.0 <= res["test"]["accuracy"] <= 1.0


def test_shuffled_stream_is_reshuffled_every_epoch(tmp_path):
    (tmp_path / "seen").mkdir()
    raw = {
        "task": TASK,
        "output_dir": str(tmp_path / "runs"),
        "trainer": {"epochs": 2, "batch_size": 8, "device": "cpu", "progress": False},
        "data": {"items": 40, "source": "hf", "shards": 1, "shuffle": True, "record": str(tmp_path / "seen")},
    }
    assert run.train_recipe(raw)["steps"] == 10
    seen = _seen(tmp_path / "seen")[0]
    first, second = seen[:40], seen[40:]
    assert sorted(first) == sorted(second) == list(range(40)) and first != second and first != list(range(40))


def test_rank_shard_is_disjoint_and_equal():
    parts = [list(RankShard(range(11), r, 3)) for r in range(3)]
    assert parts == [[0, 3, 6], [1, 4, 7], [2, 5, 8]]  # 9, 10: an incomplete last round is dropped
    assert shard_iterable(Stream(5), DistInfo()).__class__ is Stream  # one process: untouched
    two = [[int(i) for i, _, _ in shard_iterable(Stream(6), DistInfo(r, 2))] for r in range(2)]
    assert two == [[0, 2, 4], [1, 3, 5]]
    with pytest.raises(ValueError, match="rank must be in"):
        RankShard(range(3), 2, 2)


@pytest.mark.parametrize("shards", [1, 4])
def test_hf_stream_split_by_node(shards):
    parts = [[int(e["id"]) for e in shard_iterable(_hf_stream(24, shards), DistInfo(r, 2))] for r in range(2)]
    assert not set(parts[0]) & set(parts[1]) and sorted(parts[0] + parts[1]) == list(range(24))
    assert len(parts[0]) == len(parts[1]) == 12


def _torchrun() -> str | None:
    exe = Path(sys.executable).parent / "torchrun"
    return shutil.which("torchrun") or (str(exe) if exe.exists() else None)


@pytest.mark.skipif(_torchrun() is None, reason="torchrun not installed")
def test_torchrun_ranks_read_disjoint_parts_of_a_stream(tmp_path):
    pytest.importorskip("datasets")
    seen = tmp_path / "seen"
    seen.mkdir()
    recipe = tmp_path / "stream.yaml"
    recipe.write_text(
        f"task: '{TASK}'\ntrainer: {{epochs: 1, batch_size: 6, device: cpu, progress: false}}\n"
        f"data: {{items: 48, source: hf, shards: 2, record: '{seen}'}}\n"
    )
    cmd = [_torchrun(), "--nproc_per_node=2", f"--master_port={free_port()}", "-m", "capsule_kit.run"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO), "HF_DATASETS_OFFLINE": "1"}
    cmd += [str(recipe), f"output_dir={tmp_path / 'runs'}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = _seen(seen)
    assert sorted(parts) == [0, 1]
    assert not set(parts[0]) & set(parts[1])  # disjoint ...
    assert sorted(parts[0] + parts[1]) == list(range(48))  # ... and together the whole stream
    assert results(only_run_dir(tmp_path / "runs"))["steps"] == 4  # 24 items per rank, batch 6
