"""PrimaryCaps1d against a manual reference; capsule layers' shape errors; no environment changes on import."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from capsule_kit.functional import squash
from capsule_kit.layers import CapsuleDecoder, ConvCaps, DenseCaps, PrimaryCaps, PrimaryCaps1d, PrimaryMatrixCaps


def test_primary_caps_1d_groups_the_channels_of_one_type_at_one_position():
    torch.manual_seed(0)
    types, dim = 3, 4
    layer = PrimaryCaps1d(5, num_types=types, dim=dim, kernel_size=3, stride=2)
    x = torch.randn(2, 5, 13)  # [B, F, L]
    caps = layer(x)
    conv = torch.nn.functional.conv1d(x, layer.conv.weight, layer.conv.bias, stride=2)  # [B, T*D, L']
    length = conv.shape[-1]
    assert length == (13 - 3) // 2 + 1 and caps.shape == (2, types * length, dim)
    for b in range(2):
        for t in range(types):
            for p in range(length):
                want = squash(conv[b, t * dim : (t + 1) * dim, p])
                torch.testing.assert_close(caps[b, t * length + p], want)


def test_primary_caps_1d_feeds_dense_caps_sharing_per_type():
    prim = PrimaryCaps1d(8, num_types=2, dim=4, kernel_size=3, stride=1)
    caps = prim(torch.randn(3, 8, 10))  # [3, 2*8, 4]
    dense = DenseCaps(16, 4, 5, 6, shared="positions", types=2)
    assert dense(caps).poses.shape == (3, 5, 6)


@pytest.mark.parametrize(
    "layer, args, message",
    [
        (DenseCaps(1152, 8, 10, 16), (torch.randn(2, 100, 8),),
         "DenseCaps(num_in=1152, dim_in=8): expected u of shape [B, N_i=1152, D_i=8], got [2, 100, 8]"),
        (DenseCaps(6, 8, 10, 16), (torch.randn(2, 6 * 8),),
         "DenseCaps(num_in=6, dim_in=8): expected u of shape [B, N_i=6, D_i=8], got [2, 48]"),
        (DenseCaps(6, 8, 10, 16), (torch.randn(2, 6, 8), torch.rand(2, 5)),
         "DenseCaps(num_in=6, dim_in=8): expected activations of shape [B=2, N_i=6], got [2, 5]"),
        (PrimaryCaps(3, num_types=2, dim=4, kernel_size=3), (torch.randn(2, 1, 9, 9),),
         "PrimaryCaps(in_channels=3): expected x of shape [B, F=3, H, W], got [2, 1, 9, 9]"),
        (PrimaryCaps1d(3, num_types=2, dim=4, kernel_size=3), (torch.randn(2, 3, 9, 9),),
         "PrimaryCaps1d(in_channels=3): expected x of shape [B, F=3, L], got [2, 3, 9, 9]"),
        (PrimaryMatrixCaps(3, 2), (torch.randn(2, 4, 5, 5),),
         "PrimaryMatrixCaps(in_channels=3): expected x of shape [B, F=3, H, W], got [2, 4, 5, 5]"),
        (ConvCaps(2, 3), (torch.randn(1, 5, 5, 4, 16), torch.rand(1, 5, 5, 4)),
         "ConvCaps(in_types=2): expected poses of shape [B, H, W, T_in=2, 16], got [1, 5, 5, 4, 16]"),
        (ConvCaps(2, 3), (torch.randn(1, 5, 5, 2, 16), torch.rand(1, 5, 2)),
         "ConvCaps(in_types=2): expected activations of shape [B=1, H=5, W=5, T_in=2], got [1, 5, 2]"),
        (CapsuleDecoder(160, (1, 4, 4)), (torch.randn(2, 10, 8),),
         "CapsuleDecoder(in_features=160): expected masked of shape [B, N_o, D_o] with N_o*D_o=160, got [2, 10, 8]"),
    ],
    ids=["dense-count", "dense-flat", "dense-acts", "primary", "primary1d", "matrix", "conv-types", "conv-acts",
         "decoder"],
)  # fmt: skip
def test_shape_errors_name_the_layer_and_the_expected_shape(layer, args, message):
    with pytest.raises(ValueError) as info:
        layer(*args)
    assert str(info.value) == message


def test_importing_the_library_leaves_the_environment_alone():
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    code = "import os, capsule_kit; print(os.environ.get('OMP_WAIT_POLICY'))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "None", out.stderr


def test_the_command_line_restarts_once_with_passive_openmp(monkeypatch):
    from capsule_kit import run

    calls = []
    monkeypatch.setattr(run.os, "execv", lambda exe, argv: calls.append(argv))
    monkeypatch.setattr(sys, "argv", ["capsule-kit", "recipes/mnist.yaml", "trainer.epochs=1"])
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    run.passive_openmp()
    assert calls == [] and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"  # the user's choice wins
    monkeypatch.delenv("OMP_WAIT_POLICY")
    run.passive_openmp()
    assert calls == [[sys.executable, "-m", "capsule_kit.run", "recipes/mnist.yaml", "trainer.epochs=1"]]
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.delenv("OMP_WAIT_POLICY")
    monkeypatch.setattr(sys, "argv", ["capsule-kit", "recipes/mnist.yaml", "--validate"])
    run.passive_openmp()  # nothing to compute: no second torch import
    assert len(calls) == 1 and "OMP_WAIT_POLICY" not in os.environ


def test_cli_without_a_wait_policy_restarts_and_trains(tmp_path):
    from tests.helpers import REPO, only_run_dir

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    cmd = [sys.executable, "-m", "capsule_kit.run", str(REPO / "recipes" / "mnist.yaml"), "model.name=capsnet_tiny",
           "data.train_limit=16", "data.test_limit=16", "trainer.batch_size=16", "trainer.max_steps=1",
           "trainer.progress=false", f"output_dir={tmp_path}"]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    run_dir = only_run_dir(tmp_path)
    assert json.loads((run_dir / "results.json").read_text())["steps"] == 1
    assert json.loads((run_dir / "run.json").read_text())["omp_wait_policy"] == "PASSIVE"  # set before torch loaded
