"""Fault suite (issue 15): bad input gets one line on stderr and exit code 2, no traceback, no run
directory; numerics stay finite over the float range and NaN is never hidden.

CLI-visible probes run the real CLI in a subprocess (so warnings printed before an error count);
numeric ones call the library and compare with a float64 naive reference. Malformed data files (point
clouds, TU graphs, MNIST idx, label names) are in test_faults_data.py, which imports ``cli_error`` from here.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from capsule_kit import routing
from capsule_kit.config import MAX_RECIPE_BYTES, apply_overrides, parse_override, read_yaml, validate
from capsule_kit.errors import ConfigError, UserError, excerpt
from capsule_kit.functional import lengths, safe_norm, squash, squash_efficient
from capsule_kit_tasks.digits.task import DigitsTask
from tests.helpers import REPO, run_cli

MNIST = str(REPO / "recipes" / "mnist.yaml")


def cli_error(tmp_path: Path, *args: str) -> str:
    """Run the CLI with ``output_dir`` under ``tmp_path``; assert the one-line refusal and return it."""
    out = tmp_path / "runs"
    proc = run_cli(*args, f"output_dir={out}", timeout=300)
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(lines[0]) < 2100
    assert not out.exists() or not any(out.iterdir()), "a run directory was left behind"
    return lines[0]


def bomb(levels: int = 9) -> str:
    """A billion-laughs recipe: ``levels`` lists of 9 aliases of the list before (9**levels strings)."""
    text = 'task: digits\nl0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    for i in range(1, levels):
        text += f"l{i}: &l{i} [{','.join([f'*l{i - 1}'] * 9)}]\n"
    return text + f"trainer:\n  epochs: *l{levels - 1}\n"


# --- 1. Bounded YAML --------------------------------------------------------------------------


def test_alias_bomb_is_refused_in_one_short_line(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())
    assert len(path.read_bytes()) < 500
    err = cli_error(tmp_path, str(path), "--validate")
    assert err == f"error: {path}: line 2, column 5: YAML anchors and aliases (&name, *name) are not allowed in recipes"


@pytest.mark.parametrize(
    "text, problem",
    [
        ("task: digits\nbase: &b {epochs: 1}\ntrainer:\n  <<: *b\n", "line 2, column 7: YAML anchors"),
        ("task: digits\ntrainer:\n  epochs: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than 32 levels"),
    ],
    ids=["merge-key", "deep-nesting"],
)
def test_anchors_and_deep_nesting_are_refused(tmp_path, text, problem):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=problem):
        read_yaml(path)


def test_oversized_recipe_is_refused_before_parsing(tmp_path):
    path = tmp_path / "big.yaml"
    path.write_text("task: digits\n" + "# padding\n" * (MAX_RECIPE_BYTES // 10))
    with pytest.raises(ConfigError, match=r"big.yaml: \d+ bytes, more than a recipe may hold"):
        read_yaml(path)


def test_override_aliases_refused_and_huge_values_echoed_as_excerpts(tmp_path):
    with pytest.raises(ConfigError, match="override 'trainer.epochs': YAML anchors and aliases"):
        parse_override("trainer.epochs=[&a [1, 2], *a, *a]")
    err = cli_error(tmp_path, MNIST, "trainer.seed=" + "7x" * 50_000, "--validate")
    assert "trainer.seed: input should be a valid integer" in err and len(err) < 400


def test_messages_are_one_bounded_line_whatever_they_hold():
    shared = ["lol"] * 9
    for _ in range(30):  # 9**30 leaves if expanded; excerpt must not expand it
        shared = [shared] * 9
    assert len(excerpt(shared)) <= 83 and len(excerpt("x" * 10**6)) <= 83
    msg = str(UserError("first line\nsecond line\r\n" + "y" * 10**5))
    assert "\n" not in msg and msg.startswith("first line second line yyy") and len(msg) < 2100


# --- 2. Finite recipes, stable squash and norms, NaN never hidden -------------------------------

SCALES = [0.0, 1e-40, 1e-30, 1e-15, 1.0, 1e19, 1e30, 1e38]  # 1e-40: subnormal in float32


def naive_squash(s: torch.Tensor) -> torch.Tensor:
    """The textbook formula in float64 (exact for any float32 input: no over- or underflow)."""
    sq = s.pow(2).sum(-1, keepdim=True)
    return torch.where(sq > 0, sq / (1 + sq) * s / sq.sqrt(), 0.0)


def naive_efficient(s: torch.Tensor) -> torch.Tensor:
    r = s.norm(dim=-1, keepdim=True)
    return torch.where(r > 0, -torch.expm1(-r) * s / r, s)


def capsules(scale: float) -> torch.Tensor:
    """Three float32 capsules of length ~``scale`` (8D, unit-ish random directions)."""
    gen = torch.Generator().manual_seed(0)
    return (torch.rand(3, 8, generator=gen) - 0.5).mul(2 * scale / 8**0.5).float()


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize(
    "fn, ref", [(squash, naive_squash), (squash_efficient, naive_efficient)], ids=["sabour", "efficient"]
)
def test_squash_matches_float64_reference_over_the_float32_range(fn, ref, scale):
    x = capsules(scale).requires_grad_()
    x64 = x.detach().double().requires_grad_()
    out, want = fn(x), ref(x64)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out.double(), want.float().double(), rtol=4e-6, atol=1e-44)
    g = torch.linspace(-1, 1, 24).reshape(3, 8)
    (out * g).sum().backward()
    assert torch.isfinite(x.grad).all()
    if fn is squash and 0 < scale < 1e-19:  # |s|^2 underflows float32: the gradient (~|s|) too, to 0
        assert (x.grad.abs() <= 10 * scale).all()
    elif scale > 0:  # the float64 reference's own gradient is NaN at exactly 0
        (want * g.double()).sum().backward()
        torch.testing.assert_close(x.grad.double(), x64.grad.float().double(), rtol=1e-4, atol=1e-43)
    elif fn is squash:
        assert (x.grad == 0).all()  # d squash / ds = 0 at s = 0
    else:
        assert torch.equal(x.grad, g)  # the efficient squash is the identity to first order at 0


@pytest.mark.parametrize("scale", SCALES)
def test_lengths_and_safe_norm_match_float64_norm(scale):
    x = capsules(scale)[None].requires_grad_()  # [B=1, N=3, D=8]
    out = lengths(x)
    torch.testing.assert_close(out.double(), x.detach().double().norm(dim=-1).float().double(), rtol=2e-6, atol=1e-44)
    out.sum().backward()
    assert torch.isfinite(x.grad).all()
    assert torch.equal(safe_norm(x.detach(), dim=-1, keepdim=True).squeeze(-1), out.detach())


def test_nan_capsule_is_nan_everywhere_and_inf_has_infinite_length():
    x = torch.tensor([[float("nan"), 1.0, 0.0], [0.0, 3.0, 4.0], [float("inf"), 1.0, 0.0]])
    assert lengths(x[None])[0, 0].isnan() and lengths(x[None])[0, 1] == 5.0 and lengths(x[None])[0, 2].isinf()
    for fn in (squash, squash_efficient):
        out = fn(x)
        assert out[0].isnan().all() and torch.isfinite(out[1]).all() and out[2].isnan().any()


@pytest.mark.parametrize("name", ["dynamic", "attention"])
def test_routing_activation_of_a_nan_pose_is_nan_not_zero(name):
    torch.manual_seed(0)
    layer = routing.build(name, num_in=6, num_out=4, iterations=1 if name == "attention" else 3)
    votes = torch.randn(2, 6, 4, 8)
    votes[0, 2] = float("nan")  # one input capsule of the first example
    routed = layer(votes)
    assert routed.activations[0].isnan().all(), routed.activations[0]
    assert torch.isfinite(routed.activations[1]).all() and (routed.activations[1] < 1).all()


def test_recipe_floats_must_be_finite(tmp_path):
    err = cli_error(tmp_path, MNIST, "trainer.lr=.inf", "--validate")
    assert err == f"error: {MNIST}: trainer.lr: input should be a finite number (got inf)"
    for value, shown in (("-.inf", "-inf"), (".nan", "nan")):
        with pytest.raises(ConfigError, match=rf"trainer.grad_clip: input should be a finite number \(got {shown}\)"):
            validate(DigitsTask.Config, apply_overrides(read_yaml(MNIST), [f"trainer.grad_clip={value}"]), MNIST)


# --- 5. Wording ---------------------------------------------------------------------------------


def test_directory_as_recipe_and_unknown_routing_list_their_aliases(tmp_path):
    err = cli_error(tmp_path, str(REPO / "recipes"), "--validate")
    want = f"error: recipe: {REPO / 'recipes'} is a folder; give a recipe file (.yaml) or a shipped recipe name"
    assert err == want
    err = cli_error(tmp_path, MNIST, "model.routing.name=sabor", "--validate")
    assert "unknown routing 'sabor' (did you mean 'sabour'?)" in err and "dynamic (or sabour)" in err, err
