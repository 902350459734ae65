"""The runner: ``python -m capsule_kit.run RECIPE.yaml [key=value ...] [--validate] [--resume RUN_DIR] [--eval CKPT]``.

Reads top to bottom: parse -> validate the recipe -> device/DDP -> task ->
(per fold) data, model, optimizer, (resume) -> train -> evaluate -> results,
pictures. User mistakes print one line on stderr and exit 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capsule_kit.checkpoint import atomic_write_text, load_checkpoint, set_rng_state
from capsule_kit.config import Recipe, apply_overrides, dump_yaml, read_yaml, to_plain, validate
from capsule_kit.determinism import configure_determinism
from capsule_kit.distributed import DistInfo, barrier, broadcast, pick_device, setup_device, shutdown
from capsule_kit.engine import Trainer, evaluate, make_loader
from capsule_kit.errors import CheckpointError, ConfigError, UserError
from capsule_kit.loaders import unwrap
from capsule_kit.metrics import scalars
from capsule_kit.plots import standard_pictures
from capsule_kit.report import read_json, write_report
from capsule_kit.stop import Interrupted, StopFlag
from capsule_kit.task import Task, resolve_task


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="capsule-kit", description="Train or evaluate a capsule-kit recipe.")
    p.add_argument("recipe", nargs="?", help="recipe YAML (optional with --resume)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.epochs=1")
    p.add_argument("--validate", action="store_true", help="check the recipe and data, then exit")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue a run from its last checkpoint")
    p.add_argument("--eval", metavar="CHECKPOINT", help="evaluate a checkpoint on the test split")
    args = p.parse_intermixed_args(argv)  # overrides may also follow --eval CKPT / --resume DIR
    if args.recipe and "=" in args.recipe and not args.recipe.endswith((".yaml", ".yml")):
        args.overrides, args.recipe = [args.recipe, *args.overrides], None
    if not args.recipe and not args.resume:
        p.error("a recipe is required (or --resume RUN_DIR)")
    return args


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> tuple[Recipe, type[Task]]:
    """Recipe file + overrides -> (validated config, task class); raises ConfigError."""
    raw = apply_overrides(read_yaml(path), list(overrides))
    return config_from_dict(raw, str(path), Path(path).stem, search=Path(path).resolve().parent)


def config_from_dict(raw: dict, source: str, name: str, search: Path | None = None) -> tuple[Recipe, type[Task]]:
    """Raw recipe dict -> (validated config, task class).

    A ``module:Class`` task is imported with the recipe's folder and the working
    directory on ``sys.path``, so a user's one-file domain next to its recipe works.
    """
    if "task" not in raw:
        raise ConfigError(f"{source}: missing key 'task' (a registered task name or 'package.module:Class')")
    spec = str(raw["task"])
    if ":" in spec:
        for folder in (str(Path.cwd()), str(search) if search else None):
            if folder and folder not in sys.path:
                sys.path.insert(0, folder)
    task_cls = resolve_task(spec)
    cfg = validate(task_cls.Config, raw, source)
    if cfg.name is None:
        cfg.name = name
    return cfg, task_cls


def train_recipe(recipe: str | Path | dict | Recipe, *overrides: str) -> dict:
    """Library entry point: train a recipe (file, dict or config) and return its results.

    Example:
        >>> import capsule_kit
        >>> capsule_kit.train("recipes/mnist.yaml", "trainer.epochs=1")  # doctest: +SKIP
    """
    if isinstance(recipe, Recipe):
        return train(recipe)
    if isinstance(recipe, dict):
        cfg, task_cls = config_from_dict(apply_overrides(dict(recipe), list(overrides)), "recipe", "recipe")
    else:
        cfg, task_cls = load_recipe(recipe, overrides)
    return train(cfg, task_cls, argv=[], overrides=overrides)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_run_dir(cfg: Recipe, info: DistInfo, suffix: str = "") -> Path:
    """``output_dir/<name>-<timestamp>`` created by rank 0 and shared with the others."""
    run_dir = None
    if info.main:
        stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
        base = Path(cfg.output_dir) / f"{cfg.name}{suffix}-{stamp}"
        run_dir, k = base, 1
        while run_dir.exists():
            run_dir, k = base.with_name(f"{base.name}-{k}"), k + 1
        (run_dir / "checkpoints").mkdir(parents=True)
    return Path(broadcast(str(run_dir) if run_dir else None, info))


def build_optimizer(model: torch.nn.Module, cfg, groups: list[dict] | None = None) -> tuple[torch.optim.Optimizer, Any]:
    """Optimizer from ``trainer`` options (and the task's parameter groups) with a per-epoch exponential LR decay."""
    params: Any = [p for p in model.parameters() if p.requires_grad]
    if groups:  # a group's lr_scale multiplies trainer.lr
        params = [
            {"params": [p for p in g["params"] if p.requires_grad], "lr": cfg.lr * g.get("lr_scale", 1.0)}
            for g in groups
        ]
    kinds = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    else:
        opt = kinds[cfg.optimizer](params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=cfg.lr_decay)


def wrap_model(model: torch.nn.Module, cfg, device: torch.device, info: DistInfo) -> torch.nn.Module:
    """Move to device, then DistributedDataParallel and/or torch.compile (after DDP, as torch advises).

    DDP looks for unused parameters only when the model says some can be unused
    (``find_unused_parameters = True`` as a model attribute): the search costs a graph walk per step.
    """
    model = model.to(device)
    if info.world > 1:
        ids = [device.index] if device.type == "cuda" else None
        unused = bool(getattr(model, "find_unused_parameters", False))
        model = torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused)
    if cfg.compile:
        model = torch.compile(model)
    return model


