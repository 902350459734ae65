"""The runner: ``capsule-kit RECIPE [key=value ...] [--validate] [--resume RUN_DIR] [--eval RUN_DIR|CKPT]``.

Reads top to bottom: parse -> validate the recipe -> session (device, data
check, run directory) -> (per fold) data, model, optimizer, (resume) -> train
-> test -> results, pictures. ``python -m capsule_kit.run`` is the same command.
User mistakes print one line on stderr and exit 2 (see :mod:`capsule_kit.cli`).
"""

from __future__ import annotations

import os
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from capsule_kit.checkpoint import load_checkpoint, load_weights, save_checkpoint, set_rng_state
from capsule_kit.checkpoint import weights_only as weights_of
from capsule_kit.config import Recipe, apply_overrides
from capsule_kit.determinism import configure_determinism
from capsule_kit.distributed import DistInfo, barrier, shutdown
from capsule_kit.engine import Trainer, evaluate, make_loader, unwrap
from capsule_kit.errors import CheckpointError, ConfigError
from capsule_kit.metrics import scalars
from capsule_kit.recipe_io import config_from_dict, load_recipe, task_paths
from capsule_kit.rundir import RunDir
from capsule_kit.session import Session, discard, finish, open_session, out_of_memory, print_summary, record
from capsule_kit.stop import Interrupted
from capsule_kit.task import Task, resolve_task, with_extra_metrics

__all__ = ["load_recipe", "config_from_dict", "train", "train_recipe", "main", "cli", "parse_args"]


def train_recipe(recipe: str | Path | dict | Recipe, *overrides: str) -> dict:
    """Library entry point: train a recipe (file, shipped name, dict or config) and return its results.

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


def build_optimizer(model: torch.nn.Module, cfg, groups: list[dict] | None = None) -> torch.optim.Optimizer:
    """Optimizer from ``trainer`` options and the task's parameter groups (the rate schedule: :mod:`.schedule`)."""
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
    return opt


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


def resume_into(trainer: Trainer, ckpt: dict, where: Path) -> None:
    """Load a resume checkpoint into the trainer; a foreign or incomplete one is a CheckpointError."""
    load_weights(unwrap(trainer.model), ckpt, where)  # names missing/unexpected keys on a mismatch
    try:
        trainer.load_state(ckpt)
        set_rng_state(ckpt["rng"], trainer.info.rank)
    except KeyError as exc:
        raise CheckpointError(f"{where}: cannot resume from it: no '{exc.args[0]}' (a weights-only file?)") from None
    except (ValueError, RuntimeError, TypeError) as exc:
        msg = " ".join(str(exc).split())[:200]
        raise CheckpointError(f"{where}: cannot resume from it: optimizer/loop state does not fit ({msg})") from None


def run_fold(s: Session, fold: Any, index: int, ckpt: dict | None, on_resumed=None) -> tuple[dict, Trainer]:
    """Train and test one model (one fold); returns test metrics and the trainer."""
    cfg, info = s.cfg, s.info
    seed_everything(cfg.trainer.seed + index)
    splits = s.task.build_data(fold)
    if cfg.trainer.test_weights == "best" and splits.val is None:
        raise ConfigError(
            "trainer.test_weights: 'best' needs a validation split (this data has none, so 'best' would be "
            "chosen on the test split); use 'last' or give the task a validation split"
        )
    model = wrap_model(s.task.build_model(), cfg.trainer, s.device, info)
    opt = build_optimizer(model, cfg.trainer, s.task.param_groups(unwrap(model)))
    s.task.before_training(unwrap(model), splits, s.device)
    trainer = Trainer(s.task, model, opt, splits, cfg.trainer, s.device, info, s.run.path,
                      s.checkpoint_extra(index))  # fmt: skip
    if ckpt is not None:
        resume_into(trainer, ckpt, s.run.last)
        if on_resumed is not None:
            on_resumed()  # only now is the new recipe known to fit the checkpoint
    s.signals.arm()
    if not trainer.fit(s.signals):
        raise Interrupted(s.run.path, s.signals.signal)
    test = {}
    if cfg.trainer.test_weights == "best":
        load_best(trainer, s.run, info.main)
    elif info.main and splits.val is None and trainer.last_eval and trainer.last_eval[0] == trainer.state.step:
        test = trainer.last_eval[1]  # the last epoch already evaluated these weights on the test split
    if info.main and not test:
        loader = make_loader(splits.test, splits, cfg.trainer, train=False, info=info)
        test = evaluate(s.task, unwrap(model), loader, s.device, cfg.trainer)
    s.test_outputs = getattr(test, "outputs", [])  # for task.pictures: the outputs behind the test metrics
    if info.main:  # e.g. a probe on the frozen model, with the tested weights
        test = with_extra_metrics(s.task, test, unwrap(model), splits, s.device)
    return dict(test), trainer


def load_best(trainer: Trainer, run: RunDir, main: bool) -> None:
    """Put the best-on-validation weights (``checkpoints/best.pt``) into the trainer's model."""
    if not main or trainer.state.best_epoch is None or not run.best.exists():
        return  # never evaluated (e.g. max_steps before the first evaluation): the final weights
    load_weights(unwrap(trainer.model), load_checkpoint(run.best), run.best)


