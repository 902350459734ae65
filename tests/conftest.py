"""Shared test setup: data root, small thread count, helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

if "CAPSULE_KIT_DATA" not in os.environ and SHARED_DATA.exists():
    os.environ["CAPSULE_KIT_DATA"] = str(SHARED_DATA)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, torch.get_num_threads()))


def data_path(*parts: str) -> Path:
    """A path under the data root used by the tests."""
    return Path(os.environ.get("CAPSULE_KIT_DATA", SHARED_DATA)).joinpath(*parts)


@pytest.fixture
def cache_env(tmp_path, monkeypatch):
    """Point the capsule-kit cache at a temporary folder."""
    monkeypatch.setenv("CAPSULE_KIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
