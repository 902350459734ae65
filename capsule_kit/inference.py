"""Using a finished run: ``--eval`` of a run or checkpoint, and :func:`load_run` for inference in Python.

Example:
    >>> import capsule_kit
    >>> run = capsule_kit.load_run("runs/mnist-20261125-120000")  # doctest: +SKIP
    >>> batch = next(iter(run.loader("test")))  # doctest: +SKIP
    >>> run.predict(batch)["lengths"].shape  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from capsule_kit.checkpoint import load_checkpoint, load_weights
from capsule_kit.config import Recipe
from capsule_kit.data import Splits, move_to
from capsule_kit.distributed import DistInfo, pick_device
from capsule_kit.engine import evaluate, make_loader
from capsule_kit.errors import CheckpointError
from capsule_kit.metrics import scalars
from capsule_kit.recipe_io import add_paths, load_recipe
from capsule_kit.rundir import RunDir
from capsule_kit.session import discard, finish, open_session, record
from capsule_kit.task import Task, with_extra_metrics


def model_for(task: Task, ckpt: dict, where: Path) -> tuple[nn.Module, Splits]:
    """The task's model with the checkpoint's weights, and the data of the checkpoint's fold."""
    folds = task.folds()
    splits = task.build_data(folds[min(int(ckpt.get("fold", 0) or 0), len(folds) - 1)])
    model = task.build_model()
    load_weights(model, ckpt, where)
    return model, splits


def eval_checkpoint(
    cfg: Recipe,
    task_cls: type[Task],
    path: str | Path,
    argv: list[str] | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    task_paths: list[str] | tuple[str, ...] = (),
) -> dict:
    """Test a checkpoint's weights on the test split of ``cfg``; writes an ``<name>-eval-<time>`` run folder."""
    ckpt = load_checkpoint(path)
    s = open_session(cfg, task_cls, suffix="-eval", task_paths=list(task_paths), checkpoints=False)
    with s.signals:
        try:
            model, splits = model_for(s.task, ckpt, Path(path))
            model = model.to(s.device)
            loader = make_loader(splits.test, splits, cfg.trainer, train=False, info=s.info)
            metrics = evaluate(s.task, model, loader, s.device, cfg.trainer)
            outputs = metrics.outputs
            metrics = with_extra_metrics(s.task, metrics, model, splits, s.device)
            record(s, argv, overrides, checkpoint=str(path))
        except BaseException:
            discard(s)  # nothing worth keeping: the evaluation did not finish
            raise
        s.signals.arm()
        s.test_outputs = outputs
        results = finish(s, model, splits, {"checkpoint": str(path), "test": dict(metrics)})
    print(json.dumps({"test": scalars(metrics), "run_dir": str(s.run)}, indent=2))
    return results


@dataclass
class LoadedRun:
    """A finished run, ready for inference.

    Attributes:
        model: The model with the weights the run's test results come from (eval mode).
        cfg: The resolved recipe.
        task: The task (its ``step`` runs the model on a batch).
        splits: The run's data (of the checkpoint's fold).
        run: The run directory.
        checkpoint: The weights file loaded.
        device: Where the model is.

    """

    model: nn.Module
    cfg: Recipe
    task: Task
    splits: Splits
    run: RunDir
    checkpoint: Path
    device: torch.device

    def loader(self, split: str = "test") -> DataLoader:
        """Batches of one split (``train``, ``val`` or ``test``) in order."""
        data = getattr(self.splits, split)
        if data is None:
            raise ValueError(f"this run has no '{split}' split")
        return make_loader(data, self.splits, self.cfg.trainer, train=False, info=DistInfo())

    @torch.no_grad()
    def predict(self, batch: Any) -> dict[str, Tensor]:
        """The task's outputs for one batch (as collated by the run's data), on CPU."""
        self.model.eval()
        out = self.task.step(self.model, move_to(batch, self.device), train=False)["out"]
        return {k: v.detach().cpu() for k, v in out.items()}

    def evaluate(self, split: str = "test") -> dict:
        """Loss and task metrics on one split."""
        return evaluate(self.task, self.model, self.loader(split), self.device, self.cfg.trainer)


def load_run(run_dir: str | Path, *overrides: str, device: str = "cpu", weights: str | None = None) -> LoadedRun:
    """Load a run directory for inference: model (with the tested weights), resolved recipe, task and data.

    Args:
        run_dir: A run directory (``runs/<name>-<time>``).
        *overrides: Dotted recipe overrides (e.g. ``data.root=/elsewhere``).
        device: ``cpu``, ``cuda``, ``cuda:1``, ``mps`` or ``auto``.
        weights: ``model``, ``best`` or ``last``; default: the weights the run's test results come from.

    Raises:
        CheckpointError: not a run directory, or its weights are missing or do not fit.
    """
    run = RunDir(Path(run_dir))
    if not run.recipe.is_file():
        raise CheckpointError(f"{run_dir}: not a run directory (no recipe.yaml)")
    add_paths(run.read_json(run.run_json).get("task_paths", []))
    cfg, task_cls = load_recipe(run.recipe, list(overrides))
    path = run.checkpoint(weights) if weights else run.tested_weights()
    ckpt = load_checkpoint(path)
    task = task_cls(cfg)
    model, splits = model_for(task, ckpt, path)
    dev = pick_device(device, DistInfo(), key="device")
    return LoadedRun(model.to(dev).eval(), cfg, task, splits, run, path, dev)
