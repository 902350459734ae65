"""One recipe vocabulary: the core's sections (routing, margin, data, splits) in every task; old spellings refused."""

from __future__ import annotations

import pytest

from capsule_kit import run
from capsule_kit.data import DataSection
from capsule_kit.errors import ConfigError
from capsule_kit.losses import MarginConfig
from capsule_kit.registry import TASKS
from capsule_kit.splits import ValSplit
from capsule_kit.task import load_plugins
from tests.helpers import REPO, run_cli

load_plugins()
BUILTIN = ["digits", "graphs", "points", "text"]


@pytest.mark.parametrize("task", BUILTIN)
def test_every_task_composes_the_core_sections(task):
    fields = TASKS.get(task).Config.model_fields
    assert issubclass(fields["data"].annotation, DataSection)  # data.root / train_limit / test_limit declared once
    assert issubclass(fields["split"].annotation, ValSplit)  # one split implementation, one set of keys
    if "loss" in fields:
        assert issubclass(fields["loss"].annotation, MarginConfig)  # m_pos / m_neg / lam declared once


@pytest.mark.parametrize("task", ["digits", "graphs", "text"])
def test_margin_bounds_are_the_same_everywhere(task):
    with pytest.raises(ConfigError, match=r"loss.m_pos: input should be less than or equal to 1"):
        run.config_from_dict({"task": task, "loss": {"m_pos": 1.5}}, "r", "r")


@pytest.mark.parametrize(
    "recipe, old, new",
    [
        ("graph_cls.yaml", "cv.folds=2", "split"),
        ("text_mr.yaml", "data.folds=10", "split.folds"),
        ("text_mr.yaml", "data.split_seed=1", "split.seed"),
        ("text_trec.yaml", "data.val_fraction=0.1", "split.val_fraction"),
        ("text_mr.yaml", "data.test_fraction=0.2", "split.test_fraction"),
        ("points_tiny.yaml", "data.test_fraction=0.3", "split.test_fraction"),
        ("mnist.yaml", "model.routing_options=1", "model.routing"),
    ],
)
def test_old_spellings_are_refused_with_did_you_mean(recipe, old, new):
    with pytest.raises(ConfigError, match=f"did you mean '{new}'"):
        run.load_recipe(REPO / "recipes" / recipe, [old])


def test_points_refuses_folds_and_validation():
    with pytest.raises(ConfigError, match="split: the points task takes one hold-out"):
        run.load_recipe(REPO / "recipes" / "points_tiny.yaml", ["split.folds=5"])


def test_digits_validation_is_carved_from_train_and_seeded():
    from capsule_kit_tasks.digits.task import DigitsTask

    cfg, _ = run.load_recipe(REPO / "recipes" / "mnist.yaml", ["split.val_size=500", "data.train_limit=1000"])
    splits = DigitsTask(cfg).build_data()
    assert splits.info == {"train": 1000, "val": 500, "test": 10000}
    val_y = splits.val.tensors[1]
    assert val_y.bincount(minlength=10).min() >= 40  # stratified: every digit about 50 times
    again = DigitsTask(cfg).build_data()
    assert all((a == b).all() for a, b in zip(again.val.tensors, splits.val.tensors))
    train_x = splits.train.tensors[0].flatten(1)
    val_x = splits.val.tensors[0].flatten(1)
    assert not (train_x[:, None, :] == val_x[None, :50, :]).all(-1).any()  # no validation digit is trained on


def test_cli_old_spelling_is_one_line_exit_2():
    proc = run_cli("recipes/graph_cls.yaml", "--validate", "cv.folds=2")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: recipes/graph_cls.yaml: unknown key 'cv' (did you mean 'split'?)"
    ]
