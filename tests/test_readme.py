"""The README keeps exactly two set-up commands, and .ci/run runs the test one verbatim."""

from __future__ import annotations

import re

from tests.helpers import REPO


def setup_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    section = text.split("## Set-up: the two commands", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.*?)\n```", section, flags=re.S)


def test_readme_has_two_setup_commands():
    commands = setup_commands()
    assert len(commands) == 2
    assert all("\n" not in c for c in commands)
    assert commands[0].endswith("python -m capsule_kit.run recipes/mnist.yaml")
    assert "pytest" in commands[1] and "torch==2.13.0" in commands[1]


def test_ci_runs_the_readme_test_command_verbatim():
    assert f"({setup_commands()[1]})" in (REPO / ".ci" / "run").read_text()
