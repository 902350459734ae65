"""The wheel as a user installs it: built-in tasks as entry points, no generic top-level ``tasks``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from importlib import metadata

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def wheel_file(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    for part in ("pyproject.toml", "README.md", "capsule_kit", "tasks", "recipes"):
        if (REPO / part).is_dir():
            shutil.copytree(REPO / part, src / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif (REPO / part).exists():
            shutil.copy(REPO / part, src / part)
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(out), str(src)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    (wheel,) = out.glob("capsule_kit-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheel_names(wheel_file) -> list[str]:
    with zipfile.ZipFile(wheel_file) as z:
        return z.namelist()


def test_wheel_has_no_generic_tasks_package(wheel_names):
    tops = {n.split("/")[0] for n in wheel_names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"capsule_kit", "capsule_kit_tasks"}
    assert "capsule_kit_tasks/digits/mnist/train-images-idx3-ubyte.gz" in wheel_names
    assert "capsule_kit/routing/fused_kernel.cpp" in wheel_names  # built on first use of fused routing
    shipped = {p.name for p in (REPO / "recipes").glob("*.yaml")}
    assert shipped and {f"capsule_kit/recipes/{n}" for n in shipped} <= set(wheel_names)  # `capsule-kit mnist`


def test_wheel_declares_builtin_tasks_as_entry_points(wheel_names):
    assert any(n.endswith(".dist-info/entry_points.txt") for n in wheel_names)
    names = {ep.name: ep.value for ep in metadata.entry_points(group="capsule_kit.tasks")}
    for name in ("digits", "text", "graphs", "points"):
        module, _, cls = names[name].partition(":")
        assert module.startswith("capsule_kit_tasks.") and cls.endswith("Task")


def test_core_holds_no_list_of_domains():
    core = "\n".join(p.read_text() for p in (REPO / "capsule_kit").rglob("*.py"))
    assert "capsule_kit_tasks" not in core and "tasks.digits" not in core


def test_installed_wheel_lists_and_runs_shipped_recipes_by_name(wheel_file, tmp_path):
    site = tmp_path / "site"
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel_file)]
    subprocess.run(pip, check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHONPATH": str(site)}  # the wheel's files, not this clone's (cwd has no recipes/)

    def cli(*args):
        cmd = [sys.executable, "-m", "capsule_kit.run", *args]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)

    where = subprocess.run([sys.executable, "-c", "import capsule_kit; print(capsule_kit.__file__)"], cwd=tmp_path,
                           env=env, capture_output=True, text=True, timeout=120).stdout  # fmt: skip
    assert where.startswith(str(site)), where
    proc = cli("mnist", "--validate")
    assert proc.returncode == 0 and f"{site}/capsule_kit/recipes/mnist.yaml" in proc.stdout, proc.stderr
    proc = cli("run", "mnist_efficient", "trainer.epochs=1", "--validate")
    assert proc.returncode == 0 and "mnist_efficient.yaml" in proc.stdout, proc.stderr
    listing = cli("ls")
    assert listing.returncode == 0, listing.stderr
    assert "mnist_em" in listing.stdout and "digits" in listing.stdout and "capsule_kit_tasks.text" in listing.stdout
    err = cli("mnistt").stderr.strip()
    assert err.startswith("error: recipe not found: 'mnistt'") and "mnist_em" in err, err
