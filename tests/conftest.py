"""Shared test setup: data root, small thread count, helpers."""

from __future__ import annotations

import os
from pathlib import Path

# Idle OpenMP workers must not spin: on a busy 2-core machine spinning threads steal the
# working thread's time slices (3-4x slower tests). Read when torch loads, so set it first.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest  # noqa: E402
import torch  # noqa: E402

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