def summarize(task: Task, folds: list[dict], run_dir: Path, counts: list[dict] = ()) -> dict:
    """Test metrics, with mean/std over folds when there are several.

    Each entry of ``folds`` in the result also names the epoch its tested weights come from
    (``best_epoch`` from ``counts``: chosen on the validation split; None: the last epoch's weights).
    """
    if len(folds) == 1:
        return {"test": folds[0]}
    keys = set.intersection(*(set(scalars(f)) for f in folds))
    stats = {k: torch.tensor([f[k] for f in folds], dtype=torch.float64) for k in sorted(keys)}
    out = {
        "test": {k: float(v.mean()) for k, v in stats.items()},
        "test_std": {k: float(v.std()) for k, v in stats.items()},
    }
    out["folds"] = [{**f, "best_epoch": c.get("best_epoch")} for f, c in zip(folds, counts)] if counts else folds
    out.update(task.summarize_folds(folds, run_dir) or {})
    return out


def fold_counts(trainer: Trainer) -> dict:
    """Counters of one finished fold (summed over folds in results.json)."""
    st = trainer.state
    return {"steps": st.step, "epochs": st.epoch, "examples": st.examples, "train_time_s": st.train_time,
            "best_epoch": st.best_epoch}  # fmt: skip


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
    on ``resume`` they are added to the run's earlier ones, and recipe.yaml/run.json are
    rewritten only once the checkpoint has loaded into the model the new recipe builds.
    """
    task_cls = task_cls or resolve_task(cfg.task)
    configure_determinism(cfg.trainer.deterministic)  # before CUDA starts (CUBLAS_WORKSPACE_CONFIG)
    ckpt = load_checkpoint(RunDir(resume).last) if resume else None
    s = open_session(cfg, task_cls, resume=resume, task_paths=task_paths(cfg, task_cls))
    with s.signals:
        try:
            results = train_folds(s, ckpt, lambda: record(s, argv, overrides))
        except BaseException as exc:
            discard(s)  # a new run that failed before its first checkpoint leaves no folder behind
            oom = out_of_memory(exc, s)
            if oom is not None:
                raise oom from None
            raise
    shutdown(s.info)
    return results


def train_folds(s: Session, ckpt: dict | None, record_run) -> dict:
    """The folds of a session (from the checkpoint's fold on resume), then results and pictures."""
    start = 0
    if ckpt is None:
        record_run()
    else:
        s.fold_results[:] = list(ckpt.get("fold_results", []))
        s.fold_counts[:] = list(ckpt.get("fold_counts", []))
        start = int(ckpt.get("fold", 0))
    t0 = time.perf_counter()
    for index, fold in enumerate(s.task.folds()):
        if index < start:
            continue
        test, trainer = run_fold(s, fold, index, ckpt if index == start else None, record_run)
        s.fold_results.append(test)
        s.fold_counts.append(fold_counts(trainer))
    barrier(s.info)
    if not s.info.main:
        return {}
    model = unwrap(trainer.model)
    save_checkpoint(s.run.model, weights_of(trainer.checkpoint_payload({})))  # the tested weights, weights only
    totals = {k: sum(c.get(k, 0) for c in s.fold_counts) for k in ("steps", "epochs", "examples", "train_time_s")}
    st = trainer.state
    fields = {
        **summarize(s.task, s.fold_results, s.run.path, s.fold_counts),
        "wall_time_s": round(time.perf_counter() - t0, 2),
        "train_time_s": round(totals["train_time_s"], 2),
        "train_examples": totals["examples"],
        "train_examples_per_s": totals["examples"] / max(totals["train_time_s"], 1e-9),
        "steps": totals["steps"],
        "epochs": totals["epochs"],
        "test_weights": s.cfg.trainer.test_weights if st.best_epoch is not None else "last",
        "best_epoch": st.best_epoch,
    }
    results = finish(s, model, trainer.splits, fields, after=trainer.tensorboard_pictures)
    print_summary(results)
    return results


def main(argv: list[str] | None = None) -> int:
    """CLI entry point; returns the exit code (see :func:`capsule_kit.cli.main`)."""
    from capsule_kit.cli import main as cli_main

    return cli_main(argv)


def parse_args(argv: list[str] | None):
    """The command line as an argparse namespace (see :func:`capsule_kit.cli.parse_args`)."""
    from capsule_kit.cli import parse_args as cli_parse

    return cli_parse(argv)


def cli() -> None:
    """Console script ``capsule-kit`` (and ``python -m capsule_kit.run``)."""
    passive_openmp()
    raise SystemExit(main())


NO_COMPUTE = frozenset({"--validate", "-h", "--help", "--version", "ls"})


def passive_openmp() -> None:
    """Run this command with ``OMP_WAIT_POLICY=PASSIVE`` unless the user chose a policy.

    Idle OpenMP threads that spin steal time slices from the working ones whenever the CPU is
    shared (measured 3-10x slower training on a busy 2-core machine). OpenMP reads the policy
    only when torch loads it, before this runs, so the command restarts itself once with it set.
    The library itself (``import capsule_kit``) leaves the environment alone. Commands that
    train nothing (``--validate``, ``--help``, ``--version``, ``ls``) skip the restart (a second torch import).
    """
    if not NO_COMPUTE.isdisjoint(sys.argv[1:]):
        return
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.execv(sys.executable, [sys.executable, "-m", "capsule_kit.run", *sys.argv[1:]])


if __name__ == "__main__":
    cli()
