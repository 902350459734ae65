"""Fault suite (issue 15): bad input gets one line on stderr and exit code 2, no traceback, no run
directory; numerics stay finite over the float range and NaN is never hidden.

CLI-visible probes run the real CLI in a subprocess (so warnings printed before an error count);
numeric ones call the library and compare with a float64 naive reference.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from capsule_kit.config import MAX_RECIPE_BYTES, parse_override, read_yaml
from capsule_kit.errors import ConfigError, UserError, excerpt
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
