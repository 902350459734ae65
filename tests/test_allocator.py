"""CPU allocator tuning (capsule_kit/allocator.py): an EM training step stops page-faulting its memory in."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from capsule_kit.allocator import ENV, tune_cpu_allocator
from tests.helpers import REPO

GLIBC = sys.platform.startswith("linux") and os.confstr("CS_GNU_LIBC_VERSION") is not None

STEPS = textwrap.dedent(
    """
    import resource, torch
    from capsule_kit.allocator import tune_cpu_allocator
    tuned = tune_cpu_allocator()
    torch.set_num_threads(1)
    from capsule_kit.models.matrix_em import MatrixCapsNet
    from capsule_kit.routing import RoutingConfig
    m = MatrixCapsNet(a=8, b=4, c=4, d=4, routing=RoutingConfig(name="em", iterations=2), padding=0)
    x = torch.rand(32, 1, 28, 28)
    m(x).lengths.sum().backward()
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        m(x).lengths.sum().backward()
    print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    """
)


def faults(tune: str) -> tuple[str, int]:
    env = {**os.environ, ENV: tune, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", STEPS], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    tuned, count = out.stdout.split()
    return tuned, int(count)


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_tuned_steps_page_fault_far_less():
    (off, faults_off), (on, faults_on) = faults("0"), faults("1")
    assert off == "False" and on == "True"
    assert faults_on < faults_off / 3, (faults_on, faults_off)


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv(ENV, "0")
    assert tune_cpu_allocator() is False