def run_fold(task: Task, fold: Any, index: int, ctx: dict, ckpt: dict | None) -> tuple[dict, Trainer]:
    """Train and test one model (one fold); returns test metrics and the trainer."""
    cfg, info, device, run_dir = ctx["cfg"], ctx["info"], ctx["device"], ctx["run_dir"]
    seed_everything(cfg.trainer.seed + index)
    splits = task.build_data(fold)
    if cfg.trainer.test_weights == "best" and splits.val is None:
        raise ConfigError(
            "trainer.test_weights: 'best' needs a validation split (this data has none, so 'best' would be "
            "chosen on the test split); use 'last' or give the task a validation split"
        )
    model = wrap_model(task.build_model(), cfg.trainer, device, info)
    opt, sched = build_optimizer(model, cfg.trainer, task.param_groups(unwrap(model)))
    task.before_training(unwrap(model), splits, device)
    extra = {"config": to_plain(cfg), "fold": index, "fold_results": ctx["fold_results"]}
    trainer = Trainer(task, model, opt, sched, splits, cfg.trainer, device, info, run_dir, extra)
    if ckpt is not None:
        trainer.load_state(ckpt)
        set_rng_state(ckpt["rng"], info.rank)
    with StopFlag() as stop:
        finished = trainer.fit(stop)
    if not finished:
        raise Interrupted(run_dir, stop.signal)
    test = {}
    if cfg.trainer.test_weights == "best":
        load_best(trainer, info.main)
    elif info.main and splits.val is None and trainer.last_eval and trainer.last_eval[0] == trainer.state.step:
        test = trainer.last_eval[1]  # the last epoch already evaluated these weights on the test split
    if info.main and not test:
        loader = make_loader(splits.test, splits, cfg.trainer, train=False, info=info)
        test = evaluate(task, unwrap(model), loader, device, cfg.trainer)
    ctx["test_outputs"] = getattr(test, "outputs", [])  # for task.pictures: the outputs behind the test metrics
    return dict(test), trainer


