"""Docs cannot rot: the recipe reference is regenerated, runnable blocks and the example execute."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import REPO, only_run_dir, results, run_cli

BLOCK = re.compile(r"```python runnable\n(.*?)\n```", re.S)
RUNNABLE = [
    (p.name, i, code)
    for p in sorted((REPO / "docs").glob("*.md"))
    for i, code in enumerate(BLOCK.findall(p.read_text()))
]


def test_recipe_reference_is_current():
    proc = subprocess.run(
        [sys.executable, "scripts/gen_recipe_docs.py", "--check"], cwd=REPO, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


def test_docs_have_runnable_blocks():
    assert len(RUNNABLE) >= 2


@pytest.mark.parametrize("name, index, code", RUNNABLE, ids=[f"{n}#{i}" for n, i, _ in RUNNABLE])
def test_runnable_block(name, index, code):
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{name} block {index}:\n{proc.stderr[-2000:]}"


def test_new_domain_example_trains_through_the_cli(tmp_path):
    proc = run_cli(
        "examples/sklearn_digits.yaml", "trainer.max_steps=2", "trainer.progress=false", f"output_dir={tmp_path}"
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = results(only_run_dir(tmp_path))
    assert res["task"] == "sklearn_digits:SklearnDigitsTask" and res["steps"] == 2


def test_public_tensor_api_documents_shapes():
    """Every exported module and every exported function taking tensors has a shape legend in its docstring."""
    import inspect

    import torch

    import capsule_kit as ck

    missing = []
    for name in ck.__all__:
        obj = getattr(ck, name)
        if inspect.isclass(obj) and issubclass(obj, torch.nn.Module):
            docs = (inspect.getdoc(obj) or "") + (inspect.getdoc(obj.forward) or "")
        elif inspect.isfunction(obj) and "Tensor" in str(inspect.signature(obj)):
            docs = inspect.getdoc(obj) or ""
        else:
            continue
        if not ("[B" in docs or "[...]" in docs or "[..." in docs):
            missing.append(name)
    assert not missing, f"no shapes in the docstrings of {missing}"
