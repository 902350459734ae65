"""The ``capsule-kit`` command line (also ``python -m capsule_kit.run``).

    capsule-kit RECIPE [key=value ...]           train (RECIPE: a file, or a shipped recipe's name)
    capsule-kit run RECIPE [key=value ...]       the same
    capsule-kit RECIPE --validate                check the recipe and its data
    capsule-kit --resume RUN_DIR [key=value ...] continue a run from checkpoints/last.pt
    capsule-kit --eval RUN_DIR|CKPT [RECIPE] [key=value ...]   test a run's (or a checkpoint's) weights
    capsule-kit ls                               shipped recipes and installed tasks
    capsule-kit --version

User mistakes (recipe, data, checkpoint, output folder) print one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from capsule_kit.checkpoint import load_checkpoint
from capsule_kit.config import Recipe, apply_overrides, read_yaml
from capsule_kit.errors import CheckpointError, UserError
from capsule_kit.recipe_io import add_paths, config_from_dict, find_recipe, load_recipe, shipped_recipes
from capsule_kit.rundir import RunDir
from capsule_kit.session import version
from capsule_kit.stop import Interrupted
from capsule_kit.task import Task, load_plugins, resolve_task


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="capsule-kit",
        description="Train or evaluate a capsule-kit recipe. `capsule-kit ls` lists the shipped recipes and tasks.",
    )
    p.add_argument("recipe", nargs="?", help="recipe YAML or shipped recipe name (optional with --resume/--eval)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.epochs=1")
    p.add_argument("--validate", action="store_true", help="check the recipe and data, then exit")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--eval", metavar="RUN_DIR|CKPT", help="test a run's weights (or a checkpoint's) on the test split")
    p.add_argument("--version", action="version", version=f"capsule-kit {version()} (torch {torch.__version__})")
    args = p.parse_intermixed_args(argv)  # overrides may also follow --eval CKPT / --resume DIR
    args.command = "train"
    if args.recipe in ("ls", "run") and not Path(args.recipe).exists():
        args.command = args.recipe
        args.recipe = args.overrides.pop(0) if args.command == "run" and args.overrides else None
        if args.command == "run" and not args.recipe and not args.resume:
            p.error("run: a recipe is required (a file or a shipped recipe name; see `capsule-kit ls`)")
    if args.recipe and "=" in args.recipe and not args.recipe.endswith((".yaml", ".yml")):
        args.overrides, args.recipe = [args.recipe, *args.overrides], None
    if args.command != "ls" and not args.recipe and not args.resume and not args.eval:
        p.error("a recipe is required (or --resume RUN_DIR, or --eval RUN_DIR); `capsule-kit ls` lists recipes")
    return args


def listing() -> str:
    """The shipped recipes (runnable by name) and the installed tasks, as ``capsule-kit ls`` prints them."""
    lines = ["recipes (run one with: capsule-kit NAME [key=value ...])"]
    shipped = shipped_recipes()
    width = max((len(n) for n in shipped), default=4)
    for name, path in shipped.items():
        try:
            task = read_yaml(path).get("task", "?")
        except UserError:
            task = "?"
        about = next((ln[1:].strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.startswith("#")), "")
        lines.append(f"  {name:<{width}}  {task:<7}  {about[:90]}")
    lines.append("tasks (name them in a recipe as task: NAME)")
    for name in load_plugins():
        cls = resolve_task(name)
        lines.append(f"  {name:<{width}}  {cls.__module__}:{cls.__qualname__}")
    return "\n".join(lines)


def recipe_for_eval(args: argparse.Namespace) -> tuple[Recipe, type[Task], Path, list[str]]:
    """(config, task class, checkpoint, task folders) for ``--eval``: from the recipe given, else from the
    run directory's recipe.yaml, else from the recipe stored in the checkpoint; overrides apply to all three.
    """
    target = Path(args.eval)
    run = RunDir(target)
    if RunDir.is_run(target):
        paths = list(run.read_json(run.run_json).get("task_paths", []))
        add_paths(paths)
        ckpt_path = run.tested_weights()
        if args.recipe:
            return (*load_recipe(args.recipe, args.overrides), ckpt_path, paths)
        return (*load_recipe(run.recipe, args.overrides), ckpt_path, paths)
    if args.recipe:
        return (*load_recipe(args.recipe, args.overrides), target, [])
    stored = load_checkpoint(target).get("config")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{target}: holds no recipe; give one: capsule-kit RECIPE --eval {target}")
    paths = list(load_checkpoint(target).get("task_paths", []) or [])
    add_paths(paths)
    raw = apply_overrides(dict(stored), list(args.overrides))
    name = str(stored.get("name") or target.stem)
    return (*config_from_dict(raw, f"{target} (stored recipe)", name), target, paths)


def run_command(args: argparse.Namespace, argv: list[str] | None) -> int:
    from capsule_kit.inference import eval_checkpoint
    from capsule_kit.run import train

    if args.command == "ls":
        print(listing())
        return 0
    if args.eval:
        cfg, task_cls, ckpt, paths = recipe_for_eval(args)
        if args.validate:
            task_cls(cfg).check_data()
            print(f"ok: {args.eval} (task '{cfg.task}', name '{cfg.name}')")
            return 0
        eval_checkpoint(cfg, task_cls, ckpt, argv, args.overrides, task_paths=paths)
        return 0
    if args.resume:
        add_paths(RunDir(args.resume).read_json(RunDir(args.resume).run_json).get("task_paths", []))
    recipe = args.recipe or str(RunDir(args.resume).recipe)
    cfg, task_cls = load_recipe(recipe, args.overrides)
    if args.validate:
        task_cls(cfg).check_data()
        print(f"ok: {find_recipe(recipe)} (task '{cfg.task}', name '{cfg.name}')")
        return 0
    train(cfg, task_cls, resume=args.resume, argv=argv, overrides=args.overrides)
    return 0


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    args = parse_args(argv)
    try:
        return run_command(args, argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        what = "evaluation stopped; nothing written" if args.eval else "before training started; nothing to resume"
        print(f"interrupted {what}", file=sys.stderr)
        return 130
