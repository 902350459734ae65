"""The Registry: explicit names, duplicates raise, unknown names list the known ones, aliases resolve."""

from __future__ import annotations

from importlib import metadata

import pytest

from capsule_kit import MODELS, ROUTING, TASKS, Registry
from capsule_kit.errors import ConfigError
from capsule_kit.registry import RegistryError, nearest
from capsule_kit.task import Task, resolve_task


@pytest.fixture
def widgets():
    reg = Registry("widget")

    @reg.register("spanner", aliases=("wrench",))
    def spanner(*, size=10):
        return ("spanner", size)

    @reg.register("hammer")
    class Hammer:
        pass

    return reg


def test_register_get_build_and_aliases(widgets):
    assert widgets.names() == ["hammer", "spanner"]
    assert widgets.resolve("wrench") == "spanner" and widgets.resolve("spanner") == "spanner"
    assert widgets.get("wrench") is widgets.get("spanner")
    assert widgets.build("wrench", size=3) == ("spanner", 3)
    assert "wrench" in widgets and "spanner" in widgets and "saw" not in widgets and 3 not in widgets
    assert len(widgets) == 2  # aliases are not counted as entries


@pytest.mark.parametrize("name, aliases", [("spanner", ()), ("saw", ("hammer",)), ("wrench", ()), ("saw", ("wrench",))])
def test_duplicates_raise(widgets, name, aliases):
    with pytest.raises(RegistryError, match="widget '(spanner|hammer|wrench)' is already registered"):
        widgets.register(name, aliases=aliases)(object())
    assert "saw" not in widgets  # a failed registration leaves nothing behind


def test_unknown_name_lists_known_ones_and_suggests(widgets):
    with pytest.raises(RegistryError) as err:
        widgets.get("hamer")
    assert str(err.value) == "unknown widget 'hamer' (did you mean 'hammer'?); known: hammer, spanner (or wrench)"
    with pytest.raises(KeyError, match=r"unknown widget 'zzz'; known: hammer, spanner"):
        widgets.resolve("zzz")  # no close match: no suggestion; RegistryError is a KeyError


def test_unknown_routing_and_model_names():
    with pytest.raises(RegistryError, match=r"unknown routing 'dynamc' \(did you mean 'dynamic'\?\); known: .*dynamic"):
        ROUTING.get("dynamc")
    with pytest.raises(RegistryError, match=r"did you mean 'capsnet_tiny'\?"):
        MODELS.get("capsnet_tyny")


def test_global_registries_resolve_aliases():
    assert ROUTING.resolve("sabour") == "dynamic"
    assert ROUTING.resolve("self_attention") == "attention" == ROUTING.resolve("efficient")
    assert MODELS.resolve("capsnet_sabour") == "capsnet"
    assert {"capsnet", "capsnet_tiny", "efficient_capsnet", "matrix_capsnet"} <= set(MODELS.names())
    assert TASKS.kind == "task"


def test_nearest():
    assert nearest("atention", ["attention", "dynamic"]) == "attention"
    assert nearest("xyz", ["attention", "dynamic"]) is None


class PluginTask(Task):
    """A task that an installed package would offer through the ``capsule_kit.tasks`` entry point group."""


def test_tasks_from_entry_points(monkeypatch):
    group = "capsule_kit.tasks"
    plugins = [
        *metadata.entry_points(group=group),  # the built-in domains are plugins too
        metadata.EntryPoint("plugged", f"{__name__}:PluginTask", group),
        metadata.EntryPoint("broken", "no_such_module_xyz:Task", group),
        metadata.EntryPoint("not_a_task", "os.path:join", group),
    ]
    monkeypatch.setattr(metadata, "entry_points", lambda group: [ep for ep in plugins if ep.group == group])
    monkeypatch.setattr(TASKS, "_items", dict(TASKS._items))  # registrations made here stay in this test
    assert resolve_task("plugged") is PluginTask  # only this plugin is loaded: 'broken' is never imported
    with pytest.raises(ConfigError, match="unknown task 'digitz'.*did you mean 'digits'"):
        resolve_task("digitz")
    with pytest.raises(ConfigError, match="plugin no_such_module_xyz:Task failed to import .ModuleNotFoundError"):
        resolve_task("broken")
    with pytest.raises(ConfigError, match="plugin os.path:join is not a capsule_kit Task subclass"):
        resolve_task("not_a_task")
