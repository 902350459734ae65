"""Typed recipes: one-line errors naming the key, typed overrides, YAML errors with their line."""

from __future__ import annotations

import pytest
from pydantic import Field

from capsule_kit.config import (
    Recipe,
    Strict,
    apply_overrides,
    dump_yaml,
    parse_override,
    read_yaml,
    to_plain,
    validate,
)
from capsule_kit.errors import ConfigError, UserError


class ModelSection(Strict):
    routing: str = Field("dynamic", description="Routing name.")
    iterations: int = Field(3, ge=1, description="Routing iterations.")
    dropout: float = Field(0.0, ge=0, le=1, description="Dropout.")
    hidden: list[int] = Field(default_factory=lambda: [512, 1024], description="Decoder widths.")


class DemoRecipe(Recipe):
    model: ModelSection = Field(default_factory=ModelSection)


def write(tmp_path, text, name="demo.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def load(path, *overrides):
    return validate(DemoRecipe, apply_overrides(read_yaml(path), list(overrides)), str(path))


def test_valid_recipe_and_defaults(tmp_path):
    cfg = load(write(tmp_path, "task: demo\ntrainer:\n  epochs: 2\nmodel:\n  iterations: 5\n"))
    assert cfg.trainer.epochs == 2 and cfg.model.iterations == 5 and cfg.trainer.batch_size == 100
    assert to_plain(cfg)["output_dir"] == "runs"
    assert "iterations: 5" in dump_yaml(cfg)


@pytest.mark.parametrize(
    "text, key, hint",
    [
        ("task: demo\ntrainer:\n  epoch: 2\n", "trainer.epoch", "trainer.epochs"),
        ("task: demo\nmodel:\n  iteration: 2\n", "model.iteration", "model.iterations"),
        ("task: demo\nmodle: {}\n", "modle", "model"),
    ],
)
def test_unknown_key_names_the_nearest_valid_key(tmp_path, text, key, hint):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load(path)
    msg = str(err.value)
    assert msg == f"{path}: unknown key '{key}' (did you mean '{hint}'?)"
    assert "\n" not in msg


def test_unknown_key_without_a_near_match_has_no_hint(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'trainer.zzzz'$"):
        load(write(tmp_path, "task: demo\ntrainer:\n  zzzz: 1\n"))


def test_wrong_type_names_the_key_and_value(tmp_path):
    path = write(tmp_path, "task: demo\ntrainer:\n  batch_size: lots\n")
    with pytest.raises(ConfigError, match=r"trainer\.batch_size: input should be a valid integer.*\(got 'lots'\)"):
        load(path)


def test_all_errors_are_reported_at_once(tmp_path):
    path = write(tmp_path, "task: demo\ntrainer:\n  epochs: -1\n  lrr: 0.1\nmodel:\n  dropout: 2\n")
    with pytest.raises(ConfigError) as err:
        load(path)
    msg = str(err.value)
    for part in ("trainer.epochs", "unknown key 'trainer.lrr' (did you mean 'trainer.lr'?)", "model.dropout"):
        assert part in msg
    assert isinstance(err.value, UserError)


def test_overrides_are_typed(tmp_path):
    path = write(tmp_path, "task: demo\n")
    cfg = load(
        path,
        "trainer.epochs=3",
        "trainer.lr=1e-3",
        "trainer.lr_decay=1",
        "model.hidden=[8, 16]",
        "model.routing=em",
        "trainer.compile=true",
        "name=2024",
        "trainer.max_steps=null",
    )
    assert cfg.trainer.epochs == 3 and type(cfg.trainer.epochs) is int  # ints stay ints
    assert cfg.trainer.lr == 0.001 and type(cfg.trainer.lr) is float
    assert cfg.trainer.lr_decay == 1.0 and type(cfg.trainer.lr_decay) is float
    assert cfg.model.hidden == [8, 16] and all(type(h) is int for h in cfg.model.hidden)
    assert cfg.model.routing == "em" and cfg.trainer.compile is True and cfg.trainer.max_steps is None
    assert cfg.name == "2024"  # a number given for a text field is the text


def test_override_value_keeps_equals_signs_and_bad_overrides_raise(tmp_path):
    assert parse_override("model.routing=a=b") == (["model", "routing"], "a=b")
    assert parse_override("trainer.epochs=") == (["trainer", "epochs"], "")
    with pytest.raises(ConfigError, match="override 'trainer.epochs' must look like key.path=value"):
        parse_override("trainer.epochs")
    with pytest.raises(ConfigError, match="'epochs' is not a section"):
        apply_overrides({"trainer": {"epochs": 1}}, ["trainer.epochs.x=1"])
    with pytest.raises(ConfigError, match=r"trainer\.epochs: input should be a valid integer.*\(got 2\.5\)"):
        load(write(tmp_path, "task: demo\n"), "trainer.epochs=2.5")


def test_yaml_syntax_error_mentions_the_line(tmp_path):
    path = write(tmp_path, "task: demo\ntrainer:\n  epochs: 1\n  lr: [0.1\nmodel: {}\n")
    with pytest.raises(ConfigError) as err:
        read_yaml(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}:") and "YAML syntax error" in msg and "line 5" in msg and "\n" not in msg


def test_yaml_that_is_not_a_mapping_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="a recipe must be a mapping of keys, got list"):
        read_yaml(write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigError, match="recipe not found"):
        read_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bin.yaml"
    bad.write_bytes(b"task: \xff\xfe\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(bad)


def test_safe_loader_refuses_python_objects(tmp_path):
    with pytest.raises(ConfigError, match="YAML syntax error"):
        read_yaml(write(tmp_path, "task: !!python/object/apply:os.system ['echo hi']\n"))
