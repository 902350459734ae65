"""One run's shared set-up and finish, for training and ``--eval`` alike.

:func:`open_session` checks the data, picks the device and creates (or reopens)
the run directory; :func:`record` writes ``recipe.yaml`` and ``run.json`` once
the run is known to be good (on resume: after the checkpoint loaded into the
model); :func:`finish` writes ``results.json``, the pictures and the report.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import torch
from torch import nn

from capsule_kit.checkpoint import atomic_write_text
from capsule_kit.config import Recipe, dump_yaml, to_plain
from capsule_kit.data import Splits
from capsule_kit.distributed import DistInfo, broadcast, setup_device
from capsule_kit.errors import ConfigError
from capsule_kit.metrics import scalars
from capsule_kit.plots import standard_pictures
from capsule_kit.report import write_report
from capsule_kit.rundir import RunDir
from capsule_kit.stop import InterruptedAfterTraining, RunSignals
from capsule_kit.task import Task


@dataclass
class Session:
    """Typed state of one run (training or evaluation).

    Attributes:
        cfg: The validated recipe.
        task: The task.
        info: Distributed info (rank 0 writes files).
        device: The device.
        run: The run directory.
        fresh: True for a new run directory (removed again if the run fails before its first checkpoint).
        task_paths: Folders of the user's task modules (recorded for resume from anywhere).
        fold_results: Test metrics of the finished folds.
        fold_counts: Steps, epochs, examples and training time of the finished folds.
        signals: SIGINT/SIGTERM handling of the run.
        test_outputs: The gathered outputs of the final test evaluation (for ``task.pictures``).

    """

    cfg: Recipe
    task: Task
    info: DistInfo
    device: torch.device
    run: RunDir
    fresh: bool
    task_paths: list[str] = field(default_factory=list)
    fold_results: list[dict] = field(default_factory=list)
    fold_counts: list[dict] = field(default_factory=list)
    signals: RunSignals = field(default_factory=RunSignals)
    test_outputs: list[dict] = field(default_factory=list)

    def checkpoint_extra(self, fold: int) -> dict[str, Any]:
        """Plain data stored in every checkpoint of ``fold`` (lists shared, so they stay current)."""
        return {"config": to_plain(self.cfg), "fold": fold, "fold_results": self.fold_results,
                "fold_counts": self.fold_counts, "task_paths": self.task_paths}  # fmt: skip


def open_session(
    cfg: Recipe,
    task_cls: type[Task],
    *,
    resume: str | Path | None = None,
    suffix: str = "",
    task_paths: list[str] | None = None,
    checkpoints: bool = True,
) -> Session:
    """Device, task, data check, then the run directory (new, or the one resumed)."""
    info, device = setup_device(cfg.trainer.device, cfg.trainer.threads)
    task = task_cls(cfg)
    task.check_data()  # before a run directory exists: a missing dataset leaves nothing behind
    if resume is not None:
        run = RunDir(Path(resume))
    else:
        path = None
        if info.main:
            path = RunDir.create(cfg.output_dir, f"{cfg.name}{suffix}", checkpoints=checkpoints).path
        run = RunDir(Path(broadcast(str(path) if path else None, info)))
    return Session(cfg, task, info, device, run, fresh=resume is None, task_paths=list(task_paths or []))


def record(s: Session, argv: list[str] | None, overrides: list[str] | tuple[str, ...], **more: Any) -> None:
    """Write recipe.yaml and run.json (on resume: overrides added to the earlier ones)."""
    if not s.info.main:
        return
    earlier = [] if s.fresh else s.run.read_json(s.run.run_json).get("overrides", [])
    atomic_write_text(s.run.recipe, dump_yaml(s.cfg))
    env = environment(s.device, argv, [*earlier, *overrides])
    s.run.write_json(s.run.run_json, {**env, "task_paths": s.task_paths, **more})


def discard(s: Session) -> None:
    """Remove a new run directory that never got a checkpoint (the run failed before it saved anything)."""
    if s.info.main and s.fresh and not s.run.last.exists() and s.run.path.is_dir():
        shutil.rmtree(s.run.path, ignore_errors=True)


def out_of_memory(exc: BaseException, s: Session) -> ConfigError | None:
    """A one-line error naming ``trainer.batch_size`` when ``exc`` is running out of (device or host) memory."""
    text = " ".join(str(exc).split())
    oom = isinstance(exc, (torch.OutOfMemoryError, MemoryError)) or (
        isinstance(exc, RuntimeError) and any(m in text for m in ("out of memory", "can't allocate memory"))
    )
    if not oom:
        return None
    t = s.cfg.trainer
    return ConfigError(
        f"trainer.batch_size: out of memory on {s.device} with trainer.batch_size={t.batch_size}"
        f"{f' (trainer.eval_batch_size={t.eval_batch_size})' if t.eval_batch_size else ''}: "
        "use a smaller batch"
    )


def version() -> str:
    """The installed capsule-kit version."""
    try:
        return metadata.version("capsule-kit")
    except metadata.PackageNotFoundError:
        from capsule_kit import __version__

        return __version__


def git_commit(folder: Path | None = None) -> str | None:
    """The git commit of the capsule-kit checkout in use.

    None outside a git checkout, without git, or when the package files are not tracked by the
    repository around them (e.g. a virtual environment inside a user's own project).
    """
    folder = folder or Path(__file__).resolve().parent

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=folder, capture_output=True, text=True, timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip() if out.returncode == 0 else None

    if git("ls-files", "--error-unmatch", Path(__file__).name if folder == Path(__file__).parent else ".") is None:
        return None
    sha = git("rev-parse", "HEAD")
    return sha if sha and len(sha) == 40 else None


def environment(device: torch.device, argv: list[str] | None, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """What a report needs to say where a run ran (versions, git commit, recipe overrides)."""
    return {
        "argv": sys.argv[1:] if argv is None else argv,
        "overrides": list(overrides),
        "capsule_kit": version(),
        "git_commit": git_commit(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "threads": torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "platform": platform.platform(),
        "started": datetime.now().isoformat(timespec="seconds"),
    }


def finish(
    s: Session, model: nn.Module, splits: Splits, fields: dict[str, Any], after: Callable[[], None] | None = None
) -> dict:
    """Write results.json, then the pictures and the report; returns the results.

    results.json is written before the pictures, so a signal while drawing loses no
    result: the run stops with a line saying how to finish it (``--resume``).
    """
    results = {"name": s.cfg.name, "task": s.cfg.task, "run_dir": str(s.run), **fields}
    results["params"] = sum(p.numel() for p in model.parameters())
    results["data"] = dict(splits.info or {})
    results["device"] = str(s.device)
    s.run.write_json(s.run.results, {**results, "extra": {}})
    _check_stop(s, "results.json written, pictures not drawn")
    results["extra"] = s.task.pictures(model, splits, s.run.path, s.device, s.test_outputs) or {}
    standard_pictures(s.run.path, results, s.task.label_names())
    s.run.write_json(s.run.results, results)
    write_report(s.run.path)
    if after is not None:
        after()
    if s.signals.signal is not None:
        print(f"signal {s.signals.signal} received while finishing: the run is complete anyway", file=sys.stderr)
    return results


def _check_stop(s: Session, done: str) -> None:
    if s.signals.signal is not None:
        write_report(s.run.path)
        raise InterruptedAfterTraining(s.run.path, s.signals.signal, done)


def print_summary(results: dict) -> None:
    """The end summary on stderr: test metrics and the run directory."""
    shown = "  ".join(f"{k} {v:.4f}" for k, v in scalars(results.get("test", {})).items())
    print(f"test: {shown}\nrun: {results['run_dir']}", file=sys.stderr)