def load_best(trainer: Trainer, main: bool) -> None:
    """Put the best-on-validation weights (``checkpoints/best.pt``) into the trainer's model."""
    path = trainer.run_dir / "checkpoints" / "best.pt"
    if not main or trainer.state.best_epoch is None or not path.exists():
        return  # never evaluated (e.g. max_steps before the first evaluation): the final weights
    unwrap(trainer.model).load_state_dict(load_checkpoint(path)["model"])


def summarize(task: Task, cfg: Recipe, folds: list[dict], run_dir: Path) -> dict:
    """Test metrics, with mean/std over folds when there are several."""
    if len(folds) == 1:
        return {"test": folds[0]}
    keys = set.intersection(*(set(scalars(f)) for f in folds))
    stats = {k: torch.tensor([f[k] for f in folds], dtype=torch.float64) for k in sorted(keys)}
    out = {
        "test": {k: float(v.mean()) for k, v in stats.items()},
        "test_std": {k: float(v.std()) for k, v in stats.items()},
    }
    out["folds"] = folds
    out.update(task.summarize_folds(folds, run_dir) or {})
    return out


def train(
    cfg: Recipe,
    task_cls: type[Task] | None = None,
    *,
    resume: str | Path | None = None,
    argv: list[str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> dict:
    """Run a validated recipe end to end; returns the results dict (also in results.json).

    ``overrides`` (already applied to ``cfg``) are recorded in run.json for the report;
    on ``resume`` they are added to the run's earlier ones.
    """
    task_cls = task_cls or resolve_task(cfg.task)
    configure_determinism(cfg.trainer.deterministic)  # before CUDA starts (CUBLAS_WORKSPACE_CONFIG)
    info, device = setup_device(cfg.trainer.device, cfg.trainer.threads)
    task = task_cls(cfg)
    task.check_data()  # before a run directory exists: a missing dataset leaves nothing behind
    ckpt = load_checkpoint(Path(resume) / "checkpoints" / "last.pt") if resume else None
    run_dir = Path(resume) if resume else make_run_dir(cfg, info)
    if info.main:
        atomic_write_text(run_dir / "recipe.yaml", dump_yaml(cfg))
        earlier = read_json(run_dir / "run.json").get("overrides", []) if resume else []
        env = environment(device, argv, [*earlier, *overrides])
        atomic_write_text(run_dir / "run.json", json.dumps(env, indent=2))
    ctx = {"cfg": cfg, "info": info, "device": device, "run_dir": run_dir, "fold_results": []}
    start = 0
    if ckpt is not None:
        ctx["fold_results"], start = list(ckpt.get("fold_results", [])), int(ckpt.get("fold", 0))
    t0 = time.perf_counter()
    for index, fold in enumerate(task.folds()):
        if index < start:
            continue
        test, trainer = run_fold(task, fold, index, ctx, ckpt if index == start else None)
        ctx["fold_results"].append(test)
    barrier(info)
    results = {}
    if info.main:
        results = finish(task, cfg, trainer, ctx, time.perf_counter() - t0)
    shutdown(info)
    return results


def finish(task: Task, cfg: Recipe, trainer: Trainer, ctx: dict, wall: float) -> dict:
    """Write pictures and results.json for a finished run."""
    run_dir, st = ctx["run_dir"], trainer.state
    model = unwrap(trainer.model)
    extra = task.pictures(model, trainer.splits, run_dir, ctx["device"], ctx.get("test_outputs", [])) or {}
    results = {
        "name": cfg.name,
        "task": cfg.task,
        "run_dir": str(run_dir),
        **summarize(task, cfg, ctx["fold_results"], run_dir),
        "params": sum(p.numel() for p in model.parameters()),
        "wall_time_s": round(wall, 2),
        "train_time_s": round(st.train_time, 2),
        "train_examples_per_s": st.examples / max(st.train_time, 1e-9),
        "steps": st.step,
        "epochs": st.epoch,
        "test_weights": cfg.trainer.test_weights if st.best_epoch is not None else "last",
        "best_epoch": st.best_epoch,
        "device": str(ctx["device"]),
        "extra": extra,
    }
    standard_pictures(run_dir, results)
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    write_report(run_dir)
    trainer.tensorboard_pictures()
    shown = "  ".join(f"{k} {v:.4f}" for k, v in scalars(results["test"]).items())
    print(f"test: {shown}\nrun: {run_dir}", file=sys.stderr)
    return results


def environment(device: torch.device, argv: list[str] | None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """What a report needs to say where a run ran (and with which recipe overrides)."""
    return {
        "argv": sys.argv[1:] if argv is None else argv,
        "overrides": list(overrides),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "platform": platform.platform(),
        "started": datetime.now().isoformat(timespec="seconds"),
    }


def eval_checkpoint(
    cfg: Recipe, task_cls: type[Task], path: str, argv: list[str] | None = None, overrides: list[str] = ()
) -> dict:
    """Evaluate a checkpoint's weights on the test split of ``cfg``."""
    ckpt = load_checkpoint(path)
    info = DistInfo()
    device = pick_device(cfg.trainer.device, info)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    task = task_cls(cfg)
    folds = task.folds()
    splits = task.build_data(folds[min(int(ckpt.get("fold", 0)), len(folds) - 1)])
    model = task.build_model().to(device)
    try:
        model.load_state_dict(ckpt["model"])
    except (RuntimeError, KeyError) as exc:
        msg = str(exc).splitlines()[0][:200]
        raise CheckpointError(f"{path}: weights do not fit this recipe's model ({msg})") from None
    metrics = evaluate(
        task, model, make_loader(splits.test, splits, cfg.trainer, train=False, info=info), device, cfg.trainer
    )
    run_dir = make_run_dir(cfg, info, suffix="-eval")
    atomic_write_text(run_dir / "run.json", json.dumps(environment(device, argv, overrides), indent=2))
    atomic_write_text(run_dir / "recipe.yaml", dump_yaml(cfg))
    extra = task.pictures(model, splits, run_dir, device, metrics.outputs) or {}
    results = {"name": cfg.name, "task": cfg.task, "checkpoint": str(path), "test": dict(metrics), "extra": extra}
    standard_pictures(run_dir, results)
    atomic_write_text(run_dir / "results.json", json.dumps(results, indent=2))
    write_report(run_dir)
    print(json.dumps({"test": scalars(metrics), "run_dir": str(run_dir)}, indent=2))
    return results


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code."""
    args = parse_args(argv)
    try:
        recipe = args.recipe or str(Path(args.resume) / "recipe.yaml")
        cfg, task_cls = load_recipe(recipe, args.overrides)
        if args.validate:
            task_cls(cfg).check_data()
            print(f"ok: {recipe} (task '{cfg.task}', name '{cfg.name}')")
            return 0
        if args.eval:
            eval_checkpoint(cfg, task_cls, args.eval, argv, args.overrides)
            return 0
        train(cfg, task_cls, resume=args.resume, argv=argv, overrides=args.overrides)
        return 0
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Interrupted as exc:
        print(str(exc), file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("interrupted before training started; nothing to resume", file=sys.stderr)
        return 130


def cli() -> None:
    """Console script ``capsule-kit`` (and ``python -m capsule_kit.run``)."""
    passive_openmp()
    sys.exit(main())


NO_COMPUTE = frozenset({"--validate", "-h", "--help", "--version"})


def passive_openmp() -> None:
    """Run this command with ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy.

    Idle OpenMP threads that spin steal time slices from the working ones whenever the CPU is
    shared (measured 3-10x slower training on a busy 2-core machine). OpenMP reads the policy
    only when torch loads it, before this runs, so the command restarts itself once with it set.
    The library itself (``import capsule_kit``) leaves the environment alone. Commands that
    train nothing (``--validate``, ``--help``, ``--version``) skip the restart (a second torch import).
    """
    if not NO_COMPUTE.isdisjoint(sys.argv[1:]):
        return
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, "-m", "capsule_kit.run", *sys.argv[1:]])


if __name__ == "__main__":
    cli()
