"""The device path on CPU CI: CUDA availability is faked, torch's own ``set_device`` checks stay real.

``torch.cuda.set_device`` turns its argument into an index with torch's own
``_get_device_index`` (which refuses an index-less ``cuda``) before it calls the
driver; only the driver call is replaced here, so an index-less CUDA device fails
in these tests exactly as it does on a GPU machine.
"""

from __future__ import annotations

import pytest
import torch

from capsule_kit.distributed import DistInfo, pick_device, setup_device
from capsule_kit.errors import ConfigError


@pytest.fixture
def fake_cuda(monkeypatch):
    """Pretend this machine has two CUDA devices; returns the indices passed to the driver."""
    chosen: list[int] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch._C, "_cuda_setDevice", chosen.append, raising=False)
    return chosen


@pytest.mark.parametrize(
    ("name", "want"), [("auto", "cuda:0"), ("cuda", "cuda:0"), ("cuda:0", "cuda:0"), ("cuda:1", "cuda:1")]
)
def test_cuda_names_get_an_index_and_are_selected(fake_cuda, name, want):
    device = pick_device(name, DistInfo())
    assert str(device) == want
    assert fake_cuda == [device.index]


def test_torchrun_rank_picks_its_local_gpu(fake_cuda):
    device = pick_device("auto", DistInfo(rank=3, world=4, local_rank=1))
    assert str(device) == "cuda:1" and fake_cuda == [1]


def test_missing_cuda_index_is_one_line(fake_cuda):
    with pytest.raises(ConfigError, match=r"trainer.device 'cuda:2': not available here \(this machine has 2"):
        pick_device("cuda:2", DistInfo())


def test_runner_device_setup_with_fake_cuda(fake_cuda, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    try:
        info, device = setup_device("auto", threads=1)
        assert info.world == 1 and device == torch.device("cuda", 0) and fake_cuda == [0]
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_cpu_when_no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert pick_device("auto", DistInfo()) == torch.device("cpu")
    with pytest.raises(ConfigError, match="torch finds no CUDA device"):
        pick_device("cuda", DistInfo())
