"""The Task interface every domain implements, and task lookup.

A task is found by registered name (``@register_task("digits")``), by a
``package.module:Class`` path in the recipe, or through the ``capsule_kit.tasks``
entry-point group of an installed package. The built-in domains are found that
way too (capsule-kit's own entry points), so the core holds no list of domains.
The engine knows nothing else about a domain.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from pathlib import Path
from typing import Any, ClassVar

from torch import Tensor, nn

from capsule_kit.config import Recipe
from capsule_kit.data import Splits
from capsule_kit.errors import ConfigError
from capsule_kit.registry import TASKS, RegistryError


class Task:
    """Base class for a domain adapter.

    Subclasses set ``Config`` (a :class:`Recipe` subclass with their sections)
    and implement :meth:`build_data`, :meth:`build_model`, :meth:`step` and
    :meth:`metrics`. ``monitor``/``monitor_mode`` choose the metric behind the
    ``best`` checkpoint. Everything else the runner calls is declared here with
    a default: :meth:`folds`, :meth:`param_groups`, :meth:`before_training`,
    :meth:`evaluate_extra` (test metrics beyond per-batch outputs, e.g. a probe),
    :meth:`label_names`, :meth:`pictures` (given the evaluated test outputs, so a
    task keeps no hidden state and never re-predicts) and :meth:`summarize_folds`.

    Attributes:
        cfg: The validated recipe.
        progress: Fraction of training done in [0, 1], written by the engine before
            each step (for schedules such as the spread-loss margin).

    """

    Config: ClassVar[type[Recipe]] = Recipe
    monitor: ClassVar[str] = "accuracy"
    monitor_mode: ClassVar[str] = "max"
    progress: float

    def __init__(self, cfg: Recipe) -> None:
        self.cfg = cfg
        self.progress = 0.0

    def check_data(self) -> None:
        """Raise DataError if the data cannot be found (``--validate`` calls this; cheap)."""

    def folds(self) -> list[Any]:
        """Cross-validation folds; the runner trains one model per entry (default: one run)."""
        return [None]

    def build_data(self, fold: Any = None) -> Splits:
        """Datasets for one fold."""
        raise NotImplementedError

    def build_model(self) -> nn.Module:
        """A fresh model from ``capsule_kit`` parts."""
        raise NotImplementedError

    def step(self, model: nn.Module, batch: Any, *, train: bool) -> dict[str, Any]:
        """One forward pass (and loss).

        Returns:
            ``{"loss": scalar Tensor, "n": batch size, "log": {name: scalar Tensor}, "out": {name: Tensor}}``;
            ``log`` values (tensors, so no step waits for the device; floats work too) are summed on
            the device and their means logged every ``log_every`` steps; ``out`` tensors are
            gathered (detached, on CPU) over an evaluation pass for :meth:`metrics`.

        """
        raise NotImplementedError

    def metrics(self, outputs: list[dict[str, Tensor]]) -> dict[str, float]:
        """Metrics of an evaluation pass from the gathered ``out`` dicts."""
        return {}

    def param_groups(self, model: nn.Module) -> list[dict[str, Any]] | None:
        """Optimizer parameter groups (e.g. ``[{"params": [...], "lr_scale": 30.0}, ...]``); None: one group.

        A group's ``lr_scale`` multiplies ``trainer.lr`` for its parameters. Parameters
        that do not require gradients are left out by the runner.
        """
        return None

    def before_training(self, model: nn.Module, data: Splits, device: Any) -> None:
        """Called once per fold before the first step, with the model on its device (e.g. to fill caches)."""

    def evaluate_extra(self, model: nn.Module, data: Splits, device: Any) -> dict[str, Any]:
        """Test metrics that need more than per-batch outputs, e.g. a probe trained on the frozen model.

        Called once per fold, on the main process only, right after the test evaluation and with the
        tested weights (also by ``--eval``). The result is merged into that fold's test metrics: it
        lands in results.json ``test``, and its scalars get mean/std over folds like any metric.
        Return plain data (numbers, strings, lists): it is stored in checkpoints and JSON.

        Args:
            model: The tested model (unwrapped, on ``device``).
            data: The fold's datasets.
            device: The model's device.

        Returns:
            Extra test metrics; their names must not repeat those of :meth:`metrics` (default: none).

        """
        return {}

    def label_names(self) -> list[str] | None:
        """Display names of the classes (after :meth:`build_data`), or None."""
        return None

    def pictures(
        self, model: nn.Module, data: Splits, run_dir: Path, device: Any, outputs: list[dict[str, Tensor]]
    ) -> dict[str, Any]:
        """Write figures/files for people to look at; return extra results (plain data).

        Args:
            model: The finished model.
            data: The last fold's datasets.
            run_dir: Where to write.
            device: The model's device.
            outputs: The gathered ``out`` dicts of the final test evaluation (what :meth:`metrics` saw).

        """
        return {}

    def summarize_folds(self, fold_results: list[dict[str, Any]], run_dir: Path) -> dict[str, Any]:
        """Extra results of a cross-validated run from its per-fold test results (default: none)."""
        return {}


def with_extra_metrics(task: Task, test: dict[str, Any], model: nn.Module, data: Splits, device: Any) -> dict:
    """``test`` metrics plus the task's :meth:`Task.evaluate_extra` ones (a new dict; the runner calls this once).

    Raises:
        ValueError: when an extra metric repeats the name of a test metric (a task bug).

    """
    extra = task.evaluate_extra(model, data, device) or {}
    clash = sorted(set(extra) & set(test))
    if clash:
        raise ValueError(f"{type(task).__name__}.evaluate_extra returned metrics its test pass has: {clash}")
    return {**test, **extra}


def register_task(name: str, *, aliases: tuple[str, ...] = ()):
    """Class decorator registering a :class:`Task` subclass under ``name``."""

    def deco(cls: type[Task]) -> type[Task]:
        if not (isinstance(cls, type) and issubclass(cls, Task)):
            raise TypeError(f"register_task('{name}') expects a Task subclass, got {cls!r}")
        TASKS.register(name, aliases=aliases)(cls)
        return cls

    return deco


def _load_entry_point(name: str) -> None:
    """Register the task that an installed package offers as ``name`` (entry point group ``capsule_kit.tasks``).

    Only the plugin of that name is imported, so a broken plugin of another name cannot get in
    the way. A name no entry point carries may be an alias a plugin registers: then every plugin
    is imported, and those that fail are skipped (the unknown-task error lists what loaded).
    """
    points = list(metadata.entry_points(group="capsule_kit.tasks"))
    named = [ep for ep in points if ep.name == name]
    for ep in named or points:
        if ep.name in TASKS:
            continue
        try:
            obj = ep.load()
        except Exception as exc:  # a third-party plugin: any import failure is reported in one line
            if not named:
                continue
            why = f"{type(exc).__name__}: {exc}"
            raise ConfigError(f"task '{name}': plugin {ep.value} failed to import ({why})") from None
        if not (isinstance(obj, type) and issubclass(obj, Task)):
            if not named:
                continue
            raise ConfigError(f"task '{name}': plugin {ep.value} is not a capsule_kit Task subclass")
        if ep.name not in TASKS:
            TASKS.register(ep.name)(obj)


def load_plugins() -> list[str]:
    """Import every installed task plugin (built-in domains included); returns the registered task names.

    For listings (``--help``, generated docs): a plugin that fails to import is skipped here and
    reported in one line when a recipe names it.
    """
    _load_entry_point("")  # no entry point has the empty name: every plugin is tried
    return TASKS.names()


def _from_path(spec: str) -> type[Task]:
    module_name, _, attr = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"task '{spec}': cannot import module '{module_name}' ({exc})") from None
    obj = getattr(module, attr, None)
    if not (isinstance(obj, type) and issubclass(obj, Task)):
        raise ConfigError(f"task '{spec}': '{attr}' is not a Task subclass in {module_name}")
    return obj


def resolve_task(spec: str) -> type[Task]:
    """Task class for a recipe's ``task`` value (name, alias or ``module:Class``)."""
    if ":" in spec:
        return _from_path(spec)
    if spec not in TASKS:
        _load_entry_point(spec)
    try:
        return TASKS.get(spec)
    except RegistryError as exc:
        hint = (
            "; a task of your own: name it 'module:Class', or list the module that registers it under "
            "'imports: [module]', or install it with a 'capsule_kit.tasks' entry point"
        )
        raise ConfigError(f"task: {exc}{hint}") from None
