"""The run directory: every path and JSON file of one run, in one place.

A run directory holds::

    recipe.yaml          the resolved recipe
    run.json             where and how it ran (argv, overrides, versions, git commit)
    metrics.jsonl        one JSON line per logged step / finished epoch
    results.json         test metrics, counters, dataset sizes (written when the run finishes)
    report.html          the self-contained page
    curves.png, *.png    pictures
    checkpoints/last.pt  everything needed to resume (weights, optimizer, RNG, counters)
    checkpoints/best.pt  weights only: the best on the validation split
    checkpoints/model.pt weights only: the weights the test results come from
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from capsule_kit.errors import ConfigError


@dataclass(frozen=True)
class RunDir:
    """Paths and JSON files of one run directory.

    Attributes:
        path: The run directory.

    """

    path: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    def __str__(self) -> str:
        return str(self.path)

    def __fspath__(self) -> str:
        return str(self.path)

    # -- files -------------------------------------------------------------------
    @property
    def recipe(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def run_json(self) -> Path:
        return self.path / "run.json"

    @property
    def results(self) -> Path:
        return self.path / "results.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def report(self) -> Path:
        return self.path / "report.html"

    @property
    def curves(self) -> Path:
        return self.path / "curves.png"

    @property
    def confusion(self) -> Path:
        return self.path / "confusion.png"

    @property
    def cv_accuracy(self) -> Path:
        return self.path / "cv_accuracy.png"

    @property
    def predictions(self) -> Path:
        return self.path / "predictions.tsv"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tb"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint(self, name: str) -> Path:
        """``checkpoints/<name>.pt`` (``last``, ``best`` or ``model``)."""
        return self.checkpoints / f"{name}.pt"

    @property
    def last(self) -> Path:
        return self.checkpoint("last")

    @property
    def best(self) -> Path:
        return self.checkpoint("best")

    @property
    def model(self) -> Path:
        return self.checkpoint("model")

    def pictures(self) -> list[Path]:
        """PNG files of the run, curves first."""
        return sorted(self.path.glob("*.png"), key=lambda p: (p.name != self.curves.name, p.name))

    # -- JSON --------------------------------------------------------------------
    def read_json(self, path: Path) -> dict[str, Any]:
        """A JSON file of the run as a dict; ``{}`` when it is not there yet (or is not a JSON object)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"{path}: not a JSON file ({' '.join(str(exc).split())[:80]})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a JSON object, got {type(data).__name__}")
        return data

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        """Atomically write a JSON file of the run."""
        from capsule_kit.checkpoint import atomic_write_text  # checkpoint.py uses RunDir

        atomic_write_text(path, json.dumps(data, indent=2))

    def tested_weights(self) -> Path:
        """The checkpoint whose weights the test results come from (model.pt, else best/last per results.json)."""
        if self.model.is_file():
            return self.model
        which = self.read_json(self.results).get("test_weights") or "last"
        return self.best if which == "best" else self.last

    @staticmethod
    def is_run(path: str | os.PathLike) -> bool:
        """True for a folder that looks like a run directory (has recipe.yaml or checkpoints/)."""
        run = RunDir(Path(path))
        return run.path.is_dir() and (run.recipe.is_file() or run.checkpoints.is_dir())

    @classmethod
    def create(cls, output_dir: str | os.PathLike, name: str, *, checkpoints: bool = True) -> RunDir:
        """A new ``output_dir/<name>-<timestamp>[-k]`` (with its ``checkpoints/`` folder for training).

        Raises:
            ConfigError: ``output_dir`` is a file, under a missing root, or not writable (named by key).
        """
        root = Path(output_dir)
        check_output_dir(root)
        base = root / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
        path, k = base, 1
        while path.exists():
            path, k = base.with_name(f"{base.name}-{k}"), k + 1
        try:
            (RunDir(path).checkpoints if checkpoints else path).mkdir(parents=True)
        except OSError as exc:
            raise ConfigError(f"output_dir: cannot create {path} ({exc.strerror or exc})") from None
        return cls(path)

    def remove_if_empty(self) -> None:
        """Delete the run directory when nothing but empty folders is in it (a run that failed at once)."""
        if not self.path.is_dir() or any(p.is_file() for p in self.path.rglob("*")):
            return
        for p in sorted(self.path.rglob("*"), reverse=True):
            p.rmdir()
        self.path.rmdir()


def check_output_dir(root: Path) -> None:
    """Raise ConfigError unless run directories can be created under ``root``."""
    existing = root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if root.exists() and not root.is_dir():
        raise ConfigError(f"output_dir: {root} is a file, not a folder")
    if not existing.is_dir():
        raise ConfigError(f"output_dir: {root} is under {existing}, which is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir: cannot create run directories under {root} ({existing} is not writable)")
