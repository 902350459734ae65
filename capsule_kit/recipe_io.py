"""Finding and loading recipes: files, shipped recipes by name, a run's recipe, user task modules.

A recipe names its task by registered name, ``module:Class``, or a registered name
whose module it lists under ``imports:``. The folders user task modules were
imported from are recorded in the run (run.json ``task_paths``, and in checkpoints)
so that ``--resume``/``--eval``/:func:`capsule_kit.load_run` find them from any
working directory.
"""

from __future__ import annotations

import importlib
import sys
from importlib import metadata
from pathlib import Path

from capsule_kit.config import Recipe, apply_overrides, read_yaml, validate
from capsule_kit.errors import ConfigError
from capsule_kit.task import Task, resolve_task

PACKAGE = Path(__file__).resolve().parent


def shipped_recipes_dir() -> Path | None:
    """The recipes shipped with capsule-kit: in the wheel (``capsule_kit/recipes``) or a clone's ``recipes/``."""
    for folder in (PACKAGE / "recipes", PACKAGE.parent / "recipes"):
        if folder.is_dir() and any(folder.glob("*.yaml")):
            return folder
    return None


def shipped_recipes() -> dict[str, Path]:
    """Shipped recipe names (file stems) -> files."""
    folder = shipped_recipes_dir()
    return {p.stem: p for p in sorted(folder.glob("*.yaml"))} if folder else {}


def find_recipe(spec: str | Path) -> Path:
    """A recipe file from a path, or from the name of a shipped recipe (``mnist`` -> ``.../mnist.yaml``).

    A path that exists wins (a folder is refused by :func:`~capsule_kit.config.read_yaml`, by name).
    """
    p = Path(spec)
    if p.exists():
        return p
    shipped = shipped_recipes()
    if str(spec) in (p.stem, p.name) and p.stem in shipped:  # a bare name, e.g. `capsule-kit mnist`
        return shipped[p.stem]
    if p.suffix in (".yaml", ".yml") or len(p.parts) > 1:
        raise ConfigError(f"recipe not found: {p}")
    names = ", ".join(shipped) or "none"
    raise ConfigError(f"recipe not found: '{spec}' is neither a file nor a shipped recipe (shipped: {names})")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Recipe, type[Task]]:
    """Recipe file (or shipped name) + overrides -> (validated config, task class); raises ConfigError."""
    path = find_recipe(path)
    raw = apply_overrides(read_yaml(path), list(overrides))
    return config_from_dict(raw, str(path), path.stem, search=path.resolve().parent)


def add_paths(folders: list[str] | tuple[str, ...]) -> None:
    """Put folders (recorded user task folders) at the front of ``sys.path``."""
    for folder in reversed([str(f) for f in folders if f]):
        if folder not in sys.path:
            sys.path.insert(0, folder)


def config_from_dict(
    raw: dict, source: str, name: str, search: Path | None = None, paths: list[str] | tuple[str, ...] = ()
) -> tuple[Recipe, type[Task]]:
    """Raw recipe dict -> (validated config, task class).

    A ``module:Class`` task, and the modules under ``imports:``, are imported with
    the recorded ``paths``, the working directory and the recipe's folder on
    ``sys.path``, so a user's one-file domain next to its recipe works.
    """
    if "task" not in raw:
        raise ConfigError(f"{source}: missing key 'task' (a registered task name or 'package.module:Class')")
    spec = str(raw["task"])
    imports = raw.get("imports") or []
    if not isinstance(imports, list) or not all(isinstance(m, str) for m in imports):
        raise ConfigError(f"{source}: imports: expected a list of module names, e.g. [mymodule]")
    if ":" in spec or imports:
        add_paths([*paths, str(Path.cwd()), str(search) if search else ""])
    for module in imports:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise ConfigError(f"imports: cannot import module '{module}' ({exc})") from None
    task_cls = resolve_task(spec)
    cfg = validate(task_cls.Config, raw, source)
    if cfg.name is None:
        cfg.name = name
    return cfg, task_cls


def task_paths(cfg: Recipe, task_cls: type[Task]) -> list[str]:
    """Folders a user's task modules were imported from (none for installed packages), to record in a run."""
    modules = [task_cls.__module__, *getattr(cfg, "imports", [])]
    installed = set(metadata.packages_distributions())
    out = []
    for name in modules:
        top = name.split(".")[0]
        file = getattr(sys.modules.get(top), "__file__", None)
        if not file or top in installed or top == PACKAGE.name:
            continue
        path = Path(file).resolve()
        folder = str(path.parent.parent if path.name == "__init__.py" else path.parent)
        if folder not in out:
            out.append(folder)
    return out
